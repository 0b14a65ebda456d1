import Foundation

/// The result of loading one layer: the blocks now in HBM (in token order) and the blocks that
/// could not be found or failed their checksum (the caller recomputes those tokens).
public struct LayerLoad: Sendable {
    public var layer: Int
    public var pages: [(key: BlockKey, page: PageID)]
    public var missing: [BlockKey]
    /// Blocks served from each tier.
    public var fromHBM = 0, fromDRAM = 0, fromDisk = 0, fromRemote = 0
    /// The tier each delivered block came from.
    public var sources: [BlockKey: Tier] = [:]
    /// Time spent reading this layer's blocks from the remote tier (nil when none was asked for).
    public var remoteReadSeconds: Double?
    /// KV bytes this layer read from the disk tier and from the remote tier (the turn waits
    /// for them when it needs the layer before they arrive).
    public var diskBytes = 0, remoteBytes = 0
}

/// A layer-wise load in progress. The consumer calls `wait(layer:)` before computing layer l;
/// layer l + 1 keeps moving meanwhile. Pages handed out stay pinned until `release()`.
///
/// Thread-safety: `condition` guards `results`; the store's loader fills them, any thread waits.
public final class LoadHandle: @unchecked Sendable {
    public let session: String
    public let layers: Range<Int>
    private let condition = NSCondition()
    private var results: [Int: LayerLoad] = [:]
    private var released = false
    /// Highest layer the consumer has asked for (guarded by `condition`).
    private var consumed = -1
    let onRelease: @Sendable (LoadHandle) -> Void

    init(session: String, layers: Range<Int>, onRelease: @escaping @Sendable (LoadHandle) -> Void) {
        self.session = session
        self.layers = layers
        self.onRelease = onRelease
    }

    /// Blocks until layer `layer` is in HBM (or known missing) and returns it.
    public func wait(layer: Int) -> LayerLoad {
        condition.lock()
        defer { condition.unlock() }
        if layer > consumed {
            consumed = layer
            condition.broadcast()
        }
        while results[layer] == nil { condition.wait() }
        return results[layer]!
    }

    /// Whether layer `layer` has arrived, without waiting.
    public func isReady(layer: Int) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return results[layer] != nil
    }

    func complete(_ load: LayerLoad) {
        condition.lock()
        results[load.layer] = load
        condition.broadcast()
        condition.unlock()
    }

    /// Read buffer: the loader calls this before moving `layer`, and waits until the consumer
    /// has asked for layer `layer - depth` (or released the handle).
    func waitForRoom(layer: Int, depth: Int) {
        condition.lock()
        defer { condition.unlock() }
        while !released && consumed < layer - depth { condition.wait() }
    }

    /// Waits for every layer, then unpins the session's pages (they may now be evicted).
    public func release() {
        condition.lock()
        consumed = Int.max
        condition.broadcast()
        condition.unlock()
        for l in layers { _ = wait(layer: l) }
        condition.lock()
        let first = !released
        released = true
        condition.unlock()
        if first { onRelease(self) }
    }

    var allPages: [PageID] {
        condition.lock()
        defer { condition.unlock() }
        return results.values.flatMap { $0.pages.map(\.page) }
    }
}

/// Completion of one `save`.
public final class SaveTicket: @unchecked Sendable {
    /// How far the block got.
    public enum Outcome: Sendable, Equatable {
        /// Kept in HBM only (the store's lower tiers are off).
        case inHBM
        case inDRAM
        case onDisk
        case failed(String)
    }

    public let key: BlockKey
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var outcome: Outcome?

    init(key: BlockKey) { self.key = key }

    public func wait() -> Outcome {
        condition.lock()
        defer { condition.unlock() }
        while outcome == nil { condition.wait() }
        return outcome!
    }

    func finish(_ o: Outcome) {
        condition.lock()
        outcome = o
        condition.broadcast()
        condition.unlock()
    }
}
