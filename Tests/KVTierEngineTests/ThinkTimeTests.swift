import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// The scheduler's own think-time estimate, the placement hint for requests that carry none.
final class ThinkTimeTests: XCTestCase {
    private let second: UInt64 = 1_000_000_000

    func testTheEstimateIsTheMedianOfTheSessionsLastGaps() {
        var e = ThinkTimeEstimator(window: 3, capacity: 100)
        XCTAssertNil(e.estimate("a"))
        e.arrived("a", at: 0)  // a first request: no reply has ended yet
        e.ended("a", at: 1 * second)
        XCTAssertNil(e.estimate("a"), "no gap seen yet")
        e.arrived("a", at: 11 * second)  // 10 s of thinking
        XCTAssertEqual(e.estimate("a"), 10)
        e.arrived("a", at: 12 * second)  // a second request before any reply: not a gap
        XCTAssertEqual(e.estimate("a"), 10)
        for (end, next) in [(20, 22), (30, 130), (140, 144)] {  // gaps 2, 100, 4
            e.ended("a", at: UInt64(end) * second)
            e.arrived("a", at: UInt64(next) * second)
        }
        XCTAssertEqual(e.estimate("a"), 4, "median of the last three gaps (2, 100, 4), not of all four")
        XCTAssertNil(e.estimate("b"), "sessions do not share estimates")
        e.observe("b", gap: 7)  // measured elsewhere (a replay in virtual time)
        XCTAssertEqual(e.estimate("b"), 7)
        e.observe("b", gap: -1)
        XCTAssertEqual(e.estimate("b"), 7, "a negative gap is no gap")
    }

    func testTheSessionsThatEndedLongestAgoAreForgottenPastTheCapacity() {
        var e = ThinkTimeEstimator(window: 2, capacity: 4)
        for (i, s) in ["s0", "s1", "s2", "s3", "s4"].enumerated() {
            e.ended(s, at: UInt64(i) * second)
            e.arrived(s, at: UInt64(i) * second + second)
            e.ended(s, at: UInt64(i) * second + 2 * second)
        }
        XCTAssertNil(e.estimate("s0"), "the oldest sessions are forgotten")
        XCTAssertEqual(e.estimate("s4"), 1)
    }

    /// Without `nextTurnInSeconds`, a session that has kept its user waiting longer than
    /// `writeThroughAfterSeconds` between turns is written through to disk on its next turn; one
    /// that answers at once stays in memory. Without the estimate, both would stay in memory.
    func testAnObservedLongThinkTimeWritesTheSessionThrough() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-think-\(UUID().uuidString)")
            .path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = 16
        c.hbmCapacityBytes = 16 << 20
        c.dramCapacityBytes = 16 << 20
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        let store = try TieredStore(configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout)
        var e = EngineConfiguration()
        e.threads = 2
        e.writeThroughAfterSeconds = 0.3
        let engine = ChatEngine(model: model, store: store, configuration: e)
        let scheduler = TurnScheduler(engine: engine, lookAhead: 0, maxRunning: 2)
        let options = GenerationOptions(maxTokens: 4, sampling: .greedy, stopAtEndOfGeneration: false)
        let reports = ReportBox()
        var chats: [String: [ChatMessage]] = [:]
        func turn(_ s: String, _ k: Int) {
            chats[s, default: []].append(
                ChatMessage(role: "user", content: "message \(k) from \(s), long enough for a block"))
            scheduler.submit(TurnScheduler.Turn(session: s, messages: chats[s]!, options: options)) { result in
                if case .success(let r) = result { reports.append(r) }
            }
            scheduler.drain()
            if let r = reports.all.last(where: { $0.session == s }) {
                chats[s]!.append(ChatMessage(role: "assistant", content: r.text))
            }
        }
        func blocksOnDisk(_ s: String) -> Int {
            engine.placement(of: s).layers.reduce(0) { $0 + $1.filter { $0.tiers.contains(.disk) }.count }
        }
        turn("slow", 0)
        for k in 0..<3 { turn("fast", k) }  // expected next: at once
        Thread.sleep(forTimeInterval: 0.6)  // "slow"'s user thinks for 0.6 s
        turn("slow", 1)  // expected next: in 0.6 s, past 0.3 s: written through
        store.waitForSaves()
        XCTAssertGreaterThan(blocksOnDisk("slow"), 0, "a session whose user takes long goes to disk")
        XCTAssertEqual(blocksOnDisk("fast"), 0, "a session whose user answers at once stays in memory")
    }
}
