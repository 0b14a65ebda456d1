import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Limits and bad input over the real socket: each gets its documented status and an
/// OpenAI-style error, and the daemon keeps serving everyone else.
final class DaemonLimitsTests: XCTestCase {
    private func errorMessage(_ json: [String: Any]) -> String {
        (json["error"] as? [String: Any])?["message"] as? String ?? ""
    }

    func testBadRequestsGetClearErrors() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(
            socket: socket, state: dir + "/state", config: "[server]\nmax_messages = 3\nmax_tokens = 64\nmax_body_bytes = 4096\n")
        defer { stop(daemon) }
        func post(_ body: String) throws -> (status: Int, json: [String: Any]) { try request(socket, "POST", "/v1/chat/completions", body: body) }

        let many = try chat(socket, Array(repeating: ("user", "hi"), count: 4), session: "m")
        XCTAssertEqual(many.status, 400)
        XCTAssertTrue(errorMessage(many.json).contains("max_messages"), errorMessage(many.json))
        XCTAssertEqual(try chat(socket, [("user", "hi")], session: "m", maxTokens: 65).status, 400)
        XCTAssertEqual(try chat(socket, [("user", "hi")], session: "m", maxTokens: -1).status, 400)
        XCTAssertEqual(try post(#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e30}"#).status, 400)
        XCTAssertEqual(try post(#"{"messages":[{"role":"wizard","content":"hi"}]}"#).status, 400)
        XCTAssertEqual(try post(#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#).status, 400)
        XCTAssertEqual(try post(#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#).status, 400)
        let wrongType = try post(#"{"messages":[{"role":"user","content":5}]}"#)
        XCTAssertEqual(wrongType.status, 400)
        XCTAssertTrue(errorMessage(wrongType.json).contains("messages"), errorMessage(wrongType.json))
        // Unknown fields are ignored, as OpenAI clients send many.
        XCTAssertEqual(
            try post(#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"presence_penalty":0,"n":1,"frobnicate":{}}"#).status, 200)

        // Invalid UTF-8 in the body.
        let invalidBody = Array(#"{"messages":[{"role":"user","content":""#.utf8) + [0xff, 0xfe] + Array(#""}]}"#.utf8)
        let invalidHead = "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: \(invalidBody.count)\r\n\r\n"
        let invalid = try exchange(socket, Array(invalidHead.utf8) + invalidBody)
        XCTAssertTrue(invalid.head.hasPrefix("HTTP/1.1 400"), invalid.head)

        // A body over the limit: 413, and the connection is closed.
        let big = try post("{\"messages\":[{\"role\":\"user\",\"content\":\"" + String(repeating: "x", count: 5000) + "\"}]}")
        XCTAssertEqual(big.status, 413)
        // 10,000 headers: the parser refuses them and only that connection ends.
        var flood = "GET /healthz HTTP/1.1\r\nHost: k\r\n"
        for i in 0..<10_000 { flood += "X-H\(i): v\r\n" }
        flood += "\r\n"
        let fd = try connectUnix(socket)
        _ = Array(flood.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let answer = String(decoding: readAll(fd), as: UTF8.self)
        close(fd)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 431") || answer.hasPrefix("HTTP/1.1 400"), "10,000 headers are refused: \(answer.prefix(80))")
        // Malformed HTTP closes only that connection.
        let garbage = try connectUnix(socket)
        _ = Array("BLAH\r\n\r\n".utf8).withUnsafeBytes { write(garbage, $0.baseAddress, $0.count) }
        let refused = String(decoding: readAll(garbage), as: UTF8.self)
        close(garbage)
        XCTAssertTrue(refused.hasPrefix("HTTP/1.1 400") && refused.contains(#""type":"invalid_request_error""#), refused)
        XCTAssertEqual(try request(socket, "GET", "/healthz").status, 200, "the daemon keeps serving")
    }

    func testFullQueueAnswers429WithRetryAfter() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state", config: "[server]\nmax_queue = 1\n[engine]\nmax_batch = 1\n")
        defer { stop(daemon) }
        let body = #"{"messages":[{"role":"user","content":"Write a long story about a cat."}],"max_tokens":48,"temperature":0}"#
        let request = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
        let heads = LockedList()
        // Real threads: concurrentPerform runs only as many at once as there are cores.
        let group = DispatchGroup()
        for _ in 0..<5 {
            group.enter()
            Thread {
                if let r = try? exchange(socket, request) { heads.append(r.head) }
                group.leave()
            }.start()
        }
        group.wait()
        let all = heads.items
        XCTAssertEqual(all.count, 5)
        let limited = all.filter { $0.hasPrefix("HTTP/1.1 429") }
        XCTAssertFalse(limited.isEmpty, "with one turn running and one waiting, more are refused: \(all)")
        XCTAssertTrue(limited.allSatisfy { $0.lowercased().contains("retry-after: ") }, "\(limited)")
        XCTAssertTrue(all.contains { $0.hasPrefix("HTTP/1.1 200") })
    }

    /// A DELETE of a session whose turn is running waits for that turn; meanwhile health checks,
    /// metrics and other users' turns are answered (they are not queued behind the DELETE).
    func testHealthAndOtherTurnsAreAnsweredWhileADeleteWaitsForARunningTurn() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        XCTAssertEqual(try chat(socket, [("user", "hello")], session: "busy", maxTokens: 2).status, 200)
        // A long turn of "busy" (ignore_eos: it runs its whole max_tokens).
        let long = #"{"messages":[{"role":"user","content":"hello"},{"role":"assistant","content":"hi"},{"role":"user","content":"Tell me a long story."}],"max_tokens":400,"ignore_eos":true,"temperature":0,"session_id":"busy"}"#
        let events = LockedList()
        let done = DispatchGroup()
        done.enter()
        let longRequest = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: \(long.utf8.count)\r\n\r\n\(long)".utf8)
        Thread {
            let r = try? exchange(socket, longRequest)
            events.append("turn done \(r?.body.contains("\"completion_tokens\":400") == true ? "whole" : "cut: \(r?.body.prefix(200) ?? "")")")
            done.leave()
        }.start()
        // Wait until the turn is running, then ask to delete its session.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, let h = try? request(socket, "GET", "/healthz"), (h.json["running"] as? Int ?? 0) == 0 { usleep(20_000) }
        done.enter()
        let deleteRequest = Array("DELETE /v1/sessions/busy HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n".utf8)
        Thread {
            let r = try? exchange(socket, deleteRequest)
            events.append("delete \(r?.head.split(separator: " ").dropFirst().first ?? "none")")
            done.leave()
        }.start()
        usleep(200_000)
        let health = try request(socket, "GET", "/healthz")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(try rawRequest(socket, "GET", "/metrics").0, 200)
        XCTAssertEqual(try chat(socket, [("user", "a quick other chat")], session: "other", maxTokens: 3).status, 200)
        events.append("others answered")
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
        let order = events.items
        XCTAssertEqual(order.first, "others answered", "health, metrics and another chat answered before the long turn and the DELETE: \(order)")
        XCTAssertTrue(order.contains("delete 200"), "\(order)")
        XCTAssertTrue(order.contains("turn done whole"), "the DELETE waited for the turn, which generated all its tokens: \(order)")
    }

    func testIdleAndSlowClientsAreCutOffWhileOthersAreServed() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(
            socket: socket, state: dir + "/state", config: "[server]\nidle_timeout_seconds = 1\nrequest_timeout_seconds = 1.5\n")
        defer { stop(daemon) }

        // Idle: connected, sends nothing, closed by the daemon.
        let idle = try connectUnix(socket)
        let start = Date()
        XCTAssertEqual(readAll(idle).count, 0)
        close(idle)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)

        // Slow: one byte every 0.2 s never completes a request; it gets 408 while another client is served.
        let slow = try connectUnix(socket)
        let text = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 100\r\n\r\n{\"messages\":".utf8)
        let sender = Thread {
            for b in text {
                var byte = b
                if write(slow, &byte, 1) != 1 { return }
                usleep(200_000)
            }
        }
        sender.start()
        usleep(300_000)
        XCTAssertEqual(try request(socket, "GET", "/healthz").status, 200, "others are served meanwhile")
        let answer = String(decoding: readAll(slow), as: UTF8.self)
        close(slow)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 408"), answer)
    }

    /// `server.max_connections`: with that many connections held open (idle), the next one is
    /// answered 503 with Retry-After and closed, without waiting for a request; a closed
    /// connection frees its place.
    func testConnectionsBeyondTheLimitAreRefusedClearly() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state", config: "[server]\nmax_connections = 3\n")
        defer { stop(daemon) }
        XCTAssertEqual(try request(socket, "GET", "/healthz").status, 200)
        var held = try (0..<3).map { _ in try connectUnix(socket) }
        defer { for fd in held { close(fd) } }
        usleep(300_000)  // accepted and counted
        guard case .status(let status, let text) = sendRaw(socket, [], shutdownWrite: false, timeout: 10) else {
            return XCTFail("no answer to a connection over the limit")
        }
        XCTAssertEqual(status, 503)
        XCTAssertTrue(text.contains("server.max_connections = 3"), text)
        XCTAssertTrue(text.contains("Retry-After: 1"), text)
        close(held.removeFirst())
        usleep(300_000)
        XCTAssertEqual(try request(socket, "GET", "/healthz").status, 200, "a closed connection freed its place")
        XCTAssertTrue(daemon.isRunning)
    }

    func testSIGHUPReloadsLimits() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let log = dir + "/log"
        let daemon = try startDaemon(socket: socket, state: dir + "/state", config: "[server]\nmax_tokens = 64\n", log: log)
        defer { stop(daemon) }
        XCTAssertEqual(try chat(socket, [("user", "hi")], session: "h", maxTokens: 12).status, 200)
        try Data("[server]\nmax_tokens = 8\n".utf8).write(to: URL(fileURLWithPath: dir + "/kvtierd.toml"))
        kill(daemon.processIdentifier, SIGHUP)
        var status = 0
        for _ in 0..<50 {
            status = try chat(socket, [("user", "hi")], session: "h", maxTokens: 12).status
            if status == 400 { break }
            usleep(100_000)
        }
        XCTAssertEqual(status, 400, "max_tokens 12 is over the reloaded limit of 8")
        // A broken file changes nothing and the daemon keeps running.
        try Data("[server]\nmax_tokens = \"lots\"\n".utf8).write(to: URL(fileURLWithPath: dir + "/kvtierd.toml"))
        kill(daemon.processIdentifier, SIGHUP)
        usleep(300_000)
        XCTAssertTrue(daemon.isRunning)
        XCTAssertEqual(try chat(socket, [("user", "hi")], session: "h", maxTokens: 8).status, 200)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        XCTAssertTrue(text.contains("reloaded"), text)
        XCTAssertTrue(text.contains("not reloaded"), text)
        // One info line per request: method, path, status, peer (uid) and duration.
        let lines = text.split(separator: "\n").filter { $0.contains("request method=POST") }
        XCTAssertTrue(
            lines.contains {
                $0.contains("path=/v1/chat/completions") && $0.contains("status=400") && $0.contains("peer=\(getuid())")
                    && $0.contains(" ms=")
            }, text)
    }
}

/// A list several threads append to.
final class LockedList: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func append(_ s: String) { lock.withLock { list.append(s) } }
    var items: [String] { lock.withLock { list } }
}
