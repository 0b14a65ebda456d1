/// What one turn did: the figures the daemon returns and the benchmark prints.
public struct TurnReport: Sendable, Codable {
    public var session: String
    public var promptTokens = 0
    public var tokensReused = 0
    public var tokensRecomputed = 0
    public var tokensGenerated = 0
    /// Reused tokens served from each tier.
    public var hitsHBM = 0, hitsDRAM = 0, hitsDisk = 0, hitsRemote = 0
    /// From the moment the engine received the turn (`runTurn`) to its first token, every wait
    /// after that included: another turn of the session, earlier saves (`saveWaitMs`), loads and
    /// compute. The scheduler's queue comes before and is `queueMs`; from a request's arrival the
    /// first token takes `queueMs + ttftMs`.
    public var ttftMs = 0.0
    /// Part of `ttftMs` spent waiting for earlier turns' saves and removals to finish.
    public var saveWaitMs = 0.0
    /// Time in the scheduler's queue before the turn started (0 when run without the scheduler).
    public var queueMs = 0.0
    /// With `GenerationOptions.logprobs`: one entry per token of the reply's text, in order.
    public var logprobs: [TokenLogprob]?
    /// Time the decoder waited for KV layers to arrive.
    public var loadStallMs = 0.0
    /// KV bytes the turn's load read from the disk tier and from the remote tier: reads on the
    /// turn's critical path (what a prefetch moved up before the turn began is not counted).
    public var diskBytesRead = 0, remoteBytesRead = 0
    /// Layers of the reused KV already in HBM when the decoder first needed one (nil when the
    /// turn loaded nothing): below the model's layer count, the load overlapped compute (layer-wise
    /// loading); equal to it, compute waited for the whole load.
    public var layersReadyAtFirstCompute: Int?
    /// Layers the decoder finished computing before the load's last layer arrived: above 0, load
    /// and compute overlapped.
    public var layersComputedDuringLoad = 0
    /// For each layer whose blocks came from the remote tier, how long the read took (the
    /// layer's pipeline and any single-block fallback).
    public var remoteLayerReadMs: [Double] = []
    /// Time saving added to the turn's critical path (HBM admission and back-pressure).
    public var saveLagMs = 0.0
    /// Blocks (one layer each) the turn saved that the decoder had written straight into their
    /// HBM pages (adopted there, no copy), and those copied into HBM (reused rows saved again
    /// under a new key, or rows computed when HBM had no page free for their block).
    public var blocksSavedInPlace = 0, blocksSavedByCopy = 0
    /// KV rows (one token of one layer each) the end of the turn still had to save: the last
    /// blocks' rows that no partial save, made as they filled, had copied down yet.
    public var rowsSavedAtEnd = 0
    /// Times the turn swapped out of HBM (its KV put below and its pages let go) so that another
    /// running turn had room, and was loaded back.
    public var swappedOut = 0
    public var truncatedTokens = 0
    /// Blocks that failed to load (missing or corrupt) and whose tokens were recomputed.
    public var blocksRecovered = 0
    /// Prompt tokens whose KV the turn took up, when it started, from blocks another chat of the
    /// same owner had stored for the same tokens (part of `tokensReused`).
    public var tokensAdopted = 0
    /// New blocks the turn computed that another chat had stored meanwhile for the same tokens:
    /// exchanged for that copy when the turn's state was kept (the copy is stored once).
    public var blocksShared = 0
    public var text = ""
    public var generated: [Int32] = []
    public var stopReason = "stop"
    public var totalMs = 0.0

    public init(session: String) { self.session = session }
}

extension TurnReport {
    /// Where the turn's reused KV came from and what loading it cost, as its cache counted.
    mutating func recordLoad(_ cache: TurnCache) {
        hitsHBM = cache.tokensFrom[.hbm] ?? 0
        hitsDRAM = cache.tokensFrom[.dram] ?? 0
        hitsDisk = cache.tokensFrom[.disk] ?? 0
        hitsRemote = cache.tokensFrom[.remote] ?? 0
        loadStallMs = cache.stallSeconds * 1000
        diskBytesRead = cache.diskBytesRead
        remoteBytesRead = cache.remoteBytesRead
        layersReadyAtFirstCompute = cache.layersReadyAtFirstCompute
        layersComputedDuringLoad = cache.layersComputedDuringLoad
        remoteLayerReadMs = cache.remoteLayerReadSeconds.map { $0 * 1000 }
    }
}
