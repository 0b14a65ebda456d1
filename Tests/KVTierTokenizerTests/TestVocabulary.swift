@testable import KVTierTokenizer

/// Small vocabularies built in code for the tests.
enum TestVocabulary {
    /// One token per byte, with token id equal to the byte value.
    static let byteTokens: [String] = (0...255).map { ByteLevel.encode([UInt8($0)]) }

    /// A tokenizer whose first 256 tokens are the bytes (id == byte value), followed by
    /// `extra` tokens with ids 256, 257, ...
    static func make(
        pre: String = "gpt2",
        extra: [(String, TokenType)] = [],
        merges: [String] = [],
        bosID: Int32? = nil,
        eosID: Int32? = nil,
        addBOS: Bool = false,
        addEOS: Bool = false
    ) throws -> BPETokenizer {
        let tokens = byteTokens + extra.map(\.0)
        let types = [Int32](repeating: TokenType.normal.rawValue, count: 256) + extra.map(\.1.rawValue)
        let spec = TokenizerSpec(
            model: "gpt2", pre: pre, tokens: tokens, tokenTypes: types, merges: merges,
            bosID: bosID, eosID: eosID, addBOS: addBOS, addEOS: addEOS)
        return try BPETokenizer(spec: spec)
    }

    /// The ids of the bytes of `text` in a byte-only vocabulary.
    static func byteIDs(_ text: String) -> [Int32] {
        text.utf8.map { Int32($0) }
    }
}
