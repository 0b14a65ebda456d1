import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Isolation: KV is keyed by the model's fingerprint (architecture, RoPE base and every tensor
/// byte) and by session, so
/// - a changed model file under the same state directory (one weight byte flipped) is served
///   nothing of the old model's KV: 0 tokens reused, and replies equal a fresh daemon's on the
///   new file;
/// - a changed KV precision (F16 to F32) under the same state directory still gives replies equal
///   to recomputation;
/// - two sessions with the same first turn never see each other's later turns.
final class IsolationTests: XCTestCase {
    func testAChangedModelFileIsServedNoneOfTheOldKV() throws {
        guard FileManager.default.fileExists(atPath: daemonTestModel) else { throw XCTSkip("model not found") }
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock", state = dir + "/state"
        let history: [(String, String)] = [("user", "What is the capital of Italy?")]

        var daemon = try startDaemon(socket: socket, state: state)
        let first = try chat(socket, history, session: "iso", maxTokens: 12)
        XCTAssertEqual(first.status, 200)
        let next = history + [("assistant", replyText(first.json) ?? ""), ("user", "And its population?")]
        // Same model, after a restart: the stored KV is used (the control).
        stop(daemon)
        daemon = try startDaemon(socket: socket, state: state)
        let same = try chat(socket, next, session: "iso", maxTokens: 12)
        let sameReused = (same.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int ?? 0
        XCTAssertGreaterThan(sameReused, 0, "the unchanged model reuses its KV after a restart")
        stop(daemon)

        // The same file with one weight byte flipped (in the tensor data, past the header).
        var bytes = try Data(contentsOf: URL(fileURLWithPath: daemonTestModel))
        let offset = bytes.count - 4096
        bytes[offset] ^= 0x01
        let changed = dir + "/changed.gguf"
        try bytes.write(to: URL(fileURLWithPath: changed))

        daemon = try startDaemon(socket: socket, state: state, model: changed)
        defer { stop(daemon) }
        let swapped = try chat(socket, next, session: "iso", maxTokens: 12)
        XCTAssertEqual(swapped.status, 200)
        let report = swapped.json["kvtier"] as? [String: Any] ?? [:]
        let hits = report["hits"] as? [String: Any] ?? [:]
        let reused = report["tokens_reused"] as? Int ?? -1
        let served = (hits["hbm"] as? Int ?? 0) + (hits["dram"] as? Int ?? 0) + (hits["disk"] as? Int ?? 0)
        XCTAssertEqual(reused, 0, "no token of the old model's KV is reused: \(report)")
        XCTAssertEqual(served, 0, "no block of the old model is served: \(report)")

        // The reply equals a daemon on the changed file with nothing stored.
        let fresh = try startDaemon(socket: dir + "/f/f.sock", state: dir + "/f/state", model: changed)
        defer { stop(fresh) }
        let reference = try chat(dir + "/f/f.sock", next, session: "iso", maxTokens: 12)
        XCTAssertEqual(replyText(swapped.json), replyText(reference.json))

        // A changed KV precision under the same state directory: replies still equal recomputation.
        stop(daemon)
        daemon = try startDaemon(socket: socket, state: state, config: "[store]\nkv_precision = \"f32\"\n", model: changed)
        let widened = try chat(socket, next + [("assistant", replyText(swapped.json) ?? ""), ("user", "Thanks.")], session: "iso", maxTokens: 8)
        stop(fresh)
        let fresh32 = try startDaemon(socket: dir + "/g/g.sock", state: dir + "/g/state", config: "[store]\nkv_precision = \"f32\"\n", model: changed)
        defer { stop(fresh32) }
        let reference32 = try chat(dir + "/g/g.sock", next + [("assistant", replyText(swapped.json) ?? ""), ("user", "Thanks.")], session: "iso", maxTokens: 8)
        XCTAssertEqual(widened.status, 200)
        XCTAssertEqual(replyText(widened.json), replyText(reference32.json), "F16 blocks are not served to an F32 cache as if they were F32")

        ReliabilityScale.report("isolation-model-swap", [
            "tokens_reused_same_model": sameReused, "tokens_reused_changed_model": reused, "blocks_served_changed_model": served,
            "reply_equals_fresh_daemon": replyText(swapped.json) == replyText(reference.json),
            "reply_equals_fresh_after_precision_change": replyText(widened.json) == replyText(reference32.json),
        ])
    }

    func testSessionsWithTheSameFirstTurnNeverSeeEachOthersLaterTurns() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let config = "[store]\nkv_precision = \"f32\"\n"
        let daemon = try startDaemon(socket: socket, state: dir + "/state", config: config)
        defer { stop(daemon) }
        let reference = try startDaemon(socket: dir + "/r/r.sock", state: dir + "/r/state", config: config)
        defer { stop(reference) }

        let opening: [(String, String)] = [("user", "Pick a colour.")]
        let a1 = try chat(socket, opening, session: "alice", maxTokens: 8)
        let b1 = try chat(socket, opening, session: "bob", maxTokens: 8)
        XCTAssertEqual(replyText(a1.json), replyText(b1.json), "the same first turn, the same greedy reply")
        let shared = opening + [("assistant", replyText(a1.json) ?? "")]

        // Alice goes on; then Bob asks something else. Bob's reply must equal a recomputation of
        // his own history (nothing of Alice's second turn), and Alice's next turn hers.
        let aliceHistory = shared + [("user", "Name a fruit of that colour.")]
        let a2 = try chat(socket, aliceHistory, session: "alice", maxTokens: 8)
        let bobHistory = shared + [("user", "Name an animal of that colour.")]
        let b2 = try chat(socket, bobHistory, session: "bob", maxTokens: 8)
        let b2ref = try chat(dir + "/r/r.sock", bobHistory, session: "bob-ref", maxTokens: 8)
        XCTAssertEqual(replyText(b2.json), replyText(b2ref.json))
        let aliceNext = aliceHistory + [("assistant", replyText(a2.json) ?? ""), ("user", "Why?")]
        let a3 = try chat(socket, aliceNext, session: "alice", maxTokens: 8)
        let a3ref = try chat(dir + "/r/r.sock", aliceNext, session: "alice-ref", maxTokens: 8)
        XCTAssertEqual(replyText(a3.json), replyText(a3ref.json))
        // Without a session id, Bob's history reuses Bob's blocks (the longest stored prefix), not
        // Alice's, in a session of its own (a request without an id never modifies a named one).
        let bobNext = bobHistory + [("assistant", replyText(b2.json) ?? ""), ("user", "Why?")]
        let b3 = try chat(socket, bobNext, session: nil, maxTokens: 8)
        XCTAssertNotEqual(b3.json["session_id"] as? String, "bob")
        let usage2 = try XCTUnwrap(b2.json["usage"] as? [String: Any])
        XCTAssertGreaterThanOrEqual(
            (b3.json["kvtier"] as? [String: Any])?["tokens_reused"] as? Int ?? 0,
            (usage2["prompt_tokens"] as? Int ?? 0) + (usage2["completion_tokens"] as? Int ?? 0) - 1,
            "all of Bob's history was reused")
        let b3ref = try chat(dir + "/r/r.sock", bobNext, session: "bob-ref-3", maxTokens: 8)
        XCTAssertEqual(replyText(b3.json), replyText(b3ref.json))
    }
}
