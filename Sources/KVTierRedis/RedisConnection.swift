/// One connection to one Redis node: connect, authenticate, then pipelines of commands (every
/// command written, then every reply read). Not thread-safe: its owner serializes its use.
public final class RedisConnection {
    public struct Credentials: Sendable, Equatable {
        /// ACL user (nil: the `default` user, `AUTH password` as before Redis 6).
        public var user: String?
        public var password: String

        public init(user: String?, password: String) {
            self.user = user
            self.password = password
        }
    }

    public let host: String
    public let port: Int
    private let socket: RedisSocket
    private var parser = RESPParser()
    private var chunk = [UInt8](repeating: 0, count: 256 << 10)
    public private(set) var isBroken = false

    public var address: String { "\(host):\(port)" }

    public init(
        host: String, port: Int, credentials: Credentials?, connectTimeout: Double = 1, ioTimeout: Double = 2
    ) throws(RedisError) {
        self.host = host
        self.port = port
        socket = try RedisSocket(host: host, port: port, timeout: connectTimeout, ioTimeout: ioTimeout)
        if let credentials {
            var args: [[UInt8]] = [Array("AUTH".utf8)]
            if let user = credentials.user { args.append(Array(user.utf8)) }
            args.append(Array(credentials.password.utf8))
            let reply = try pipeline([args])[0]
            if let message = reply.errorMessage {
                socket.shutdown()
                throw .authentication(address: address, message: message)
            }
        }
    }

    /// Sends `commands` in one write and reads their replies in order. An error reply is a value;
    /// a broken connection throws (and the connection must not be used again).
    public func pipeline(_ commands: [[[UInt8]]]) throws(RedisError) -> [RESPValue] {
        guard !isBroken else { throw .io(address: address, reason: "connection already failed") }
        do {
            var out: [UInt8] = []
            for c in commands { RESPEncoder.encode(c, into: &out) }
            try socket.send(out)
            var replies: [RESPValue] = []
            replies.reserveCapacity(commands.count)
            while replies.count < commands.count {
                if let r = try parser.next() {
                    replies.append(r)
                    continue
                }
                let n = try socket.receive(into: &chunk)
                parser.append(chunk[0..<n])
            }
            return replies
        } catch {
            isBroken = true
            socket.shutdown()
            throw error
        }
    }

    /// One command, one reply.
    public func send(_ arguments: [String]) throws(RedisError) -> RESPValue {
        try pipeline([arguments.map { Array($0.utf8) }])[0]
    }

    public func close() {
        isBroken = true
        socket.shutdown()
    }
}
