import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// One connection's HTTP/1.1 handler: collects a request (body up to the body limit), hands it
/// to the API service, and writes the response back on the loop.
///
/// Single-threaded like every channel handler: all its state lives on its event loop, except
/// `gone`, which the engine's queue reads to cancel a turn whose client left.
///
/// Timeouts live in `ConnectionTimeouts` at the front of the pipeline; this handler tells it
/// when a request is complete and when its response has gone out. A request with more than
/// `maxHeaders` header fields, or a head over `ConnectionTimeouts.maxHeadBytes`, gets 431; a
/// declared body over the limit gets 413 before any of it is read.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    static let maxHeaders = 128
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let service: any HTTPRequestResponder
    private let peer: Peer
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyLimit = 0
    private var tooLarge = false
    private let timeouts: ConnectionTimeouts
    private let gone = NIOLockedValueBox(false)
    /// A response that closes the connection (a stream, or `Connection: close`) has begun.
    private var closing = false

    init(service: any HTTPRequestResponder, peer: Peer, timeouts: ConnectionTimeouts) {
        self.service = service
        self.peer = peer
        self.timeouts = timeouts
    }

    func channelInactive(context: ChannelHandlerContext) {
        gone.withLockedValue { $0 = true }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After a response that closes the connection, pipelined requests get no answer.
        guard !closing else { return }
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
            bodyLimit = service.limits.withLockedValue { $0.maxBodyBytes }
            timeouts.headReceived()
            let headBytes = h.uri.utf8.count + h.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
            if h.headers.count > Self.maxHeaders || headBytes > ConnectionTimeouts.maxHeadBytes {
                head = nil
                timeouts.requestReceived()
                let why = h.headers.count > Self.maxHeaders
                    ? "more than \(Self.maxHeaders) header fields" : "request head over \(ConnectionTimeouts.maxHeadBytes) bytes"
                let e = APIError(431, "invalid_request_error", why)
                write(context: context, APIService.Response(status: 431, body: e.body), keepAlive: false)
            } else if let declared = h.headers.first(name: "content-length").flatMap(Int.init), declared > bodyLimit {
                // Refused before a byte of the body is read.
                head = nil
                timeouts.requestReceived()
                let e = APIError(413, "invalid_request_error", "request body of \(declared) bytes over \(bodyLimit) bytes (server.max_body_bytes)")
                write(context: context, APIService.Response(status: 413, body: e.body), keepAlive: false)
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
            timeouts.requestReceived()
            let keepAlive = head.isKeepAlive
            if tooLarge {
                let e = APIError(413, "invalid_request_error", "request body over \(bodyLimit) bytes (server.max_body_bytes)")
                write(context: context, APIService.Response(status: 413, body: e.body), keepAlive: false)
                return
            }
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
        closing = true
        timeouts.connectionClosing()
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
        // The timeouts learn the connection's fate before `.end` goes out: writing it lets NIO's
        // pipeline handler deliver a pipelined next request at once, whose deadline must not be
        // reset by this response afterwards.
        if keepAlive {
            timeouts.responseSent()
        } else {
            closing = true
            timeouts.connectionClosing()
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A malformed request or a broken connection ends this connection only.
        context.close(promise: nil)
    }
}

