import CKVTierKernels
import Foundation
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

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
        var xs: [Float] = [
            0, -0, 1, -1, 65504, -65504, 65520, 1e-8, 6e-8, 5.96e-8, 2.98e-8, 6.1e-5, .infinity, -.infinity,
        ]
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

    /// SwiGLU, y = g * sigmoid(g) * u, against Double arithmetic at every level (AVX-512 takes
    /// e^x from a polynomial, the others from expf): within a few ulp where y is a normal float,
    /// and tiny where it underflows; lengths that leave masked tails.
    func testSwiGLUMatchesDoubleArithmeticAtEveryLevel() {
        var rng = TestRNG(seed: 5)
        var g: [Float] = [0, -0, 1, -1, 1e-30, -1e-30, 20, -20, 88, -88, 100, -100, 1e4, -1e4, 0.5, -0.5]
        g += (0..<1011).map { _ in (rng.nextFloat() - 0.5) * Float(1 << (rng.next() % 6)) }
        let u = g.indices.map { _ in (rng.nextFloat() - 0.5) * 4 }
        for level in levels {
            _ = kvt_set_cpu_level(level)
            for n in [1, 15, 16, 17, g.count] {
                var y = [Float](repeating: .nan, count: n)
                kvt_swiglu(g, u, &y, n)
                for i in 0..<n {
                    let gd = Double(g[i])
                    let expected = gd / (1 + exp(-gd)) * Double(u[i])
                    let tolerance = max(abs(expected) * 1e-6, 1e-37)
                    XCTAssertEqual(Double(y[i]), expected, accuracy: tolerance, "level \(level), g \(g[i]), u \(u[i])")
                }
            }
        }
    }

    /// The batched matrix-vector kernel gives, for every activation vector, exactly (bit for bit)
    /// what the lone-vector kernel gives at the same level: batched decoding changes no logit.
    /// Widths cover the four-vector groups and their tails, lengths the four-block loop's tails,
    /// row counts the 16-row tiles' tails.
    func testBatchedMatvecIsBitIdenticalToOneVectorAtATimeAtEveryLevel() {
        var rng = TestRNG(seed: 11)
        for type: UInt32 in [0, 1, 2, 3, 8] {
            for n in [32, 160, 576] {
                let rows = 37
                let wv = (0..<(rows * n)).map { _ in (rng.nextFloat() - 0.5) * 2 }
                var w: [UInt8] = []
                for r in 0..<rows { w += GGUFWriter.encode(Array(wv[(r * n)..<((r + 1) * n)]), type: type) }
                let rowBytes = w.count / rows
                for m in [1, 2, 3, 4, 5, 7, 8, 9] {
                    let x = (0..<(m * n)).map { _ in (rng.nextFloat() - 0.5) * 3 + 0.5 }
                    var sums = [Float](repeating: 0, count: m * n / 32)
                    x.withUnsafeBufferPointer { xp in
                        sums.withUnsafeMutableBufferPointer { sp in
                            for i in 0..<m {
                                kvt_block_sums(xp.baseAddress! + i * n, sp.baseAddress! + i * n / 32, Int32(n))
                            }
                        }
                    }
                    for level in levels {
                        _ = kvt_set_cpu_level(level)
                        var one = [Float](repeating: .nan, count: m * rows)
                        var many = [Float](repeating: .nan, count: m * rows)
                        for i in 0..<m {
                            x.withUnsafeBufferPointer { xp in
                                sums.withUnsafeBufferPointer { sp in
                                    one.withUnsafeMutableBufferPointer { op in
                                        kvt_matvec(
                                            Int32(type), w, rowBytes, 3, Int32(rows), Int32(n), xp.baseAddress! + i * n,
                                            sp.baseAddress! + i * n / 32, op.baseAddress! + i * rows + 3)
                                    }
                                }
                            }
                        }
                        many.withUnsafeMutableBufferPointer { op in
                            kvt_matvec_rows(
                                Int32(type), w, rowBytes, 3, Int32(rows), Int32(n), x, n, sums, n / 32, Int32(m),
                                op.baseAddress! + 3, rows)
                        }
                        let differing = (0..<m).flatMap { i in (3..<rows).map { i * rows + $0 } }.filter {
                            many[$0].bitPattern != one[$0].bitPattern
                        }
                        XCTAssertEqual(
                            differing.count, 0,
                            "type \(type) n \(n) m \(m) level \(level): first at \(differing.first ?? 0): "
                                + "\(differing.first.map { many[$0] } ?? 0) vs \(differing.first.map { one[$0] } ?? 0)"
                        )
                    }
                }
            }
        }
    }

    /// Attention over a paged cache: however the slots are cut into runs (pages), at any place,
    /// the output is bit for bit that of one contiguous run, at every level and for both element
    /// types; and it is the softmax-weighted sum of plain arithmetic.
    func testAttentionOverRunsIsBitIdenticalToOneContiguousRun() {
        var rng = TestRNG(seed: 7)
        let d = 64
        let kvHeads = 2
        let ld = kvHeads * d
        let slots = 77
        let rope = RopeTable(capacity: 128, headDim: d, base: 10000)
        let q = (0..<d).map { _ in rng.nextFloat() - 0.5 }
        let positions = (0..<slots).map { Int32($0 + 3) }
        let keys = (0..<(slots * ld)).map { _ in rng.nextFloat() - 0.5 }
        let values = (0..<(slots * ld)).map { _ in rng.nextFloat() - 0.5 }
        for elemBytes in [2, 4] {
            let k = cacheBytes(keys, elemBytes)
            let v = cacheBytes(values, elemBytes)
            for level in levels {
                _ = kvt_set_cpu_level(level)
                for cuts in [[], [1], [16, 32, 48, 64], [5, 6, 40, 76]] {
                    let bounds = [0] + cuts + [slots]
                    // Every run in its own buffer, as pages are.
                    let pages = paged(k, v, bounds, rowBytes: ld * elemBytes)
                    for head in 0..<kvHeads {
                        for visible in [1, 17, slots] {
                            let whole = attend(q, [(k, v, slots)], head * d, elemBytes, ld, positions, visible, d, rope)
                            let paged = attend(q, pages, head * d, elemBytes, ld, positions, visible, d, rope)
                            XCTAssertEqual(
                                whole.map(\.bitPattern), paged.map(\.bitPattern),
                                "level \(level) e\(elemBytes) cuts \(cuts)")
                            if elemBytes == 4 && cuts.isEmpty && head == 1 && visible == slots {
                                let expect = plainAttention(q, keys, values, head * d, ld, positions, visible, d, rope)
                                for (a, b) in zip(whole, expect) { XCTAssertEqual(a, b, accuracy: 1e-5) }
                            }
                        }
                    }
                }
            }
        }
    }

    private func attend(
        _ q: [Float], _ pages: [([UInt8], [UInt8], Int)], _ offset: Int, _ elemBytes: Int, _ ld: Int, _ pos: [Int32],
        _ visible: Int, _ d: Int, _ rope: RopeTable
    ) -> [Float] {
        var out = [Float](repeating: 0, count: d)
        var scores = [Float](repeating: 0, count: visible)
        withRuns(pages) { runs in
            kvt_attend_runs(
                q, runs, offset, Int32(elemBytes), ld, pos, Int32(visible), Int32(d), 1 / Float(d).squareRoot(),
                rope.cos, rope.sin, &scores, &out)
        }
        return out
    }

    /// Calls `body` with runs over the pages' bytes, which stay put (arrays of the caller, not
    /// copied) while the kernel reads them.
    private func withRuns(_ pages: [([UInt8], [UInt8], Int)], _ body: ([kvt_kv_run]) -> Void) {
        func nest(_ i: Int, _ runs: [kvt_kv_run]) {
            guard i < pages.count else { return body(runs) }
            pages[i].0.withUnsafeBytes { kb in
                pages[i].1.withUnsafeBytes { vb in
                    nest(i + 1, runs + [kvt_kv_run(k: kb.baseAddress, v: vb.baseAddress, count: Int64(pages[i].2))])
                }
            }
        }
        nest(0, [])
    }

    /// Cached elements as the cache stores them: F32, or F16 when `elemBytes` is 2.
    private func cacheBytes(_ xs: [Float], _ elemBytes: Int) -> [UInt8] {
        elemBytes == 4 ? xs.withUnsafeBytes { Array($0) } : xs.map { Float16($0) }.withUnsafeBytes { Array($0) }
    }

    /// The slots cut at `bounds` into pages, each in its own buffer.
    private func paged(_ k: [UInt8], _ v: [UInt8], _ bounds: [Int], rowBytes: Int) -> [([UInt8], [UInt8], Int)] {
        zip(bounds, bounds.dropFirst()).map { lo, hi in
            (Array(k[(lo * rowBytes)..<(hi * rowBytes)]), Array(v[(lo * rowBytes)..<(hi * rowBytes)]), hi - lo)
        }
    }

    /// Softmax(q . rope(k) / sqrt(d)) . v in doubles.
    private func plainAttention(
        _ q: [Float], _ k: [Float], _ v: [Float], _ offset: Int, _ ld: Int, _ pos: [Int32], _ visible: Int, _ d: Int,
        _ rope: RopeTable
    ) -> [Float] {
        var scores: [Double] = []
        for t in 0..<visible {
            var dot = 0.0
            for i in 0..<(d / 2) {
                let c = Double(rope.cos[Int(pos[t]) * d / 2 + i])
                let s = Double(rope.sin[Int(pos[t]) * d / 2 + i])
                let k0 = Double(k[t * ld + offset + 2 * i])
                let k1 = Double(k[t * ld + offset + 2 * i + 1])
                dot += Double(q[2 * i]) * (k0 * c - k1 * s) + Double(q[2 * i + 1]) * (k0 * s + k1 * c)
            }
            scores.append(dot / Double(d).squareRoot())
        }
        let mx = scores.max()!
        let e = scores.map { Foundation.exp($0 - mx) }
        let sum = e.reduce(0, +)
        return (0..<d).map { i in
            Float((0..<visible).reduce(0.0) { $0 + e[$1] / sum * Double(v[$1 * ld + offset + i]) })
        }
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
                for i in values.indices {
                    XCTAssertEqual(out[i], expected[i], accuracy: 1e-6, "type \(type) level \(level) i \(i)")
                }
            }
        }
    }

    /// Quantized weights times F32 activations: every level against plain Double arithmetic on
    /// the stored (dequantized) weights, and the levels against each other, to ~1e-5 of the sum
    /// of |w_j x_j|. Lengths cover a single block and tails of the four-block unrolled loops; the
    /// offset activations make Q4_1's m * xsum term large.
    func testFloatActivationDotsMatchDoubleAtEveryLevel() {
        var rng = TestRNG(seed: 3)
        for n in [32, 64, 96, 160, 576, 1536] {
            let wv = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 2 }
            for offset: Float in [0, 2] {
                let x = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 3 + offset }
                for type: UInt32 in [2, 3, 8] {
                    let w = GGUFWriter.encode(wv, type: type)
                    let wd = GGUFWriter.decode(w, type: type, count: n)
                    let exact = zip(wd, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                    let scale = zip(wd, x).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
                    var results: [Float] = []
                    for level in levels {
                        _ = kvt_set_cpu_level(level)
                        var sums = [Float](repeating: .nan, count: n / 32)
                        kvt_block_sums(x, &sums, Int32(n))
                        let got = kvt_dot_qf(Int32(type), w, x, sums, Int32(n))
                        XCTAssertEqual(
                            Double(got), exact, accuracy: 1e-5 * scale,
                            "type \(type) n \(n) offset \(offset) level \(level)")
                        results.append(got)
                    }
                    for r in results {
                        XCTAssertEqual(
                            Double(r), Double(results[0]), accuracy: 1e-5 * scale,
                            "levels disagree: type \(type) n \(n)")
                    }
                }
            }
        }
    }

    func testBlockSumsAtEveryLevel() {
        var rng = TestRNG(seed: 5)
        let n = 320
        let x = (0..<n).map { _ in (rng.nextFloat() - 0.3) * 10 }
        for level in levels {
            _ = kvt_set_cpu_level(level)
            var sums = [Float](repeating: .nan, count: n / 32)
            kvt_block_sums(x, &sums, Int32(n))
            for b in 0..<(n / 32) {
                let exact = x[(32 * b)..<(32 * b + 32)].reduce(0.0) { $0 + Double($1) }
                let scale = x[(32 * b)..<(32 * b + 32)].reduce(0.0) { $0 + abs(Double($1)) }
                XCTAssertEqual(Double(sums[b]), exact, accuracy: 1e-6 * scale, "level \(level) block \(b)")
            }
        }
    }
}

