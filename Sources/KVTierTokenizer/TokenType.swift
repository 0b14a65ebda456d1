/// The kind of a vocabulary entry, as stored in a model's token-type table.
///
/// The raw values are the ones used by GGUF files (`tokenizer.ggml.token_type`).
public enum TokenType: Int32, Sendable, CaseIterable {
    /// Type not given; such tokens are never produced as text.
    case undefined = 0
    /// An ordinary byte-level BPE token.
    case normal = 1
    /// The unknown-token marker.
    case unknown = 2
    /// A control token such as `<|im_start|>`; hidden when decoding unless asked for.
    case control = 3
    /// A token added by the user; always matched whole in input text and always rendered.
    case userDefined = 4
    /// A placeholder that is never produced.
    case unused = 5
    /// A raw byte written as `<0xXX>`.
    case byte = 6
}
