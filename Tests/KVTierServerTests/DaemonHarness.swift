import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The real `kvtierd` binary on a temporary Unix socket and state directory, and a minimal
/// HTTP/1.1 client over Unix sockets, for the daemon tests.
let daemonPackageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
let daemonTestModel = daemonPackageRoot.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path

extension XCTestCase {
    /// kvtierd from the same build as this test bundle.
    func daemonBinary() throws -> String {
        var dir = Bundle.main.bundleURL
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("kvtierd").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        for c in [".build/debug/kvtierd", ".build/release/kvtierd"] {
            let p = daemonPackageRoot.appendingPathComponent(c).path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        throw XCTSkip("kvtierd binary not built")
    }

    /// Starts kvtierd and waits until it answers /healthz. `config` is written to a TOML file
    /// next to the socket; `log` receives its stderr; `model` replaces the real model's path.
    func startDaemon(socket: String, state: String, config: String? = nil, log: String? = nil, model: String? = nil) throws -> Process {
        guard FileManager.default.fileExists(atPath: daemonTestModel) else {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("model missing; `make setup` fetches it") }
            throw XCTSkip("model not found")
        }
        try FileManager.default.createDirectory(atPath: (socket as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try daemonBinary())
        var args = ["--socket", socket, "--state-dir", state, "--model", model ?? daemonTestModel, "--threads", "2"]
        if let config {
            let file = (socket as NSString).deletingLastPathComponent + "/kvtierd.toml"
            try Data(config.utf8).write(to: URL(fileURLWithPath: file))
            args += ["--config", file]
        }
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        if let log {
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            p.standardError = FileHandle(forWritingAtPath: log)
        } else {
            p.standardError = FileHandle.nullDevice
        }
        try p.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && p.isRunning {
            if (try? request(socket, "GET", "/healthz"))?.status == 200 { return p }
            usleep(100_000)
        }
        terminate(p)
        XCTFail("kvtierd did not answer on \(socket)")
        return p
    }

    func stop(_ p: Process) {
        terminate(p)
    }

    /// One request per connection; the status and the body parsed as a JSON object.
    func request(_ socketPath: String, _ method: String, _ path: String, body: String? = nil) throws -> (status: Int, json: [String: Any]) {
        let (status, text) = try rawRequest(socketPath, method, path, body: body)
        let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
        return (status, json)
    }

    /// Status and body text (the body raw: a chunked response keeps its chunk-size lines).
    func rawRequest(_ socketPath: String, _ method: String, _ path: String, body: String? = nil) throws -> (Int, String) {
        let payload = body.map { Array($0.utf8) } ?? []
        var text = "\(method) \(path) HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\n"
        if body != nil { text += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n" }
        text += "\r\n"
        let (head, rest) = try exchange(socketPath, Array(text.utf8) + payload)
        guard let status = Int(head.split(separator: " ").dropFirst().first ?? "") else { throw POSIXError(.EPROTO) }
        return (status, rest)
    }

    /// Runs kvtierctl from the same build; returns exit status and stdout+stderr.
    func kvtierctl(_ args: [String], input: String? = nil) throws -> (Int32, String) {
        try runProcess(try daemonBinary().replacingOccurrences(of: "/kvtierd", with: "/kvtierctl"), args, input: input)
    }

    func chat(_ socket: String, _ messages: [(String, String)], session: String?, maxTokens: Int = 12) throws -> (status: Int, json: [String: Any]) {
        var body: [String: Any] = ["messages": messages.map { ["role": $0.0, "content": $0.1] }, "max_tokens": maxTokens, "temperature": 0]
        if let session { body["session_id"] = session }
        let data = try JSONSerialization.data(withJSONObject: body)
        return try request(socket, "POST", "/v1/chat/completions", body: String(decoding: data, as: UTF8.self))
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it; returns the
/// response head and body.
func exchange(_ socketPath: String, _ bytes: [UInt8]) throws -> (head: String, body: String) {
    let fd = try connectUnix(socketPath)
    defer { close(fd) }
    // MSG_NOSIGNAL: kvtierd may refuse a connection (429, 503) and close it before the request is
    // written; that must be an EPIPE here, not a SIGPIPE that kills the whole test process.
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    let s = String(decoding: readAll(fd), as: UTF8.self)
    guard let split = s.range(of: "\r\n\r\n") else { throw POSIXError(.EPROTO) }
    return (String(s[..<split.lowerBound]), String(s[split.upperBound...]))
}

func connectUnix(_ socketPath: String) throws -> Int32 {
    let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { dst in
        for (i, b) in socketPath.utf8.prefix(dst.count - 1).enumerated() { dst[i] = b }
    }
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard ok == 0 else {
        close(fd)
        throw POSIXError(.ECONNREFUSED)
    }
    return fd
}

func readAll(_ fd: Int32) -> [UInt8] {
    var response: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        response += buf[0..<n]
    }
    return response
}
