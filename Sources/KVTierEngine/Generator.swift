import Dispatch
import KVTierModel
import KVTierTokenizer

/// What to generate and when to stop.
public struct GenerationOptions: Sendable {
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Stop at the tokenizer's end-of-generation tokens (`<|im_end|>`, EOS).
    public var stopAtEndOfGeneration: Bool
    /// Stop sequences: the reply ends before the first of them (which is not part of its text).
    public var stopSequences: [String]
    /// Asked before every decoded token; true ends the reply (finish reason "cancelled").
    public var isCancelled: (@Sendable () -> Bool)?
    /// Teacher forcing (benchmarks replaying recorded chats): once the prompt is in and the
    /// first token's logits are out (TTFT), these tokens are the reply. They are fed in one
    /// batch, which gives their KV as decoding them one by one would, and the reply ends as if
    /// the model had ended it. Sampling options and stop sequences do not apply.
    public var forcedReply: [Int32]?
    /// Log probabilities of the generated tokens, each with this many alternatives (0...20);
    /// nil: none. The report carries them (`TurnReport.logprobs`), and `onLogprobs` gets those
    /// of each piece of text right before the piece goes to `onText`.
    public var logprobs: Int?
    public var onLogprobs: (@Sendable ([TokenLogprob]) -> Void)?

    public init(
        maxTokens: Int, sampling: SamplingParameters = .greedy, stopAtEndOfGeneration: Bool = true,
        stopSequences: [String] = [], isCancelled: (@Sendable () -> Bool)? = nil
    ) {
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopAtEndOfGeneration = stopAtEndOfGeneration
        self.stopSequences = stopSequences.filter { !$0.isEmpty }
        self.isCancelled = isCancelled
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
        var reply = ReplyBuilder(tokenizer: model.tokenizer, options: options, prompt: prompt)
        let start = DispatchTime.now().uptimeNanoseconds
        var firstTokenAt = start
        var stop = StopReason.maxTokens
        var next: Int32? = nil
        var input = prompt
        while reply.generated.count < options.maxTokens {
            let base = Int32(cache.count)
            if cache.count + input.count > cache.capacity {
                stop = .contextFull
                break
            }
            let positions = (0..<input.count).map { base + Int32($0) }
            try transformer.forward(tokens: input, positions: positions, cache: cache, logits: .last) { _, logits in
                next = reply.accept(logits, onText: onText)
            }
            if reply.generated.count <= 1 { firstTokenAt = DispatchTime.now().uptimeNanoseconds }
            guard let token = next else {
                stop = .endOfGeneration
                break
            }
            input = [token]
        }
        // The last sampled token has not been fed (its KV is not in the cache).
        pendingToken = reply.endToken ?? next
        reply.finish(onText: onText)
        let generated = reply.generated, text = reply.text
        let end = DispatchTime.now().uptimeNanoseconds
        return GenerationResult(
            promptTokens: prompt.count, generated: generated, text: text, stopReason: stop,
            prefillSeconds: Double(firstTokenAt - start) / 1e9, decodeSeconds: Double(end - firstTokenAt) / 1e9)
    }
}
