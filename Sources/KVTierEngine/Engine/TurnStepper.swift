import Dispatch
import KVTierModel

/// The step executor of one attempt at a turn: puts the plan's tokens and the reply's into the
/// turn's cache, slot after slot in history order (loaded ones from the store, computed ones
/// through the running batch's steps), and hands each layer's finished blocks to the saver as
/// the decoder finishes that layer.
///
/// Threads: used by the turn's thread. `cache.onLayerFinished` runs on the batch executor's
/// thread inside a step, while the turn's thread waits in `forward`, never at the same time as
/// the turn's thread touches `slotOf`, `indexOfSlot` or `saveSeconds`.
final class TurnStepper {
    let cache: TurnCache
    let saver: LayerSaver
    private let executor: BatchExecutor
    private let layers: Int
    /// History index of each slot (slots follow history order) and its inverse.
    private(set) var slotOf: [Int: Int] = [:]
    private(set) var indexOfSlot: [Int] = []
    /// Time spent handing blocks to the saver.
    private(set) var saveSeconds = 0.0
    /// Whether compute may start before every layer of the reused KV is in (layer-wise loading).
    private var allLoaded: Bool
    /// The turn's way into the running batch, opened at its first forward pass.
    private var openLane: BatchExecutor.Lane?
    /// Whether computed slots go into HBM pages of their blocks (the turn saves its blocks).
    private let computesInPlace: Bool

    /// `layerwiseSave`: blocks are saved as each layer finishes them (else only by `saveRest`).
    /// `saves`: the turn saves its blocks at all (its computed slots then go into HBM pages).
    init(
        cache: TurnCache, saver: LayerSaver, executor: BatchExecutor, layers: Int, layerwiseLoading: Bool,
        layerwiseSave: Bool, saves: Bool
    ) {
        self.cache = cache
        computesInPlace = saves
        self.saver = saver
        self.executor = executor
        self.layers = layers
        allLoaded = layerwiseLoading
        guard layerwiseSave else { return }
        // The cycle (cache -> closure -> stepper -> cache) ends with `cache.finish()`.
        cache.onLayerFinished = { [self] layer in
            // Once a block failed to load, this attempt's KV may be wrong: save nothing more.
            guard cache.failedBlocks.isEmpty else { return }
            saveFinished(layer: layer)
        }
    }

    /// One past the last history index in the cache.
    private var historyEnd: Int { cache.count > 0 ? indexOfSlot[cache.count - 1] + 1 : 0 }

    /// Gives the next slots of the cache to history indices `indices`; `computed`: the decoder
    /// computes them (into their block's HBM pages when the turn saves its blocks).
    func assignSlots(_ indices: [Int], computed: Bool) {
        for (k, i) in indices.enumerated() {
            slotOf[i] = cache.count + k
            if computed && computesInPlace, let block = saver.blockRange(containing: i) {
                cache.placeComputed(slot: cache.count + k, index: i, block: block)
            }
        }
        indexOfSlot += indices
    }

    /// The running batch's lane for this turn. Joining a running batch (or the no-overlap
    /// ablation), the reused KV is in HBM in every layer first, so that its loading overlaps the
    /// others' steps and never stalls them.
    func lane() -> BatchExecutor.Lane {
        if let openLane { return openLane }
        if !allLoaded || executor.activeLanes > 0 {
            for layer in 0..<layers { cache.waitUntilResident(layer: layer) }
            allLoaded = true
        }
        let opened = executor.lane()
        openLane = opened
        return opened
    }

    /// Leaves the batch: its next step goes on without this turn.
    func close() { openLane?.close() }

    /// Saves what is left of every layer (the partial last blocks); the caller times it.
    func saveRest() {
        for layer in 0..<layers {
            saver.saveComplete(layer: layer, end: historyEnd, slotOf: slotOf, cache: cache, final: true)
        }
    }

    /// The complete blocks of `layer` the decoder just finished, timed.
    private func saveFinished(layer: Int) {
        let t = DispatchTime.now().uptimeNanoseconds
        saver.saveComplete(layer: layer, end: historyEnd, slotOf: slotOf, cache: cache, final: false)
        saveSeconds += Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
    }
}
