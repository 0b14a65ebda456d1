import NIOCore

/// First in every connection's pipeline, below the HTTP codec: the connection's two deadlines.
///
/// - Idle: no request in flight and no byte received for `idleTimeoutSeconds` closes it.
/// - Request: once the first byte of a request arrives, its head and body must be in within
///   `requestTimeoutSeconds`, or the client gets 408 and the connection is closed. The clock runs
///   from the first raw byte (the HTTP decoder reports a request only once its whole head is in),
///   so a client sending one byte a second cannot hold a connection.
///
/// It also bounds a request's head: more than `maxHeadBytes` before the HTTP decoder has a whole
/// head gets 431 and a close, so a client cannot make the decoder buffer an endless header line.
///
/// The 408 and 431 are written here as raw bytes, since no request exists yet for the HTTP layer
/// to answer.
/// Event-loop bound like every handler; `HTTPHandler` calls `requestReceived` and `responseSent`.
final class ConnectionTimeouts: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Bytes a request head (request line and header fields) may take.
    static let maxHeadBytes = 64 * 1024

    private enum State { case idle, receiving, busy }
    private var state = State.idle
    /// Raw bytes received for the current request while its head is incomplete.
    private var headBytes = 0
    private var headComplete = false
    /// Set once this handler has answered (408, 431) or a response that closes the connection has
    /// begun: later bytes are dropped until the close.
    private var answered = false
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    private let limits: @Sendable () -> ServerLimits

    init(limits: @escaping @Sendable () -> ServerLimits) {
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { armIdle() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        armIdle()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        if state == .idle {
            state = .receiving
            headBytes = 0
            headComplete = false
            arm(seconds: limits().requestTimeoutSeconds) { handler in handler.requestTimedOut() }
        }
        let count = unwrapInboundIn(data).readableBytes
        // The decoder sees the bytes first: if they complete the head, `headReceived` is called
        // before they would be counted.
        context.fireChannelRead(data)
        guard state == .receiving, !headComplete else { return }
        headBytes += count
        if headBytes > Self.maxHeadBytes {
            state = .busy
            timer?.cancel()
            timer = nil
            respondAndClose(APIError(431, "invalid_request_error", "request head over \(Self.maxHeadBytes) bytes"), reason: "Request Header Fields Too Large")
        }
    }

    /// The HTTP layer has the request's head: its body is bounded by `server.max_body_bytes`.
    func headReceived() {
        headComplete = true
    }

    /// The HTTP layer has a whole request: no deadline while it is answered.
    func requestReceived() {
        state = .busy
        timer?.cancel()
        timer = nil
    }

    /// The response went out on a kept-alive connection: idle again.
    func responseSent() {
        armIdle()
    }

    /// A response that ends the connection has begun: no deadline, no answer of ours, and the
    /// bytes that still arrive are dropped.
    func connectionClosing() {
        answered = true
        state = .busy
        timer?.cancel()
        timer = nil
    }

    private func armIdle() {
        state = .idle
        arm(seconds: limits().idleTimeoutSeconds) { handler in handler.context?.close(promise: nil) }
    }

    private func requestTimedOut() {
        guard state == .receiving, context != nil else { return }
        let seconds = limits().requestTimeoutSeconds
        respondAndClose(APIError(408, "timeout", "the request did not arrive within \(seconds) s (server.request_timeout_seconds)"), reason: "Request Timeout")
    }

    private func respondAndClose(_ error: APIError, reason: String) {
        guard let context else { return }
        answered = true
        let body = String(decoding: error.body, as: UTF8.self)
        let text = "HTTP/1.1 \(error.status) \(reason)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    private func arm(seconds: Double, _ fire: @escaping (ConnectionTimeouts) -> Void) {
        timer?.cancel()
        guard let context else { return }
        let bound = NIOLoopBound((self, fire), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
            let (handler, fire) = bound.value
            handler.timer = nil
            fire(handler)
        }
    }
}
