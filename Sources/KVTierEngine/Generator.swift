import Dispatch
import KVTierModel
import KVTierTokenizer

/// What to generate and when to stop.
public struct GenerationOptions: Sendable {
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Stop at the tokenizer's end-of-generation tokens (`<|im_end|>`, EOS).
    public var stopAtEndOfGeneration: Bool
    public init(maxTokens: Int, sampling: SamplingParameters = .greedy, stopAtEndOfGeneration: Bool = true) {
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopAtEndOfGeneration = stopAtEndOfGeneration
    }
}

/// Why generation ended.
public enum StopReason: String, Sendable, Codable {
    case endOfGeneration = "stop"
    case maxTokens = "length"
    case contextFull = "context_full"
}

/// The outcome of one generation, with timings.
public struct GenerationResult: Sendable {
    public var promptTokens: Int
    public var generated: [Int32]
    public var text: String
    public var stopReason: StopReason
    /// Seconds from start to the first generated token (prefill plus one sample).
    public var prefillSeconds: Double
    /// Seconds spent generating the tokens after the first.
    public var decodeSeconds: Double
}

/// Runs prompt prefill and token-by-token decoding on one in-memory cache.
/// Not thread-safe: one generation at a time per generator.
public final class Generator {
    public let model: LlamaModel
    public let transformer: Transformer
    public private(set) var cache: InMemoryKVCache
    /// The last sampled token, which is not in the cache yet (the next call should start with it).
    public private(set) var pendingToken: Int32?

    public init(model: LlamaModel, threads: Int = LlamaModel.defaultThreads, contextLength: Int? = nil) {
        self.model = model
        self.transformer = model.makeTransformer(threads: threads)
        self.cache = InMemoryKVCache(layout: model.kvLayout, capacity: contextLength ?? model.config.contextLength)
    }

    /// Forgets everything cached.
    public func reset() {
        cache.truncate(to: 0)
        pendingToken = nil
    }

    /// Generates after `prompt`, continuing from whatever the cache already holds (the prompt's
    /// positions follow the cached ones). `onText` receives complete UTF-8 text as it is produced.
    public func generate(
        prompt: [Int32], options: GenerationOptions, onText: (String) -> Void = { _ in }
    ) throws -> GenerationResult {
        try options.sampling.validate()
        guard !prompt.isEmpty else { throw DecoderError.badInput("the prompt is empty") }
        var sampler = Sampler(options.sampling)
        var decoder = StreamingDecoder(tokenizer: model.tokenizer)
        var history = prompt
        var generated: [Int32] = []
        var text = ""
        let start = DispatchTime.now().uptimeNanoseconds
        var firstTokenAt = start
        var stop = StopReason.maxTokens
        var next: Int32 = -1
        var input = prompt
        while generated.count < options.maxTokens {
            let base = Int32(cache.count)
            if cache.count + input.count > cache.capacity {
                stop = .contextFull
                break
            }
            let positions = (0..<input.count).map { base + Int32($0) }
            try transformer.forward(tokens: input, positions: positions, cache: cache, logits: .last) { _, logits in
                next = sampler.sample(logits: logits, recent: history[...])
            }
            if generated.isEmpty { firstTokenAt = DispatchTime.now().uptimeNanoseconds }
            if options.stopAtEndOfGeneration && model.tokenizer.isEndOfGeneration(next) {
                stop = .endOfGeneration
                break
            }
            generated.append(next)
            history.append(next)
            let piece = decoder.append(next)
            if !piece.isEmpty {
                text += piece
                onText(piece)
            }
            input = [next]
        }
        pendingToken = next >= 0 ? next : nil
        let rest = decoder.flush()
        if !rest.isEmpty {
            text += rest
            onText(rest)
        }
        let end = DispatchTime.now().uptimeNanoseconds
        return GenerationResult(
            promptTokens: prompt.count, generated: generated, text: text, stopReason: stop,
            prefillSeconds: Double(firstTokenAt - start) / 1e9, decodeSeconds: Double(end - firstTokenAt) / 1e9)
    }
}
