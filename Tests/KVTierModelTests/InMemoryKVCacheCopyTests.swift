import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// `InMemoryKVCache.copySlots`: copying kept slots between caches, with new or old positions.
final class InMemoryKVCacheCopyTests: XCTestCase {
    private let layout = KVLayout(layers: 2, kvHeads: 2, headDim: 4)

    /// Key of (layer, slot, element): small integers, exact in F16; values are their negatives.
    private func key(_ l: Int, _ s: Int, _ j: Int) -> Float { Float(l * 500 + s * 8 + j) }

    private func filled(_ n: Int, positions: [Int32]) throws -> InMemoryKVCache {
        let c = InMemoryKVCache(layout: layout, capacity: 32)
        _ = try c.append(positions: positions)
        let w = layout.rowWidth
        for l in 0..<layout.layers {
            let k = (0..<(n * w)).map { key(l, $0 / w, $0 % w) }
            let v = k.map { -$0 }
            c.write(layer: l, start: 0, count: n, keys: k, values: v)
        }
        return c
    }

    private func rows(_ c: InMemoryKVCache, layer: Int) -> (keys: [Float], values: [Float]) {
        c.withLayer(layer) { v in
            let n = v.count * layout.rowWidth
            return (
                (0..<n).map { Float(Float16(bitPattern: v.runs[0].keys.load(fromByteOffset: 2 * $0, as: UInt16.self))) },
                (0..<n).map { Float(Float16(bitPattern: v.runs[0].values.load(fromByteOffset: 2 * $0, as: UInt16.self))) }
            )
        }
    }

    func testCopiesKeysValuesAndPositions() throws {
        let src = try filled(10, positions: (0..<10).map { Int32(100 + $0) })
        let dst = InMemoryKVCache(layout: layout, capacity: 8)
        // One slot already there: the copies go after it.
        _ = try dst.append(positions: [0])
        let start = try dst.copySlots(from: src, ranges: [0..<2, 5..<5, 6..<9], positions: [1, 2, 3, 4, 5])
        XCTAssertEqual(start, 1)
        XCTAssertEqual(dst.count, 6)
        XCTAssertEqual(dst.slotPositions, [0, 1, 2, 3, 4, 5])
        let kept = [0, 1, 6, 7, 8]
        let w = layout.rowWidth
        for l in 0..<layout.layers {
            let (k, v) = rows(dst, layer: l)
            for (i, s) in kept.enumerated() {
                for j in 0..<w {
                    XCTAssertEqual(k[(1 + i) * w + j], key(l, s, j))
                    XCTAssertEqual(v[(1 + i) * w + j], -key(l, s, j))
                }
            }
        }
        // The source is untouched.
        XCTAssertEqual(src.count, 10)
        XCTAssertEqual(rows(src, layer: 1).keys, rows(try filled(10, positions: (0..<10).map { Int32($0) }), layer: 1).keys)
    }

    func testNilPositionsKeepTheSourcePositions() throws {
        let src = try filled(10, positions: (0..<10).map { Int32(3 * $0) })
        let dst = InMemoryKVCache(layout: layout, capacity: 8)
        try dst.copySlots(from: src, ranges: [0..<1, 7..<10])
        XCTAssertEqual(dst.slotPositions, [0, 21, 24, 27])
        XCTAssertEqual(rows(dst, layer: 0).keys[layout.rowWidth], key(0, 7, 0))
    }

    func testFullOrBadPositionThrowsAndChangesNothing() throws {
        let src = try filled(10, positions: (0..<10).map { Int32($0) })
        let dst = InMemoryKVCache(layout: layout, capacity: 4)
        _ = try dst.append(positions: [0])
        XCTAssertThrowsError(try dst.copySlots(from: src, ranges: [0..<4])) {
            XCTAssertEqual($0 as? KVCacheError, .full(capacity: 4, requested: 5))
        }
        XCTAssertThrowsError(try dst.copySlots(from: src, ranges: [0..<2], positions: [1, -1])) {
            XCTAssertEqual($0 as? KVCacheError, .badPosition(-1))
        }
        XCTAssertEqual(dst.count, 1)
    }

    /// In a one-layer model the keys and values of a token do not depend on its context, so
    /// re-positioned copies from a longer prefill must give the logits of recomputing the kept
    /// tokens at the new positions; keeping the old positions instead gives different logits.
    func testRepositionedCopyEqualsRecomputationInOneLayer() throws {
        var tiny = TinyModel(seed: 21)
        tiny.layers = 1
        let model = try LlamaModel(path: tiny.write())
        let t = model.makeTransformer(threads: 2)
        t.gemmThreshold = 1  // one kernel path for every batch size (q8 rounding would differ between them)
        let tokens: [Int32] = [1, 75, 104, 259, 40, 110, 260, 261, 2, 1, 50, 60, 70, 80, 90, 100, 110, 120]
        let query: [Int32] = [33, 44, 55]
        let ranges = [0..<2, 11..<18]
        let kept = ranges.flatMap { tokens[$0] }
        func logits(_ cache: InMemoryKVCache, from p: Int) throws -> [[Float]] {
            var out: [[Float]] = []
            try t.forward(tokens: query, positions: (0..<query.count).map { Int32(p + $0) }, cache: cache, logits: .all) { _, l in out.append(Array(l)) }
            return out
        }
        let big = InMemoryKVCache(layout: model.kvLayout, capacity: 32)
        try t.forward(tokens: tokens, positions: tokens.indices.map { Int32($0) }, cache: big, logits: .none)
        let fresh = InMemoryKVCache(layout: model.kvLayout, capacity: 32)
        try t.forward(tokens: kept, positions: kept.indices.map { Int32($0) }, cache: fresh, logits: .none)
        let expected = try logits(fresh, from: kept.count)

        let moved = InMemoryKVCache(layout: model.kvLayout, capacity: 32)
        try moved.copySlots(from: big, ranges: ranges, positions: kept.indices.map { Int32($0) })
        for (a, b) in zip(try logits(moved, from: kept.count), expected) {
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 2e-3)
        }
        // Old positions and the query right after the kept tokens: the relative distances change.
        let stale = InMemoryKVCache(layout: model.kvLayout, capacity: 32)
        try stale.copySlots(from: big, ranges: ranges)
        XCTAssertEqual(stale.slotPositions, [0, 1, 11, 12, 13, 14, 15, 16, 17])
        let wrong = try logits(stale, from: kept.count)
        XCTAssertGreaterThan(zip(wrong[0], expected[0]).map { abs($0 - $1) }.max()!, 1e-2)
    }
}