extension KernelTests {
    /// kvt_matvec over a slice of rows gives each row's kvt_dot_qf exactly (same code at the same
    /// level), and float-typed matrices match Double arithmetic.
    func testMatvecRowsAreTheDotProducts() {
        var rng = TestRNG(seed: 4)
        let n = 192
        let rows = 7
        let x = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 3 }
        var sums = [Float](repeating: 0, count: n / 32)
        for type: UInt32 in [0, 1, 2, 3, 8] {
            let matrix = (0..<(rows * n)).map { _ in (rng.nextFloat() - 0.5) * 2 }
            let w = GGUFWriter.encode(matrix, type: type)
            let rowBytes = w.count / rows
            let wd = GGUFWriter.decode(w, type: type, count: rows * n)
            for level in levels {
                _ = kvt_set_cpu_level(level)
                kvt_block_sums(x, &sums, Int32(n))
                var out = [Float](repeating: .nan, count: 4)
                kvt_matvec(Int32(type), w, rowBytes, 2, 6, Int32(n), x, sums, &out)
                for r in 2..<6 {
                    let row = Array(wd[(r * n)..<(r * n + n)])
                    let exact = zip(row, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                    let scale = zip(row, x).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
                    XCTAssertEqual(
                        Double(out[r - 2]), exact, accuracy: 1e-5 * scale, "type \(type) level \(level) row \(r)")
                    if type == 2 || type == 3 || type == 8 {
                        let dot = w.withUnsafeBytes {
                            kvt_dot_qf(Int32(type), $0.baseAddress! + r * rowBytes, x, sums, Int32(n))
                        }
                        XCTAssertEqual(out[r - 2], dot, "type \(type) level \(level) row \(r)")
                    }
                }
            }
        }
    }
}

