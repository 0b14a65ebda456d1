import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierReplay
@testable import KVTierStore
@testable import KVTierTestSupport

/// The replay harness on a tiny model: every policy replays the same trace in arrival order,
/// turns follow their session's think times, and each policy reuses what it is meant to.
final class ReplayRunTests: XCTestCase {
    func testPoliciesReplayOneTraceWithTheirOwnReuse() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let tok = model.tokenizer
        func turn(_ user: String, _ reply: String, think: Double) -> ReplayWorkload.Turn {
            let ids = Array(tok.encode(reply, addSpecial: false, parseSpecial: false).prefix(20))
            return .init(user: user, reply: ids, replyText: tok.decode(ids), thinkSeconds: think)
        }
        let workload = ReplayWorkload(conversations: [
            .init(
                id: "a", session: "r0001", arrivalSeconds: 0,
                turns: [
                    turn("hello there, a first question", "a recorded reply with a few words", think: 2),
                    turn("a second question", "another recorded reply", think: 2),
                    turn("a third one", "the last reply", think: 0),
                ]),
            .init(
                id: "b", session: "r0002", arrivalSeconds: 0.5,
                turns: [
                    turn("another chat begins here", "its first reply", think: 1),
                    turn("and goes on", "its second reply", think: 0),
                ]),
        ])
        var store = StoreConfiguration(stateDirectory: "")
        store.blockTokens = 16
        store.hbmCapacityBytes = 8 << 20
        store.dramCapacityBytes = 8 << 20
        store.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        var summaries: [String: ReplaySummary.Policy] = [:]
        for policy in ReplayPolicy.all {
            var progress: [[Int]] = []
            let (turns, stats) = try ReplayRun(policy: policy, store: store, threads: 2).run(workload, model: model) {
                progress.append([$0, $1])
            }
            XCTAssertEqual(turns.count, 5, policy.name)
            // Progress after every turn: turns 1...5, and a session counts as done after its last turn.
            XCTAssertEqual(progress.map { $0[0] }, Array(1...5), policy.name)
            XCTAssertEqual(progress.last?[1], 2, policy.name)
            for (n, p) in progress.enumerated() {
                let lastTurns = turns.prefix(n + 1).filter { t in
                    t.turn + 1 == workload.conversations.first { $0.session == t.session }!.turns.count
                }
                XCTAssertEqual(p[1], lastTurns.count, "\(policy.name): sessions done after \(n + 1) turns")
            }
            for session in ["r0001", "r0002"] {
                let mine = turns.filter { $0.session == session }
                XCTAssertEqual(
                    mine.map(\.turn), Array(0..<mine.count), "\(policy.name): a session's turns run in order")
                for (a, b) in zip(mine, mine.dropFirst()) {
                    let think = workload.conversations.first { $0.session == session }!.turns[a.turn].thinkSeconds
                    XCTAssertEqual(
                        b.arrival_s, a.start_s + a.total_ms / 1000 + think, accuracy: 1e-6,
                        "next turn due a think time after the reply")
                    XCTAssertGreaterThanOrEqual(b.start_s, b.arrival_s)
                }
            }
            // One turn at a time: starts never overlap the previous turn.
            let byStart = turns.sorted { $0.start_s < $1.start_s }
            for (a, b) in zip(byStart, byStart.dropFirst()) {
                XCTAssertGreaterThanOrEqual(b.start_s + 1e-9, a.start_s + a.total_ms / 1000)
            }
            summaries[policy.name] = ReplaySummary.Policy(policy: policy.name, store: store, turns: turns, stats: stats)
        }
        XCTAssertEqual(summaries["recompute"]?.prefill_tokens_reused, 0)
        XCTAssertEqual(summaries["recompute"]?.hit_rate, 0)
        for name in ["tiered-lru", "kvtier", "kvtier-no-overlap", "kvtier-sync-save", "hbm-only"] {
            // Everything fits in HBM here: every reusable token of turns 2+ is reused from memory.
            XCTAssertEqual(summaries[name]?.hit_rate ?? 0, 1, accuracy: 1e-9, name)
            XCTAssertEqual(summaries[name]?.reuse_rate ?? 0, 1, accuracy: 1e-9, name)
        }
        XCTAssertGreaterThan(
            summaries["recompute"]!.prefill_tokens_computed, summaries["kvtier"]!.prefill_tokens_computed)
    }

    /// `--generate`: replies are generated, not the recorded ones, and the next turn sends the
    /// generated text back, whose KV (the reply's own ids) is reused.
    func testGeneratedRepliesAreSentBackAndReused() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let workload = threeTurnChat(model, thinkSeconds: 1)
        let store = smallStore()
        let kvtier = try XCTUnwrap(ReplayPolicy.named("kvtier"))
        let forced = try ReplayRun(policy: kvtier, store: store, threads: 2).run(workload, model: model) { _, _ in }
            .turns
        let generated = try ReplayRun(policy: kvtier, store: store, threads: 2, generate: true).run(
            workload, model: model
        ) { _, _ in }.turns
        XCTAssertEqual(generated.count, 3)
        // The tiny model's greedy replies are not the recorded ones, so the later prompts differ.
        XCTAssertNotEqual(generated.map(\.prompt_tokens), forced.map(\.prompt_tokens))
        for t in generated where t.turn > 0 {
            XCTAssertGreaterThan(t.reusable, 0)
            // All of the previous turn is reused but, after a reply cut at its length, its last
            // token (sampled, never fed).
            XCTAssertGreaterThanOrEqual(t.reused, t.reusable - 1, "turn \(t.turn)")
        }
        for t in forced where t.turn > 0 { XCTAssertEqual(t.reused, t.reusable, "turn \(t.turn)") }
    }

    /// The kvtier policy's placement hints come from the scheduler's estimate, fed with the
    /// think times the replay has already shown (in its virtual time): a chat whose user took
    /// 100 s before its second turn (past `writeThroughAfterSeconds`, 60 s) is written through
    /// to disk from then on. Without hints nothing reaches disk here (DRAM holds everything).
    func testTheKvtierPolicyEstimatesThinkTimesForItsPlacementHints() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let workload = threeTurnChat(model, thinkSeconds: 100)
        let store = smallStore()
        var kvtier = try XCTUnwrap(ReplayPolicy.named("kvtier"))
        XCTAssertEqual(kvtier.placementHints, .estimated)
        let estimated = try ReplayRun(policy: kvtier, store: store, threads: 2).run(workload, model: model) { _, _ in }
        kvtier.placementHints = .none
        let none = try ReplayRun(policy: kvtier, store: store, threads: 2).run(workload, model: model) { _, _ in }
        XCTAssertGreaterThan(estimated.stats.disk.bytesIn, 0, "the chat seen thinking for 100 s goes to disk")
        XCTAssertEqual(none.stats.disk.bytesIn, 0)
    }

    /// One chat of three turns with replies of up to 12 tokens, each followed by `thinkSeconds`.
    /// The all-in-HBM oracle keeps every session in HBM however small the configured arena:
    /// where kvtier, on an arena too small for two chats, serves some reused KV from DRAM, the
    /// oracle serves all of it from HBM, and kvtier reuses exactly as much (the second chat's
    /// prefix, the model's default system prompt, lives in the first chat's namespace: a load
    /// that spared that namespace's pages once found no page to evict and recomputed).
    func testTheHBMOracleServesEveryReusedTokenFromHBM() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        var workload = threeTurnChat(model, thinkSeconds: 0.5)
        let other = ReplayWorkload.Conversation(
            id: "b", session: "r0002", arrivalSeconds: 0.2,
            turns: workload.conversations[0].turns.map {
                .init(user: "in another chat, " + $0.user, reply: $0.reply, replyText: $0.replyText, thinkSeconds: 0.5)
            })
        workload = ReplayWorkload(conversations: workload.conversations + [other])
        var store = smallStore()
        let page = 2 * 16 * model.kvLayout.rowWidth * 2  // a 16-token block of F16 keys and values
        // One chat (10 or 13 blocks) and what its turn holds besides (the blocks it writes, the
        // partial block it extends counted twice), not two chats.
        store.hbmCapacityBytes = 18 * model.kvLayout.layers * page
        var summaries: [String: ReplaySummary.Policy] = [:]
        for policy in ["kvtier", "hbm-oracle"].compactMap(ReplayPolicy.named) {
            let (turns, stats) = try ReplayRun(policy: policy, store: store, threads: 2).run(workload, model: model) {
                _, _ in
            }
            summaries[policy.name] = ReplaySummary.Policy(policy: policy.name, store: store, turns: turns, stats: stats)
        }
        let kvtier = try XCTUnwrap(summaries["kvtier"]), oracle = try XCTUnwrap(summaries["hbm-oracle"])
        XCTAssertLessThan(kvtier.hit_rate_by_tier["hbm"] ?? 1, 1, "the small arena evicted some of it")
        XCTAssertEqual(oracle.hit_rate_by_tier["hbm"] ?? 0, 1, accuracy: 1e-9)
        XCTAssertEqual(oracle.prefill_tokens_reused, kvtier.prefill_tokens_reused)
    }

    private func threeTurnChat(_ model: LlamaModel, thinkSeconds: Double) -> ReplayWorkload {
        let tok = model.tokenizer
        func turn(_ user: String, _ reply: String) -> ReplayWorkload.Turn {
            let ids = Array(tok.encode(reply, addSpecial: false, parseSpecial: false).prefix(12))
            return .init(user: user, reply: ids, replyText: tok.decode(ids), thinkSeconds: thinkSeconds)
        }
        return ReplayWorkload(conversations: [
            .init(
                id: "a", session: "r0001", arrivalSeconds: 0,
                turns: [
                    turn("hello there, a first question", "a recorded reply with a few more words than that"),
                    turn("a second question", "another recorded reply, also of some length"),
                    turn("a third one", "the last reply"),
                ])
        ])
    }

    /// 16-token blocks, 8 MiB of HBM and of DRAM, an instant link.
    private func smallStore() -> StoreConfiguration {
        var store = StoreConfiguration(stateDirectory: "")
        store.blockTokens = 16
        store.hbmCapacityBytes = 8 << 20
        store.dramCapacityBytes = 8 << 20
        store.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        return store
    }
}
