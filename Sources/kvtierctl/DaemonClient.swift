import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Unsafe-pointer fence: the socket calls of the admin client.

/// A small blocking HTTP/1.1 client for kvtierd's Unix socket (one request per connection).
struct DaemonClient {
    let socketPath: String

    struct Failure: Error, CustomStringConvertible {
        /// What went wrong, as the exit status `kvtierctl` ends with (docs/operations.md).
        enum Kind: Int32 {
            case failed = 1
            case notRunning = 3
            case notFound = 4
            case denied = 5
            case rejected = 6
            case serverError = 7
        }
        let description: String
        var kind = Kind.failed

        /// The kind an HTTP error status stands for.
        static func kind(status: Int) -> Kind {
            switch status {
            case 404: return .notFound
            case 401, 403: return .denied
            case 400..<500: return .rejected
            default: return .serverError
            }
        }
    }

    /// The socket: `--socket`, then `KVTIER_SOCKET`, then `run/kvtierd.sock` (what `make run` uses).
    static func socketPath(flag: String?) -> String {
        if let flag, !flag.isEmpty { return flag }
        if let env = ProcessInfo.processInfo.environment["KVTIER_SOCKET"], !env.isEmpty { return env }
        return "run/kvtierd.sock"
    }

    /// Sends a request; returns the status and the body.
    func send(_ method: String, _ path: String, body: [UInt8]? = nil) throws -> (status: Int, body: Data) {
        let fd = try connectSocket()
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        try writeAll(fd, Array(head.utf8) + (body ?? []))
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        guard let split = findHeaderEnd(response),
            let statusLine = String(decoding: response[..<split], as: UTF8.self).split(separator: "\r\n").first,
            let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "")
        else { throw Failure(description: "kvtierd sent a malformed response") }
        return (status, Data(response[(split + 4)...]))
    }

    /// Connects to the daemon's socket, or explains that it is not running.
    private func connectSocket() throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "cannot create a socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw Failure(description: "socket path is too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in pathBytes.enumerated() { dst[i] = b }
        }
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            let reason = String(cString: strerror(errno))
            if errno == EACCES {
                throw Failure(
                    description: "permission denied on \(socketPath): the socket admits its owner and group (server.socket_mode, server.socket_group)",
                    kind: .denied)
            }
            throw Failure(
                description: "kvtierd is not running on \(socketPath) (\(reason)); start it with `kvtierd --socket \(socketPath)` or pass --socket",
                kind: .notRunning)
        }
        return fd
    }

    /// Sends a request whose answer is a stream of server-sent events; calls `onEvent` with each
    /// event's data as it arrives (chunked transfer decoded on the fly). Returns the status.
    func stream(_ method: String, _ path: String, body: [UInt8], onEvent: (String) -> Void) throws -> (status: Int, body: Data) {
        let fd = try connectSocket()
        defer { close(fd) }
        let head = "\(method) \(path) HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        try writeAll(fd, Array(head.utf8) + body)
        var pending: [UInt8] = []
        var status = 0
        var chunked = false
        var headerDone = false
        var payload: [UInt8] = []  // de-chunked body
        var events = ""
        var buffer = [UInt8](repeating: 0, count: 16384)
        func drainEvents() {
            while let range = events.range(of: "\n\n") {
                let event = String(events[..<range.lowerBound])
                events.removeSubrange(..<range.upperBound)
                if event.hasPrefix("data: ") { onEvent(String(event.dropFirst(6))) }
            }
        }
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            pending += buffer[0..<n]
            if !headerDone {
                guard let end = findHeaderEnd(pending) else { continue }
                let headText = String(decoding: pending[..<end], as: UTF8.self)
                status = Int(headText.split(separator: " ").dropFirst().first ?? "") ?? 0
                chunked = headText.lowercased().contains("transfer-encoding: chunked")
                pending.removeFirst(end + 4)
                headerDone = true
            }
            if chunked {
                // Each chunk: hex size CRLF, data, CRLF.
                while let lineEnd = indexOfCRLF(pending), let size = Int(String(decoding: pending[..<lineEnd], as: UTF8.self), radix: 16),
                    pending.count >= lineEnd + 2 + size + 2
                {
                    let data = Array(pending[(lineEnd + 2)..<(lineEnd + 2 + size)])
                    pending.removeFirst(lineEnd + 2 + size + 2)
                    payload += data
                    if status == 200 {
                        events += String(decoding: data, as: UTF8.self)
                        drainEvents()
                    }
                }
            } else {
                payload += pending
                pending.removeAll()
            }
        }
        return (status, Data(payload))
    }

    private func indexOfCRLF(_ b: [UInt8]) -> Int? {
        guard b.count >= 2 else { return nil }
        for i in 0..<(b.count - 1) where b[i] == 13 && b[i + 1] == 10 { return i }
        return nil
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + sent, $0.count - sent) }
            guard n > 0 else { throw Failure(description: "lost the connection to kvtierd while sending") }
            sent += n
        }
    }

    private func findHeaderEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    /// Sends a request whose answer is text (GET /metrics).
    func text(_ path: String) throws -> String {
        let (status, data) = try send("GET", path)
        guard (200..<300).contains(status) else { throw Failure(description: "HTTP \(status) on \(path)", kind: Failure.kind(status: status)) }
        return String(decoding: data, as: UTF8.self)
    }

    /// Sends a request and decodes a JSON object, turning API errors into a message.
    func json(_ method: String, _ path: String, body: [String: Any]? = nil) throws -> Any {
        let payload = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) }
        let (status, data) = try send(method, path, body: payload)
        let value = try? JSONSerialization.jsonObject(with: data)
        guard (200..<300).contains(status) else {
            let message = ((value as? [String: Any])?["error"] as? [String: Any])?["message"] as? String ?? "HTTP \(status)"
            throw Failure(description: message, kind: Failure.kind(status: status))
        }
        guard let value else { throw Failure(description: "kvtierd sent a body that is not JSON") }
        return value
    }
}
