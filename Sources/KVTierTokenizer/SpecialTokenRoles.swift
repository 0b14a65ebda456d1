/// Works out which tokens end generation and which tokens must be treated as control
/// tokens, from the ids a model file gives and from well-known token texts.
struct SpecialTokenRoles {
    /// Tokens that end generation.
    private(set) var endOfGeneration: Set<Int32> = []
    /// End-of-turn token, given or found by text.
    private(set) var endOfTurn: Int32?
    /// End-of-message token, given or found by text.
    private(set) var endOfMessage: Int32?

    /// Texts of end-of-turn tokens, looked for when no id is given.
    static let endOfTurnTexts = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
        "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ]
    static let endOfMessageTexts = ["<|eom_id|>"]
    static let fimPrefixTexts = [
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
        "<|code_prefix|>", "<|prefix|>",
    ]
    static let fimSuffixTexts = [
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
        "<|code_suffix|>", "<|suffix|>",
    ]
    static let fimMiddleTexts = [
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
        "<|code_middle|>", "<|middle|>",
    ]
    static let fimPadTexts = ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]
    static let fimRepoTexts = ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]
    static let fimSeparatorTexts = ["<|file_sep|>"]

    /// Texts of tokens that end generation whenever they are in the vocabulary.
    static let endOfGenerationTexts: Set<String> = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<｜end▁of▁sentence｜>", "[e~[",
    ]

    /// Texts of tokens that are always rendered and matched whole, whatever their declared type.
    static let alwaysRenderedTexts = ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]

    /// Resolves the roles and adjusts `attributes` (tokens that end generation become control
    /// tokens, and so on).
    /// - Parameters:
    ///   - spec: the given ids (already checked to be in range, or nil).
    ///   - texts: token texts by id.
    ///   - lookup: token text to id.
    init(
        spec: TokenizerSpec,
        texts: [String],
        lookup: (String) -> Int32?,
        attributes: inout [TokenAttributes]
    ) {
        func find(_ candidates: [String], forcingControl: Bool) -> Int32? {
            for text in candidates {
                if let id = lookup(text) {
                    if forcingControl {
                        attributes[Int(id)].insert(.control)
                    }
                    return id
                }
            }
            return nil
        }

        endOfTurn = spec.eotID ?? find(Self.endOfTurnTexts, forcingControl: true)
        endOfMessage = spec.eomID ?? find(Self.endOfMessageTexts, forcingControl: true)
        if spec.fimPrefixID == nil { _ = find(Self.fimPrefixTexts, forcingControl: true) }
        if spec.fimSuffixID == nil { _ = find(Self.fimSuffixTexts, forcingControl: true) }
        if spec.fimMiddleID == nil { _ = find(Self.fimMiddleTexts, forcingControl: true) }
        let fimPad = spec.fimPadID ?? find(Self.fimPadTexts, forcingControl: true)
        let fimRepo = spec.fimRepoID ?? find(Self.fimRepoTexts, forcingControl: true)
        let fimSeparator = spec.fimSeparatorID ?? find(Self.fimSeparatorTexts, forcingControl: true)

        var eog: Set<Int32> = []
        for id in [fimPad, fimRepo, fimSeparator].compactMap({ $0 }) {
            eog.insert(id)
        }
        for text in Self.endOfGenerationTexts {
            if let id = lookup(text) {
                eog.insert(id)
                attributes[Int(id)].insert(.control)
            }
        }
        for text in Self.alwaysRenderedTexts {
            if let id = lookup(text) {
                attributes[Int(id)] = .userDefined
            }
        }
        for id in [spec.eosID, endOfTurn, endOfMessage].compactMap({ $0 }) {
            eog.insert(id)
        }

        // Where "<|return|>" and "<|call|>" (or "<|calls|>" and "<|flush|>") end generation,
        // "<|end|>" only ends a message and is rendered as ordinary text.
        var hasReturn = false
        var hasCall = false
        var hasFlush = false
        var endID: Int32?
        var hasToolResponseMarker = false
        var closingS: Int32?
        for id in eog where id >= 0 && Int(id) < texts.count {
            switch texts[Int(id)] {
            case "<|return|>": hasReturn = true
            case "<|call|>", "<|calls|>": hasCall = true
            case "<|flush|>": hasFlush = true
            case "<|end|>": endID = id
            case "<|tool_response>", "<|plamo:eos|>": hasToolResponseMarker = true
            case "</s>": closingS = id
            default: break
            }
        }
        if let endID, (hasReturn && hasCall) || (hasCall && hasFlush) {
            eog.remove(endID)
            attributes[Int(endID)] = .userDefined
        }
        // Where such markers exist, "</s>" is an ordinary token.
        if hasToolResponseMarker, let closingS {
            eog.remove(closingS)
            attributes[Int(closingS)] = .normal
        }
        endOfGeneration = eog
    }
}
