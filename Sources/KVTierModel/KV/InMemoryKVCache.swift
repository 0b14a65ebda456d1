import CKVTierKernels

// Unsafe-pointer fence: owns raw F16 storage for keys and values.

/// A single-sequence KV cache in host memory: F16 keys (pre-RoPE) and values per layer,
/// plus one position per slot. Capacity is fixed at creation.
///
/// Not thread-safe: one decoder uses it at a time.
public final class InMemoryKVCache: KVCache {
    public let layout: KVLayout
    public let capacity: Int
    public private(set) var count: Int = 0
    private let positions: UnsafeMutablePointer<Int32>
    private let keys: UnsafeMutablePointer<UInt16>
    private let values: UnsafeMutablePointer<UInt16>

    public init(layout: KVLayout, capacity: Int) {
        self.layout = layout
        self.capacity = capacity
        let n = layout.layers * capacity * layout.rowWidth
        keys = .allocate(capacity: max(n, 1))
        values = .allocate(capacity: max(n, 1))
        positions = .allocate(capacity: max(capacity, 1))
    }

    deinit {
        keys.deallocate()
        values.deallocate()
        positions.deallocate()
    }

    private func layerBase(_ p: UnsafeMutablePointer<UInt16>, _ layer: Int) -> UnsafeMutablePointer<UInt16> {
        p + layer * capacity * layout.rowWidth
    }

    public func append(positions new: [Int32]) throws(KVCacheError) -> Int {
        guard count + new.count <= capacity else { throw KVCacheError.full(capacity: capacity, requested: count + new.count) }
        for p in new where p < 0 { throw KVCacheError.badPosition(p) }
        let start = count
        for (i, p) in new.enumerated() { positions[start + i] = p }
        count += new.count
        return start
    }

    public func write(layer: Int, start: Int, count n: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>) {
        precondition(layer >= 0 && layer < layout.layers && start >= 0 && start + n <= count, "KV write out of range")
        let w = layout.rowWidth
        kvt_f32_to_f16(k, layerBase(keys, layer) + start * w, n * w)
        kvt_f32_to_f16(v, layerBase(values, layer) + start * w, n * w)
    }

    /// Copies F16 keys and values (already in storage format) into slots [start, start + count).
    public func fill(layer: Int, start: Int, count n: Int, keys k: UnsafePointer<UInt16>, values v: UnsafePointer<UInt16>) {
        precondition(layer >= 0 && layer < layout.layers && start >= 0 && start + n <= count, "KV fill out of range")
        let w = layout.rowWidth
        (layerBase(keys, layer) + start * w).update(from: k, count: n * w)
        (layerBase(values, layer) + start * w).update(from: v, count: n * w)
    }

    /// Copies out the F16 keys then values of slots [start, start + count) of `layer`.
    public func payload(layer: Int, start: Int, count n: Int) -> [UInt8] {
        precondition(layer >= 0 && layer < layout.layers && start >= 0 && start + n <= count, "KV read out of range")
        let w = layout.rowWidth
        var out = [UInt8](repeating: 0, count: 2 * n * w * 2)
        out.withUnsafeMutableBytes { dst in
            dst.baseAddress!.copyMemory(from: layerBase(keys, layer) + start * w, byteCount: n * w * 2)
            (dst.baseAddress! + n * w * 2).copyMemory(from: layerBase(values, layer) + start * w, byteCount: n * w * 2)
        }
        return out
    }

    public func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        precondition(layer >= 0 && layer < layout.layers, "KV layer out of range")
        return try body(
            KVLayerView(
                keys: UnsafePointer(layerBase(keys, layer)), values: UnsafePointer(layerBase(values, layer)),
                positions: UnsafePointer(positions), count: count))
    }

    /// Drops every slot from `newCount` on.
    public func truncate(to newCount: Int) {
        precondition(newCount >= 0 && newCount <= count)
        count = newCount
    }

    /// The position of every slot.
    public var slotPositions: [Int32] { Array(UnsafeBufferPointer(start: positions, count: count)) }

    /// Appends copies of `source`'s slots `ranges` (in that order; keys pre-RoPE and values, every
    /// layer) after this cache's last slot, and returns the index of the first new slot.
    /// `positions` gives the new slots' positions, one per copied slot; nil keeps the source's.
    /// Because keys are stored before RoPE, giving the copies new positions re-positions them:
    /// the next pass rotates each key by its slot's new position (position-decoupled truncation).
    /// Throws like `append` when the copies do not fit or a position is negative; nothing is
    /// changed then. `source` may be this cache (the ranges then lie below the old count).
    @discardableResult
    public func copySlots(from source: InMemoryKVCache, ranges: [Range<Int>], positions newPositions: [Int32]? = nil) throws(KVCacheError) -> Int {
        precondition(source.layout == layout, "copySlots: the caches' layouts differ")
        for r in ranges { precondition(r.lowerBound >= 0 && r.upperBound <= source.count, "copySlots: range \(r) outside the source's \(source.count) slots") }
        let total = ranges.reduce(0) { $0 + $1.count }
        let sourcePositions = source.positions
        let kept = newPositions ?? ranges.flatMap { r in r.map { sourcePositions[$0] } }
        precondition(kept.count == total, "copySlots: \(kept.count) positions for \(total) slots")
        let start = try append(positions: kept)
        let w = layout.rowWidth
        for l in 0..<layout.layers {
            var dst = start
            for r in ranges where !r.isEmpty {
                (layerBase(keys, l) + dst * w).update(from: source.layerBase(source.keys, l) + r.lowerBound * w, count: r.count * w)
                (layerBase(values, l) + dst * w).update(from: source.layerBase(source.values, l) + r.lowerBound * w, count: r.count * w)
                dst += r.count
            }
        }
        return start
    }
}
