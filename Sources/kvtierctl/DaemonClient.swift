import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Unsafe-pointer fence: the socket calls of the admin client.

/// A small blocking HTTP/1.1 client for kvtierd's Unix socket (one request per connection).
struct DaemonClient {
    let socketPath: String

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The socket: `--socket`, then `KVTIER_SOCKET`, then `run/kvtierd.sock` (what `make run` uses).
    static func socketPath(flag: String?) -> String {
        if let flag, !flag.isEmpty { return flag }
        if let env = ProcessInfo.processInfo.environment["KVTIER_SOCKET"], !env.isEmpty { return env }
        return "run/kvtierd.sock"
    }

    /// Sends a request; returns the status and the body.
    func send(_ method: String, _ path: String, body: [UInt8]? = nil) throws -> (status: Int, body: Data) {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "cannot create a socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw Failure(description: "socket path is too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in pathBytes.enumerated() { dst[i] = b }
        }
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            throw Failure(description: "kvtierd is not running on \(socketPath) (\(String(cString: strerror(errno)))); start it with `kvtierd --socket \(socketPath)` or pass --socket")
        }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        let request = Array(head.utf8) + (body ?? [])
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { write(fd, $0.baseAddress! + sent, $0.count - sent) }
            guard n > 0 else { throw Failure(description: "lost the connection to kvtierd while sending") }
            sent += n
        }
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

    private func findHeaderEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    /// Sends a request and decodes a JSON object, turning API errors into a message.
    func json(_ method: String, _ path: String, body: [String: Any]? = nil) throws -> Any {
        let payload = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) }
        let (status, data) = try send(method, path, body: payload)
        let value = try? JSONSerialization.jsonObject(with: data)
        guard (200..<300).contains(status) else {
            let message = ((value as? [String: Any])?["error"] as? [String: Any])?["message"] as? String ?? "HTTP \(status)"
            throw Failure(description: message)
        }
        guard let value else { throw Failure(description: "kvtierd sent a body that is not JSON") }
        return value
    }
}
