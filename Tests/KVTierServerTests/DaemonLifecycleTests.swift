import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A user's view of the daemon's life: curl from a shell, metrics and `kvtierctl top`, a client
/// that leaves mid-turn, and SIGTERM in the middle of a turn.
final class DaemonLifecycleTests: XCTestCase {
    func testCurlShellChat() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        let script = daemonPackageRoot.appendingPathComponent("Tests/KVTierServerTests/Scripts/curl-chat.sh").path
        let (status, out) = try runProcess("/bin/bash", [script, socket])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.hasSuffix("ok\n"), out)
    }

    /// `log.format = "json"`: every line kvtierd writes is one JSON object; the serving line
    /// carries the build and the request line the method, path and status as metadata.
    func testJSONLogFormat() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let log = dir + "/kvtierd.log"
        let daemon = try startDaemon(
            socket: socket, state: dir + "/state", config: "[log]\nformat = \"json\"\n", log: log)
        XCTAssertEqual(try rawRequest(socket, "GET", "/healthz").0, 200)
        stop(daemon)
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        XCTAssertGreaterThan(lines.count, 2)
        var objects: [[String: Any]] = []
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            XCTAssertNotNil(object, "not a JSON object: \(line)")
            if let object { objects.append(object) }
        }
        let serving = objects.first { $0["message"] as? String == "serving" }
        XCTAssertEqual(serving?["level"] as? String, "info")
        XCTAssertEqual(serving?["label"] as? String, "kvtierd")
        XCTAssertNotNil((serving?["metadata"] as? [String: Any])?["version"], "\(serving ?? [:])")
        let request = objects.first { ($0["metadata"] as? [String: Any])?["path"] as? String == "/healthz" }
        XCTAssertEqual((request?["metadata"] as? [String: Any])?["status"] as? String, "200", "\(objects)")
        XCTAssertNotNil(objects.first { $0["message"] as? String == "stopped" })
    }

    func testMetricsAndTop() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        XCTAssertEqual(try chat(socket, [("user", "Hello there!")], session: "m").status, 200)
        let (status, text) = try rawRequest(socket, "GET", "/metrics")
        XCTAssertEqual(status, 200)
        let expected = [
            "kvtier_ttft_seconds_count 1", "kvtier_queue_depth 0", #"kvtier_tier_used_bytes{tier="hbm"}"#,
            #"kvtier_tier_capacity_bytes{tier="disk"}"#, #"kvtier_http_responses_total{status="200"}"#,
            "kvtier_load_stall_seconds_bucket", "kvtier_save_lag_seconds_count 1", "kvtier_tokens_recomputed_total",
            "kvtier_tokens_adopted_total 0", "kvtier_blocks_shared_on_save_total 0",
        ]
        for line in expected {
            XCTAssertTrue(text.contains(line), "missing \(line) in:\n\(text)")
        }
        // Every family has a # HELP line right before its # TYPE line.
        let lines = text.split(separator: "\n")
        for (i, line) in lines.enumerated() where line.hasPrefix("# TYPE ") {
            let name = line.dropFirst(7).prefix { $0 != " " }
            XCTAssertTrue(i > 0 && lines[i - 1].hasPrefix("# HELP \(name) "), "no # HELP for \(name)")
        }
        // The serving build, as the binaries' --version print it: "0.2.0 (d03999a)".
        let (vrc, version) = try kvtierctl(["--version"])
        XCTAssertEqual(vrc, 0)
        let parts = version.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
        XCTAssertEqual(parts.count, 2, version)
        if parts.count == 2 {
            let git = parts[1].dropFirst().dropLast()
            XCTAssertTrue(text.contains(#"kvtier_build_info{version="\#(parts[0])",git="\#(git)"} 1"#), text)
        }
        let (rc, metrics) = try kvtierctl(["metrics", "--socket", socket])
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(metrics.contains("kvtier_ttft_seconds_bucket"))
        let (rc2, top) = try kvtierctl(["top", "--iterations", "2", "--interval", "0.2", "--socket", socket])
        XCTAssertEqual(rc2, 0, top)
        XCTAssertTrue(top.contains("turns 1") && top.contains("TTFT p50"), top)
        XCTAssertTrue(top.components(separatedBy: "\n").contains { $0.hasPrefix("dram ") }, top)
        let (rc3, json) = try kvtierctl(["top", "--json", "--iterations", "2", "--interval", "0.1", "--socket", socket])
        XCTAssertEqual(rc3, 0)
        // One compact JSON object per line (JSON Lines), one line per refresh.
        let objects = json.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(objects.count, 2, json)
        let snapshot = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data((objects.first ?? "").utf8)) as? [String: Any])
        XCTAssertEqual(snapshot["turns"] as? Double, 1)
        XCTAssertEqual((snapshot["tiers"] as? [Any])?.count, 3)
        // Exit statuses say what went wrong.
        XCTAssertEqual(try kvtierctl(["session", "nope", "--socket", socket]).0, 4)
        XCTAssertEqual(try kvtierctl(["status", "--socket", dir + "/none.sock"]).0, 3)
    }

    private static let story = "Write a long, detailed story about a dragon who learns to fly, with many chapters."

    /// Opens a streaming chat and returns the connection once its first text event is in.
    private func startStream(_ socket: String, session: String, maxTokens: Int) throws -> (
        fd: Int32, received: String
    ) {
        let body =
            #"{"messages":[{"role":"user","content":"\#(Self.story)"}],"#
            + #""max_tokens":\#(maxTokens),"temperature":0,"stream":true,"session_id":"\#(session)"}"#
        let request =
            "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
        let fd = try connectUnix(socket)
        _ = Array(request.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var received = ""
        var buf = [UInt8](repeating: 0, count: 4096)
        while !received.contains("\"content\"") {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            received += String(decoding: buf[0..<n], as: UTF8.self)
        }
        return (fd, received)
    }

    func testClientLeavingMidTurnCancelsIt() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        let (fd, first) = try startStream(socket, session: "gone", maxTokens: 400)
        XCTAssertTrue(first.contains("\"content\""), first)
        close(fd)
        // Turns run one at a time: this one finishes after the abandoned one.
        XCTAssertEqual(try chat(socket, [("user", "hi")], session: "next", maxTokens: 2).status, 200)
        let metrics = try rawRequest(socket, "GET", "/metrics").1
        XCTAssertTrue(metrics.contains(#"kvtier_turns_total{finish_reason="cancelled"} 1"#), metrics)
        let detail = try request(socket, "GET", "/v1/sessions/gone").json
        let tokens = try XCTUnwrap(detail["tokens"] as? Int)
        XCTAssertLessThan(tokens, 400, "generation stopped early")
        // The cancelled session stays usable: its next turn runs and reuses what was cached.
        let next = try chat(
            socket, [("user", Self.story), ("assistant", "Once"), ("user", "Go on.")], session: "gone", maxTokens: 4)
        XCTAssertEqual(next.status, 200)
        XCTAssertGreaterThan((next.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int ?? 0, 0)
    }

    func testSIGTERMDuringATurnLosesNothing() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock", state = dir + "/state"
        var daemon = try startDaemon(socket: socket, state: state)
        let (fd, first) = try startStream(socket, session: "term", maxTokens: 120)
        XCTAssertTrue(first.contains("\"content\""), first)
        kill(daemon.processIdentifier, SIGTERM)
        // The running turn finishes and its stream ends properly.
        let rest = first + String(decoding: readAll(fd), as: UTF8.self)
        close(fd)
        XCTAssertTrue(rest.contains("data: [DONE]"), rest)
        let last = try XCTUnwrap(rest.components(separatedBy: "data: ").last { $0.contains("\"usage\"") })
        let json = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(last.prefix { $0 != "\n" }.utf8)) as? [String: Any])
        let usage = try XCTUnwrap(json["usage"] as? [String: Any])
        let prompt = try XCTUnwrap(usage["prompt_tokens"] as? Int)
        let completion = try XCTUnwrap(usage["completion_tokens"] as? Int)
        daemon.waitUntilExit()
        XCTAssertEqual(daemon.terminationStatus, 0, "a clean stop")
        XCTAssertThrowsError(try connectUnix(socket), "nothing listens after the stop")

        // Restarted, the daemon has the whole acknowledged turn, on disk.
        daemon = try startDaemon(socket: socket, state: state)
        defer { stop(daemon) }
        let detail = try request(socket, "GET", "/v1/sessions/term")
        XCTAssertEqual(detail.status, 200)
        XCTAssertEqual(detail.json["tokens"] as? Int, prompt + completion)
        let layers = try XCTUnwrap(detail.json["layers"] as? [[String: Any]])
        XCTAssertGreaterThan(layers.first?["disk"] as? Int ?? 0, 0, "DRAM was flushed to disk at the stop")
    }
}
