import Foundation

#if canImport(Glibc)
    import Glibc
#endif

// Unsafe-pointer fence: the sockets of the serving benchmark's client.

/// A blocking HTTP/1.1 client for one streamed request per connection, over a Unix socket
/// (kvtierd) or loopback TCP (llama-server): it posts a JSON body and hands each server-sent
/// event's `data:` payload to the caller as it arrives, de-chunking `Transfer-Encoding: chunked`.
/// The same code talks to both servers, so their figures compare.
struct StreamingHTTPClient: Sendable {
    enum Endpoint: Sendable, CustomStringConvertible {
        case unix(String)
        case tcp(host: String, port: UInt16)

        var description: String {
            switch self {
            case .unix(let path): return "unix:\(path)"
            case .tcp(let host, let port): return "http://\(host):\(port)"
            }
        }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let endpoint: Endpoint
    /// Seconds a read may wait before the request counts as failed.
    var timeoutSeconds = 600.0

    /// Posts `body` to `path`; calls `onEvent` with each `data:` payload (on this thread).
    /// Returns the HTTP status; a non-200 response's body comes back in the error.
    func postStreaming(_ path: String, body: [UInt8], onEvent: (String) -> Void) throws -> Int {
        let fd = try connect()
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let head =
            "POST \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + "Accept: text/event-stream\r\nContent-Length: \(body.count)\r\n\r\n"
        try writeAll(fd, Array(head.utf8) + body)

        var reader = ResponseReader()
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "read from \(endpoint) failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            try reader.feed(buffer[0..<n], onEvent: onEvent)
            if reader.finished { break }
        }
        guard let status = reader.status else {
            throw Failure(description: "\(endpoint) closed the connection before a response head")
        }
        if status != 200 {
            throw Failure(
                description:
                    "\(endpoint) answered \(status): \(String(decoding: reader.rawBody.prefix(300), as: UTF8.self))")
        }
        return status
    }

    /// GET `path`; returns the status (the body is read and dropped).
    func get(_ path: String) throws -> Int {
        try exchange("GET", path, body: nil, readBody: false).status
    }

    /// POST a JSON `body` to `path`; returns the status.
    func post(_ path: String, body: [UInt8]) throws -> Int {
        try exchange("POST", path, body: body, readBody: true).status
    }

    /// GET `path` and parse its (small, at most 4 KiB) body as JSON.
    func getJSON(_ path: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(exchange("GET", path, body: nil, readBody: true).body))
    }

    private func exchange(_ method: String, _ path: String, body: [UInt8]?, readBody: Bool) throws
        -> (status: Int, body: [UInt8])
    {
        let fd = try connect()
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        try writeAll(fd, Array((head + "\r\n").utf8) + (body ?? []))
        var reader = ResponseReader()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while reader.status == nil || (readBody && !reader.finished) {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            try reader.feed(buffer[0..<n]) { _ in }
        }
        guard let status = reader.status else {
            throw Failure(description: "\(endpoint) closed the connection before a response head")
        }
        return (status, reader.rawBody)
    }

    private func connect() throws -> Int32 {
        switch endpoint {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure(description: "socket() failed: \(String(cString: strerror(errno)))") }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                close(fd)
                throw Failure(description: "socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { dst in
                for (i, b) in bytes.enumerated() { dst[i] = b }
                dst[bytes.count] = 0
            }
            return try connect(fd, &addr, to: path)
        case .tcp(let host, let port):
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure(description: "socket() failed: \(String(cString: strerror(errno)))") }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &addr.sin_addr) == 1 else {
                close(fd)
                throw Failure(description: "not an IPv4 address: \(host)")
            }
            return try connect(fd, &addr, to: "\(host):\(port)")
        }
    }

    /// Connects `fd` to `address` (a sockaddr_un or sockaddr_in); closes it on failure.
    private func connect<Address>(_ fd: Int32, _ address: inout Address, to name: String) throws -> Int32 {
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<Address>.size))
            }
        }
        guard ok == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "cannot connect to \(name): \(message)")
        }
        return fd
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw Failure(description: "write to \(endpoint) failed: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }
}

/// Incremental parse of one HTTP/1.1 response: head, then the body (chunked or not) split into
/// server-sent-event lines.
struct ResponseReader {
    private(set) var status: Int?
    private(set) var finished = false
    /// The body as received (de-chunked), kept only up to 4 KiB, for error messages.
    private(set) var rawBody: [UInt8] = []
    private var headBuffer: [UInt8] = []
    private var chunked = false
    /// Chunked framing: bytes left in the current chunk, or nil while reading a size line.
    private var chunkLeft: Int?
    private var sizeLine: [UInt8] = []
    private var skipCRLF = 0
    private var line: [UInt8] = []

    mutating func feed(_ bytes: ArraySlice<UInt8>, onEvent: (String) -> Void) throws {
        var rest = bytes
        if status == nil {
            headBuffer += rest
            guard let end = headEnd(headBuffer) else { return }
            let head = String(decoding: headBuffer[..<end], as: UTF8.self)
            let lines = head.split(separator: "\r\n")
            guard let first = lines.first, let code = Int(first.split(separator: " ").dropFirst().first ?? "") else {
                throw StreamingHTTPClient.Failure(description: "bad response head: \(head.prefix(100))")
            }
            status = code
            chunked = lines.contains {
                $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked")
            }
            rest = headBuffer[(end + 4)...]
            headBuffer = []
        }
        if chunked { dechunk(rest, onEvent: onEvent) } else { body(rest, onEvent: onEvent) }
    }

    private func headEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    private mutating func dechunk(_ bytes: ArraySlice<UInt8>, onEvent: (String) -> Void) {
        var i = bytes.startIndex
        while i < bytes.endIndex && !finished {
            if skipCRLF > 0 {
                skipCRLF -= 1
                i += 1
                continue
            }
            if let left = chunkLeft {
                let take = min(left, bytes.endIndex - i)
                body(bytes[i..<(i + take)], onEvent: onEvent)
                i += take
                chunkLeft = left - take
                if chunkLeft == 0 {
                    chunkLeft = nil
                    skipCRLF = 2
                }
            } else {
                let b = bytes[i]
                i += 1
                if b == 10 {
                    let text = String(decoding: sizeLine, as: UTF8.self).split(separator: ";").first ?? ""
                    let size = Int(text.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16) ?? 0
                    sizeLine = []
                    if size == 0 { finished = true } else { chunkLeft = size }
                } else {
                    sizeLine.append(b)
                }
            }
        }
    }

    private mutating func body(_ bytes: ArraySlice<UInt8>, onEvent: (String) -> Void) {
        if rawBody.count < 4096 { rawBody += bytes.prefix(4096 - rawBody.count) }
        for b in bytes {
            if b == 10 {
                if line.last == 13 { line.removeLast() }
                let text = String(decoding: line, as: UTF8.self)
                line = []
                if text.hasPrefix("data:") {
                    let payload = text.dropFirst(5).trimmingCharacters(in: .whitespaces)
                    onEvent(payload)
                    if payload == "[DONE]" { finished = true }
                }
            } else {
                line.append(b)
            }
        }
    }
}
