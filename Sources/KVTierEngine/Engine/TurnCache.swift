import Dispatch
import Foundation
import KVTierModel
import KVTierStore

/// The KV cache of one turn, a page table over the session's KV. Its slots are the session's
/// live tokens in order: runs of slots loaded from the tiered store, read in place from the HBM
/// pages the store's `LoadHandle` delivers (layer by layer, when the decoder reaches the layer;
/// never copied), and slots the decoder computes, written in place into HBM pages reserved for
/// their block (`ComputedBlock`), which the store adopts when the block is saved. `work` holds
/// only what no page holds: slots of a block HBM had no room for, and of a block not saved.
/// As each layer of new slots is finished, `onLayerFinished` lets the engine save it.
///
/// The loaded blocks may live under several store namespaces (a session forked from another
/// reads the other's blocks for their common prefix): one load handle over all of them. The
/// loaded pages stay valid for the whole turn: the handle pins those namespaces, so no eviction or
/// demotion frees them, and blocks are immutable (the engine never rewrites a key that a
/// session references), so no save replaces them.
///
/// Used by one turn at a time: its turn thread, and the batch executor's thread during the
/// steps that thread waits for (never both at once).
final class TurnCache: KVCache {
    let work: InMemoryKVCache
    var layout: KVLayout { work.layout }
    var count: Int { work.count }

    /// Slots [slot, slot + count) hold tokens [offset, offset + count) of a stored block.
    struct LoadedRun {
        let slot: Int
        let count: Int
        let block: SessionState.BlockRange
        let offset: Int
    }

    private var runs: [LoadedRun] = []
    /// Blocks computed into pages of their own, in slot order.
    private var computed: [ComputedBlock] = []
    /// Starts of blocks whose computed rows stay in `work` (no HBM page was free for them).
    private var inWork: Set<Int> = []
    /// Per layer: how many of `runs` are resident (`waitUntilResident` has seen their layer).
    private var filledRuns: [Int]
    /// Per layer and run: where the run's keys and values sit in its HBM page (nil: the block
    /// failed to load; the attempt is then retried with those tokens recomputed).
    private var pageRows: [[(keys: UnsafeRawPointer, values: UnsafeRawPointer)?]]
    private var rowBytes: Int { layout.rowWidth * work.precision.bytes }
    /// Where a page keeps its values (`TieredStore.pageValuesOffset`).
    private let valuesOffset: Int
    private var handle: LoadHandle?
    private let store: TieredStore
    /// Seconds spent waiting for layers.
    private(set) var stallSeconds = 0.0
    /// Layers of the load already resident when the decoder first computed (nil: no load).
    private(set) var layersReadyAtFirstCompute: Int?
    /// Layers the decoder finished computing while the load's last layer was still on its way.
    private(set) var layersComputedDuringLoad = 0
    /// Per layer that read blocks from the remote tier, how long that read took.
    private(set) var remoteLayerReadSeconds: [Double] = []
    /// KV bytes the load read from the disk and remote tiers, over every layer.
    private(set) var diskBytesRead = 0, remoteBytesRead = 0
    /// Layers whose load figures are counted (each once, however often the layer is waited for).
    private var layersCounted: Set<Int> = []
    /// Blocks that could not be loaded in some layer.
    private(set) var failedBlocks: [SessionState.BlockRange] = []
    /// Reused tokens by the tier they came from (counted in layer 0).
    private(set) var tokensFrom: [Tier: Int] = [:]
    var onLayerFinished: ((Int) -> Void)?

    /// Turn caches alive in the process (tests check that none outlives its turn).
    static var alive: Int { aliveLock.withLock { aliveCount } }
    nonisolated(unsafe) private static var aliveCount = 0  // guarded by aliveLock
    private static let aliveLock = NSLock()

    deinit { Self.aliveLock.withLock { Self.aliveCount -= 1 } }

    /// The session whose turn this is: reserving a page never evicts its own.
    private let session: String

    init(store: TieredStore, session: String, layout: KVLayout, capacity: Int) {
        Self.aliveLock.withLock { Self.aliveCount += 1 }
        self.store = store
        self.session = session
        self.valuesOffset = store.pageValuesOffset
        self.work = InMemoryKVCache(
            layout: layout, capacity: capacity, precision: store.elementType == .f32 ? .f32 : .f16)
        self.filledRuns = [Int](repeating: 0, count: layout.layers)
        self.pageRows = [[(keys: UnsafeRawPointer, values: UnsafeRawPointer)?]](repeating: [], count: layout.layers)
    }

    /// Starts the layer-wise load of the stored blocks in `blocks`, from every namespace they live under.
    func startLoad(blocks: Set<SessionState.BlockRange>, readAhead: Int?) {
        handle = store.load(sessions: blocks.map(\.home), readAhead: readAhead) { key in
            blocks.contains(.init(home: key.session, start: key.start, count: key.count))
        }
    }

