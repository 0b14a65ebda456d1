import NIOCore

/// Sits at the head of a fuzzed `EmbeddedChannel`'s pipeline and fails writes once the channel
/// is closed, as a socket does (`ChannelError.ioOnClosedChannel`). `EmbeddedChannel` itself keeps
/// recording them, which would show bytes no client could ever receive. Event-loop bound.
final class SocketWriteSemantics: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard context.channel.isActive else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(data, promise: promise)
    }
}
