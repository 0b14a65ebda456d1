import Foundation
import KVTierModel
import XCTest

/// OpenBLAS's kernels: a tool started on a CPU whose AVX-512 cores Debian's OpenBLAS does not
/// know (it picks Prescott, SSE3) runs with the SkylakeX ones (`OpenBLASCore`). `make test`
/// gives the test process the kernels the tools use; the tools here start without that.
final class OpenBLASCoreTests: XCTestCase {
    private func openblasLine(_ environment: [String: String?]) throws -> String {
        var saved: [String: String?] = [:]
        for (k, v) in environment {
            saved[k] = getenv(k).map { String(cString: $0) }
            if let v { setenv(k, v, 1) } else { unsetenv(k) }
        }
        defer {
            for (k, v) in saved {
                if let v { setenv(k, v, 1) } else { unsetenv(k) }
            }
        }
        let (status, out) = try kvtierctl(["model", "info", "--model", daemonTestModel])
        XCTAssertEqual(status, 0, out)
        return out.split(separator: "\n").first { $0.hasPrefix("openblas: ") }.map { String($0.dropFirst(10)) } ?? ""
    }

    func testToolsRunOpenBLASWithTheKernelsOfThisCPU() throws {
        guard FileManager.default.fileExists(atPath: daemonTestModel) else { throw XCTSkip("model not found") }
        // What OpenBLAS picks by itself (the restart turned off), and what the tool runs with.
        let own = try openblasLine(["OPENBLAS_CORETYPE": nil, "KVTIER_OPENBLAS_RESTARTED": "1"])
        let used = try openblasLine(["OPENBLAS_CORETYPE": nil, "KVTIER_OPENBLAS_RESTARTED": nil])
        XCTAssertFalse(own.isEmpty)
        XCTAssertEqual(used, OpenBLASCore.better(than: own) ?? own, "OpenBLAS chose \(own) by itself")
        // An operator's choice is kept.
        XCTAssertEqual(try openblasLine(["OPENBLAS_CORETYPE": "Haswell", "KVTIER_OPENBLAS_RESTARTED": nil]), "Haswell")
    }
}
