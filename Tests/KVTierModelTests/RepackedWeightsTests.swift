import CKVTierKernels
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// The repacked weight layouts (f32 scales, made once at load for the AVX-512 kernels) hold the
/// same weights and give the same results as the GGUF blocks they come from.
final class RepackedWeightsTests: XCTestCase {
    override func tearDown() {
        _ = kvt_set_cpu_level(Int32(KVT_CPU_AVX512))  // back to the best the machine has
    }

    private var levels: [Int32] { (0...kvt_cpu_level_detected()).map { $0 } }

    private func repack(_ raw: [UInt8], type: UInt32, blocks: Int) -> (bytes: [UInt8], type: Int32) {
        let packed =
            Int32(type) == KVT_TYPE_Q4_0
            ? KVT_TYPE_Q4_0_R : Int32(type) == KVT_TYPE_Q4_1 ? KVT_TYPE_Q4_1_R : KVT_TYPE_Q8_0_R
        var out = [UInt8](repeating: 0, count: blocks * kvt_block_bytes(Int32(packed)))
        let got = kvt_repack_blocks(Int32(type), raw, &out, blocks)
        XCTAssertEqual(got, Int32(packed))
        return (out, got)
    }

    func testPreferredTypeIsRepackedOnlyAtTheAVX512Level() {
        for level in levels {
            _ = kvt_set_cpu_level(level)
            for (raw, packed) in [
                (KVT_TYPE_Q4_0, KVT_TYPE_Q4_0_R), (KVT_TYPE_Q4_1, KVT_TYPE_Q4_1_R), (KVT_TYPE_Q8_0, KVT_TYPE_Q8_0_R),
            ] {
                XCTAssertEqual(
                    kvt_preferred_type(Int32(raw)), Int32(level == KVT_CPU_AVX512 ? packed : raw), "level \(level)")
            }
            XCTAssertEqual(kvt_preferred_type(Int32(KVT_TYPE_F16)), Int32(KVT_TYPE_F16))
        }
        XCTAssertEqual(kvt_repack_blocks(Int32(KVT_TYPE_F32), [0], nil, 0), -1)
    }

