import XCTest

@testable import KVTierEngine

/// The plan of one attempt at a turn, on made session states: what is loaded from which block,
/// what is computed, and where saving starts.
final class TurnPlanTests: XCTestCase {
    private func state(blocks: [(Int, Int)], sinks: Int = 0, dropEnd: Int = 0) -> SessionState {
        var s = SessionState(id: "s", owner: nil)
        s.blocks = blocks.map { SessionState.BlockRange(home: "s", start: $0.0, count: $0.1) }
        s.sinks = sinks
        s.dropEnd = dropEnd
        return s
    }

    private func block(_ start: Int, _ count: Int) -> SessionState.BlockRange {
        SessionState.BlockRange(home: "s", start: start, count: count)
    }

    func testANewChatComputesEverything() {
        let plan = TurnPlan(
            state: state(blocks: []), promptCount: 10, reuse: 0, failed: [], systemEnd: nil, blockTokens: 16)
        XCTAssertEqual(plan.segments, [.compute(Array(0..<10))])
        XCTAssertEqual(plan.needed, [])
        XCTAssertEqual(plan.saveFrom, 0)
        XCTAssertEqual(plan.computedCount, 10)
    }

    /// Reused tokens come from their blocks; the partial block the turn extends is rewritten
    /// from its start, merged with the new tokens.
    func testReusedTokensLoadAndThePartialBlockIsRewritten() {
        let s = state(blocks: [(0, 16), (16, 16), (32, 8)])
        let plan = TurnPlan(state: s, promptCount: 50, reuse: 38, failed: [], systemEnd: nil, blockTokens: 16)
        XCTAssertEqual(
            plan.segments,
            [
                .load(block(0, 16), offset: 0, indices: Array(0..<16)),
                .load(block(16, 16), offset: 0, indices: Array(16..<32)),
                .load(block(32, 8), offset: 0, indices: Array(32..<38)), .compute(Array(38..<50)),
            ])
        XCTAssertEqual(plan.needed, [block(0, 16), block(16, 16), block(32, 8)])
        XCTAssertEqual(plan.firstComputed, 38)
        XCTAssertEqual(plan.saveFrom, 32)
        XCTAssertEqual(plan.computedCount, 12)
    }

    /// A block that failed to load is computed, the blocks around it still load, and saving
    /// starts at the failed block.
    func testAFailedBlockIsComputedAndSavedAgain() {
        let s = state(blocks: [(0, 16), (16, 16), (32, 8)])
        let plan = TurnPlan(
            state: s, promptCount: 50, reuse: 38, failed: [block(16, 16)], systemEnd: nil, blockTokens: 16)
        XCTAssertEqual(
            plan.segments,
            [
                .load(block(0, 16), offset: 0, indices: Array(0..<16)), .compute(Array(16..<32)),
                .load(block(32, 8), offset: 0, indices: Array(32..<38)), .compute(Array(38..<50)),
            ])
        XCTAssertEqual(plan.needed, [block(0, 16), block(32, 8)])
        XCTAssertEqual(plan.saveFrom, 16)
    }

    /// A block that ends with the system message is complete: the turn saves after it.
    func testABlockEndingWithTheSystemMessageIsKept() {
        let s = state(blocks: [(0, 12)])
        let plan = TurnPlan(state: s, promptCount: 20, reuse: 12, failed: [], systemEnd: 12, blockTokens: 16)
        XCTAssertEqual(plan.saveFrom, 12)
        let other = TurnPlan(state: s, promptCount: 20, reuse: 12, failed: [], systemEnd: nil, blockTokens: 16)
        XCTAssertEqual(other.saveFrom, 0, "without a system message the partial block is rewritten")
    }

    /// After truncation only the sinks and the kept tail are live; the dropped gap is neither
    /// loaded nor computed.
    func testTruncatedHistorySkipsTheDroppedTokens() {
        let s = state(blocks: [(0, 4), (20, 16)], sinks: 4, dropEnd: 20)
        let plan = TurnPlan(state: s, promptCount: 40, reuse: 36, failed: [], systemEnd: nil, blockTokens: 16)
        XCTAssertEqual(plan.live, Array(0..<4) + Array(20..<40))
        XCTAssertEqual(
            plan.segments,
            [
                .load(block(0, 4), offset: 0, indices: Array(0..<4)),
                .load(block(20, 16), offset: 0, indices: Array(20..<36)), .compute(Array(36..<40)),
            ])
        XCTAssertEqual(plan.saveFrom, 36)
    }
}
