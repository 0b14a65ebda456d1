import CKVTierKernels
import XCTest

@testable import KVTierModel

/// The SIMD paths must agree with the portable ones, and both with plain arithmetic.
final class KernelTests: XCTestCase {
    override func tearDown() {
        _ = kvt_set_cpu_level(Int32(KVT_CPU_AVX512))  // back to the best the machine has
    }

    private var levels: [Int32] {
        (0...kvt_cpu_level_detected()).map { $0 }
    }

    func testHalfConversionIsExactAtEveryLevel() {
        var rng = TestRNG(seed: 1)
        var xs: [Float] = [0, -0, 1, -1, 65504, -65504, 65520, 1e-8, 6e-8, 5.96e-8, 2.98e-8, 6.1e-5, .infinity, -.infinity]
        xs += (0..<5000).map { _ in (rng.nextFloat() - 0.5) * Float(1 << (rng.next() % 20)) }
        for level in levels {
            _ = kvt_set_cpu_level(level)
            var h = [UInt16](repeating: 0, count: xs.count)
            kvt_f32_to_f16(xs, &h, xs.count)
            for (x, bits) in zip(xs, h) {
                XCTAssertEqual(bits, Float16(x).bitPattern, "level \(level): \(x)")
            }
            var back = [Float](repeating: 0, count: xs.count)
            kvt_f16_to_f32(h, &back, h.count)
            for (bits, y) in zip(h, back) { XCTAssertEqual(y, Float(Float16(bitPattern: bits))) }
        }
        var nan: UInt16 = 0
        var f = Float.nan
        kvt_f32_to_f16(&f, &nan, 1)
        XCTAssertTrue(Float16(bitPattern: nan).isNaN)
    }

    func testDequantizeMatchesTheWriterAtEveryLevel() {
        var rng = TestRNG(seed: 2)
        let values = (0..<256).map { _ in (rng.nextFloat() - 0.5) * 4 }
        for type: UInt32 in [0, 1, 2, 3, 8] {
            let bytes = GGUFWriter.encode(values, type: type)
            let expected = GGUFWriter.decode(bytes, type: type, count: values.count)
            for level in levels {
                _ = kvt_set_cpu_level(level)
                var out = [Float](repeating: .nan, count: values.count)
                kvt_dequantize_row(Int32(type), bytes, &out, Int32(values.count))
                for i in values.indices { XCTAssertEqual(out[i], expected[i], accuracy: 1e-6, "type \(type) level \(level) i \(i)") }
            }
        }
    }

    func testQuantizedDotProductsAgreeAcrossLevels() {
        var rng = TestRNG(seed: 3)
        let n = 576
        let x = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 3 }
        let wv = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 2 }
        for type: UInt32 in [2, 3, 8] {
            let w = GGUFWriter.encode(wv, type: type)
            let wd = GGUFWriter.decode(w, type: type, count: n)
            let exact = zip(wd, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            var results: [Float] = []
            for level in levels {
                _ = kvt_set_cpu_level(level)
                var q = [kvt_block_q8](repeating: kvt_block_q8(), count: n / 32)
                kvt_quantize_q8(x, &q, Int32(n))
                results.append(kvt_dot_q(Int32(type), w, q, Int32(n)))
            }
            for r in results {
                // q8 activations lose ~0.4% per element; the sum is well within 2% of the magnitude.
                XCTAssertEqual(Double(r), exact, accuracy: 0.02 * zip(wd, x).reduce(0.0) { $0 + abs(Double($1.0 * $1.1)) }, "type \(type)")
                XCTAssertEqual(r, results[0], accuracy: 1e-3 * max(1, abs(results[0])), "levels disagree for type \(type)")
            }
        }
    }

    func testQuantizeQ8IsRoundToNearest() {
        let x: [Float] = (0..<32).map { Float($0) - 15.5 }
        var q = [kvt_block_q8](repeating: kvt_block_q8(), count: 1)
        for level in levels {
            _ = kvt_set_cpu_level(level)
            kvt_quantize_q8(x, &q, 32)
            let d = q[0].d
            XCTAssertEqual(d, 15.5 / 127, accuracy: 1e-7)
            let qs = withUnsafeBytes(of: q[0].qs) { Array($0.bindMemory(to: Int8.self)) }
            for i in 0..<32 { XCTAssertEqual(Int(qs[i]), Int((x[i] / d).rounded(.toNearestOrEven)), "level \(level) i \(i)") }
            XCTAssertEqual(q[0].s, d * Float(qs.reduce(0) { $0 + Int($1) }), accuracy: 1e-5)
        }
    }
}

extension KernelTests {
    /// Given the q8 activations, the quantized dot products are exact up to float rounding.
    func testQuantizedDotIsExactGivenQ8Activations() {
        var rng = TestRNG(seed: 4)
        let n = 576
        let x = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 3 }
        let wv = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 2 }
        for type: UInt32 in [2, 3, 8] {
            let w = GGUFWriter.encode(wv, type: type)
            let wd = GGUFWriter.decode(w, type: type, count: n)
            for level in levels {
                _ = kvt_set_cpu_level(level)
                var q = [kvt_block_q8](repeating: kvt_block_q8(), count: n / 32)
                kvt_quantize_q8(x, &q, Int32(n))
                var xq: [Double] = []
                for b in q {
                    let qs = withUnsafeBytes(of: b.qs) { Array($0.bindMemory(to: Int8.self)) }
                    xq += qs.map { Double($0) * Double(b.d) }
                }
                let exact = zip(wd, xq).reduce(0.0) { $0 + Double($1.0) * $1.1 }
                let got = kvt_dot_q(Int32(type), w, q, Int32(n))
                XCTAssertEqual(Double(got), exact, accuracy: 1e-4 * max(1, abs(exact)), "type \(type) level \(level)")
                var out: [Float] = [0]
                kvt_matvec(Int32(type), w, w.count, 0, 1, Int32(n), q, x, &out)
                XCTAssertEqual(out[0], got)
            }
        }
    }
}
