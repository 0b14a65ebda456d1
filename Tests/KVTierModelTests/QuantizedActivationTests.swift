import CKVTierKernels
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// The quantized-activation path (weights interleaved by 16 rows, activations quantized per
/// block of 32 to 8 or 16 bits, AVX-512 VNNI dot products): the same bits at every level and
/// whatever else is computed with a row, and within the quantization's own error of the exact
/// product.
final class QuantizedActivationTests: XCTestCase {
    override func tearDown() {
        _ = kvt_set_cpu_level(Int32(KVT_CPU_AVX512))  // back to the best the machine has
    }

    private let blockStride = MemoryLayout<kvt_q8_block>.stride

    private func requireVNNI() throws {
        try XCTSkipUnless(
            kvt_cpu_level_detected() >= KVT_CPU_AVX512 && kvt_cpu_has_avx512vnni() != 0,
            "this CPU has no AVX-512 VNNI: the models keep the F32-activation kernels")
    }

    /// rows x n weights of `type` (raw GGUF blocks), their dequantized values, and the X16 copy.
    private func matrix(type: UInt32, rows: Int, n: Int, rng: inout TestRNG)
        -> (raw: [UInt8], values: [Float], x16: [UInt8], layout: Int32)
    {
        let values = (0..<(rows * n)).map { _ in (rng.nextFloat() - 0.5) * 2 }
        let raw = GGUFWriter.encode(values, type: type)
        let rowBytes = raw.count / rows
        var dequantized = [Float](repeating: .nan, count: rows * n)
        for r in 0..<rows {
            raw.withUnsafeBytes { src in
                dequantized.withUnsafeMutableBufferPointer { dst in
                    kvt_dequantize_row(
                        Int32(type), src.baseAddress! + r * rowBytes, dst.baseAddress! + r * n, Int32(n))
                }
            }
        }
        let layout = Int32(type) == KVT_TYPE_Q8_0 ? KVT_TYPE_Q8_X16 : KVT_TYPE_Q4_X16
        var x16 = [UInt8](repeating: 0xAA, count: (rows + 15) / 16 * 16 * kvt_x16_row_bytes(Int32(layout), Int32(n)))
        XCTAssertEqual(kvt_repack_x16(Int32(type), raw, rowBytes, Int32(rows), Int32(n), &x16), Int32(layout))
        return (raw, dequantized, x16, Int32(layout))
    }

