import Dispatch
import KVTierModel
import KVTierStore

/// Saves a turn's new KV into the store in blocks of `blockTokens`, layer by layer, as soon as
/// a block of a layer is complete (and the partial tail at the end of the turn).
///
/// Threads: `saveComplete` is called by whoever runs the turn's layers (the batch executor's
/// thread inside a step, the turn's thread at the end; never both at once) and only copies the
/// block out of the turn's cache. Admitting it into HBM and saving it down (which may evict other
/// sessions, or wait for the save queue's back-pressure) run on `queue`, one serial queue per
/// turn, so a step of the running batch never waits for the store.
///
/// Each block goes under the namespace `homeFor` picks for its range when its first layer is
/// saved (the session's own, or an alternate one when that key is still referenced: blocks are
/// immutable), and every later layer of it follows.
/// `queue` owns `written` and `failedRanges`; the turn reads them after `drain()`.
final class LayerSaver: @unchecked Sendable {
    /// Where the blocks go: admitted into HBM, then saved down (all the saver uses of the store).
    let store: TieredStore
    /// The store key of a block range in a layer.
    let key: @Sendable (Int, SessionState.BlockRange) -> BlockKey
    let layers: Int
    let sinks: Int
    let dropEnd: Int
    /// Where the system message ends: blocks end there too (nil: no system message).
    let systemEnd: Int?
    let blockTokens: Int
    let placement: Placement
    private let queue = DispatchQueue(label: "kvtier.engine.saver")
    /// Per layer: history index up to which blocks were handed to the store (caller's state).
    private var savedUpTo: [Int]
    /// The namespace for a block range (start, count), asked once per block (caller's state).
    private let homeFor: (Int, Int) -> String
    private var homes: [Range<Int>: String] = [:]
    /// Owned by `queue`.
    private var writtenBlocks: [SessionState.BlockRange] = []
    /// Owned by `queue`.
    private var failedRanges: Set<SessionState.BlockRange> = []

    init(
        store: TieredStore, key: @escaping @Sendable (Int, SessionState.BlockRange) -> BlockKey, layers: Int,
        from: Int, sinks: Int, dropEnd: Int, systemEnd: Int?, blockTokens: Int, placement: Placement,
        homeFor: @escaping (Int, Int) -> String
    ) {
        self.store = store
        self.key = key
        self.homeFor = homeFor
        self.layers = layers
        self.sinks = sinks
        self.dropEnd = dropEnd
        self.systemEnd = systemEnd
        self.blockTokens = blockTokens
        self.placement = placement
        savedUpTo = [Int](repeating: from, count: layers)
    }

    /// Waits until every block handed over so far is admitted and its save started.
    func drain() { queue.sync {} }

    /// Blocks saved in every layer, in the order they were written (after `drain()`).
    var written: [SessionState.BlockRange] { queue.sync { writtenBlocks } }

    /// Blocks that could not be saved in some layer (after `drain()`).
    var failedRangesSet: Set<SessionState.BlockRange> { queue.sync { failedRanges } }

    /// Keys of blocks that could not be saved in some layer (every layer's key, to remove).
    var failedKeys: [BlockKey] {
        failedRangesSet.flatMap { b in (0..<layers).map { key($0, b) } }
    }

    /// The next block starting at history index `start`: blocks never cross the dropped gap.
    private func chunk(from start: Int, end: Int) -> Range<Int>? {
        var s = start
        if s >= sinks && s < dropEnd { s = dropEnd }
        guard s < end else { return nil }
        var e = min(s + blockTokens, end)
        if s < sinks && dropEnd > sinks { e = min(e, sinks) }
        if let systemEnd, s < systemEnd { e = min(e, systemEnd) }
        return s..<e
    }

    /// Saves the complete blocks of `layer` among history indices below `end` (all of them, the
    /// partial last one included, when `final`).
    func saveComplete(layer: Int, end: Int, slotOf: [Int: Int], cache: TurnCache, final: Bool) {
        while let r = chunk(from: savedUpTo[layer], end: end) {
            guard
                r.count == blockTokens || final || (r.upperBound == sinks && dropEnd > sinks)
                    || r.upperBound == systemEnd
            else { break }
            guard let slot = slotOf[r.lowerBound] else { break }
            let home = homes[r] ?? homeFor(r.lowerBound, r.count)
            homes[r] = home
            let b = SessionState.BlockRange(home: home, start: r.lowerBound, count: r.count)
            let block = KVBlock(
                key: key(layer, b), elementType: store.elementType, rowWidth: cache.layout.rowWidth,
                payload: cache.payload(layer: layer, start: slot, count: b.count))
            queue.async { self.record(b, layer: layer, admitted: (try? self.store.admit(block)) != nil) }
            savedUpTo[layer] = b.end
        }
    }

    /// On `queue`: saves an admitted block down, or notes the failure.
    private func record(_ b: SessionState.BlockRange, layer: Int, admitted: Bool) {
        if admitted {
            store.save(key(layer, b), placement: placement)
            if layer == 0 { writtenBlocks.append(b) }
        } else {
            // Not in HBM (e.g. the arena is full of pinned pages): the block is not recorded,
            // and its other layers are removed after the turn.
            writtenBlocks.removeAll { $0 == b }
            failedRanges.insert(b)
        }
    }
}
