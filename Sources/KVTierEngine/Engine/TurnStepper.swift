import Dispatch
import Foundation
import KVTierModel
import KVTierStore

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
    /// How the turn swaps out when another running turn needs its HBM pages (nil: never).
    let swapping: Swapping?
    /// Times the turn was swapped out and back.
    private(set) var swaps = 0

    /// What swapping out and back needs: the engine's coordinator and this turn's ticket, the
    /// store, the read-ahead of the load that brings the KV back, and the namespaces the turn
    /// writes (their saves are waited for before the load).
    struct Swapping {
        let coordinator: SwapCoordinator
        let ticket: SwapCoordinator.Ticket
        let store: TieredStore
        let readAhead: Int?
        let ownNamespace: (String) -> Bool
    }

    /// `layerwiseSave`: blocks are saved as each layer finishes them (else only by `saveRest`).
    /// `saves`: the turn saves its blocks at all (its computed slots then go into HBM pages).
    init(
        cache: TurnCache, saver: LayerSaver, executor: BatchExecutor, layers: Int, layerwiseLoading: Bool,
        layerwiseSave: Bool, saves: Bool, swapping: Swapping? = nil
    ) {
        self.cache = cache
        computesInPlace = saves
        self.swapping = saves ? swapping : nil
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
    func lane() throws(EngineError) -> BatchExecutor.Lane {
        if let swapping, swapping.coordinator.isRequested(swapping.ticket) { try swapOutAndBack(swapping) }
        if let openLane { return openLane }
        if !allLoaded || executor.activeLanes > 0 {
            for layer in 0..<layers { cache.waitUntilResident(layer: layer) }
            allLoaded = true
        }
        let opened = executor.lane()
        openLane = opened
        return opened
    }

    /// Another running turn needs HBM: between two steps, this one leaves the batch, puts below
    /// what of its KV is only in HBM (partial copies of its filling blocks; its complete blocks
    /// were adopted and are being saved, and an eviction copies down any not saved yet), lets
    /// its pages go, waits until the turn that asked has ended (or is itself swapped out), then
    /// loads its KV back layer by layer; `lane()` then rejoins the batch. A turn whose KV is not
    /// all in a form it can put below (a block HBM had no page for, or failed to adopt) declines.
    private func swapOutAndBack(_ s: Swapping) throws(EngineError) {
        saver.drain()
        guard cache.failedBlocks.isEmpty, cache.canSwapOut(adopted: saver.adopted) else {
            s.coordinator.decline(s.ticket)
            return
        }
        openLane?.close()
        openLane = nil
        let filling = saver.saveFilling(end: historyEnd, cache: cache)
        saver.drain()
        saver.waitForPartialCopies()
        cache.swapOut(adopted: saver.takeAdopted(), filling: filling)
        swaps += 1
        s.coordinator.swappedOut(s.ticket)
        s.store.waitForSaves(of: s.ownNamespace)  // the partial copies are in DRAM before they are loaded
        // Back layer by layer. Other running turns may hold HBM a while yet: a block with no page
        // now is tried again (every 50 ms, for up to 10 s) rather than recomputed.
        for attempt in 1...200 {
            cache.startLoad(blocks: cache.storedBlocks, readAhead: s.readAhead)
            for layer in 0..<layers { cache.waitUntilResident(layer: layer) }
            if cache.failedBlocks.isEmpty { break }
            guard attempt < 200 else {
                throw .loadKeepsFailing(session: s.ticket.session, blocks: cache.failedBlocks.count)
            }
            cache.forgetLoad()
            usleep(50_000)
        }
        allLoaded = true
        // Slots given out for the next step (not computed yet) go into pages again.
        for slot in cache.count..<indexOfSlot.count {
            if let block = saver.blockRange(containing: indexOfSlot[slot]) {
                cache.placeComputed(slot: slot, index: indexOfSlot[slot], block: block)
            }
        }
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