    /// Unpins the session's HBM pages, lets the blocks the store adopted go (`adopted`: their
    /// pages and keys) and gives the other reserved pages back, and drops `onLayerFinished`: the
    /// engine's closure captures this cache, and the cycle would otherwise keep every turn's KV
    /// buffer alive. No save of this cache's pages may still be on its way to `adopt`.
    func finish(adopted: [PageID: BlockKey] = [:]) {
        handle?.release()
        handle = nil
        onLayerFinished = nil
        onNoPage = nil
        var held: [BlockKey] = []
        for block in computed {
            for page in block.pages {
                if let key = adopted[page] { held.append(key) } else { store.releasePage(page) }
            }
        }
        computed = []
        if !held.isEmpty { store.unpin(held) }
    }

    /// Called when no HBM page is free for a computed block: returns whether room was made
    /// (another running turn swapped out), and the reservation is then tried once more.
    var onNoPage: (() -> Bool)?

    /// Whether every computed block can be put below and read back: each either adopted by the
    /// store in every layer (`adopted`) or still filling in pages with consecutive rows (a
    /// partial copy of all its rows then holds it).
    func canSwapOut(adopted: [PageID: BlockKey]) -> Bool {
        computed.allSatisfy { b in
            b.pages.allSatisfy { adopted[$0] != nil } || (b.consecutive && !b.sealed.contains(true))
        }
    }

    /// The turn's KV leaves HBM (the caller has put it below: `adopted`, the keys of the blocks
    /// the store adopted; `filling`, by block start, the range of the partial copy that holds all
    /// the rows of each block still filling): the load's pins and the adopted blocks' pins go,
    /// the filling blocks' pages go back, and every computed slot becomes a loaded run of its
    /// stored block. `startLoad(blocks: storedBlocks, ...)` brings it all back.
    func swapOut(adopted: [PageID: BlockKey], filling: [Int: SessionState.BlockRange]) {
        handle?.release()
        handle = nil
        var held: [BlockKey] = []
        for b in computed {
            let stored =
                adopted[b.pages[0]].map { SessionState.BlockRange(home: $0.session, start: $0.start, count: $0.count) }
                ?? filling[b.blockStart]
            for page in b.pages {
                if let key = adopted[page] { held.append(key) } else { store.releasePage(page) }
            }
            // Rows given slots but not computed yet (the next step's) are placed again after the swap.
            let rows = min(b.rows, stored?.count ?? 0)
            guard let stored, rows > b.firstComputedRow else { continue }
            let from = b.firstComputedRow
            runs.append(LoadedRun(slot: b.firstSlot + from, count: rows - from, block: stored, offset: from))
        }
        if !held.isEmpty { store.unpin(held) }
        computed = []
        runs.sort { $0.slot < $1.slot }
        filledRuns = [Int](repeating: 0, count: layout.layers)
        pageRows = [[(keys: UnsafeRawPointer, values: UnsafeRawPointer)?]](repeating: [], count: layout.layers)
    }

    /// Forgets a load that could not place every block (HBM was full a moment): its pins go,
    /// and `startLoad` may try again.
    func forgetLoad() {
        handle?.release()
        handle = nil
        failedBlocks = []
        filledRuns = [Int](repeating: 0, count: layout.layers)
        pageRows = [[(keys: UnsafeRawPointer, values: UnsafeRawPointer)?]](repeating: [], count: layout.layers)
    }

    /// Every stored block the cache's loaded runs read.
    var storedBlocks: Set<SessionState.BlockRange> { Set(runs.map(\.block)) }

    /// Whether the cache holds reserved pages other than `adopted` (which `finish` gives back).
    func holdsPages(besides adopted: [PageID: BlockKey]) -> Bool {
        computed.contains { $0.pages.contains { adopted[$0] == nil } }
    }

    /// Slot `slot`, history index `index` of the block whose whole range is `block`, will be
    /// computed: its rows go into that block's pages, reserved now when it is the block's first
    /// computed slot. When HBM has no page for it, or the block's computed rows would not be
    /// consecutive, the rows stay in `work` (and the block is saved by copy).
    func placeComputed(slot: Int, index: Int, block: Range<Int>) {
        let row = index - block.lowerBound
        if let i = computed.lastIndex(where: { $0.blockStart == block.lowerBound }) {
            if computed[i].rows == row && computed[i].consecutive {
                computed[i].rows += 1
            } else {
                computed[i].consecutive = false
            }
            return
        }
        guard !inWork.contains(block.lowerBound), row < block.count else { return }
        guard let pages = reservePages() ?? (onNoPage?() == true ? reservePages() : nil) else {
            inWork.insert(block.lowerBound)
            return
        }
        computed.append(
            ComputedBlock(
                blockStart: block.lowerBound, capacity: block.count, firstSlot: slot - row, firstComputedRow: row,
                rows: row + 1, pages: pages, bases: pages.map { store.pageBytes($0) },
                sealed: [Bool](repeating: false, count: layout.layers),
                reusedCopied: [Bool](repeating: row == 0, count: layout.layers)))
    }