    /// Dequantized rows are bit for bit the raw ones at every level; products with activations
    /// are bit for bit the raw ones at the AVX-512 and portable levels (the AVX2 level takes the
    /// portable path for repacked weights, so there it is compared with plain arithmetic), for
    /// one vector and for batches (whose results are each a lone vector's).
    /// Dequantization (the sgemm path's weights) gives the same bits at every level, from the raw
    /// blocks and from the repacked ones: the matrix-vector kernels multiply exactly these values,
    /// so the two linear paths agree whatever the level.
    func testDequantizedWeightsAreTheSameBitsAtEveryLevelRawOrRepacked() {
        var rng = TestRNG(seed: 22)
        for type: UInt32 in [2, 3, 8] {
            let n = 576
            let values = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 4 }
            let raw = GGUFWriter.encode(values, type: type)
            let (packed, packedType) = repack(raw, type: type, blocks: n / 32)
            _ = kvt_set_cpu_level(0)
            var reference = [Float](repeating: .nan, count: n)
            kvt_dequantize_row(Int32(type), raw, &reference, Int32(n))
            for level in levels {
                _ = kvt_set_cpu_level(level)
                for (bytes, t) in [(raw, Int32(type)), (packed, packedType)] {
                    var out = [Float](repeating: .nan, count: n)
                    kvt_dequantize_row(t, bytes, &out, Int32(n))
                    XCTAssertEqual(out.map(\.bitPattern), reference.map(\.bitPattern), "type \(t) at level \(level)")
                }
            }
        }
    }

    func testRepackedWeightsComputeAsTheRawOnes() {
        var rng = TestRNG(seed: 21)
        for type: UInt32 in [2, 3, 8] {
            for n in [32, 160, 576] {
                let rows = 37
                let wv = (0..<(rows * n)).map { _ in (rng.nextFloat() - 0.5) * 2 }
                var raw: [UInt8] = []
                for r in 0..<rows { raw += GGUFWriter.encode(Array(wv[(r * n)..<((r + 1) * n)]), type: type) }
                let rawRowBytes = raw.count / rows
                let (packed, packedType) = repack(raw, type: type, blocks: rows * n / 32)
                let packedRowBytes = packed.count / rows
                XCTAssertEqual(packedRowBytes, n / 32 * kvt_block_bytes(packedType))
                let wd = GGUFWriter.decode(raw, type: type, count: rows * n)
                let m = 9
                let x = (0..<(m * n)).map { _ in (rng.nextFloat() - 0.5) * 3 + 0.5 }
                var sums = [Float](repeating: 0, count: m * n / 32)
                for i in 0..<m {
                    x.withUnsafeBufferPointer { xp in
                        sums.withUnsafeMutableBufferPointer { sp in
                            kvt_block_sums(xp.baseAddress! + i * n, sp.baseAddress! + i * n / 32, Int32(n))
                        }
                    }
                }
                for level in levels {
                    _ = kvt_set_cpu_level(level)
                    for r in [0, 17, rows - 1] {
                        var a = [Float](repeating: .nan, count: n)
                        var b = [Float](repeating: .nan, count: n)
                        raw.withUnsafeBytes {
                            kvt_dequantize_row(Int32(type), $0.baseAddress! + r * rawRowBytes, &a, Int32(n))
                        }
                        packed.withUnsafeBytes {
                            kvt_dequantize_row(packedType, $0.baseAddress! + r * packedRowBytes, &b, Int32(n))
                        }
                        XCTAssertEqual(
                            a.map(\.bitPattern), b.map(\.bitPattern),
                            "dequantize type \(type) n \(n) level \(level) row \(r)")
                    }
                    var rawOut = [Float](repeating: .nan, count: m * rows)
                    var packedOut = [Float](repeating: .nan, count: m * rows)
                    var lone = [Float](repeating: .nan, count: rows)
                    kvt_matvec_rows(
                        Int32(type), raw, rawRowBytes, 0, Int32(rows), Int32(n), x, n, sums, n / 32, Int32(m), &rawOut,
                        rows)
                    kvt_matvec_rows(
                        packedType, packed, packedRowBytes, 0, Int32(rows), Int32(n), x, n, sums, n / 32, Int32(m),
                        &packedOut, rows)
                    kvt_matvec(packedType, packed, packedRowBytes, 0, Int32(rows), Int32(n), x, sums, &lone)
                    XCTAssertEqual(
                        Array(packedOut[0..<rows]).map(\.bitPattern), lone.map(\.bitPattern),
                        "type \(type) n \(n) level \(level): batch vs lone")
                    if level != KVT_CPU_AVX2 {
                        XCTAssertEqual(
                            rawOut.map(\.bitPattern), packedOut.map(\.bitPattern), "type \(type) n \(n) level \(level)")
                    }
                    for i in 0..<m {
                        for r in 0..<rows {
                            let row = wd[(r * n)..<(r * n + n)]
                            let xi = x[(i * n)..<(i * n + n)]
                            let exact = zip(row, xi).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                            let scale = zip(row, xi).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
                            XCTAssertEqual(
                                Double(packedOut[i * rows + r]), exact, accuracy: 1e-5 * scale,
                                "type \(type) level \(level)")
                        }
                    }
                }
            }
        }
    }

    /// A model loaded at the AVX-512 level holds its quantized matrices repacked: interleaved by
    /// 16 rows for the quantized-activation kernels where the CPU has VNNI, else with f32 scales;
    /// at a lower level, the GGUF's own blocks.
    func testModelsRepackTheirMatricesOnlyWhereTheKernelsPreferIt() throws {
        let path = try TinyModel().write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        for level in levels {
            _ = kvt_set_cpu_level(level)
            let model = try LlamaModel(path: path)
            let up = model.weights.layers[0].up
            XCTAssertEqual(up.type, .q4_1)
            if level == KVT_CPU_AVX512 && kvt_cpu_has_avx512vnni() != 0 {
                XCTAssertEqual(up.kernelType, Int32(KVT_TYPE_Q4_X16), "level \(level)")
                XCTAssertEqual(up.rowBytes, up.cols / 32 * 24)
                XCTAssertEqual(model.weights.output.kernelType, Int32(KVT_TYPE_Q8_X16))
                XCTAssertTrue(model.makeTransformer(threads: 1).batchInvariant)
                // An F16 output matrix stays on the F32 path: its logits would depend on the batch.
                let f16Output = try TinyModel(embeddingType: 1).write()
                defer { try? FileManager.default.removeItem(atPath: f16Output) }
                let mixed = try LlamaModel(path: f16Output)
                XCTAssertEqual(mixed.weights.layers[0].up.kernelType, Int32(KVT_TYPE_Q4_X16))
                XCTAssertFalse(mixed.makeTransformer(threads: 1).batchInvariant)
            } else {
                XCTAssertEqual(
                    up.kernelType, level == KVT_CPU_AVX512 ? Int32(KVT_TYPE_Q4_1_R) : Int32(KVT_TYPE_Q4_1),
                    "level \(level)")
                XCTAssertEqual(up.rowBytes, up.cols / 32 * kvt_block_bytes(up.kernelType))
                XCTAssertFalse(model.makeTransformer(threads: 1).batchInvariant)
            }
        }
    }
}