extension KernelTests {
    /// The grouped decode attention (the query heads of one KV head in one call) gives each head
    /// bit for bit what a lone call gives it, at every level, for head sizes on and off the
    /// AVX-512 kernel's 16-lane shape, both cache element types, and cuts of the slots into runs;
    /// and F32 results are softmax(q . rope(k)) . v in doubles.
    func testGroupedAttentionGivesEachHeadItsLoneResult() {
        var rng = TestRNG(seed: 9)
        for d in [64, 48, 40] {
            let kvHeads = 2
            let ld = kvHeads * d
            let slots = 45
            let group = 3
            let rope = RopeTable(capacity: 64, headDim: d, base: 10000)
            let qs = (0..<(group * d)).map { _ in rng.nextFloat() - 0.5 }
            let positions = (0..<slots).map { Int32($0 + 2) }
            let keys = (0..<(slots * ld)).map { _ in rng.nextFloat() - 0.5 }
            let values = (0..<(slots * ld)).map { _ in rng.nextFloat() - 0.5 }
            for elemBytes in [2, 4] {
                let k = cacheBytes(keys, elemBytes)
                let v = cacheBytes(values, elemBytes)
                let pages = paged(k, v, [0, 20, slots], rowBytes: ld * elemBytes)
                for level in levels {
                    _ = kvt_set_cpu_level(level)
                    for visible in [1, 21, slots] {
                        for nq in 1...group {
                            var out = [Float](repeating: .nan, count: nq * d)
                            var scores = [Float](repeating: 0, count: nq * visible)
                            withRuns(pages) { runs in
                                kvt_attend_runs_group(
                                    qs, d, Int32(nq), runs, d, Int32(elemBytes), ld, positions, Int32(visible),
                                    Int32(d), 1 / Float(d).squareRoot(), rope.cos, rope.sin, &scores, &out, d)
                            }
                            for j in 0..<nq {
                                let q = Array(qs[(j * d)..<((j + 1) * d)])
                                let lone = attend(q, pages, d, elemBytes, ld, positions, visible, d, rope)
                                XCTAssertEqual(
                                    Array(out[(j * d)..<((j + 1) * d)]).map(\.bitPattern), lone.map(\.bitPattern),
                                    "d \(d) e\(elemBytes) level \(level) visible \(visible) nq \(nq) head \(j)")
                                if elemBytes == 4 {
                                    let expect = plainAttention(q, keys, values, d, ld, positions, visible, d, rope)
                                    for (a, b) in zip(out[(j * d)..<((j + 1) * d)], expect) {
                                        XCTAssertEqual(a, b, accuracy: 1e-5)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

extension KernelTests {
    /// Prompt attention (m query rows, row i seeing T0 + i slots) gives every (row, head) bit for
    /// bit what the grouped decode kernel gives it alone, at every level, for head sizes on and
    /// off the AVX-512 shape, both cache element types and slots cut into runs: a prompt's rows
    /// are the bits decoding them one by one gives.
    func testPromptAttentionRowsAreTheBitsOfDecodingEachRowAlone() {
        var rng = TestRNG(seed: 10)
        for d in [64, 48] {
            let kvHeads = 2, ld = kvHeads * d, slots = 45, group = 3, m = 13, t0 = slots - m + 1
            let rope = RopeTable(capacity: 64, headDim: d, base: 10000)
            let qw = kvHeads * group * d
            let qs = (0..<(m * qw)).map { _ in rng.nextFloat() - 0.5 }
            let positions = (0..<slots).map { Int32($0 + 3) }
            let keys = (0..<(slots * ld)).map { _ in rng.nextFloat() - 0.5 }
            let values = (0..<(slots * ld)).map { _ in rng.nextFloat() - 0.5 }
            for elemBytes in [2, 4] {
                let pages = paged(cacheBytes(keys, elemBytes), cacheBytes(values, elemBytes), [0, 20, slots],
                                  rowBytes: ld * elemBytes)
                for level in levels {
                    _ = kvt_set_cpu_level(level)
                    for kvh in 0..<kvHeads {
                        let h = kvh * group
                        var rows = [Float](repeating: .nan, count: m * qw)
                        var kScratch = [Float](repeating: .nan, count: (slots + 15) / 16 * 16 * d)
                        var vScratch = [Float](repeating: 0, count: slots * d)
                        var scores = [Float](repeating: 0, count: group * slots)
                        withRuns(pages) { runs in
                            qs.withUnsafeBufferPointer { q in
                                rows.withUnsafeMutableBufferPointer { out in
                                    kvt_attend_rows_group(
                                        q.baseAddress! + h * d, qw, d, Int32(group), Int32(m), runs, kvh * d,
                                        Int32(elemBytes), ld, positions, Int32(t0), Int32(d), 1 / Float(d).squareRoot(),
                                        rope.cos, rope.sin, &kScratch, &vScratch, &scores, out.baseAddress! + h * d, qw,
                                        d)
                                }
                            }
                        }
                        for i in 0..<m {
                            var alone = [Float](repeating: .nan, count: group * d)
                            var s = [Float](repeating: 0, count: group * (t0 + i))
                            withRuns(pages) { runs in
                                qs.withUnsafeBufferPointer { q in
                                    kvt_attend_runs_group(
                                        q.baseAddress! + i * qw + h * d, d, Int32(group), runs, kvh * d,
                                        Int32(elemBytes), ld, positions, Int32(t0 + i), Int32(d),
                                        1 / Float(d).squareRoot(), rope.cos, rope.sin, &s, &alone, d)
                                }
                            }
                            XCTAssertEqual(
                                rows[(i * qw + h * d)..<(i * qw + h * d + group * d)].map(\.bitPattern),
                                alone.map(\.bitPattern), "d \(d) e\(elemBytes) level \(level) kv head \(kvh) row \(i)")
                        }
                    }
                }
            }
        }
    }
}
