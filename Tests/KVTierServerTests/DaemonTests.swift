import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// The real `kvtierd` binary on a temporary Unix socket and state directory, driven over HTTP.
final class DaemonTests: XCTestCase {
    func testMultiTurnChatOverTheSocketReusesKVAndSurvivesRestart() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let state = dir + "/state"
        var daemon = try startDaemon(socket: socket, state: state)

        var history: [(String, String)] = [("user", "What is the capital of France?")]
        let r1 = try chat(socket, history, session: "t1")
        XCTAssertEqual(r1.status, 200)
        let reply1 = try XCTUnwrap(
            ((r1.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String)
        let report1 = try XCTUnwrap(r1.json["kvtier"] as? [String: Any])
        XCTAssertEqual(report1["tokens_reused"] as? Int, 0)

        // Turn 2 without a session id: the token prefix finds the session, the reply's KV included;
        // the turn runs in a new session sharing t1's blocks (it never modifies a named session).
        history += [("assistant", reply1), ("user", "And of Germany?")]
        let r2 = try chat(socket, history, session: nil)
        XCTAssertEqual(r2.status, 200)
        XCTAssertNotEqual(r2.json["session_id"] as? String, "t1")
        let report2 = try XCTUnwrap(r2.json["kvtier"] as? [String: Any])
        let usage1 = try XCTUnwrap(r1.json["usage"] as? [String: Any])
        let finish1 = (r1.json["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String
        // Every generated token was fed back unless the reply hit max_tokens (the last one was not).
        let cached =
            (usage1["prompt_tokens"] as? Int ?? 0) + (usage1["completion_tokens"] as? Int ?? 0)
            - (finish1 == "length" ? 1 : 0)
        XCTAssertEqual(report2["tokens_reused"] as? Int, cached, "prompt and reply of turn 1 are reused")

        // Streaming: server-sent events, the report in the last chunk, then [DONE].
        let streamBody = try JSONSerialization.data(withJSONObject: [
            "messages": [["role": "user", "content": "Say hello."]], "max_tokens": 8, "temperature": 0, "stream": true,
            "session_id": "t2",
        ])
        let (streamStatus, events) = try rawRequest(
            socket, "POST", "/v1/chat/completions", body: String(decoding: streamBody, as: UTF8.self))
        XCTAssertEqual(streamStatus, 200)
        XCTAssertTrue(events.contains("chat.completion.chunk"))
        XCTAssertTrue(events.contains("\"kvtier\""))
        XCTAssertTrue(events.contains("data: [DONE]"))

        // Errors: bad JSON, wrong method, unknown path.
        XCTAssertEqual(try request(socket, "POST", "/v1/chat/completions", body: "{not json").status, 400)
        XCTAssertEqual(try request(socket, "POST", "/v1/chat/completions", body: #"{"messages": 5}"#).status, 400)
        XCTAssertEqual(try request(socket, "DELETE", "/healthz").status, 405)
        XCTAssertEqual(try request(socket, "GET", "/nowhere").status, 404)
        XCTAssertEqual(try chat(socket, [("user", "hi")], session: String(repeating: "x", count: 300)).status, 400)

        // Restart: the session continues from the disk tier.
        stop(daemon)
        daemon = try startDaemon(socket: socket, state: state)
        defer { stop(daemon) }
        let reply2 = try XCTUnwrap(
            ((r2.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String)
        history += [("assistant", reply2), ("user", "Thanks!")]
        let r3 = try chat(socket, history, session: "t1")
        XCTAssertEqual(r3.status, 200)
        let hits = try XCTUnwrap((r3.json["kvtier"] as? [String: Any])?["hits"] as? [String: Any])
        // A fresh process has nothing in HBM: the KV comes from disk, or from DRAM when the
        // scheduler's look-ahead prefetched it from disk while the turn waited.
        XCTAssertEqual(hits["hbm"] as? Int, 0)
        XCTAssertGreaterThan(
            (hits["disk"] as? Int ?? 0) + (hits["dram"] as? Int ?? 0), 0,
            "after a restart the KV comes from the lower tiers")
        // What came from disk on the turn's own path is counted in bytes (F16 KV: 23,040 per token).
        let diskBytes = (r3.json["kvtier"] as? [String: Any])?["disk_bytes_read"] as? Int
        XCTAssertEqual(diskBytes.map { $0 >= (hits["disk"] as? Int ?? 0) * 23_040 }, true)
        XCTAssertEqual(diskBytes.map { ($0 == 0) == ((hits["disk"] as? Int ?? 0) == 0) }, true)
    }
}

extension DaemonTests {
    func testAdminEndpoints() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        XCTAssertEqual(try chat(socket, [("user", "Tell me about tea.")], session: "adm").status, 200)

        let detail = try request(socket, "GET", "/v1/sessions/adm")
        XCTAssertEqual(detail.status, 200)
        let layers = try XCTUnwrap(detail.json["layers"] as? [[String: Any]])
        XCTAssertEqual(layers.count, 30)
        XCTAssertGreaterThan(layers[0]["hbm"] as? Int ?? 0, 0)

        XCTAssertEqual(try request(socket, "POST", "/v1/sessions/adm/demote", body: #"{"to":"disk"}"#).status, 200)
        let after = try XCTUnwrap(try request(socket, "GET", "/v1/sessions/adm").json["layers"] as? [[String: Any]])
        XCTAssertEqual(after[0]["hbm"] as? Int, 0)
        XCTAssertEqual(after[0]["dram"] as? Int, 0)
        XCTAssertGreaterThan(after[0]["disk"] as? Int ?? 0, 0)
        XCTAssertEqual(try request(socket, "POST", "/v1/sessions/adm/demote", body: #"{"to":"moon"}"#).status, 400)

        XCTAssertEqual(try request(socket, "POST", "/v1/hints", body: #"{"upcoming":["adm"]}"#).status, 200)
        XCTAssertEqual(try request(socket, "POST", "/v1/hints", body: #"{"later":1}"#).status, 400)
        XCTAssertEqual(try request(socket, "POST", "/v1/flush").status, 200)
        let sessions = try XCTUnwrap(try request(socket, "GET", "/v1/sessions").json["sessions"] as? [[String: Any]])
        XCTAssertEqual(sessions.map { $0["id"] as? String }, ["adm"])
        let tiers = try rawRequest(socket, "GET", "/v1/tiers")
        XCTAssertEqual(tiers.0, 200)
        XCTAssertTrue(tiers.1.contains("\"tier\":\"disk\""))

        XCTAssertEqual(try request(socket, "DELETE", "/v1/sessions/adm").status, 200)
        XCTAssertEqual(try request(socket, "GET", "/v1/sessions/adm").status, 404)
        XCTAssertEqual(try request(socket, "DELETE", "/v1/sessions/nope").status, 404)
    }
}

extension DaemonTests {
    func testAdminCLIOverTheSocket() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        // No daemon yet: a clear message and a failing exit status.
        let (down, message) = try kvtierctl(["status", "--socket", socket])
        XCTAssertNotEqual(down, 0)
        XCTAssertTrue(message.contains("not running"), message)

        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        XCTAssertEqual(try chat(socket, [("user", "Hello!")], session: "cli").status, 200)
        let (rc, tiers) = try kvtierctl(["tiers", "--json", "--socket", socket])
        XCTAssertEqual(rc, 0)
        let parsed = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(tiers.utf8)) as? [[String: Any]])
        XCTAssertEqual(parsed.map { $0["tier"] as? String }, ["hbm", "dram", "disk"])
        let (rc2, table) = try kvtierctl(["sessions", "--socket", socket])
        XCTAssertEqual(rc2, 0)
        XCTAssertTrue(table.contains("cli"), table)
        XCTAssertEqual(try kvtierctl(["demote", "cli", "--to", "disk", "--socket", socket]).0, 0)
        let (rc3, detail) = try kvtierctl(["session", "cli", "--json", "--socket", socket])
        XCTAssertEqual(rc3, 0)
        let layers = try XCTUnwrap(
            (try JSONSerialization.jsonObject(with: Data(detail.utf8)) as? [String: Any])?["layers"] as? [[String: Any]]
        )
        XCTAssertEqual(layers.first?["disk"] as? Int, layers.first?["blocks"] as? Int, "every block of the session")
        XCTAssertGreaterThan(layers.first?["disk"] as? Int ?? 0, 0)
        XCTAssertNotEqual(try kvtierctl(["drop", "nope", "--socket", socket]).0, 0)
        // `hint` says which ids the daemon does not know instead of echoing them.
        let (rc4, hinted) = try kvtierctl(["hint", "cli", "nope", "--socket", socket])
        XCTAssertEqual(rc4, 0)
        XCTAssertTrue(hinted.contains("upcoming: cli\n"), hinted)
        XCTAssertTrue(hinted.contains("unknown, ignored (kvtierd has no such session of yours): nope"), hinted)
    }
}

extension DaemonTests {
    func testChatCLIStreamsAndReuses() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        let (status, text) = try kvtierctl(
            ["chat", "--socket", socket, "--temperature", "0", "--max-tokens", "12", "--session", "cli-chat"],
            input: "What is the capital of France?\nAnd of Germany?\n\n")
        XCTAssertEqual(status, 0, text)
        let reports = text.components(separatedBy: "[reused ").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
        XCTAssertEqual(reports.count, 2, text)
        XCTAssertEqual(reports.first, 0)
        XCTAssertGreaterThan(reports.last ?? 0, 0, "the second turn reuses the first")

        // The session's conversation, as kvtierd decodes it from its tokens: the default system
        // prompt, then the two exchanges.
        let (rc, detail) = try kvtierctl(["session", "cli-chat", "--json", "--socket", socket])
        XCTAssertEqual(rc, 0, detail)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(detail.utf8)) as? [String: Any])
        let messages = try XCTUnwrap(object["messages"] as? [[String: String]], detail)
        XCTAssertEqual(messages.map { $0["role"] ?? "" }, ["system", "user", "assistant", "user", "assistant"], detail)
        XCTAssertEqual(messages[1]["content"], "What is the capital of France?")
        XCTAssertEqual(
            object["cached_tokens"] as? Int, object["tokens"] as? Int, "snake case, as every endpoint: \(detail)")

        // --session resumes that conversation: the next turn resends it and reuses all of it.
        let (status2, resumed) = try kvtierctl(
            ["chat", "--socket", socket, "--temperature", "0", "--max-tokens", "12", "--session", "cli-chat"],
            input: "And of Italy?\n\n")
        XCTAssertEqual(status2, 0, resumed)
        XCTAssertTrue(resumed.contains("resumed with 5 messages"), resumed)
        let reused = resumed.components(separatedBy: "[reused ").dropFirst().compactMap {
            Int($0.prefix { $0.isNumber })
        }
        XCTAssertGreaterThan(reused.first ?? 0, 40, "the resumed history is the session's own: \(resumed)")
    }

    /// Ctrl-C while a reply streams stops that turn (kvtierd sees the connection close and
    /// cancels it) and the chat goes on: the next line gets its answer, and the stopped turn is
    /// not part of the history.
    func testChatCtrlCStopsTheReplyAndKeepsTheChat() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        let p = Process()
        p.executableURL = URL(
            fileURLWithPath: try daemonBinary().replacingOccurrences(of: "/kvtierd", with: "/kvtierctl"))
        p.arguments = ["chat", "--socket", socket, "--temperature", "0", "--max-tokens", "2000", "--session", "cc"]
        let input = Pipe()
        let output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        p.standardError = output
        try p.run()
        defer { terminate(p, grace: 5) }
        let text = OrderedText()
        output.fileHandleForReading.readabilityHandler = { h in
            text.append(String(decoding: h.availableData, as: UTF8.self))
        }
        // A reply of about 1,500 tokens at temperature 0 (it runs to 600 at least: measured).
        input.fileHandleForWriting.write(Data("List the numbers from 1 to 500 separated by commas.\n".utf8))
        // Wait for the reply to start, then Ctrl-C.
        XCTAssertTrue(text.wait(timeout: 60) { $0.contains("1, 2, 3") }, text.value)
        kill(p.processIdentifier, SIGINT)
        XCTAssertTrue(text.wait(timeout: 30) { $0.contains("reply stopped") }, text.value)
        XCTAssertTrue(p.isRunning, "Ctrl-C must not end the chat")
        input.fileHandleForWriting.write(Data("Hello!\n\n".utf8))
        p.waitUntilExit()
        output.fileHandleForReading.readabilityHandler = nil
        XCTAssertEqual(p.terminationStatus, 0, text.value)
        XCTAssertEqual(text.value.components(separatedBy: "[reused ").count - 1, 1, "one finished turn: \(text.value)")
        // kvtierd cancelled the stopped turn rather than generating 2,000 tokens for nobody.
        let (_, metrics) = try rawRequest(socket, "GET", "/metrics")
        XCTAssertTrue(metrics.contains(#"kvtier_turns_total{finish_reason="cancelled"}"#), metrics)
    }
}

/// Text a process writes, collected from a reading handler's thread.
final class OrderedText: @unchecked Sendable {
    // Unchecked: `text` only under `lock`.
    private let lock = NSLock()
    private var text = ""

    var value: String { lock.withLock { text } }

    func append(_ s: String) { lock.withLock { text += s } }

    /// Waits until `condition` holds for the text so far.
    func wait(timeout: Double, until condition: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition(value) { return true }
            usleep(20_000)
        }
        return condition(value)
    }
}

extension DaemonTests {
    func testBadConfigurationStopsStartupNamingTheKey() throws {
        let dir = try temporaryDirectory(self)
        let config = dir + "/kvtierd.toml"
        try Data("[store]\ndram_bytes = \"plenty\"\n".utf8).write(to: URL(fileURLWithPath: config))
        let (status, out) = try runProcess(
            try daemonBinary(), ["--config", config, "--socket", dir + "/k.sock", "--state-dir", dir + "/state"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("store.dram_bytes"), out)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/k.sock"))
    }
}

extension DaemonTests {
    /// `"kvtier": {"next_turn_in_seconds": N}`: a session whose next turn is far off is written
    /// through to disk right away (placement `writeThrough`); one without the hint stays in
    /// DRAM. Each layer's blocks per tier come from `GET /v1/sessions/{id}`.
    func testNextTurnHintWritesTheSessionThroughToDisk() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        func turn(_ session: String, hint: String) throws {
            // Each asks its own question: the same one would give the same greedy reply, and its
            // blocks would be the other's (stored once, where the other put them).
            let body =
                #"{"messages":[{"role":"user","content":"Tell me about the \#(session) sea."}],"#
                + #""max_tokens":8,"temperature":0,"session_id":"\#(session)"\#(hint)}"#
            XCTAssertEqual(try rawRequest(socket, "POST", "/v1/chat/completions", body: body).0, 200)
        }
        func onDisk(_ session: String) throws -> Int {
            let (_, text) = try rawRequest(socket, "GET", "/v1/sessions/" + session)
            let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            return (object?["layers"] as? [[String: Any]] ?? []).reduce(0) { $0 + ($1["disk"] as? Int ?? 0) }
        }
        // "near" first: "far" then shares its system-prompt blocks, which stay where "near" put
        // them (in memory); "far"'s own blocks are written through.
        try turn("near", hint: #","kvtier":{"next_turn_in_seconds":5}"#)
        try turn("far", hint: #","kvtier":{"next_turn_in_seconds":3600}"#)
        let deadline = Date().addingTimeInterval(10)
        while try onDisk("far") == 0 && Date() < deadline { usleep(50_000) }
        XCTAssertGreaterThan(try onDisk("far"), 0, "a session not needed for an hour goes to disk at once")
        XCTAssertEqual(try onDisk("near"), 0, "a session needed soon stays in memory")
        let (status, text) = try rawRequest(
            socket, "POST", "/v1/chat/completions",
            body: #"{"messages":[{"role":"user","content":"hi"}],"kvtier":{"next_turn_in_seconds":-1}}"#)
        XCTAssertEqual(status, 400)
        XCTAssertTrue(text.contains("kvtier.next_turn_in_seconds"), text)
    }

    /// With `engine.anonymous_session_idle_seconds`, a chat without a session id is forgotten
    /// once idle that long (one log line, counted in the metrics); a named chat is kept.
    func testChatsWithoutASessionIDAreForgottenWhenIdle() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(
            socket: socket, state: dir + "/state", config: "[engine]\nanonymous_session_idle_seconds = 2\n",
            log: dir + "/kvtierd.log")
        defer { stop(daemon) }
        let anonymous = try chat(socket, [("user", "Name a colour.")], session: nil, maxTokens: 4)
        let id = try XCTUnwrap(anonymous.json["session_id"] as? String)
        XCTAssertEqual(try chat(socket, [("user", "Name a river.")], session: "kept", maxTokens: 4).status, 200)
        func listed() throws -> [String] {
            let all = try request(socket, "GET", "/v1/sessions").json["sessions"] as? [[String: Any]] ?? []
            return all.compactMap { $0["id"] as? String }.sorted()
        }
        XCTAssertEqual(try listed(), [id, "kept"].sorted())
        let deadline = Date().addingTimeInterval(15)
        while try listed().contains(id) && Date() < deadline { usleep(200_000) }
        XCTAssertEqual(try listed(), ["kept"], "the idle chat without an id is gone, the named one stays")
        XCTAssertEqual(try request(socket, "GET", "/v1/sessions/" + id).status, 404)
        let metrics = try rawRequest(socket, "GET", "/metrics").1
        XCTAssertTrue(metrics.contains("kvtier_sessions_expired_total 1"), "counted once")
        let log = (try? String(contentsOfFile: dir + "/kvtierd.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("forgot idle chats without a session id"), log)
    }
}
