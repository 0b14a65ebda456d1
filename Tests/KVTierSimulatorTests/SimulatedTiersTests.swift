import XCTest

@testable import KVTierSimulator
@testable import KVTierStore

/// The simulator's tier accounting follows the store's rules, with the store's policies.
final class SimulatedTiersTests: XCTestCase {
    /// 4-token blocks of 1 byte a token: 2 pages of HBM (one 8-token session), DRAM for two
    /// sessions, disk for three.
    private func tiers(policy: EvictionPolicy = LRUPolicy(), lowerTiers: Bool = true) -> SimulatedTiers {
        SimulatedTiers(
            policy: policy, blockTokens: 4, bytesPerToken: 1, hbmBytes: 8, dramBytes: 16, diskBytes: 24,
            lowerTiers: lowerTiers)
    }

    private func turn(_ t: inout SimulatedTiers, _ s: String, reusable: Int, total: Int) -> SimulatedTiers.Load {
        let load = t.load(s, reusable: reusable)
        t.computed(s, total: total, from: load.reusedTokens)
        _ = t.save(s, from: load.reusedTokens, writeThrough: false)
        return load
    }

    func testAFinishedTurnStaysInHBMAndIsSavedToDRAM() {
        var t = tiers()
        _ = turn(&t, "a", reusable: 0, total: 6)
        let load = turn(&t, "a", reusable: 6, total: 8)
        XCTAssertEqual(load.reusedTokens, 6)
        XCTAssertEqual(load.hbm, 6, "both blocks were still in HBM")
        XCTAssertEqual(load.moved.linkBytes, 0)
    }

    func testEvictedSessionsComeBackFromDRAMThenFromDisk() {
        var t = tiers()
        _ = turn(&t, "a", reusable: 0, total: 8)  // 2 pages: HBM full
        _ = turn(&t, "b", reusable: 0, total: 8)  // evicts a from HBM (a is in DRAM)
        var load = turn(&t, "a", reusable: 8, total: 8)
        XCTAssertEqual(load.dram, 8, "a's blocks came from DRAM over the link")
        XCTAssertEqual(load.moved.linkBytes, 8)
        _ = turn(&t, "c", reusable: 0, total: 8)  // DRAM must make room: the LRU session (b) goes to disk
        load = turn(&t, "b", reusable: 8, total: 8)
        XCTAssertEqual(load.disk, 8, "b was demoted to disk and read back")
        XCTAssertEqual(load.moved.diskReadBytes, 8)
    }

    func testAFullDiskDeletesThePolicysVictimsAndTheirTokensAreRecomputed() {
        var t = tiers()
        for s in ["a", "b", "c", "d", "e", "f"] { _ = turn(&t, s, reusable: 0, total: 8) }
        // DRAM holds two sessions (HBM's one among them), the disk three: the oldest is gone.
        let load = turn(&t, "a", reusable: 8, total: 8)
        XCTAssertEqual(load.reusedTokens, 0)
    }

    func testTheHintDrivenPolicySparesTheNextSessionWhereLRUDoesNot() {
        func run(_ policy: EvictionPolicy) -> SimulatedTiers.Load {
            var t = tiers(policy: policy)
            _ = turn(&t, "a", reusable: 0, total: 8)
            _ = turn(&t, "b", reusable: 0, total: 8)
            // a is the least recently used, but it runs next.
            policy.setUpcoming(["a"])
            _ = turn(&t, "c", reusable: 0, total: 8)  // DRAM makes room for c
            return t.load("a", reusable: 8)
        }
        XCTAssertEqual(run(HintDrivenPolicy()).disk, 0, "a stayed in memory")
        XCTAssertEqual(run(LRUPolicy()).disk, 8, "LRU demoted a to disk")
    }

    func testHBMOnlyKeepsNothingBelowHBM() {
        var t = tiers(lowerTiers: false)
        _ = turn(&t, "a", reusable: 0, total: 8)
        _ = turn(&t, "b", reusable: 0, total: 8)
        XCTAssertEqual(turn(&t, "a", reusable: 8, total: 8).reusedTokens, 0)
    }

    func testATruncatedChatKeepsItsLaterBlocks() {
        var t = tiers()
        _ = turn(&t, "a", reusable: 0, total: 8)
        t.dropFront("a", blocks: 1)
        XCTAssertEqual(t.storedTokens("a"), 4)
        XCTAssertEqual(t.load("a", reusable: 4).hbm, 4)
    }

    func testARewrittenTailBlockReplacesItsOlderCopies() {
        var t = tiers()
        _ = turn(&t, "a", reusable: 0, total: 6)  // blocks 0 (4) and 1 (2 tokens), in HBM and DRAM
        _ = turn(&t, "a", reusable: 6, total: 8)  // block 1 rewritten with 4 tokens
        _ = turn(&t, "b", reusable: 0, total: 8)  // a out of HBM
        XCTAssertEqual(t.dramBytesUsed, 16, "a's 8 bytes (block 1 counted once, at its new size) and b's")
        let load = t.load("a", reusable: 8)
        XCTAssertEqual(load.dram, 8, "the new version of block 1 was saved, not the old one")
    }
}
