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
}
