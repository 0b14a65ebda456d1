import KVTierModel
import KVTierStore

/// Saves a turn's new KV into the store in blocks of `blockTokens`, layer by layer, as soon as
/// a block of a layer is complete (and the partial tail at the end of the turn).
struct LayerSaver {
    let engine: ChatEngine
    let session: String
    let layers: Int
    let sinks: Int
    let dropEnd: Int
    let blockTokens: Int
    let placement: Placement
    /// Per layer: history index up to which blocks were written.
    private var savedUpTo: [Int]
    private(set) var written: [SessionState.BlockRange] = []
    private var failedRanges: Set<SessionState.BlockRange> = []

    var failedRangesSet: Set<SessionState.BlockRange> { failedRanges }

    /// Keys of blocks that could not be saved in some layer (every layer's key, to remove).
    var failedKeys: [BlockKey] {
        failedRanges.flatMap { b in (0..<layers).map { engine.key(session, $0, b) } }
    }

    init(
        engine: ChatEngine, session: String, layers: Int, from: Int, sinks: Int, dropEnd: Int, blockTokens: Int,
        placement: Placement
    ) {
        self.engine = engine
        self.session = session
        self.layers = layers
        self.sinks = sinks
        self.dropEnd = dropEnd
        self.blockTokens = blockTokens
        self.placement = placement
        savedUpTo = [Int](repeating: from, count: layers)
    }

    /// The next block starting at history index `start`: blocks never cross the dropped gap.
    private func chunk(from start: Int, end: Int) -> SessionState.BlockRange? {
        var s = start
        if s >= sinks && s < dropEnd { s = dropEnd }
        guard s < end else { return nil }
        var e = min(s + blockTokens, end)
        if s < sinks && dropEnd > sinks { e = min(e, sinks) }
        return .init(start: s, count: e - s)
    }

    /// Saves the complete blocks of `layer` among history indices below `end` (all of them, the
    /// partial last one included, when `final`).
    mutating func saveComplete(layer: Int, end: Int, slotOf: [Int: Int], cache: InMemoryKVCache, final: Bool) {
        while let b = chunk(from: savedUpTo[layer], end: end) {
            guard b.count == blockTokens || final || (b.end == sinks && dropEnd > sinks) else { break }
            guard let slot = slotOf[b.start] else { break }
            let payload = cache.payload(layer: layer, start: slot, count: b.count)
            let key = engine.key(session, layer, b)
            let block = KVBlock(
                key: key, elementType: engine.store.elementType, rowWidth: cache.layout.rowWidth, payload: payload)
            if (try? engine.store.admit(block)) != nil {
                engine.store.save(key, placement: placement)
                if layer == 0 { written.append(b) }
            } else {
                // Not in HBM (e.g. the arena is full of pinned pages): the block is not recorded,
                // and its other layers are removed after the turn.
                written.removeAll { $0 == b }
                failedRanges.insert(b)
            }
            savedUpTo[layer] = b.end
        }
    }
}
