/// Everything needed to build a `BPETokenizer`, in the shape a GGUF file stores it.
///
/// The tokenizer itself knows nothing about file formats: whoever reads the model file
/// copies the `tokenizer.ggml.*` values into this struct.
public struct TokenizerSpec: Sendable {
    /// `tokenizer.ggml.model`. Only `"gpt2"` (byte-level BPE) is supported.
    public var model: String
    /// `tokenizer.ggml.pre`, the pre-tokenizer name.
    ///
    /// Supported: `"smollm"`, `"gpt2"` / `"gpt-2"`, `"llama-bpe"` / `"llama3"` / `"llama-v3"`,
    /// and `"default"` (or an empty string, meaning the key was absent).
    public var pre: String
    /// `tokenizer.ggml.tokens`: token texts in byte-level form (a space is stored as `"Ġ"`).
    public var tokens: [String]
    /// `tokenizer.ggml.token_type`, one `TokenType` raw value per token; empty means all normal.
    public var tokenTypes: [Int32]
    /// `tokenizer.ggml.merges`: merge rules `"left right"`, highest priority first.
    public var merges: [String]
    /// `tokenizer.ggml.bos_token_id`.
    public var bosID: Int32?
    /// `tokenizer.ggml.eos_token_id`.
    public var eosID: Int32?
    /// `tokenizer.ggml.unknown_token_id`.
    public var unknownID: Int32?
    /// `tokenizer.ggml.padding_token_id`.
    public var paddingID: Int32?
    /// `tokenizer.ggml.add_bos_token`. When the file has no such key, use
    /// `TokenizerSpec.defaultAddBOS(pre:)`.
    public var addBOS: Bool
    /// `tokenizer.ggml.add_eos_token` (false when absent).
    public var addEOS: Bool
    /// `tokenizer.ggml.eot_token_id`; when nil it is looked up by text (`<|eot_id|>`, `<|im_end|>`, ...).
    public var eotID: Int32?
    /// `tokenizer.ggml.eom_token_id`; when nil it is looked up by text (`<|eom_id|>`).
    public var eomID: Int32?
    /// `tokenizer.ggml.fim_pre_token_id`; when nil it is looked up by text.
    public var fimPrefixID: Int32?
    /// `tokenizer.ggml.fim_suf_token_id`; when nil it is looked up by text.
    public var fimSuffixID: Int32?
    /// `tokenizer.ggml.fim_mid_token_id`; when nil it is looked up by text.
    public var fimMiddleID: Int32?
    /// `tokenizer.ggml.fim_pad_token_id`; when nil it is looked up by text. Ends generation.
    public var fimPadID: Int32?
    /// `tokenizer.ggml.fim_rep_token_id`; when nil it is looked up by text. Ends generation.
    public var fimRepoID: Int32?
    /// `tokenizer.ggml.fim_sep_token_id`; when nil it is looked up by text. Ends generation.
    public var fimSeparatorID: Int32?

    /// Creates a specification. Only `tokens` and `merges` are required.
    public init(
        model: String = "gpt2",
        pre: String = "gpt2",
        tokens: [String],
        tokenTypes: [Int32] = [],
        merges: [String],
        bosID: Int32? = nil,
        eosID: Int32? = nil,
        unknownID: Int32? = nil,
        paddingID: Int32? = nil,
        addBOS: Bool = false,
        addEOS: Bool = false,
        eotID: Int32? = nil,
        eomID: Int32? = nil,
        fimPrefixID: Int32? = nil,
        fimSuffixID: Int32? = nil,
        fimMiddleID: Int32? = nil,
        fimPadID: Int32? = nil,
        fimRepoID: Int32? = nil,
        fimSeparatorID: Int32? = nil
    ) {
        self.model = model
        self.pre = pre
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.merges = merges
        self.bosID = bosID
        self.eosID = eosID
        self.unknownID = unknownID
        self.paddingID = paddingID
        self.addBOS = addBOS
        self.addEOS = addEOS
        self.eotID = eotID
        self.eomID = eomID
        self.fimPrefixID = fimPrefixID
        self.fimSuffixID = fimSuffixID
        self.fimMiddleID = fimMiddleID
        self.fimPadID = fimPadID
        self.fimRepoID = fimRepoID
        self.fimSeparatorID = fimSeparatorID
    }

    /// Whether a BOS token is added when the model file does not say: true for the
    /// Llama-3 pre-tokenizer, false for the others.
    public static func defaultAddBOS(pre: String) -> Bool {
        PreTokenizer.Kind(name: pre) == .llama3
    }
}
