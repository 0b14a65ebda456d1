import KVTierModel
import KVTierTokenizer

/// The generated side of a turn: sampling with the turn's parameters, the end-of-generation
/// rule, and streaming complete UTF-8 text out as tokens arrive.
struct ReplyBuilder {
    private var sampler: Sampler
    private var decoder: StreamingDecoder
    private let tokenizer: BPETokenizer
    private let stopAtEndOfGeneration: Bool
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
        self.history = prompt
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
        let piece = decoder.append(next)
        if !piece.isEmpty {
            text += piece
            onText(piece)
        }
        return next
    }

    /// Emits whatever bytes the streaming decoder still holds.
    mutating func finish(onText: (String) -> Void) {
        let rest = decoder.flush()
        if !rest.isEmpty {
            text += rest
            onText(rest)
        }
    }
}
