import Dispatch
import Foundation
import KVTierModel
import KVTierStore

/// The KV cache of one turn. Its slots are the session's live tokens in order: runs of slots
/// loaded from the tiered store (filled layer by layer, when the decoder reaches the layer,
/// from the HBM pages the store's `LoadHandle` delivers) and slots the decoder computes.
/// As each layer of new slots is finished, `onLayerFinished` lets the engine save it.
///
/// Used by the engine's turn thread only (not thread-safe).
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
    /// Per layer: how many of `runs` have been copied in.
    private var filledRuns: [Int]
    private var handle: LoadHandle?
    private let store: TieredStore
    private let session: String
    /// Seconds spent waiting for layers.
    private(set) var stallSeconds = 0.0
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

    init(store: TieredStore, session: String, layout: KVLayout, capacity: Int) {
        Self.aliveLock.withLock { Self.aliveCount += 1 }
        self.store = store
        self.session = session
        self.work = InMemoryKVCache(layout: layout, capacity: capacity, precision: store.elementType == .f32 ? .f32 : .f16)
        self.filledRuns = [Int](repeating: 0, count: layout.layers)
    }

    /// Starts the layer-wise load of the session's stored blocks in `blocks`.
    func startLoad(blocks: Set<SessionState.BlockRange>, readAhead: Int?) {
        handle = store.load(session: session, readAhead: readAhead) { key in blocks.contains(.init(start: key.start, count: key.count)) }
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
        work.write(layer: layer, start: start, count: count, keys: keys, values: values)
    }

    func waitUntilResident(layer: Int) {
        guard filledRuns[layer] < runs.count, let handle else { return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let load = handle.wait(layer: layer)
        stallSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let pages = Dictionary(
            load.pages.map { (SessionState.BlockRange(start: $0.key.start, count: $0.key.count), ($0.key, $0.page)) },
            uniquingKeysWith: { a, _ in a })
        let w = layout.rowWidth
        for run in runs[filledRuns[layer]...] {
            guard let (key, page) = pages[run.block] else {
                if !failedBlocks.contains(run.block) { failedBlocks.append(run.block) }
                continue
            }
            if layer == 0, let tier = load.sources[key] { tokensFrom[tier, default: 0] += run.count }
            // Block payload: keys [count x w] then values [count x w], in the cache's element type.
            let e = work.precision.bytes
            let bytes = store.contents(of: page, bytes: 2 * key.count * w * e)
            let src = UnsafeRawPointer(bytes.baseAddress!)
            work.fill(
                layer: layer, start: run.slot, count: run.count,
                keys: src + run.offset * w * e, values: src + (key.count + run.offset) * w * e)
        }
        filledRuns[layer] = runs.count
    }

    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        try work.withLayer(layer, body)
    }

    func didFinish(layer: Int) {
        onLayerFinished?(layer)
    }
}
