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
        guard options.maxTokens >= 1 else {
            throw DecoderError.badInput("max_tokens must be at least 1, got \(options.maxTokens)")
        }
        var reply = ReplyBuilder(tokenizer: model.tokenizer, options: options, prompt: prompt)
        let start = DispatchTime.now().uptimeNanoseconds
        var firstTokenAt = start
        var stop = StopReason.contextFull
        pendingToken = nil
        /// Feeds `tokens` at the positions after the cached ones; nil when the cache cannot take them.
        func feed(_ tokens: [Int32]) throws -> [Float]? {
            guard cache.count + tokens.count <= cache.capacity else { return nil }
            let base = Int32(cache.count)
            var logits: [Float] = []
            try transformer.forward(
                tokens: tokens, positions: (0..<tokens.count).map { base + Int32($0) }, cache: cache, logits: .last
            ) { _, l in logits = Array(l) }
            return logits
        }
        if let logits = try feed(prompt) {
            let end = try reply.decode(
                logits: logits, maxNew: options.maxTokens, isCancelled: nil, onText: onText,
                sampled: { if $0 <= 1 { firstTokenAt = DispatchTime.now().uptimeNanoseconds } }
            ) { try feed([$0]) }
            switch end {
            case .stopped: stop = .endOfGeneration
            case .length, .cancelled: stop = .maxTokens  // (not cancelled: `isCancelled` is not asked here)
            case .contextFull: stop = .contextFull
            }
            // The last sampled token has not been fed (its KV is not in the cache).
            pendingToken = end == .stopped ? nil : reply.generated.last
        }
        pendingToken = reply.endToken ?? pendingToken
        reply.finish(onText: onText)
        let generated = reply.generated, text = reply.text
        let end = DispatchTime.now().uptimeNanoseconds
        return GenerationResult(
            promptTokens: prompt.count, generated: generated, text: text, stopReason: stop,
            prefillSeconds: Double(firstTokenAt - start) / 1e9, decodeSeconds: Double(end - firstTokenAt) / 1e9)
    }
}
