/// Per-token attributes the tokenizer works with once the vocabulary is loaded.
///
/// These start from the declared `TokenType` and are then adjusted by the
/// end-of-generation and special-token detection rules.
struct TokenAttributes: OptionSet, Sendable, Hashable {
    let rawValue: UInt8

    static let unknown = TokenAttributes(rawValue: 1 << 0)
    static let unused = TokenAttributes(rawValue: 1 << 1)
    static let normal = TokenAttributes(rawValue: 1 << 2)
    static let control = TokenAttributes(rawValue: 1 << 3)
    static let userDefined = TokenAttributes(rawValue: 1 << 4)
    static let byte = TokenAttributes(rawValue: 1 << 5)

    /// Tokens that are hidden when decoding unless special rendering is requested.
    static let hiddenUnlessRendered: TokenAttributes = [.unknown, .control]
    /// Tokens that are cut out of input text before pre-tokenization.
    static let matchedWhole: TokenAttributes = [.control, .userDefined, .unknown]

    /// The attributes that correspond to a declared token type; unrecognised values give none.
    init(declaredType raw: Int32) {
        switch TokenType(rawValue: raw) {
        case .normal: self = .normal
        case .unknown: self = .unknown
        case .control: self = .control
        case .userDefined: self = .userDefined
        case .unused: self = .unused
        case .byte: self = .byte
        case .undefined, .none: self = []
        }
    }

    init(rawValue: UInt8) {
        self.rawValue = rawValue
    }
}
