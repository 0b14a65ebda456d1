import Foundation
import KVTierModel
import XCTest

/// OpenBLAS's kernels: a tool started on a CPU whose AVX-512 cores Debian's OpenBLAS does not
/// know (it picks Prescott, SSE3) runs with the SkylakeX ones (`OpenBLASCore`).
final class OpenBLASCoreTests: XCTestCase {
    func testToolsRunOpenBLASWithTheKernelsOfThisCPU() throws {
        guard FileManager.default.fileExists(atPath: daemonTestModel) else { throw XCTSkip("model not found") }
        let (status, out) = try kvtierctl(["model", "info", "--model", daemonTestModel])
        XCTAssertEqual(status, 0, out)
        let line = out.split(separator: "\n").first { $0.hasPrefix("openblas: ") }.map(String.init) ?? ""
        // This test process was not restarted: it shows what OpenBLAS chooses by itself.
        if OpenBLASCore.isBelowTheCPU {
            XCTAssertEqual(line, "openblas: SkylakeX", "OpenBLAS chose \(OpenBLASCore.name) here")
        } else {
            XCTAssertEqual(line, "openblas: \(OpenBLASCore.name)")
        }
        // An operator's choice is kept.
        setenv("OPENBLAS_CORETYPE", "Haswell", 1)
        defer { unsetenv("OPENBLAS_CORETYPE") }
        let (_, chosen) = try kvtierctl(["model", "info", "--model", daemonTestModel])
        XCTAssertTrue(chosen.contains("openblas: Haswell"), chosen)
    }
}
