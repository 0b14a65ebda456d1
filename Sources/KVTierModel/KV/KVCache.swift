/// Shape of the KV data for one model: per layer and token, `kvHeads * headDim` keys and as many values.
public struct KVLayout: Sendable, Equatable, Hashable {
    public var layers: Int
    public var kvHeads: Int
    public var headDim: Int

    public init(layers: Int, kvHeads: Int, headDim: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
    }

    /// Elements of keys (or of values) per token per layer.
    public var rowWidth: Int { kvHeads * headDim }
    /// Bytes of keys and values per token over all layers, stored as F16.
    public var bytesPerToken: Int { 2 * layers * rowWidth * 2 }
}

/// Element type of cached keys and values. F16 halves the memory; F32 makes a cached token's KV
/// bit-identical to what recomputation produces (no rounding that a different summation order
/// could flip).
public enum KVPrecision: Sendable, Equatable {
    case f16
    case f32

    public var bytes: Int { self == .f16 ? 2 : 4 }
}

/// Consecutive slots of one layer that lie together in memory: `count` rows of keys from `keys`
/// and of values from `values`, each row `rowWidth` elements of the cache's precision.
public struct KVRun {
    public let keys: UnsafeRawPointer
    public let values: UnsafeRawPointer
    public let count: Int

    public init(keys: UnsafeRawPointer, values: UnsafeRawPointer, count: Int) {
        self.keys = keys
        self.values = values
        self.count = count
    }
}

/// Read-only view of one layer of a cache: `count` slots, keys pre-RoPE, `rowWidth` elements
/// of `precision` per slot, held in `runs` (slot order; one run for a contiguous cache, one per
/// page or part of a page for a paged one). Attention reads the runs in place.
public struct KVLayerView {
    /// Together exactly `count` slots, in slot order.
    public let runs: UnsafeBufferPointer<KVRun>
    public let precision: KVPrecision
    /// The position of each slot; attention rotates slot t's key by `positions[t]`.
    public let positions: UnsafePointer<Int32>
    public let count: Int

    public init(runs: UnsafeBufferPointer<KVRun>, precision: KVPrecision, positions: UnsafePointer<Int32>, count: Int) {
        self.runs = runs
        self.precision = precision
        self.positions = positions
        self.count = count
    }
}

/// The seam between the decoder and whoever owns KV memory (an in-memory cache for local
/// use, the tiered store's HBM arena in the daemon).
///
/// Protocol of one forward pass over `n` new tokens:
/// 1. `append(positions:)` reserves n slots at the end, with explicit positions;
/// 2. per layer l, in order: `write(layer:start:...)` stores the new tokens' keys (before RoPE)
///    and values; `waitUntilResident(layer:)` blocks until the older slots of layer l are
///    readable (a layer-wise load may still be moving them); `withLayer` reads; `didFinish(layer:)`
///    tells the owner that layer l of the new slots is final (it may start saving it).
///
/// A cache is used by one decoder at a time; implementations need not be thread-safe
/// except where they say so.
public protocol KVCache: AnyObject {
    var layout: KVLayout { get }
    /// Number of slots (tokens) held.
    var count: Int { get }
    /// Reserves `positions.count` slots after the last one; returns the index of the first.
    func append(positions: [Int32]) throws(KVCacheError) -> Int
    /// Stores keys (pre-RoPE) and values for slots [start, start + count) of `layer`.
    /// `keys`/`values` are `count * rowWidth` floats, row-major by slot.
    func write(layer: Int, start: Int, count: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>)
    /// Blocks until all slots of `layer` before the ones being written are readable.
    func waitUntilResident(layer: Int)
    /// Calls `body` with a view of `layer`'s slots [0, count).
    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R
    /// Layer `layer` of the slots appended by the current pass is complete.
    func didFinish(layer: Int)
}

extension KVCache {
    public func waitUntilResident(layer: Int) {}
    public func didFinish(layer: Int) {}
}

/// Why a cache cannot take more tokens.
public enum KVCacheError: Error, Equatable, Sendable, CustomStringConvertible {
    case full(capacity: Int, requested: Int)
    case badPosition(Int32)

    public var description: String {
        switch self {
        case .full(let capacity, let requested):
            return "KV cache is full: \(requested) slots requested, capacity \(capacity); start a new session or truncate"
        case .badPosition(let p):
            return "position \(p) is invalid (must be >= 0 and below the model's rope table)"
        }
    }
}
