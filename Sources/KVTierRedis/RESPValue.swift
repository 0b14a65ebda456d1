/// One value of RESP2, the Redis serialization protocol: what a server replies.
///
/// An error reply is a value, not a thrown error: in a pipeline each command has its own
/// reply, and a cluster client must read `-MOVED` and `-ASK` replies to route the command.
public enum RESPValue: Sendable, Equatable {
    case simpleString(String)
    case error(String)
    case integer(Int64)
    /// A bulk string; nil is the null bulk string (a missing key).
    case bulk([UInt8]?)
    /// An array; nil is the null array.
    case array([RESPValue]?)

    /// The bytes of a bulk or simple string (nil for a null bulk string or another kind).
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let b): return b
        case .simpleString(let s): return Array(s.utf8)
        default: return nil
        }
    }

    public var errorMessage: String? {
        if case .error(let m) = self { return m }
        return nil
    }
}

/// Encodes commands as RESP arrays of bulk strings (how every client sends commands).
public enum RESPEncoder {
    public static func encode(_ arguments: [[UInt8]], into out: inout [UInt8]) {
        append(&out, "*\(arguments.count)\r\n")
        for a in arguments {
            append(&out, "$\(a.count)\r\n")
            out += a
            out += [13, 10]
        }
    }

    private static func append(_ out: inout [UInt8], _ s: String) { out += Array(s.utf8) }
}

/// Parses RESP2 replies out of a growing byte buffer, incrementally: `next()` returns nil until a
/// whole reply has arrived.
public struct RESPParser: Sendable {
    /// Bulk strings and arrays larger than this are refused (a damaged stream, not a reply).
    public static let maxBulkBytes = 512 << 20
    private var buffer: [UInt8] = []
    private var offset = 0

    public init() {}

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        if offset > 0 && offset == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            offset = 0
        } else if offset > 1 << 20 {
            buffer.removeFirst(offset)
            offset = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received and not yet parsed into a reply.
    public var pendingBytes: Int { buffer.count - offset }

    /// The next whole reply, or nil if more bytes are needed.
    public mutating func next() throws(RedisError) -> RESPValue? {
        var at = offset
        guard let value = try parse(&at) else { return nil }
        offset = at
        return value
    }

    private enum Incomplete: Error { case needMore }

    private func parse(_ at: inout Int) throws(RedisError) -> RESPValue? {
        guard at < buffer.count else { return nil }
        let kind = buffer[at]
        guard let line = readLine(from: at + 1) else { return nil }
        let text = String(decoding: buffer[(at + 1)..<line], as: UTF8.self)
        var next = line + 2
        let value: RESPValue
        switch kind {
        case UInt8(ascii: "+"):
            value = .simpleString(text)
        case UInt8(ascii: "-"):
            value = .error(text)
        case UInt8(ascii: ":"):
            guard let n = Int64(text) else { throw .protocolViolation("integer reply '\(text)' is not a number") }
            value = .integer(n)
        case UInt8(ascii: "$"):
            guard let n = Int(text), n >= -1, n <= Self.maxBulkBytes else {
                throw .protocolViolation("bulk length '\(text)' is out of range")
            }
            if n == -1 {
                value = .bulk(nil)
            } else {
                guard buffer.count - next >= n + 2 else { return nil }
                guard buffer[next + n] == 13, buffer[next + n + 1] == 10 else {
                    throw .protocolViolation("bulk string of \(n) bytes is not followed by CRLF")
                }
                value = .bulk(Array(buffer[next..<(next + n)]))
                next += n + 2
            }
        case UInt8(ascii: "*"):
            guard let n = Int(text), n >= -1, n <= Self.maxBulkBytes else {
                throw .protocolViolation("array length '\(text)' is out of range")
            }
            if n == -1 {
                value = .array(nil)
            } else {
                var items: [RESPValue] = []
                items.reserveCapacity(n)
                for _ in 0..<n {
                    guard let item = try parse(&next) else { return nil }
                    items.append(item)
                }
                value = .array(items)
            }
        default:
            throw .protocolViolation("unexpected reply type byte \(kind)")
        }
        at = next
        return value
    }

    /// Index of the CR of the CRLF ending the line that starts at `start`, or nil if not all here.
    private func readLine(from start: Int) -> Int? {
        var i = start
        while i + 1 < buffer.count {
            if buffer[i] == 13 && buffer[i + 1] == 10 { return i }
            i += 1
        }
        return nil
    }
}
