import NIOCore
import NIOHTTP1

/// Answers a request the HTTP parser rejects (malformed request line or headers, bad framing)
/// with a 400 carrying an OpenAI-style JSON error, once, unless a response is already under way
/// or one has said `Connection: close` (bytes pipelined after such a request reach the parser
/// before the close, and the client must get nothing after the response that said close). The
/// handler then closes that connection, and only that one. Sits where NIO's own protocol error
/// handler would, after the pipelining handler. Event-loop bound like every handler.
final class ProtocolErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// A response head went out and its end has not.
    private var responding = false
    /// A response head said `Connection: close`: nothing more goes out on this connection.
    private var closing = false

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is HTTPParserError && !responding && !closing {
            // Once: the decoder may report the same error again for bytes read before the close.
            closing = true
            let body = String(
                decoding: APIError(400, "invalid_request_error", "malformed HTTP request (\(error)); the connection is closed").body, as: UTF8.self)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))), promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where (100..<200).contains(head.status.code): break
        case .head(let head):
            responding = true
            if head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "close" }) { closing = true }
        case .body: break
        case .end: responding = false
        }
        context.write(data, promise: promise)
    }
}
