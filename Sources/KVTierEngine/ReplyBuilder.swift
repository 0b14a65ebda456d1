import KVTierModel
import KVTierTokenizer

/// The generated side of a turn: sampling with the turn's parameters, the end-of-generation
/// rule, stop sequences, and streaming complete UTF-8 text out as tokens arrive. With stop
/// sequences, text that could be the start of one is held back until it is known not to be.
struct ReplyBuilder {
    private var sampler: Sampler
    private var decoder: StreamingDecoder
    private let tokenizer: BPETokenizer
    private let stopAtEndOfGeneration: Bool
    private let stopSequences: [String]
    /// Alternatives per token when log probabilities are asked for (`GenerationOptions.logprobs`).
    private let logprobTop: Int?
    private let onLogprobs: (@Sendable ([TokenLogprob]) -> Void)?
    /// Log probabilities of the tokens whose text is not out yet, and of those that are.
    private var pendingLogprobs: [TokenLogprob] = []
    private(set) var logprobs: [TokenLogprob] = []
    /// Decoded text not yet passed to `onText` (it may be the start of a stop sequence).
    private var pending = ""
    /// True when a stop sequence ended the reply.
    private(set) var endedByStopSequence = false
    /// Prompt and generated tokens (the repetition penalty's window looks at them).
    private(set) var history: [Int32]
    private(set) var generated: [Int32] = []
    private(set) var text = ""
    /// The end-of-generation token that ended the reply (not part of `generated`), if any.
    private(set) var endToken: Int32?
    var endedByModel: Bool { endToken != nil }

    init(tokenizer: BPETokenizer, options: GenerationOptions, prompt: [Int32]) {
        self.sampler = Sampler(options.sampling)
        self.decoder = StreamingDecoder(tokenizer: tokenizer)
        self.tokenizer = tokenizer
        self.stopAtEndOfGeneration = options.stopAtEndOfGeneration
        self.stopSequences = options.stopSequences
        self.history = prompt
        self.logprobTop = options.logprobs.map { min(max($0, 0), 20) }
        self.onLogprobs = options.onLogprobs
    }

    /// Samples the next token from `logits`. Returns it, or nil when it ends the reply.
    mutating func accept(_ logits: UnsafeBufferPointer<Float>, onText: (String) -> Void) -> Int32? {
        let next = sampler.sample(logits: logits, recent: history[...])
        if stopAtEndOfGeneration && tokenizer.isEndOfGeneration(next) {
            endToken = next
            return nil
        }
        generated.append(next)
        history.append(next)
        if let top = logprobTop {
            pendingLogprobs.append(TokenLogprob.measure(token: next, logits: logits, top: top, tokenizer: tokenizer))
        }
        let piece = decoder.append(next)
        return emit(piece, onText: onText) ? nil : next
    }

    /// How `decode` ended.
    enum DecodeEnd: Equatable {
        /// An end-of-generation token or a stop sequence ended the reply.
        case stopped
        /// `maxNew` tokens were generated (the last one sampled, not fed).
        case length
        case cancelled
        /// `feed` could not take the next token (the cache is full).
        case contextFull
    }

    /// The decode loop of every decoder here (a turn's, `Generator`'s), once the prompt is in and
    /// `logits` are its last token's: samples a token; stops at the reply's end, at `maxNew`
    /// tokens, when `isCancelled` says so (asked before each token) or when `feed` returns nil;
    /// otherwise feeds the token and goes on with the logits `feed` returns. `observe` sees the
    /// logits each token is sampled from; `sampled` gets the number of tokens generated so far
    /// after each sample (the first one's time is TTFT).
    mutating func decode(
        logits: [Float], maxNew: Int, isCancelled: (@Sendable () -> Bool)?, onText: (String) -> Void,
        observe: ([Float]) -> Void = { _ in }, sampled: (Int) -> Void = { _ in }, feed: (Int32) throws -> [Float]?
    ) rethrows -> DecodeEnd {
        var logits = logits
        while generated.count < maxNew {
            if isCancelled?() == true { return .cancelled }
            observe(logits)
            let next = logits.withUnsafeBufferPointer { accept($0, onText: onText) }
            sampled(generated.count)
            guard let next else { return .stopped }
            guard generated.count < maxNew else { return .length }
            guard let fed = try feed(next) else { return .contextFull }
            logits = fed
        }
        return .length
    }

    /// Emits whatever bytes the streaming decoder still holds, and any held-back text.
    mutating func finish(onText: (String) -> Void) {
        guard !endedByStopSequence else { return }
        _ = emit(decoder.flush(), onText: onText)
        if !pending.isEmpty {
            out(pending, onText: onText)
            pending = ""
        }
        // Tokens that made no text of their own (end of a held-back character) still count.
        if !pendingLogprobs.isEmpty {
            logprobs += pendingLogprobs
            onLogprobs?(pendingLogprobs)
            pendingLogprobs = []
        }
    }

    /// Text out: to `text` and `onText`, the log probabilities of the tokens behind it first.
    private mutating func out(_ piece: String, onText: (String) -> Void) {
        if !pendingLogprobs.isEmpty {
            logprobs += pendingLogprobs
            onLogprobs?(pendingLogprobs)
            pendingLogprobs = []
        }
        text += piece
        onText(piece)
    }

    /// Adds decoded text; returns true when it completes a stop sequence (the reply ends).
    private mutating func emit(_ piece: String, onText: (String) -> Void) -> Bool {
        guard !piece.isEmpty else { return false }
        guard !stopSequences.isEmpty else {
            out(piece, onText: onText)
            return false
        }
        pending += piece
        // A stop sequence starts inside `pending`: nothing emitted could be a part of one.
        if let cut = stopSequences.compactMap({ pending.range(of: $0)?.lowerBound }).min() {
            let kept = String(pending[..<cut])
            // The tokens of the stop sequence are not part of the reply: keep those that made
            // `kept` (one may straddle the cut).
            var budget = kept.utf8.count
            var keptLogprobs: [TokenLogprob] = []
            for t in pendingLogprobs where budget > 0 {
                keptLogprobs.append(t)
                budget -= t.bytes.count
            }
            pendingLogprobs = keptLogprobs
            if !kept.isEmpty { out(kept, onText: onText) }
            pending = ""
            pendingLogprobs = []
            endedByStopSequence = true
            return true
        }
        // Hold back the longest tail of `pending` that begins some stop sequence.
        var hold = 0
        for stop in stopSequences {
            for k in stride(from: min(stop.count, pending.count), to: hold, by: -1)
            where pending.hasSuffix(stop.prefix(k)) {
                hold = k
                break
            }
        }
        let ready = String(pending.dropLast(hold))
        if !ready.isEmpty { out(ready, onText: onText) }
        pending = String(pending.suffix(hold))
        return false
    }
}
