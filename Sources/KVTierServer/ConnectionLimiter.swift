import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
    import Glibc
    private let RLIMIT_NOFILE_VALUE = Int32(RLIMIT_NOFILE.rawValue)
#endif

/// Open connections, in all and per user, held against `server.max_connections` and
/// `server.max_connections_per_user`: a client that opens connections and leaves them idle
/// (or a thousand of them) cannot take the daemon's file descriptors from everyone else.
///
/// Thread-safety: the counts are in a lock; `admit` runs in a connection's initializer and
/// `release` when it closes, both on event-loop threads.
final class ConnectionLimiter: Sendable {
    private struct Counts {
        var total = 0
        var byUser: [String: Int] = [:]
    }

    private let counts = NIOLockedValueBox(Counts())
    /// Connections the process's file descriptors allow: the soft RLIMIT_NOFILE less 256 for
    /// RocksDB, the model and the rest (kvtierd raises the soft limit to the hard one at start).
    let descriptorBudget: Int

    init(descriptorBudget: Int = ConnectionLimiter.currentDescriptorBudget()) {
        self.descriptorBudget = descriptorBudget
    }

    static func currentDescriptorBudget() -> Int {
        var rl = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &rl) == 0, rl.rlim_cur != rlim_t.max else { return Int.max }
        return max(64, Int(clamping: rl.rlim_cur) - 256)
    }

    /// Takes a slot for a connection of `user` (a peer's namespace), or returns the error to
    /// answer with (the slot is not taken then).
    func admit(_ user: String, limits: ServerLimits) -> APIError? {
        counts.withLockedValue { c in
            if c.total >= min(limits.maxConnections, descriptorBudget) {
                let why =
                    limits.maxConnections <= descriptorBudget
                    ? "server.max_connections = \(limits.maxConnections)"
                    : "its file descriptor limit allows \(descriptorBudget); raise LimitNOFILE"
                return APIError(
                    503, "unavailable", "kvtierd has \(c.total) connections open (\(why)); retry shortly", retryAfter: 1
                )
            }
            let mine = c.byUser[user, default: 0]
            if mine >= limits.maxConnectionsPerUser {
                return APIError(
                    429, "rate_limit_exceeded",
                    "you have \(mine) connections open "
                        + "(server.max_connections_per_user = \(limits.maxConnectionsPerUser)); "
                        + "close idle ones or reuse them",
                    retryAfter: 1)
            }
            c.total += 1
            c.byUser[user] = mine + 1
            return nil
        }
    }

    /// Gives back the slot of a closed connection of `user`.
    func release(_ user: String) {
        counts.withLockedValue { c in
            c.total -= 1
            let left = c.byUser[user, default: 1] - 1
            c.byUser[user] = left > 0 ? left : nil
        }
    }

    /// Connections open now.
    var open: Int { counts.withLockedValue { $0.total } }
}

/// Answers a connection over the limits with one response and closes it, without reading a
/// request (the client may not have sent one yet). Sits behind NIO's `HTTPResponseEncoder`.
final class ConnectionRefusal: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = HTTPServerResponsePart
    private let error: APIError
    private var answered = false

    init(_ error: APIError) { self.error = error }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { answer(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        answer(context)
        context.fireChannelActive()
    }

    private func answer(_ context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        let body = error.body
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        if let retry = error.retryAfterSeconds { headers.add(name: "Retry-After", value: String(retry)) }
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: error.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}  // whatever the client sends is ignored
}
