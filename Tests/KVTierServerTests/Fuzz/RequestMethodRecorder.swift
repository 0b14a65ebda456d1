import NIOCore
import NIOHTTP1

/// Sits right after the HTTP request decoder of a fuzzed pipeline and notes the method of every
/// request head decoded, in order: NIO's response encoder pairs the n-th response with the n-th
/// request and sends responses to HEAD and CONNECT without a body (CONNECT without framing
/// headers either), so whoever reads the responses back must know the methods, as a client does.
/// Event-loop bound.
final class RequestMethodRecorder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private(set) var methods: [HTTPMethod] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) { methods.append(head.method) }
        context.fireChannelRead(data)
    }
}