    /// A page per layer, all or none.
    private func reservePages() -> [PageID]? {
        var pages: [PageID] = []
        for _ in 0..<layout.layers {
            guard let page = try? store.reservePage(for: session) else {
                for p in pages { store.releasePage(p) }
                return nil
            }
            pages.append(page)
        }
        return pages
    }

    /// The page of `layer` holding the block that starts at history index `blockStart`, sealed
    /// at `count` rows for the store to adopt: the reused rows below its computed ones copied in
    /// from where they are read now. nil: the block is not computed in pages (it is saved by
    /// copy). The rows stay readable in place for the rest of the turn.
    func seal(layer: Int, blockStart: Int, count n: Int) -> PageID? {
        guard let i = computed.firstIndex(where: { $0.blockStart == blockStart }) else { return nil }
        guard computed[i].consecutive, computed[i].rows == n, !computed[i].sealed[layer] else { return nil }
        copyReusedRows(of: i, layer: layer)
        computed[i].sealed[layer] = true
        return computed[i].pages[layer]
    }

    /// The page of `layer` holding the block that starts at `blockStart` while it fills, for a
    /// partial save of its first `rows` rows (final in `layer`): the reused rows below the
    /// computed ones are copied in first. nil: the block is not computed in pages, or has fewer
    /// rows, or is sealed.
    func filling(layer: Int, blockStart: Int, rows n: Int) -> PageID? {
        guard let i = computed.firstIndex(where: { $0.blockStart == blockStart }) else { return nil }
        guard computed[i].consecutive, computed[i].rows >= n, !computed[i].sealed[layer] else { return nil }
        copyReusedRows(of: i, layer: layer)
        return computed[i].pages[layer]
    }

    /// Copies block `i`'s reused rows (below its computed ones) into its page of `layer`, once,
    /// from where they are read now (their stored block's page).
    private func copyReusedRows(of i: Int, layer: Int) {
        guard !computed[i].reusedCopied[layer] else { return }
        computed[i].reusedCopied[layer] = true
        let b = computed[i]
        let rb = rowBytes
        let base = b.bases[layer]
        withLayer(layer) { view in
            var t0 = 0
            for run in view.runs {
                let lo = max(b.firstSlot, t0)
                let hi = min(b.firstSlot + b.firstComputedRow, t0 + run.count)
                if lo < hi {
                    (base + (lo - b.firstSlot) * rb).copyMemory(
                        from: run.keys + (lo - t0) * rb, byteCount: (hi - lo) * rb)
                    (base + valuesOffset + (lo - b.firstSlot) * rb).copyMemory(
                        from: run.values + (lo - t0) * rb, byteCount: (hi - lo) * rb)
                }
                t0 += run.count
            }
        }
    }

    /// Appends slots that will be filled from a stored block (at `positions`).
    func appendLoaded(block: SessionState.BlockRange, offset: Int, positions: [Int32]) throws(KVCacheError) {
        let slot = try work.append(positions: positions)
        runs.append(LoadedRun(slot: slot, count: positions.count, block: block, offset: offset))
    }

    // MARK: KVCache

    func append(positions: [Int32]) throws(KVCacheError) -> Int { try work.append(positions: positions) }

    func write(layer: Int, start: Int, count: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>) {
        if layersReadyAtFirstCompute == nil, let handle {
            layersReadyAtFirstCompute = handle.layers.count { handle.isReady(layer: $0) }
        }
        let w = layout.rowWidth
        let rb = rowBytes
        let end = start + count
        var s = start
        while s < end {
            if let b = computed.first(where: { $0.computedSlots.contains(s) }) {
                let hi = min(end, b.computedSlots.upperBound)
                let row = s - b.firstSlot
                let base = b.bases[layer]
                work.precision.store(keys + (s - start) * w, to: base + row * rb, elements: (hi - s) * w)
                work.precision.store(
                    values + (s - start) * w, to: base + valuesOffset + row * rb, elements: (hi - s) * w)
                s = hi
            } else {
                let next = computed.lazy.map(\.computedSlots.lowerBound).filter { $0 > s }.min() ?? end
                let hi = min(end, next)
                work.write(
                    layer: layer, start: s, count: hi - s, keys: keys + (s - start) * w,
                    values: values + (s - start) * w)
                s = hi
            }
        }
    }

