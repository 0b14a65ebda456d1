import Foundation
import XCTest

/// Proves that the ThreadSanitizer run can see a race: two threads write one unguarded counter.
/// Skipped unless `KVTIER_TSAN_CANARY=1`; `make sanitize` runs it alone under TSan and requires
/// that run to fail.
final class SanitizerCanaryTests: XCTestCase {
    final class Unguarded: @unchecked Sendable {
        var value = 0
    }

    func testDeliberateDataRace() throws {
        guard ProcessInfo.processInfo.environment["KVTIER_TSAN_CANARY"] == "1" else {
            throw XCTSkip("the deliberate race runs only with KVTIER_TSAN_CANARY=1 (make sanitize)")
        }
        let shared = Unguarded()
        // Both threads are released together, so their unguarded writes overlap in time even
        // on a loaded machine.
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        for _ in 0..<2 {
            done.enter()
            Thread {
                ready.signal()
                go.wait()
                for _ in 0..<200_000 { shared.value += 1 }
                done.leave()
            }.start()
        }
        ready.wait()
        ready.wait()
        go.signal()
        go.signal()
        done.wait()
        XCTAssertGreaterThan(shared.value, 0)
    }
}
