import CKVTierKernels

// Unsafe-pointer fence: owns raw storage for keys and values.

/// A single-sequence KV cache in host memory: keys (pre-RoPE) and values per layer, F16 by
/// default or F32, plus one position per slot. Capacity is fixed at creation.
///
/// Not thread-safe: one decoder uses it at a time.
public final class InMemoryKVCache: KVCache {
    public let layout: KVLayout
    public let precision: KVPrecision
    public let capacity: Int
    public private(set) var count: Int = 0
    private let positions: UnsafeMutablePointer<Int32>
    private let keys: UnsafeMutableRawPointer
    private let values: UnsafeMutableRawPointer

    public init(layout: KVLayout, capacity: Int, precision: KVPrecision = .f16) {
        self.layout = layout
        self.capacity = capacity
        self.precision = precision
        let bytes = max(layout.layers * capacity * layout.rowWidth * precision.bytes, 1)
        keys = .allocate(byteCount: bytes, alignment: 64)
        values = .allocate(byteCount: bytes, alignment: 64)
        positions = .allocate(capacity: max(capacity, 1))
    }

    deinit {
        keys.deallocate()
        values.deallocate()
        positions.deallocate()
    }

    /// Bytes of one slot's keys (or values) in one layer.
    private var rowBytes: Int { layout.rowWidth * precision.bytes }

    private func base(_ p: UnsafeMutableRawPointer, _ layer: Int, slot: Int = 0) -> UnsafeMutableRawPointer {
        p + (layer * capacity + slot) * rowBytes
    }

    public func append(positions new: [Int32]) throws(KVCacheError) -> Int {
        guard count + new.count <= capacity else {
            throw KVCacheError.full(capacity: capacity, requested: count + new.count)
        }
        for p in new where p < 0 { throw KVCacheError.badPosition(p) }
        let start = count
        for (i, p) in new.enumerated() { positions[start + i] = p }
        count += new.count
        return start
    }

    public func write(
        layer: Int, start: Int, count n: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>
    ) {
        precondition(layer >= 0 && layer < layout.layers && start >= 0 && start + n <= count, "KV write out of range")
        let elements = n * layout.rowWidth
        switch precision {
        case .f16:
            kvt_f32_to_f16(k, base(keys, layer, slot: start).assumingMemoryBound(to: UInt16.self), elements)
            kvt_f32_to_f16(v, base(values, layer, slot: start).assumingMemoryBound(to: UInt16.self), elements)
        case .f32:
            base(keys, layer, slot: start).copyMemory(from: k, byteCount: elements * 4)
            base(values, layer, slot: start).copyMemory(from: v, byteCount: elements * 4)
        }
    }

    /// Copies keys and values already in this cache's element format into slots [start, start + count).
    public func fill(layer: Int, start: Int, count n: Int, keys k: UnsafeRawPointer, values v: UnsafeRawPointer) {
        precondition(layer >= 0 && layer < layout.layers && start >= 0 && start + n <= count, "KV fill out of range")
        base(keys, layer, slot: start).copyMemory(from: k, byteCount: n * rowBytes)
        base(values, layer, slot: start).copyMemory(from: v, byteCount: n * rowBytes)
    }

    /// Copies out the keys then the values of slots [start, start + count) of `layer`.
    public func payload(layer: Int, start: Int, count n: Int) -> [UInt8] {
        precondition(layer >= 0 && layer < layout.layers && start >= 0 && start + n <= count, "KV read out of range")
        var out = [UInt8](repeating: 0, count: 2 * n * rowBytes)
        out.withUnsafeMutableBytes { dst in
            dst.baseAddress!.copyMemory(from: base(keys, layer, slot: start), byteCount: n * rowBytes)
            (dst.baseAddress! + n * rowBytes).copyMemory(
                from: base(values, layer, slot: start), byteCount: n * rowBytes)
        }
        return out
    }

    public func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        precondition(layer >= 0 && layer < layout.layers, "KV layer out of range")
        let run = KVRun(
            keys: UnsafeRawPointer(base(keys, layer)), values: UnsafeRawPointer(base(values, layer)), count: count)
        return try withUnsafePointer(to: run) { r in
            try body(
                KVLayerView(
                    runs: UnsafeBufferPointer(start: r, count: 1), precision: precision,
                    positions: UnsafePointer(positions), count: count))
        }
    }

    /// Where slot `slot` of `layer` starts: its keys and its values (for a cache that lends its
    /// rows to a paged view). The slot must be below `capacity`.
    public func rows(layer: Int, slot: Int) -> (keys: UnsafeRawPointer, values: UnsafeRawPointer) {
        precondition(layer >= 0 && layer < layout.layers && slot >= 0 && slot <= capacity, "KV slot out of range")
        return (UnsafeRawPointer(base(keys, layer, slot: slot)), UnsafeRawPointer(base(values, layer, slot: slot)))
    }

    /// The slots' positions (`count` of them), for a cache that lends them to a paged view.
    public var positionsPointer: UnsafePointer<Int32> { UnsafePointer(positions) }

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
    public func copySlots(from source: InMemoryKVCache, ranges: [Range<Int>], positions newPositions: [Int32]? = nil)
        throws(KVCacheError) -> Int
    {
        precondition(source.layout == layout && source.precision == precision, "copySlots: the caches' layouts differ")
        for r in ranges {
            precondition(
                r.lowerBound >= 0 && r.upperBound <= source.count,
                "copySlots: range \(r) outside the source's \(source.count) slots")
        }
        let total = ranges.reduce(0) { $0 + $1.count }
        let sourcePositions = source.positions
        let kept = newPositions ?? ranges.flatMap { r in r.map { sourcePositions[$0] } }
        precondition(kept.count == total, "copySlots: \(kept.count) positions for \(total) slots")
        let start = try append(positions: kept)
        for l in 0..<layout.layers {
            var dst = start
            for r in ranges where !r.isEmpty {
                base(keys, l, slot: dst).copyMemory(
                    from: source.base(source.keys, l, slot: r.lowerBound), byteCount: r.count * rowBytes)
                base(values, l, slot: dst).copyMemory(
                    from: source.base(source.values, l, slot: r.lowerBound), byteCount: r.count * rowBytes)
                dst += r.count
            }
        }
        return start
    }
}

extension KVPrecision {
    /// Stores `elements` floats at `destination` in this precision (rows of a cache whose pages
    /// live elsewhere, such as the tiered store's HBM pages).
    public func store(_ source: UnsafePointer<Float>, to destination: UnsafeMutableRawPointer, elements: Int) {
        switch self {
        case .f16: kvt_f32_to_f16(source, destination.assumingMemoryBound(to: UInt16.self), elements)
        case .f32: destination.copyMemory(from: source, byteCount: elements * 4)
        }
    }
}
