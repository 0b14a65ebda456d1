import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// One connection's HTTP/1.1 handler: collects a request (body up to the body limit), hands it
/// to the API service, and writes the response back on the loop.
///
/// Single-threaded like every channel handler: all its state lives on its event loop, except
/// `gone`, which the engine's queue reads to cancel a turn whose client left.
///
/// Timeouts: with no request in flight, a connection silent for `idleTimeoutSeconds` is closed;
/// a request whose head and body do not arrive within `requestTimeoutSeconds` of its first part
/// gets 408 and the connection is closed.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let service: APIService
    private let peer: Peer
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyLimit = 0
    private var tooLarge = false
    private var inFlight = false
    private var timer: Scheduled<Void>?
    private let gone = NIOLockedValueBox(false)

    init(service: APIService, peer: Peer) {
        self.service = service
        self.peer = peer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { armIdleTimer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        armIdleTimer(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        gone.withLockedValue { $0 = true }
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
            let limits = service.limits.withLockedValue { $0 }
            bodyLimit = limits.maxBodyBytes
            arm(context: context, seconds: limits.requestTimeoutSeconds) { handler, context in
                handler.head = nil
                let message = #"{"error":{"message":"the request did not arrive in \#(limits.requestTimeoutSeconds) s (server.request_timeout_seconds)","type":"timeout"}}"#
                handler.write(context: context, APIService.Response(status: 408, body: Array(message.utf8)), keepAlive: false)
            }
        case .body(var chunk):
            guard head != nil else { return }
            if tooLarge || body.count + chunk.readableBytes > bodyLimit {
                tooLarge = true
                body = []
            } else if let bytes = chunk.readBytes(length: chunk.readableBytes) {
                body += bytes
            }
        case .end:
            guard let head else { return }
            self.head = nil
            timer?.cancel()
            timer = nil
            let keepAlive = head.isKeepAlive
            if tooLarge {
                let message = #"{"error":{"message":"request body over \#(bodyLimit) bytes (server.max_body_bytes)","type":"invalid_request_error"}}"#
                write(context: context, APIService.Response(status: 413, body: Array(message.utf8)), keepAlive: false)
                return
            }
            inFlight = true
            var headers: [String: String] = [:]
            for (name, value) in head.headers { headers[name.lowercased()] = value }
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            let gone = self.gone
            let request = APIService.Request(
                method: head.method.rawValue, path: path, headers: headers, body: body, peer: peer,
                isClientGone: { gone.withLockedValue { $0 } })
            body = []
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let sink = APIService.StreamSink(
                start: { status, contentType in
                    loop.execute {
                        let (handler, context) = bound.value
                        handler.startStream(context: context, status: status, contentType: contentType)
                    }
                },
                send: { bytes in
                    loop.execute {
                        let (_, context) = bound.value
                        guard context.channel.isActive else { return }
                        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
                        buffer.writeBytes(bytes)
                        context.writeAndFlush(NIOAny(HTTPServerResponsePart.body(.byteBuffer(buffer))), promise: nil)
                    }
                },
                end: {
                    loop.execute {
                        let (_, context) = bound.value
                        let channel = context.channel
                        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in channel.close(promise: nil) }
                    }
                })
            service.handle(request, stream: sink) { response in
                loop.execute {
                    let (handler, context) = bound.value
                    handler.write(context: context, response, keepAlive: keepAlive)
                }
            }
        }
    }

    /// Starts a server-sent-events response (chunked; the connection closes at its end).
    private func startStream(context: ChannelHandlerContext, status: Int, contentType: String) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Cache-Control", value: "no-cache")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Transfer-Encoding", value: "chunked")
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
        context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
    }

    private func write(context: ChannelHandlerContext, _ response: APIService.Response, keepAlive: Bool) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        inFlight = false
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        } else {
            armIdleTimer(context: context)
        }
    }

    private func armIdleTimer(context: ChannelHandlerContext) {
        let seconds = service.limits.withLockedValue { $0.idleTimeoutSeconds }
        arm(context: context, seconds: seconds) { handler, context in
            guard !handler.inFlight, handler.head == nil else { return }
            context.close(promise: nil)
        }
    }

    /// Replaces the connection's timer with one that runs `fire` after `seconds`.
    private func arm(context: ChannelHandlerContext, seconds: Double, _ fire: @escaping (HTTPHandler, ChannelHandlerContext) -> Void) {
        timer?.cancel()
        let bound = NIOLoopBound((self, context, fire), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
            let (handler, context, fire) = bound.value
            handler.timer = nil
            fire(handler, context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A malformed request or a broken connection ends this connection only.
        context.close(promise: nil)
    }
}