    private func quantize(_ x: [Float], m: Int, n: Int, bits: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: m * n / 32 * blockStride)
        out.withUnsafeMutableBytes { o in
            kvt_quantize_q8(
                Int32(bits), x, n, Int32(m), Int32(n), o.baseAddress!.bindMemory(to: kvt_q8_block.self, capacity: m))
        }
        return out
    }

    private func product(
        _ w: [UInt8], layout: Int32, rows r0: Int, _ r1: Int, n: Int, xq: [UInt8], first: Int, m: Int, bits: Int
    ) -> [Float] {
        var out = [Float](repeating: .nan, count: m * (r1 - r0))
        let nb = n / 32
        xq.withUnsafeBytes { q in
            let blocks = q.baseAddress!.bindMemory(to: kvt_q8_block.self, capacity: q.count / blockStride)
            kvt_matvec_q8(
                Int32(bits), layout, w, kvt_x16_row_bytes(layout, Int32(n)), Int32(r0), Int32(r1), Int32(n),
                blocks + first * nb, nb, Int32(m), &out, r1 - r0)
        }
        return out
    }

    /// The X16 layouts hold the GGUF weights exactly: each row dequantizes to the values the raw
    /// blocks give (equal as numbers: a Q4_0 weight of 0 with a negative scale is -0 from the raw
    /// blocks, d * (0 - 8 + 8), and +0 from the X16 copy, d * 8 - 8d).
    func testInterleavedWeightsDequantizeToTheRawBlocksBits() {
        var rng = TestRNG(seed: 31)
        for type: UInt32 in [2, 3, 8] {
            let (_, values, x16, layout) = matrix(type: type, rows: 21, n: 96, rng: &rng)
            for r in 0..<21 {
                var row = [Float](repeating: .nan, count: 96)
                kvt_dequantize_x16_row(layout, x16, kvt_x16_row_bytes(layout, 96), Int32(r), 96, &row)
                XCTAssertEqual(row, Array(values[(r * 96)..<(r * 96 + 96)]), "type \(type) row \(r)")
            }
        }
    }

    /// Quantized activations and products are the same bits at the VNNI and portable levels, and
    /// a vector alone (or a slice of rows) gives the bits it gives among 37 others: the property
    /// that makes a chat's logits independent of its batch.
    func testProductsAreTheSameBitsAtEveryLevelAloneOrInABatch() throws {
        try requireVNNI()
        var rng = TestRNG(seed: 32)
        let rows = 37, n = 128, m = 37
        for type: UInt32 in [2, 3, 8] {
            let (_, _, x16, layout) = matrix(type: type, rows: rows, n: n, rng: &rng)
            var x = (0..<(m * n)).map { _ in (rng.nextFloat() - 0.5) * 6 }
            x[5] = 40  // an outlier: its block's other values lose precision, the same way at each level
            for i in (2 * n)..<(2 * n + 32) { x[i] = 0 }  // an all-zero block (d = 0)
            for bits in [8, 16] {
                _ = kvt_set_cpu_level(Int32(KVT_CPU_AVX512))
                let xq = quantize(x, m: m, n: n, bits: bits)
                let batched = product(x16, layout: layout, rows: 0, rows, n: n, xq: xq, first: 0, m: m, bits: bits)
                _ = kvt_set_cpu_level(Int32(KVT_CPU_PORTABLE))
                XCTAssertEqual(quantize(x, m: m, n: n, bits: bits), xq, "type \(type) bits \(bits): quantization")
                let portable = product(x16, layout: layout, rows: 0, rows, n: n, xq: xq, first: 0, m: m, bits: bits)
                XCTAssertEqual(portable.map(\.bitPattern), batched.map(\.bitPattern), "type \(type) bits \(bits)")
                _ = kvt_set_cpu_level(Int32(KVT_CPU_AVX512))
                for i in [0, 4, 36] {
                    let alone = product(x16, layout: layout, rows: 0, rows, n: n, xq: xq, first: i, m: 1, bits: bits)
                    XCTAssertEqual(
                        alone.map(\.bitPattern), batched[(i * rows)..<(i * rows + rows)].map(\.bitPattern),
                        "type \(type) bits \(bits) vector \(i)")
                    let slice = product(x16, layout: layout, rows: 16, rows, n: n, xq: xq, first: i, m: 1, bits: bits)
                    XCTAssertEqual(
                        slice.map(\.bitPattern), batched[(i * rows + 16)..<(i * rows + rows)].map(\.bitPattern))
                }
            }
        }
    }

    /// Each product is within the quantization's own error of the exact product of the weights
    /// and the F32 activations: at most half a step (max|x| / 127 or / 32512 per block) per
    /// activation, plus float rounding. The 16-bit error bound is 256 times tighter.
    func testProductsAreWithinTheQuantizationErrorOfTheExactProduct() throws {
        try requireVNNI()
        var rng = TestRNG(seed: 33)
        let rows = 48, n = 192, m = 5
        for type: UInt32 in [2, 3, 8] {
            let (_, values, x16, layout) = matrix(type: type, rows: rows, n: n, rng: &rng)
            let x = (0..<(m * n)).map { _ in (rng.nextFloat() - 0.5) * 6 }
            for bits in [8, 16] {
                let step = bits == 16 ? 32512.0 : 127.0
                let got = product(
                    x16, layout: layout, rows: 0, rows, n: n, xq: quantize(x, m: m, n: n, bits: bits), first: 0, m: m,
                    bits: bits)
                var worstRatio = 0.0
                for i in 0..<m {
                    for r in 0..<rows {
                        var exact = 0.0, bound = 0.0, scale = 0.0
                        for b in 0..<(n / 32) {
                            let xs = x[(i * n + 32 * b)..<(i * n + 32 * b + 32)]
                            let amax = Double(xs.map { abs($0) }.max() ?? 0)
                            for k in 0..<32 {
                                let w = Double(values[r * n + 32 * b + k]), xv = Double(x[i * n + 32 * b + k])
                                exact += w * xv
                                scale += abs(w * xv)
                                bound += abs(w) * amax / step / 2
                            }
                        }
                        let err = abs(Double(got[i * rows + r]) - exact)
                        XCTAssertLessThanOrEqual(err, bound * 1.001 + 1e-5 * scale, "type \(type) bits \(bits)")
                        worstRatio = max(worstRatio, err / (bound + 1e-30))
                    }
                }
                print("type \(type), \(bits)-bit activations: worst error / bound \(worstRatio)")
            }
        }
    }
}
