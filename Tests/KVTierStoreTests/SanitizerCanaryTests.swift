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
        onConcurrentThreads(2) { _ in
            for _ in 0..<100_000 { shared.value += 1 }
        }
        XCTAssertGreaterThan(shared.value, 0)
    }
}
