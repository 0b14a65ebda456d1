import KVTierModel

/// How the chat engine uses the context window, truncates and schedules.
public struct EngineConfiguration: Sendable {
    /// Context window C in tokens (default: the model's).
    public var contextWindow: Int?
    /// Attention-sink tokens always kept at the start when truncating.
    public var sinkTokens = 4
    /// When a turn would overflow the window, drop this fraction of the window at once (plus
    /// what is needed), so truncation does not happen on every turn.
    public var truncationFraction = 0.25
    /// Dropped ranges are rounded up to a multiple of this many tokens.
    public var truncationGranularity = 16
    /// Read buffer: how many layers ahead of the decoder the store may move KV into HBM
    /// (nil: as far as it gets).
    public var readAheadLayers: Int? = 8
    /// Keep the system message's tokens as sinks too when truncating.
    public var pinSystemMessage = false
    /// Queued turns whose sessions are prefetched and spared by eviction, at most: fewer when their
    /// KV would not fit in DRAM together (the window is C_mem / S_kv sessions, as in the paper).
    public var lookAhead = 64
    /// Turns that run at once, their forward passes batched (continuous batching).
    public var maxBatch = 16
    /// Prompt tokens per batched step at most (chunked prefill): a long prompt is computed in
    /// chunks of this size, so the decoders in the batch get a token every step meanwhile.
    public var prefillChunkTokens = 256
    /// Rows from which a sequence's linear layers take dequantize-and-sgemm instead of the batched
    /// matrix-vector kernel; nil: measured on this CPU when the engine starts
    /// (`Transformer.calibrateLinearGemmThreshold`).
    public var linearGemmThreshold: Int?
    /// Bits per activation on the quantized-activation path (AVX-512 VNNI CPUs): 16, within the
    /// float reference's tolerance, or 8, faster with a measured drift (docs/benchmarks.md).
    public var activationBits = ActivationBits.sixteen
    /// Compute threads.
    public var threads = LlamaModel.defaultThreads
    /// A session whose next turn is expected later than this is written through to disk.
    public var writeThroughAfterSeconds = 60.0

    // Benchmark baselines and ablations (kvtier-bench replay); the defaults are the full system.

    /// Reuse KV across turns. false: every turn prefills its whole prompt and nothing is saved
    /// (the recompute baseline).
    public var reuseKV = true
    /// Load layer by layer while the decoder computes. false: wait until every layer of the
    /// reused KV is in HBM, then compute (no overlap of loading and compute).
    public var layerwiseLoading = true
    /// Save layer by layer while the decoder computes, written back asynchronously. false: save
    /// every layer after the turn's compute and wait until the saves are done.
    public var asyncSaving = true

    public init() {}
}
