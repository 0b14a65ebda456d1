import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// `kvtier-bench kernels` on the tiny model: every figure is measured (finite, positive) and
/// each kernel of the roofline table is there. Speed itself is the benchmark's business.
final class KernelRooflineTests: XCTestCase {
    func testEveryFigureIsMeasured() throws {
        let path = try TinyModel().write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let model = try LlamaModel(path: path)
        let roofline = KernelRoofline(seconds: 0.001)
        let figures = roofline.peaks(threads: 2, readBytes: 8 << 20) + roofline.kernels(model: model)
        let names = figures.map(\.name)
        for prefix in [
            "peak: FMA", "peak: memory read, 1 thread", "peak: memory read, 2 threads", "matvec, 1 vector",
            "matvec_rows, 16 vectors", "attention, decode", "dequantize", "sgemm",
        ] {
            XCTAssertTrue(names.contains { $0.hasPrefix(prefix) }, "\(prefix) in \(names)")
        }
        for f in figures {
            XCTAssertTrue(f.gflops != nil || f.gbps != nil, f.name)
            for v in [f.gflops, f.gbps].compactMap({ $0 }) { XCTAssertTrue(v.isFinite && v > 0, "\(f.name): \(v)") }
        }
    }
}
