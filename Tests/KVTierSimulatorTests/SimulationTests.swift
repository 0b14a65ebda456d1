import XCTest

@testable import KVTierReplay
@testable import KVTierSimulator

/// The simulator's mechanisms, each on a trace made for it: layer-wise overlap, asynchronous
/// saving, look-ahead prefetch, scheduler-aware eviction, truncation and the capacity plan.
final class SimulationTests: XCTestCase {
    /// Round numbers: prefill 1 ms a token, a decode step 1 ms, 1 MB of KV a token, the link at
    /// 1 GB/s (1 ms a token of history), the disk at 0.5 GB/s, 10 layers, 16-token blocks.
    static func profile() -> CostProfile {
        var p = CostProfile()
        p.name = "test"
        p.model.name = "round"
        p.model.parameters = 0.5e9
        p.model.weightBytes = 1e9
        p.model.layers = 10
        p.model.hidden = 1
        p.model.kvBytesPerToken = 1_000_000
        p.model.contextWindow = 4096
        p.accelerator.name = "test"
        p.accelerator.peakTFLOPs = 1
        p.accelerator.mfu = 1
        p.accelerator.hbmGBs = 1000
        p.accelerator.kvBytes = 4e9
        p.accelerator.maxBatch = 8
        p.accelerator.prefillChunkTokens = 4096
        p.host.dramBytes = 100e9
        p.host.diskBytes = 1e12
        p.host.linkGBs = 1
        p.host.diskReadGBs = 0.5
        p.host.diskWriteGBs = 0.5
        p.host.blockTokens = 16
        return p
    }

    private func run(
        _ name: String, _ trace: SimulatedTrace, profile: CostProfile = profile(),
        configure: (inout Simulation.Options) -> Void = { _ in }
    ) throws -> Simulation.Result {
        try run(try XCTUnwrap(ReplayPolicy.named(name)), trace, profile: profile, configure: configure)
    }

    private func run(
        _ policy: ReplayPolicy, _ trace: SimulatedTrace, profile: CostProfile = profile(),
        configure: (inout Simulation.Options) -> Void = { _ in }
    ) throws -> Simulation.Result {
        var o = Simulation.Options(policy: policy, profile: profile)
        configure(&o)
        return try Simulation(profile: profile, options: o).run(trace)
    }

    /// One chat, two turns: 160 tokens, then 160 more; HBM keeps nothing between turns, so the
    /// second turn loads 161 tokens over the link (161 ms) and computes 160 (160 ms).
    private func twoTurns() -> SimulatedTrace {
        SimulatedTrace(sessions: [
            .init(
                name: "a", arrivalSeconds: 0,
                turns: [
                    .init(promptTokens: 160, replyTokens: 1, thinkSeconds: 10),
                    .init(promptTokens: 321, replyTokens: 1, thinkSeconds: 0),
                ])
        ])
    }

    func testLayerwiseLoadingOverlapsTheLoadWithCompute() throws {
        let overlap = try run("kvtier", twoTurns()) { $0.hbmCachesSessions = false }.turns[1]
        let serial = try run("kvtier-no-overlap", twoTurns()) { $0.hbmCachesSessions = false }.turns[1]
        XCTAssertEqual(overlap.reused, 161)
        XCTAssertEqual(overlap.hits_dram, 161)
        // Without overlap: the load (161 ms), then the prefill (160 ms).
        XCTAssertEqual(serial.ttft_ms, 321, accuracy: 5)
        // With it: the load, then the last layer's compute (16 ms): the pipeline's bound.
        XCTAssertEqual(overlap.ttft_ms, 161 + 16, accuracy: 5)
    }

    func testHBMThatKeepsSessionsServesTheNextTurnWithoutALoad() throws {
        let t = try run("kvtier", twoTurns()).turns[1]
        XCTAssertEqual(t.hits_hbm, 161)
        XCTAssertEqual(t.load_ms, 0)
        XCTAssertEqual(t.ttft_ms, 160, accuracy: 2)
    }

    /// Two chats at once, one turn at a time: with synchronous saving the GPU holds until the
    /// first chat's KV (161 MB, 161 ms over the link) is out, so the second starts that much later.
    func testSynchronousSavingHoldsTheNextTurn() throws {
        let trace = SimulatedTrace(sessions: [
            .init(name: "a", arrivalSeconds: 0, turns: [.init(promptTokens: 160, replyTokens: 1, thinkSeconds: 0)]),
            .init(name: "b", arrivalSeconds: 0, turns: [.init(promptTokens: 160, replyTokens: 1, thinkSeconds: 0)]),
        ])
        let async = try run("kvtier", trace) { $0.maxBatch = 1 }
        let sync = try run("kvtier-sync-save", trace) { $0.maxBatch = 1 }
        let b = { (r: Simulation.Result) in r.turns.first { $0.session == "b" }! }
        XCTAssertEqual(b(sync).start_s - b(async).start_s, 0.161, accuracy: 0.005)
        XCTAssertGreaterThan(async.turns.first { $0.session == "a" }!.save_lag_ms, 150)
    }