    func waitUntilResident(layer: Int) {
        guard filledRuns[layer] < runs.count, let handle else { return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let load = handle.wait(layer: layer)
        stallSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        var pages: [SessionState.BlockRange: (BlockKey, PageID)] = [:]
        for (key, page) in load.pages {
            pages[.init(home: key.session, start: key.start, count: key.count)] = (key, page)
        }
        let sources = load.sources
        if layersCounted.insert(layer).inserted {
            if let t = load.remoteReadSeconds { remoteLayerReadSeconds.append(t) }
            diskBytesRead += load.diskBytes
            remoteBytesRead += load.remoteBytes
        }
        for run in runs[filledRuns[layer]...] {
            guard let (key, page) = pages[run.block] else {
                if !failedBlocks.contains(run.block) { failedBlocks.append(run.block) }
                pageRows[layer].append(nil)
                continue
            }
            if layer == 0, let tier = sources[key] { tokensFrom[tier, default: 0] += run.count }
            pageRows[layer].append(rows(of: run, in: page))
        }
        filledRuns[layer] = runs.count
    }

    /// Where `run`'s rows sit in `page`, which holds its whole block in the store's page format.
    private func rows(of run: LoadedRun, in page: PageID) -> (keys: UnsafeRawPointer, values: UnsafeRawPointer) {
        let (keys, values) = store.contents(of: page, rows: run.block.count)
        return (keys + run.offset * rowBytes, values + run.offset * rowBytes)
    }

    /// Slots in order as runs: loaded runs in their pages, computed blocks in theirs, everything
    /// else in `work` (a run not yet resident or failed, too: its rows there are never part of a
    /// result that is kept).
    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        // The runs held in pages, by first slot (loaded and computed runs never share a slot).
        var paged: [(slot: Int, run: KVRun)] = []
        paged.reserveCapacity(runs.count + computed.count)
        for (i, run) in runs.enumerated() where i < pageRows[layer].count {
            if let rows = pageRows[layer][i] {
                paged.append((run.slot, KVRun(keys: rows.keys, values: rows.values, count: run.count)))
            }
        }
        let rb = rowBytes
        for b in computed {
            let slots = b.computedSlots.clamped(to: 0..<count)
            guard !slots.isEmpty else { continue }
            let row = slots.lowerBound - b.firstSlot
            let base = UnsafeRawPointer(b.bases[layer])
            paged.append(
                (
                    slots.lowerBound,
                    KVRun(keys: base + row * rb, values: base + valuesOffset + row * rb, count: slots.count)
                ))
        }
        if !computed.isEmpty { paged.sort { $0.slot < $1.slot } }
        var out: [KVRun] = []
        out.reserveCapacity(2 * paged.count + 1)
        func fromWork(_ slot: Int, _ n: Int) {
            guard n > 0 else { return }
            let r = work.rows(layer: layer, slot: slot)
            out.append(KVRun(keys: r.keys, values: r.values, count: n))
        }
        var slot = 0
        for p in paged {
            fromWork(slot, p.slot - slot)
            out.append(p.run)
            slot = p.slot + p.run.count
        }
        fromWork(slot, count - slot)
        return try out.withUnsafeBufferPointer { r in
            try body(KVLayerView(runs: r, precision: work.precision, positions: work.positionsPointer, count: count))
        }
    }

    /// Copies out the keys then the values of slots [start, start + n) of `layer`, wherever they are.
    func payload(layer: Int, start: Int, count n: Int) -> [UInt8] {
        precondition(start >= 0 && start + n <= count, "TurnCache.payload: slots out of range")
        let rb = rowBytes
        var out = [UInt8](repeating: 0, count: 2 * n * rb)
        withLayer(layer) { view in
            out.withUnsafeMutableBytes { dst in
                let d = dst.baseAddress!
                var t0 = 0
                for run in view.runs {
                    let lo = max(start, t0)
                    let hi = min(start + n, t0 + run.count)
                    if lo < hi {
                        (d + (lo - start) * rb).copyMemory(from: run.keys + (lo - t0) * rb, byteCount: (hi - lo) * rb)
                        (d + (n + lo - start) * rb).copyMemory(
                            from: run.values + (lo - t0) * rb, byteCount: (hi - lo) * rb)
                    }
                    t0 += run.count
                }
            }
        }
        return out
    }

    /// Whether slot `slot` of `layer` is read in place from an HBM page (tests).
    func readsInPlace(layer: Int, slot: Int) -> Bool {
        if computed.contains(where: { $0.computedSlots.contains(slot) }) { return true }
        guard let i = runs.firstIndex(where: { $0.slot <= slot && slot < $0.slot + $0.count }) else { return false }
        return i < pageRows[layer].count && pageRows[layer][i] != nil
    }

    func didFinish(layer: Int) {
        if let handle, let last = handle.layers.last, !handle.isReady(layer: last) { layersComputedDuringLoad += 1 }
        onLayerFinished?(layer)
    }
}
