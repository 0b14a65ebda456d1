import NIOCore
import NIOHTTP1

/// Back-pressure for a client that pipelines requests without reading the answers.
///
/// While the connection is not writable (its unsent responses are above NIO's high-water mark,
/// 64 KiB by default), the next request parts wait here and nothing more is read from the
/// socket; once the client has read enough (below the low-water mark) they go on, in order. So a
/// connection holds at most one read of requests and about the watermark of answers, however
/// many requests the client pipelines (without it, one client pipelining `GET /metrics` grew
/// kvtierd by gigabytes). The client's own socket buffer fills and its writes block: the cost
/// lands on the one who caused it.
///
/// Sits between NIO's HTTP pipeline handler and `HTTPHandler`. Event-loop confined, like every
/// channel handler.
final class WritabilityGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Held {
        case part(NIOAny)
        case event(Any)
    }

    /// Inbound parts and events that arrived while the connection was not writable, in order.
    private var held = CircularBuffer<Held>()
    /// A read the channel asked for while held back.
    private var readPending = false

    private func isOpen(_ context: ChannelHandlerContext) -> Bool { held.isEmpty && context.channel.isWritable }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if isOpen(context) {
            context.fireChannelRead(data)
        } else {
            held.append(.part(data))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if held.isEmpty {
            context.fireUserInboundEventTriggered(event)
        } else {
            held.append(.event(event))
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        release(context: context)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        held.removeAll()
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if isOpen(context) {
            context.read()
        } else {
            readPending = true
        }
    }

    /// Lets held parts through while the connection stays writable, then the pending read.
    private func release(context: ChannelHandlerContext) {
        while context.channel.isWritable, let next = held.popFirst() {
            switch next {
            case .part(let data): context.fireChannelRead(data)
            case .event(let event): context.fireUserInboundEventTriggered(event)
            }
        }
        if isOpen(context) && readPending {
            readPending = false
            context.read()
        }
    }
}