    /// Eight chats whose second turns queue behind one another (one turn at a time), DRAM for four
    /// first turns' KV (336 MB each; a second turn saves 656 MB): without look-ahead the queued
    /// chats' KV is read from disk when each runs; with it the next ones are prefetched into DRAM,
    /// and scheduler-aware eviction keeps them there while the running chat saves.
    private func queuedChats() -> SimulatedTrace {
        SimulatedTrace(
            sessions: (0..<8).map { i in
                .init(
                    name: "s\(i)", arrivalSeconds: Double(i) * 0.001,
                    turns: [
                        .init(promptTokens: 320, replyTokens: 16, thinkSeconds: 0.5),
                        .init(promptTokens: 640, replyTokens: 16, thinkSeconds: 0),
                    ])
            })
    }

    private func memoryHits(_ r: Simulation.Result) -> Double {
        let later = r.turns.filter { $0.turn > 0 }
        return Double(later.reduce(0) { $0 + $1.hits_hbm + $1.hits_dram })
            / Double(later.reduce(0) { $0 + $1.reusable })
    }

    func testLookAheadPrefetchAndSchedulerAwareEvictionKeepQueuedChatsInMemory() throws {
        func configure(_ o: inout Simulation.Options) {
            o.maxBatch = 1
            o.hbmCachesSessions = false
            o.dramBytes = 1_500_000_000
        }
        let none = try run("lru-no-prefetch", queuedChats(), configure: configure)
        let lru = try run("tiered-lru", queuedChats(), configure: configure)
        let kvtier = try run("kvtier", queuedChats(), configure: configure)
        let hintsOnly = try run(
            ReplayPolicy(name: "hint-no-prefetch", eviction: .hintDriven), queuedChats(), configure: configure)
        for r in [none, lru, kvtier, hintsOnly] {
            XCTAssertEqual(r.turns.filter { $0.turn > 0 }.map(\.reused), Array(repeating: 336, count: 8))
        }
        XCTAssertEqual(memoryHits(none), 0, "every queued chat was on disk")
        // LRU evicts what its prefetch brought up before the chat runs (prefetch does not make
        // a chat recent): the running chat's save needs the room.
        XCTAssertEqual(memoryHits(lru), 0)
        // Without look-ahead the hint-driven policy has nothing to spare: LRU again.
        XCTAssertEqual(memoryHits(hintsOnly), 0)
        XCTAssertGreaterThanOrEqual(memoryHits(kvtier), 0.5, "prefetched and spared")
    }

    func testAChatThatOutgrowsTheWindowKeepsItsLaterBlocks() throws {
        var p = Self.profile()
        p.model.contextWindow = 512
        let trace = SimulatedTrace(sessions: [
            .init(
                name: "a", arrivalSeconds: 0,
                turns: [
                    .init(promptTokens: 300, replyTokens: 50, thinkSeconds: 1),
                    .init(promptTokens: 500, replyTokens: 50, thinkSeconds: 0),
                ])
        ])
        let t = try run("kvtier", trace, profile: p).turns[1]
        // 550 tokens do not fit 512: the oldest 3 blocks (48 tokens) go, the rest is reused.
        XCTAssertEqual(t.prompt_tokens, 452)
        XCTAssertEqual(t.reused, 350 - 48)
    }

    func testThePlanFindsTheSmallestDRAMThatReachesTheHitRate() throws {
        var p = Self.profile()
        p.accelerator.kvBytes = 1e9  // HBM cannot hold the chats between turns
        let trace = queuedChats()
        var o = Simulation.Options(policy: try XCTUnwrap(ReplayPolicy.named("kvtier")), profile: p)
        o.maxBatch = 1
        o.hbmCachesSessions = false
        let sizes = [1, 2, 4, 8].map { $0 * 336 * 1_000_000 }
        let points = try CapacityPlan(profile: p, options: o, target: .hitRate(0.99)).evaluate(
            trace, dramSizes: sizes, diskSizes: [10_000_000_000])
        XCTAssertEqual(points.count, 4)
        // More DRAM never lowers the hit rate here, and eight chats' KV fits in the largest.
        for (a, b) in zip(points, points.dropFirst()) { XCTAssertLessThanOrEqual(a.hit_rate, b.hit_rate + 1e-9) }
        XCTAssertEqual(points.last?.hit_rate ?? 0, 1, accuracy: 1e-9)
        let best = try XCTUnwrap(CapacityPlan.cheapest(points))
        XCTAssertTrue(best.meets_target)
        XCTAssertEqual(best.dram_bytes, points.first { $0.meets_target }?.dram_bytes)
    }
}
