import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Hostile and broken clients over the real socket: a list of named cases, each with the status
/// docs/protocol.md documents (or a close, where no response is possible), while a canary client
/// keeps chatting; then 1,000 connections at once, slow clients, and a client that leaves in the
/// middle of a stream. Reports the daemon's resident memory before, after and at its peak.
final class HostileClientTests: XCTestCase {
    static let config = """
        [server]
        max_body_bytes = "1MiB"
        max_tokens = 256
        idle_timeout_seconds = 2
        request_timeout_seconds = 3
        [store]
        kv_precision = "f32"
        """

    /// What a case expects: an HTTP status, or that the server closes without one.
    enum Expect: Equatable, CustomStringConvertible {
        case status(Int)
        case statusIn([Int])
        case closed
        var description: String {
            switch self {
            case .status(let s): return "\(s)"
            case .statusIn(let s): return s.map(String.init).joined(separator: "|")
            case .closed: return "close"
            }
        }
    }

    struct Case {
        var name: String
        var bytes: [UInt8]
        var expect: Expect
        /// Half-close after sending (the client says it has nothing more to send).
        var shutdownWrite = true
    }

    static func post(_ body: String, path: String = "/v1/chat/completions", extraHeaders: String = "") -> [UInt8] {
        Array("POST \(path) HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\(extraHeaders)\r\n\(body)".utf8)
    }

    static func raw(_ s: String) -> [UInt8] { Array(s.utf8) }

    static let hi = #"{"role":"user","content":"hi"}"#

