import Foundation
import XCTest

@testable import KVTierSimulator
@testable import KVTierTestSupport

/// Cost profiles: the shipped ones parse and say what they model; a bad one is refused with the
/// line and the key.
final class CostProfileTests: XCTestCase {
    private let minimal = """
        name = "p"
        [model]
        name = "m"
        parameters = 1e9
        weight_bytes = 2e9
        layers = 4
        hidden = 256
        kv_bytes_per_token = 4096
        context_window = 2048
        [accelerator]
        name = "g"
        count = 2
        peak_tflops = 100
        mfu = 0.5
        hbm_gbs = 1000
        kv_bytes = 1e10
        [host]
        dram_bytes = 1e11
        link_gbs = 25
        disk_bytes = 1e12
        disk_read_gbs = 5
        disk_write_gbs = 2

        """

    func testTheShippedProfilesParse() throws {
        let dir = RealModel.packageRoot.appendingPathComponent("deploy/simulate").path
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".toml") }.sorted()
        XCTAssertEqual(files, ["llama-65b-a100x4.toml", "llama2-13b-a100x4.toml", "llama3.1-70b-h100x4.toml"])
        for f in files {
            let p = try CostProfile.load(path: dir + "/" + f)
            XCTAssertEqual(p.name + ".toml", f)
            // KV per token is what the architecture says: K and V, every layer, 2 bytes each.
            XCTAssertGreaterThan(p.model.kvBytesPerToken, 100_000, f)
            XCTAssertLessThan(p.accelerator.kvBytes, Double(p.accelerator.count) * 80e9, f)
        }
        let llama65 = try CostProfile.load(path: dir + "/llama-65b-a100x4.toml")
        XCTAssertEqual(llama65.model.kvBytesPerToken, 2 * 80 * 8192 * 2)
    }

    func testStepTimesFollowTheRoofline() throws {
        let p = try CostProfile(toml: minimal, source: "test")
        // A decode step of one row reads the weights once: 2 GB at 2 x 1000 GB/s.
        XCTAssertEqual(p.stepSeconds(decodeContexts: [0], prefill: []), 0.001, accuracy: 1e-5)
        // A 1,000-token chunk is arithmetic: 2 TFLOP (plus attention) at 2 x 100 x 0.5 TFLOP/s.
        let chunk = p.stepSeconds(decodeContexts: [], prefill: [(tokens: 1000, context: 0)])
        XCTAssertEqual(chunk, 0.02, accuracy: 0.001)
        XCTAssertEqual(p.prefillComputeSeconds([(tokens: 1000, context: 0)]), chunk, accuracy: 1e-6)
        // Loads over both devices' links.
        XCTAssertEqual(p.linkSeconds(50_000_000_000), 1, accuracy: 1e-6)
    }

    func testABadProfileNamesItsLineAndKey() {
        func error(_ text: String) -> String {
            do {
                _ = try CostProfile(toml: text, source: "x.toml")
                return ""
            } catch { return "\(error)" }
        }
        XCTAssertEqual(error(minimal), "")
        XCTAssertEqual(
            error(minimal.replacingOccurrences(of: "mfu = 0.5", with: "mfu = 1.5")),
            "cost profile x.toml: line 14: accelerator.mfu is at most 1")
        XCTAssertEqual(
            error(minimal.replacingOccurrences(of: "layers = 4", with: "layers = \"four\"")),
            "cost profile x.toml: line 6: model.layers must be a whole number above 0")
        XCTAssertEqual(
            error(minimal.replacingOccurrences(of: "hbm_gbs", with: "hbm_gb")),
            "cost profile x.toml: line 15: unknown key accelerator.hbm_gb")
        XCTAssertEqual(
            error(minimal.replacingOccurrences(of: "disk_read_gbs = 5\n", with: "")),
            "cost profile x.toml: host.disk_read_gbs is missing")
        XCTAssertTrue(error("name = \n").hasPrefix("cost profile x.toml: line 1"))
        XCTAssertTrue(
            error("").hasPrefix("cost profile x.toml: name is missing"), "an empty file names the first missing key")
    }
}
