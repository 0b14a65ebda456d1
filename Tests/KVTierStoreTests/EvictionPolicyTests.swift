import Foundation
import XCTest

@testable import KVTierStore

final class EvictionPolicyTests: XCTestCase {
    private let sessions = ["A", "B", "C", "D"]
    private let size: (String) -> Int = { _ in 100 }

    /// Sessions A, B, C, D used in that order; the scheduler's queue holds A then C.
    /// LRU evicts A first; the hint-driven policy spares the queued sessions (B, D go first),
    /// and when it must take a queued one it takes C (needed last) before A.
    func testScriptedQueueLRUAndHintDrivenChooseDifferentVictims() {
        let lru = LRUPolicy()
        let hint = HintDrivenPolicy()
        for s in sessions {
            lru.touch(session: s)
            hint.touch(session: s)
        }
        hint.setUpcoming(["A", "C"])
        XCTAssertEqual(hint.upcoming, ["A", "C"])

        XCTAssertEqual(lru.victims(among: sessions, bytesNeeded: 100, sizeOf: size), ["A"])
        XCTAssertEqual(lru.victims(among: sessions, bytesNeeded: 200, sizeOf: size), ["A", "B"])
        XCTAssertEqual(lru.victims(among: sessions, bytesNeeded: 400, sizeOf: size), ["A", "B", "C", "D"])

        XCTAssertEqual(hint.victims(among: sessions, bytesNeeded: 100, sizeOf: size), ["B"])
        XCTAssertEqual(hint.victims(among: sessions, bytesNeeded: 200, sizeOf: size), ["B", "D"])
        XCTAssertEqual(hint.victims(among: sessions, bytesNeeded: 300, sizeOf: size), ["B", "D", "C"])
        XCTAssertEqual(hint.victims(among: sessions, bytesNeeded: 400, sizeOf: size), ["B", "D", "C", "A"])

        XCTAssertEqual(lru.evictionOrder(of: ["D", "C", "B", "A"]), ["A", "B", "C", "D"])
        XCTAssertEqual(hint.evictionOrder(of: ["D", "C", "B", "A"]), ["B", "D", "C", "A"])
    }

    /// Replays the queue: a tier holding A-D must free two sessions' worth for a new session E,
    /// then serves A and C. The hint-driven policy keeps both; LRU has to reload A.
    func testHintDrivenPolicyMissesLessOnTheScriptedQueue() {
        func misses(_ policy: any EvictionPolicy) -> Int {
            var resident = Set(sessions)
            for s in sessions { policy.touch(session: s) }
            policy.setUpcoming(["A", "C"])
            for v in policy.victims(among: sessions, bytesNeeded: 200, sizeOf: size) { resident.remove(v) }
            resident.insert("E")
            policy.touch(session: "E")
            var missed = 0
            for next in ["A", "C"] {
                if !resident.contains(next) { missed += 1 }
                policy.touch(session: next)
            }
            return missed
        }
        let lruMisses = misses(LRUPolicy())
        let hintMisses = misses(HintDrivenPolicy())
        XCTAssertEqual(lruMisses, 1)
        XCTAssertEqual(hintMisses, 0)
        XCTAssertLessThan(hintMisses, lruMisses)
    }

    func testVictimSelectionEdgeCases() {
        let lru = LRUPolicy()
        XCTAssertEqual(lru.name, "lru")
        for s in ["x", "y", "z"] { lru.touch(session: s) }
        // Nothing needed, nothing chosen.
        XCTAssertEqual(lru.victims(among: ["x", "y"], bytesNeeded: 0, sizeOf: size), [])
        // Duplicates ignored; not enough in total: everything, in order.
        XCTAssertEqual(lru.victims(among: ["y", "x", "y"], bytesNeeded: 1000, sizeOf: size), ["x", "y"])
        // Empty sessions free nothing and are skipped.
        XCTAssertEqual(lru.victims(among: ["x", "y", "z"], bytesNeeded: 150, sizeOf: { $0 == "x" ? 0 : 100 }), ["y", "z"])
        // Sizes add up across sessions of different size.
        XCTAssertEqual(lru.victims(among: ["x", "y", "z"], bytesNeeded: 150, sizeOf: { $0 == "x" ? 200 : 100 }), ["x"])
        // Never-touched sessions are the oldest; a forgotten one becomes never-touched.
        XCTAssertEqual(lru.evictionOrder(of: ["z", "new", "x"]), ["new", "x", "z"])
        lru.touch(session: "x")
        XCTAssertEqual(lru.evictionOrder(of: ["x", "y", "z"]), ["y", "z", "x"])
        lru.forget(session: "z")
        XCTAssertEqual(lru.evictionOrder(of: ["x", "y", "z"]), ["z", "y", "x"])

        let hint = HintDrivenPolicy()
        XCTAssertEqual(hint.name, "hint")
        for s in ["p", "q", "r"] { hint.touch(session: s) }
        // With no hints it is LRU.
        XCTAssertEqual(hint.evictionOrder(of: ["r", "q", "p"]), ["p", "q", "r"])
        // A session listed twice keeps its earliest position.
        hint.setUpcoming(["r", "p", "r"])
        XCTAssertEqual(hint.upcoming, ["r", "p"])
        XCTAssertEqual(hint.evictionOrder(of: ["p", "q", "r"]), ["q", "p", "r"])
        hint.forget(session: "p")
        XCTAssertEqual(hint.upcoming, ["r"])
        XCTAssertEqual(hint.evictionOrder(of: ["p", "q", "r"]), ["p", "q", "r"])
        hint.setUpcoming([])
        hint.touch(session: "r")
        hint.touch(session: "q")
        XCTAssertEqual(hint.evictionOrder(of: ["p", "q", "r"]), ["p", "r", "q"])
    }

    /// Policies are shared by the store's queues: concurrent touches and queries must not
    /// corrupt their state (every candidate comes back exactly once).
    func testPoliciesAreSafeToShareAcrossThreads() {
        let policies: [any EvictionPolicy] = [LRUPolicy(), HintDrivenPolicy()]
        let names = (0..<32).map { "s\($0)" }
        let bad = DispatchGroup()
        let problems = PolicyProblems()
        for policy in policies {
            for t in 0..<8 {
                bad.enter()
                Thread {
                    for i in 0..<500 {
                        let s = names[(t * 7 + i) % names.count]
                        policy.touch(session: s)
                        if i % 50 == 0 { policy.forget(session: s) }
                        if i % 10 == 0 { (policy as? HintDrivenPolicy)?.setUpcoming(Array(names.shuffled().prefix(5))) }
                        let order = policy.evictionOrder(of: names)
                        if order.sorted() != names.sorted() { problems.add("\(policy.name): bad order \(order)") }
                    }
                    bad.leave()
                }.start()
            }
        }
        XCTAssertEqual(bad.wait(timeout: .now() + 300), .success)
        XCTAssertEqual(problems.list, [])
    }
}

private final class PolicyProblems: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.withLock { items.append(s) } }
    var list: [String] { lock.withLock { Array(items.prefix(5)) } }
}
