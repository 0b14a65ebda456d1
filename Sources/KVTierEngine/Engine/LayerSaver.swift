import Dispatch
import KVTierModel
import KVTierStore

/// Saves a turn's new KV into the store in blocks of `blockTokens`, layer by layer, as soon as
/// a block of a layer is complete (and the partial tail at the end of the turn).
///
/// A block the decoder computed into HBM pages of its own (`TurnCache.placeComputed`) is sealed
/// in its page and adopted by the store there; any other block (reused rows it re-saves, rows
/// HBM had no page for) is copied out of the turn's cache and admitted.
///
/// While a block computed in pages fills, its first rows are saved as they fill: after a step's
/// last layer, each layer with `partialRows` new rows sends them down to DRAM as a partial copy
/// of its block (under the key of its rows so far, every layer in one transfer), each extending
/// the one before, and the complete block (or the turn's last, partial one) extends the latest:
/// so the end of a turn copies down only its last few rows.
///
/// Threads: `saveComplete` is called by whoever runs the turn's layers (the batch executor's
/// thread inside a step, the turn's thread at the end; never both at once) and only seals the
/// block's page or copies the block out of the turn's cache. Adopting or admitting it into HBM
/// and saving it down (which may evict other sessions, or wait for the save queue's
/// back-pressure) run on `queue`, one serial queue per turn, so a step of the running batch
/// never waits for the store.
///
/// Each block goes under the namespace `homeFor` picks for its range when its first layer is
/// saved (the session's own, or an alternate one when that key is still referenced: blocks are
/// immutable), and every later layer of it follows.
/// `queue` owns `written`, `failedRanges`, `adoptedPages` and `openPartials`; the turn reads them
/// after `drain()`.
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
    /// Where the turn's first block starts (caller's state, as `lastRange`).
    private let from: Int
    private var lastRange: Range<Int>?
    /// The namespace for a block range (start, count), asked once per block (caller's state).
    private let homeFor: (Int, Int) -> String
    private var homes: [Range<Int>: String] = [:]
    /// Owned by `queue`.
    private var writtenBlocks: [SessionState.BlockRange] = []
    /// Owned by `queue`.
    private var failedRanges: Set<SessionState.BlockRange> = []
    /// Owned by `queue`: pages of the turn's cache the store adopted, with their blocks' keys.
    private var adoptedPages: [PageID: BlockKey] = [:]
    /// Owned by `queue`: blocks admitted by copy, and adopted in place.
    private var admittedByCopy = 0, adoptedCount = 0
    /// Rows a layer of a filling block gains between two partial saves of it.
    let partialRows: Int
    /// Per layer: the latest partial copy of the block filling now (caller's state).
    private var partials: [(blockStart: Int, key: BlockKey)?]
    /// Partial copies whose rows the copy engine has not read yet.
    private let partialCopies = DispatchGroup()
    /// Rows (over every layer) the turn's end still had to save (caller's state): the rows of
    /// the blocks `final` saved, less what their partial copies already held.
    private(set) var rowsSavedAtEnd = 0
    /// Owned by `queue`: partial copies saved and not yet extended by a later save.
    private var openPartials: Set<BlockKey> = []

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
        self.from = from
        partialRows = max(1, blockTokens / 8)
        partials = [(blockStart: Int, key: BlockKey)?](repeating: nil, count: layers)
    }

    /// Pages of the turn's cache the store adopted (after `drain()`): `TurnCache.finish` lets
    /// them go, and gives the others back.
    var adopted: [PageID: BlockKey] { queue.sync { adoptedPages } }

    /// Blocks (one layer each) saved in place and by copy so far (after `drain()`).
    var savedCounts: (inPlace: Int, byCopy: Int) { queue.sync { (adoptedCount, admittedByCopy) } }

    /// The pages adopted so far (after `drain()`), forgotten here: the turn is swapping out
    /// and lets them go itself (pages reserved later may reuse their ids).
    func takeAdopted() -> [PageID: BlockKey] {
        queue.sync {
            let taken = adoptedPages
            adoptedPages = [:]
            return taken
        }
    }

    /// Saves every row of each layer's filling block below now, as partial copies (the turn is
    /// swapping out), and returns, by block start, the range those copies hold. Call `drain()`
    /// and `waitForPartialCopies()` before letting the pages go.
    func saveFilling(end: Int, cache: TurnCache) -> [Int: SessionState.BlockRange] {
        var parts: [(page: PageID, key: BlockKey, previous: BlockKey?)] = []
        var filling: [Int: SessionState.BlockRange] = [:]
        for layer in 0..<layers {
            guard let r = chunk(from: savedUpTo[layer], end: end) else { continue }
            let previous = partials[layer]?.blockStart == r.lowerBound ? partials[layer]?.key : nil
            if let previous, previous.count == r.count {
                filling[r.lowerBound] = .init(home: previous.session, start: r.lowerBound, count: r.count)
                continue
            }
            guard let page = cache.filling(layer: layer, blockStart: r.lowerBound, rows: r.count) else { continue }
            let home = homes[r] ?? homeFor(r.lowerBound, r.count)
            homes[r] = home
            let b = SessionState.BlockRange(home: home, start: r.lowerBound, count: r.count)
            partials[layer] = (r.lowerBound, key(layer, b))
            parts.append((page, key(layer, b), previous))
            filling[r.lowerBound] = b
        }
        if !parts.isEmpty { send(parts) }
        return filling
    }

    /// The whole range of the block history index `index` falls in, as the saver will cut it
    /// (nil: before the turn's first block, or in the dropped gap).
    func blockRange(containing index: Int) -> Range<Int>? {
        if let r = lastRange, r.contains(index) { return r }
        var s = lastRange.map { $0.lowerBound <= index ? $0.upperBound : from } ?? from
        while let r = chunk(from: s, end: Int.max), r.lowerBound <= index {
            if index < r.upperBound {
                lastRange = r
                return r
            }
            s = r.upperBound
        }
        return nil
    }

    /// Waits until every block handed over so far is admitted and its save started.
    func drain() { queue.sync {} }

    /// Waits until every partial copy has been read out of the turn's pages, which may then go
    /// back to the arena (after `drain()`).
    func waitForPartialCopies() { partialCopies.wait() }

    /// Forgets partial copies no complete block extended (the turn failed before its end, or a
    /// block could not be adopted): after `drain()`.
    func forgetLeftoverPartials() {
        let left = queue.sync { openPartials }
        if !left.isEmpty { try? store.forgetLocally(Array(left)) }
    }

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
            let k = key(layer, b)
            if let page = cache.seal(layer: layer, blockStart: r.lowerBound, count: r.count) {
                let previous = partials[layer]?.blockStart == r.lowerBound ? partials[layer]?.key : nil
                if previous != nil { partials[layer] = nil }
                if final { rowsSavedAtEnd += r.count - (previous?.count ?? 0) }
                queue.async {
                    // The turn may end just where a partial save did: that copy is the block.
                    let savedBelow = previous == k
                    let adopted = (try? self.store.adopt(page, as: k, savedBelow: savedBelow)) != nil
                    if adopted {
                        self.adoptedPages[page] = k
                        self.adoptedCount += 1
                    }
                    self.record(b, layer: layer, admitted: adopted, extending: previous)
                }
            } else {
                if final { rowsSavedAtEnd += r.count }
                let block = KVBlock(
                    key: k, elementType: store.elementType, rowWidth: cache.layout.rowWidth,
                    payload: cache.payload(layer: layer, start: slot, count: b.count))
                queue.async {
                    let admitted = (try? self.store.admit(block)) != nil
                    if admitted { self.admittedByCopy += 1 }
                    self.record(b, layer: layer, admitted: admitted, extending: nil)
                }
            }
            savedUpTo[layer] = b.end
        }
        if !final && layer == layers - 1 { savePartially(end: end, cache: cache) }
    }

    /// After the step's last layer: saves the rows of each layer's filling block (the one after
    /// the complete ones) where `partialRows` more are final than its latest partial copy holds,
    /// every layer in one transfer.
    private func savePartially(end: Int, cache: TurnCache) {
        var parts: [(page: PageID, key: BlockKey, previous: BlockKey?)] = []
        for layer in 0..<layers {
            guard let r = chunk(from: savedUpTo[layer], end: end) else { continue }
            let previous = partials[layer]?.blockStart == r.lowerBound ? partials[layer]?.key : nil
            guard r.count - (previous?.count ?? 0) >= partialRows,
                let page = cache.filling(layer: layer, blockStart: r.lowerBound, rows: r.count)
            else { continue }
            let home = homes[r] ?? homeFor(r.lowerBound, r.count)
            homes[r] = home
            let k = key(layer, SessionState.BlockRange(home: home, start: r.lowerBound, count: r.count))
            partials[layer] = (r.lowerBound, k)
            parts.append((page, k, previous))
        }
        guard !parts.isEmpty else { return }
        send(parts)
    }

    /// Hands partial copies to the store, on `queue`.
    private func send(_ parts: [(page: PageID, key: BlockKey, previous: BlockKey?)]) {
        partialCopies.enter()
        let batch = parts
        queue.async {
            self.store.savePartials(batch) { self.partialCopies.leave() }
            for part in batch {
                if let previous = part.previous { self.openPartials.remove(previous) }
                self.openPartials.insert(part.key)
            }
        }
    }

    /// On `queue`: saves an admitted block down, or notes the failure.
    private func record(_ b: SessionState.BlockRange, layer: Int, admitted: Bool, extending previous: BlockKey?) {
        if admitted {
            store.save(key(layer, b), placement: placement, extending: previous)
            if let previous { openPartials.remove(previous) }
            if layer == 0 { writtenBlocks.append(b) }
        } else {
            // Not in HBM (e.g. the arena is full of pinned pages): the block is not recorded,
            // and its other layers are removed after the turn.
            writtenBlocks.removeAll { $0 == b }
            failedRanges.insert(b)
        }
    }
}
