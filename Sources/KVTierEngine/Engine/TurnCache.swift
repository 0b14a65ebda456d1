import Dispatch
import Foundation
import KVTierModel
import KVTierStore

/// The KV cache of one turn, a page table over the session's KV. Its slots are the session's
/// live tokens in order: runs of slots loaded from the tiered store, read in place from the HBM
/// pages the store's `LoadHandle` delivers (layer by layer, when the decoder reaches the layer;
/// never copied), and slots the decoder computes, which live in `work` until saved. As each
/// layer of new slots is finished, `onLayerFinished` lets the engine save it.
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
    /// Per layer: how many of `runs` are resident (`waitUntilResident` has seen their layer).
    private var filledRuns: [Int]
    /// Per layer and run: where the run's keys and values sit in its HBM page (nil: the block
    /// failed to load; the attempt is then retried with those tokens recomputed).
    private var pageRows: [[(keys: UnsafeRawPointer, values: UnsafeRawPointer)?]]
    private var rowBytes: Int { layout.rowWidth * work.precision.bytes }
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

    init(store: TieredStore, layout: KVLayout, capacity: Int) {
        Self.aliveLock.withLock { Self.aliveCount += 1 }
        self.store = store
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

    /// Unpins the session's HBM pages, and drops `onLayerFinished`: the engine's closure
    /// captures this cache, and the cycle would otherwise keep every turn's KV buffer alive.
    func finish() {
        handle?.release()
        handle = nil
        onLayerFinished = nil
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
        work.write(layer: layer, start: start, count: count, keys: keys, values: values)
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

    /// Where `run`'s rows sit in `page`, which holds its whole block: keys [count x w] then
    /// values [count x w], in the cache's element type.
    private func rows(of run: LoadedRun, in page: PageID) -> (keys: UnsafeRawPointer, values: UnsafeRawPointer) {
        let bytes = store.contents(of: page, bytes: 2 * run.block.count * rowBytes)
        let base = UnsafeRawPointer(bytes.baseAddress!)
        return (base + run.offset * rowBytes, base + (run.block.count + run.offset) * rowBytes)
    }

    /// Slots in order as runs: loaded runs in their pages, everything else in `work` (a run not
    /// yet resident or failed, too: its rows there are never part of a result that is kept).
    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        var out: [KVRun] = []
        out.reserveCapacity(2 * runs.count + 1)
        func fromWork(_ slot: Int, _ n: Int) {
            guard n > 0 else { return }
            let r = work.rows(layer: layer, slot: slot)
            out.append(KVRun(keys: r.keys, values: r.values, count: n))
        }
        var slot = 0
        for (i, run) in runs.enumerated() {
            fromWork(slot, run.slot - slot)
            if i < pageRows[layer].count, let rows = pageRows[layer][i] {
                out.append(KVRun(keys: rows.keys, values: rows.values, count: run.count))
            } else {
                fromWork(run.slot, run.count)
            }
            slot = run.slot + run.count
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
        guard let i = runs.firstIndex(where: { $0.slot <= slot && slot < $0.slot + $0.count }) else { return false }
        return i < pageRows[layer].count && pageRows[layer][i] != nil
    }

    func didFinish(layer: Int) {
        if let handle, let last = handle.layers.last, !handle.isReady(layer: last) { layersComputedDuringLoad += 1 }
        onLayerFinished?(layer)
    }
}
