/// Hyperparameters of a llama-architecture model, read from GGUF metadata.
public struct LlamaConfig: Sendable, Equatable {
    public var layerCount: Int
    public var embeddingLength: Int
    public var feedForwardLength: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var ropeDimension: Int
    public var ropeFreqBase: Float
    public var rmsNormEpsilon: Float
    public var contextLength: Int
    public var vocabularySize: Int

    public init(
        layerCount: Int, embeddingLength: Int, feedForwardLength: Int, headCount: Int, kvHeadCount: Int,
        ropeFreqBase: Float = 10000, rmsNormEpsilon: Float = 1e-5, contextLength: Int, vocabularySize: Int,
        ropeDimension: Int? = nil
    ) {
        self.layerCount = layerCount
        self.embeddingLength = embeddingLength
        self.feedForwardLength = feedForwardLength
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = embeddingLength / max(headCount, 1)
        self.ropeDimension = ropeDimension ?? embeddingLength / max(headCount, 1)
        self.ropeFreqBase = ropeFreqBase
        self.rmsNormEpsilon = rmsNormEpsilon
        self.contextLength = contextLength
        self.vocabularySize = vocabularySize
    }

    /// Reads `llama.*` keys and checks that the numbers fit together.
    public init(gguf: GGUFFile) throws(GGUFError) {
        let arch = try gguf.string("general.architecture")
        guard arch == "llama" else { throw GGUFError.unsupportedArchitecture(arch) }
        let embd = try gguf.int("llama.embedding_length")
        let heads = try gguf.int("llama.attention.head_count")
        let kvHeads = gguf.metadata["llama.attention.head_count_kv"]?.intValue ?? heads
        let vocab: Int
        if let v = gguf.metadata["llama.vocab_size"]?.intValue {
            vocab = v
        } else if let t = gguf.metadata["tokenizer.ggml.tokens"]?.arrayValue {
            vocab = t.count
        } else {
            throw GGUFError.missingKey("llama.vocab_size")
        }
        self.init(
            layerCount: try gguf.int("llama.block_count"),
            embeddingLength: embd,
            feedForwardLength: try gguf.int("llama.feed_forward_length"),
            headCount: heads,
            kvHeadCount: kvHeads,
            ropeFreqBase: Float(gguf.metadata["llama.rope.freq_base"]?.floatValue ?? 10000),
            rmsNormEpsilon: Float(gguf.metadata["llama.attention.layer_norm_rms_epsilon"]?.floatValue ?? 1e-5),
            contextLength: try gguf.int("llama.context_length"),
            vocabularySize: vocab,
            ropeDimension: gguf.metadata["llama.rope.dimension_count"]?.intValue
        )
        try validate()
    }

    func validate() throws(GGUFError) {
        func bad(_ what: String) -> GGUFError { .invalidValue(offset: 0, what: what) }
        guard (1...1024).contains(layerCount) else { throw bad("llama.block_count \(layerCount) is out of range") }
        guard (1...1 << 16).contains(embeddingLength), (1...1 << 18).contains(feedForwardLength) else {
            throw bad("embedding or feed-forward length is out of range")
        }
        guard headCount > 0, kvHeadCount > 0, headCount % kvHeadCount == 0 else {
            throw bad("head counts \(headCount)/\(kvHeadCount) do not divide")
        }
        guard embeddingLength % headCount == 0, headDim % 2 == 0, headDim <= 256 else {
            throw bad("head dimension \(embeddingLength)/\(headCount) is unsupported (even, at most 256)")
        }
        guard ropeDimension == headDim else { throw bad("partial rotary dimension \(ropeDimension) is unsupported") }
        guard embeddingLength % 32 == 0, feedForwardLength % 32 == 0 else {
            throw bad("embedding and feed-forward lengths must be multiples of 32")
        }
        guard (1...1 << 22).contains(contextLength) else { throw bad("context length \(contextLength) is out of range") }
        guard (1...1 << 22).contains(vocabularySize) else { throw bad("vocabulary size \(vocabularySize) is out of range") }
        guard ropeFreqBase.isFinite, ropeFreqBase > 1, rmsNormEpsilon.isFinite, rmsNormEpsilon > 0 else {
            throw bad("rope base or RMS epsilon is not a positive number")
        }
    }

    /// Width of one token's keys (or values) in one layer.
    public var kvWidth: Int { kvHeadCount * headDim }
}