    static var cases: [Case] {
        var c: [Case] = []
        func add(_ name: String, _ bytes: [UInt8], _ expect: Expect, shutdownWrite: Bool = true) {
            c.append(Case(name: name, bytes: bytes, expect: expect, shutdownWrite: shutdownWrite))
        }
        // Framing and HTTP syntax.
        add("empty connection", [], .closed)
        add("CRLF only", raw("\r\n\r\n\r\n"), .statusIn([408]))
        add("truncated request line", raw("POST /v1/chat/comp"), .statusIn([400]) )
        add("truncated headers", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Le"), .statusIn([400]))
        add("truncated body", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 100\r\n\r\n{\"messages\""), .statusIn([400]))
        add("HTTP/0.9 request", raw("GET /\r\n"), .statusIn([400]))
        add("unknown method", raw("BLAH /healthz HTTP/1.1\r\nHost: k\r\n\r\n"), .status(400))
        add("method not allowed", raw("PATCH /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\n\r\n"), .status(405))
        add("unknown path", raw("GET /etc/passwd HTTP/1.1\r\nHost: k\r\n\r\n"), .status(404))
        add("path traversal", raw("GET /v1/sessions/../../etc HTTP/1.1\r\nHost: k\r\n\r\n"), .statusIn([400, 404]))
        add("HTTP/2 preface", raw("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), .statusIn([400, 505]))
        add("negative Content-Length", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: -5\r\n\r\n"), .status(400))
        add("huge Content-Length", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 99999999999999999999\r\n\r\n"), .statusIn([400, 413]))
        add("duplicate Content-Length", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"), .status(400))
        add("Content-Length and chunked", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"), .status(400))
        add("bad chunk size", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"), .status(400))
        add("header without colon", raw("GET /healthz HTTP/1.1\r\nHost k\r\n\r\n"), .status(400))
        add("NUL in header", raw("GET /healthz HTTP/1.1\r\nHost: k\0x\r\n\r\n"), .status(400))
        add("space before colon", raw("GET /healthz HTTP/1.1\r\nHost : k\r\n\r\n"), .status(400))
        add("10,000 headers", raw("GET /healthz HTTP/1.1\r\n" + (0..<10_000).map { "X-\($0): y\r\n" }.joined() + "\r\n"), .status(431))
        add("64 KiB header value", raw("GET /healthz HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 65536) + "\r\n\r\n"), .status(431))
        add("100 KiB URL", raw("GET /" + String(repeating: "a", count: 102_400) + " HTTP/1.1\r\n\r\n"), .statusIn([400, 414, 431]))
        add("pipelined garbage after a valid request", raw("GET /healthz HTTP/1.1\r\nHost: k\r\n\r\nGARBAGE\r\n\r\n"), .status(200))
        // Bodies.
        add("body over the limit", raw("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 104857600\r\n\r\n"), .status(413))
        add("empty body", post(""), .status(400))
        add("not JSON", post("{not json"), .status(400))
        add("JSON null", post("null"), .status(400))
        add("invalid UTF-8", Array("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: 48\r\n\r\n".utf8) + Array(#"{"messages":[{"role":"user","content":""#.utf8) + [0xff, 0xfe, 0xc3] + Array("\"}]}".utf8), .status(400))
        add("10,000-deep nesting", post(String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)), .status(400))
        add("messages not an array", post(#"{"messages":"hi"}"#), .status(400))
        add("empty messages", post(#"{"messages":[]}"#), .status(400))
        add("content a number", post(#"{"messages":[{"role":"user","content":5}]}"#), .status(400))
        add("unknown role", post(#"{"messages":[{"role":"wizard","content":"hi"}]}"#), .status(400))
        add("negative max_tokens", post(#"{"messages":[\#(hi)],"max_tokens":-1}"#), .status(400))
        add("huge max_tokens", post(#"{"messages":[\#(hi)],"max_tokens":1e30}"#), .status(400))
        add("max_tokens over the limit", post(#"{"messages":[\#(hi)],"max_tokens":100000}"#), .status(400))
        add("temperature a string", post(#"{"messages":[\#(hi)],"temperature":"hot"}"#), .status(400))
        add("negative temperature", post(#"{"messages":[\#(hi)],"temperature":-1}"#), .status(400))
        add("five stop strings", post(#"{"messages":[\#(hi)],"stop":["a","b","c","d","e"]}"#), .status(400))
        add("session id too long", post(#"{"messages":[\#(hi)],"session_id":"\#(String(repeating: "x", count: 300))"}"#), .status(400))
        add("unknown fields are ignored", post(#"{"messages":[\#(hi)],"max_tokens":1,"temperature":0,"frobnicate":{"x":[1,2]},"n":1,"user":"u"}"#), .status(200))
        add("unknown session for GET", raw("GET /v1/sessions/nope HTTP/1.1\r\nHost: k\r\n\r\n"), .status(404))
        add("admin flush with a body", post(#"{"x":1}"#, path: "/v1/flush"), .statusIn([200, 400]))
        return c
    }

    func testHostileClientsGetDocumentedAnswersWhileOthersAreServed() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state", config: Self.config)
        defer { stop(daemon) }
        let pid = daemon.processIdentifier
        XCTAssertEqual(try chat(socket, [("user", "Warm up.")], session: "warm", maxTokens: 4).status, 200)
        let before = processMemoryKiB(pid)

        let canary = Canary(socket: socket)
        canary.start()

        var failures: [String] = []
        var results: [String: Int] = [:]
        let cases = Self.cases
        for c in cases {
            let got = sendRaw(socket, c.bytes, shutdownWrite: c.shutdownWrite, timeout: 10)
            let ok: Bool
            switch (c.expect, got) {
            case (.status(let s), .status(let g, _)): ok = s == g
            case (.statusIn(let s), .status(let g, _)): ok = s.contains(g)
            case (.closed, .closed): ok = true
            default: ok = false
            }
            results[got.description, default: 0] += 1
            if !ok { failures.append("\(c.name): expected \(c.expect), got \(got)") }
            if case .status(let g, _) = got, g >= 400, !got.hasJSONError {
                failures.append("\(c.name): \(g) without a JSON error body")
            }
            XCTAssertTrue(daemon.isRunning, "kvtierd died on \(c.name)")
            guard daemon.isRunning else { break }
            XCTAssertEqual(try request(socket, "GET", "/healthz").status, 200, "after \(c.name)")
        }
        XCTAssertEqual(failures, [])

        // 1,000 connections at once, each asking /healthz.
        let connections = 1000
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < 4096 {
            limit.rlim_cur = min(limit.rlim_max, 4096)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        var fds: [Int32] = []
        var refused = 0
        for _ in 0..<connections {
            if let fd = try? connectUnix(socket) { fds.append(fd) } else { refused += 1 }
        }
        let get = Self.raw("GET /healthz HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
        for fd in fds { _ = get.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
        var answered = 0, other: [String: Int] = [:]
        for fd in fds {
            setReadTimeout(fd, seconds: 30)
            let text = String(decoding: readAll(fd), as: UTF8.self)
            close(fd)
            if text.hasPrefix("HTTP/1.1 200") { answered += 1 } else { other[String(text.prefix(12)), default: 0] += 1 }
        }
        XCTAssertEqual(answered + refused + other.values.reduce(0, +), connections)
        XCTAssertEqual(answered, connections, "every one of \(connections) connections is answered: refused \(refused), other \(other)")

        // Slow clients: one byte per second is cut off by the request deadline (408).
        let slowCount = ReliabilityScale.pick(quick: 4, full: 100)
        let slowStart = Date()
        let slow = (0..<slowCount).compactMap { _ in try? connectUnix(socket) }
        let request = Self.raw("GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n")
        var slowStatuses: [String: Int] = [:]
        var sentBytes = 0
        var open = Set(slow)
        while !open.isEmpty && sentBytes < request.count && Date().timeIntervalSince(slowStart) < 20 {
            for fd in open {
                let ok = [request[sentBytes]].withUnsafeBytes { send(fd, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) } == 1
                if !ok { open.remove(fd) }
            }
            sentBytes += 1
            sleep(1)
        }
        for fd in slow {
            setReadTimeout(fd, seconds: 10)
            let text = String(decoding: readAll(fd), as: UTF8.self)
            close(fd)
            slowStatuses[String(text.prefix(12)), default: 0] += 1
        }
        let slowSeconds = Date().timeIntervalSince(slowStart)
        XCTAssertEqual(slowStatuses["HTTP/1.1 408"], slowCount, "slow clients get 408: \(slowStatuses)")

        // A client that leaves in the middle of a stream: the turn is cancelled, and the session
        // then continues exactly as a recomputation of its history would.
        let history: [(String, String)] = [("user", "Tell me a long story about a lighthouse keeper.")]
        let leaver = try connectUnix(socket)
        let body = try JSONSerialization.data(withJSONObject: [
            "messages": [["role": "user", "content": history[0].1]], "max_tokens": 200, "temperature": 0, "stream": true, "session_id": "leaver",
        ])
        let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        let bytes = Array(head.utf8) + Array(body)
        _ = bytes.withUnsafeBytes { write(leaver, $0.baseAddress, $0.count) }
        var first = [UInt8](repeating: 0, count: 4096)
        setReadTimeout(leaver, seconds: 30)
        _ = first.withUnsafeMutableBytes { read(leaver, $0.baseAddress, $0.count) }
        close(leaver)
        let metricsDeadline = Date().addingTimeInterval(30)
        var cancelled = 0.0
        while Date() < metricsDeadline {
            cancelled = metricValue(try rawRequest(socket, "GET", "/metrics").1, "kvtier_turns_total", labels: "cancelled")
            if cancelled >= 1 { break }
            usleep(100_000)
        }
        XCTAssertGreaterThanOrEqual(cancelled, 1, "the abandoned turn is cancelled")
        let next = history + [("user", "Now tell me something short.")]
        let continued = try chat(socket, next, session: "leaver", maxTokens: 12)
        let fresh = try chat(socket, next, session: "leaver-recomputed", maxTokens: 12)
        XCTAssertEqual(continued.status, 200)
        XCTAssertEqual(replyText(continued.json), replyText(fresh.json), "the session stays consistent after a cancelled turn")

        canary.stop()
        let after = processMemoryKiB(pid)
        XCTAssertTrue(daemon.isRunning)
        XCTAssertEqual(canary.failures, 0, "the canary chat kept being served: \(canary.lastError ?? "")")
        XCTAssertGreaterThan(canary.successes, 0)
        ReliabilityScale.report("hostile-clients", [
            "cases": cases.count, "case_failures": failures.count, "answers": results.map { "\($0.key):\($0.value)" }.sorted().joined(separator: ","),
            "connections_at_once": connections, "connections_answered": answered, "connections_refused": refused,
            "slow_clients": slowCount, "slow_clients_408": slowStatuses["HTTP/1.1 408"] ?? 0, "slow_seconds": slowSeconds,
            "canary_turns": canary.successes, "canary_failures": canary.failures,
            "rss_kib_before": before.rss, "rss_kib_after": after.rss, "rss_kib_peak": after.peak,
        ])
    }
}

/// What a raw exchange ended with.
enum RawOutcome: CustomStringConvertible {
    case status(Int, body: String)
    case closed
    case timedOut

    var description: String {
        switch self {
        case .status(let s, _): return "\(s)"
        case .closed: return "close"
        case .timedOut: return "timeout"
        }
    }

    var hasJSONError: Bool {
        guard case .status(_, let body) = self else { return false }
        let text = body.split(separator: "\r\n\r\n", maxSplits: 1).dropFirst().first.map(String.init) ?? body
        let json = text.firstIndex(of: "{").map { String(text[$0...]) } ?? ""
        let object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any]
        return (object?["error"] as? [String: Any])?["message"] is String
    }
}

/// Sends `bytes` on a new connection and reads what comes back (the first response's status).
func sendRaw(_ socket: String, _ bytes: [UInt8], shutdownWrite: Bool, timeout: Int) -> RawOutcome {
    guard let fd = try? connectUnix(socket) else { return .closed }
    defer { close(fd) }
    if !bytes.isEmpty {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
    if shutdownWrite { shutdown(fd, Int32(SHUT_WR)) }
    setReadTimeout(fd, seconds: timeout)
    let started = Date()
    let response = readAll(fd)
    if response.isEmpty { return Date().timeIntervalSince(started) >= Double(timeout) - 0.5 ? .timedOut : .closed }
    let text = String(decoding: response, as: UTF8.self)
    guard let status = Int(text.split(separator: " ").dropFirst().first ?? "") else { return .closed }
    return .status(status, body: text)
}

func setReadTimeout(_ fd: Int32, seconds: Int) {
    var tv = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
}

/// A client that keeps chatting (short turns) on its own thread and counts failures.
final class Canary: @unchecked Sendable {
    let socket: String
    private let lock = NSLock()
    private var running = true
    private var ok = 0
    private var bad = 0
    private var error: String?
    private let done = DispatchSemaphore(value: 0)

    init(socket: String) { self.socket = socket }

    var successes: Int { lock.withLock { ok } }
    var failures: Int { lock.withLock { bad } }
    var lastError: String? { lock.withLock { error } }

    func start() {
        Thread {
            var n = 0
            while self.lock.withLock({ self.running }) {
                n += 1
                let turn = streamChat(self.socket, messages: [("user", "Count to \(n % 5 + 1).")], session: "canary", maxTokens: 4)
                self.lock.withLock {
                    if turn.completed { self.ok += 1 } else {
                        self.bad += 1
                        self.error = "status \(turn.status) \(turn.error ?? "")"
                    }
                }
                usleep(200_000)
            }
            self.done.signal()
        }.start()
    }

    func stop() {
        lock.withLock { running = false }
        done.wait()
    }
}
