/// A byte-level BPE tokenizer (the `gpt2` tokenizer model of GGUF files).
///
/// Encoding cuts special tokens out of the text, splits the rest into words with the
/// model's pre-tokenizer, and merges the bytes of each word by the ranked merge rules.
/// The instance is immutable and can be shared between tasks.
public final class BPETokenizer: Sendable {
    /// Token texts by id (empty texts are replaced by `[EMPTY_<id>]`).
    private let texts: [String]
    /// Declared token types by id.
    private let declaredTypes: [TokenType]
    /// Effective attributes by id.
    private let attributes: [TokenAttributes]
    /// Token text (UTF-8) to id; the last id wins for duplicate texts.
    private let idForText: [[UInt8]: Int32]
    /// Merge rules.
    private let mergeTable: MergeTable
    /// The pre-tokenizer.
    private let preTokenizer: PreTokenizer
    /// Whether a word that is itself a token is taken whole without merging.
    private let ignoresMerges: Bool
    /// Whether `detokenize` tidies spaces before punctuation.
    private let cleansSpaces: Bool
    /// Special-token matching.
    private let specialTokens: SpecialTokenMatcher
    /// Decoded bytes of every token, back to back; `pieceStarts[id]..<pieceStarts[id + 1]`.
    private let pieceBytesStorage: [UInt8]
    private let pieceStarts: [Int]
    /// Tokens that end generation.
    private let endOfGenerationSet: Set<Int32>

    /// The beginning-of-sequence token.
    public let bosID: Int32?
    /// The end-of-sequence token.
    public let eosID: Int32?
    /// The unknown token.
    public let unknownID: Int32?
    /// The padding token.
    public let paddingID: Int32?
    /// The end-of-turn token (given, or found by its text).
    public let eotID: Int32?
    /// Whether `encode(_:addSpecial:)` puts BOS in front.
    public let addsBOS: Bool
    /// Whether `encode(_:addSpecial:)` puts EOS at the end.
    public let addsEOS: Bool

    /// Builds a tokenizer from a specification.
    public init(spec: TokenizerSpec) throws(TokenizerError) {
        guard spec.model == "gpt2" else {
            throw TokenizerError(.unsupportedModel(spec.model))
        }
        guard let kind = PreTokenizer.Kind(name: spec.pre) else {
            throw TokenizerError(.unsupportedPreTokenizer(spec.pre))
        }
        guard !spec.tokens.isEmpty else {
            throw TokenizerError(.emptyVocabulary)
        }
        guard spec.tokenTypes.isEmpty || spec.tokenTypes.count >= spec.tokens.count else {
            throw TokenizerError(.tokenTypeCountMismatch(tokens: spec.tokens.count, types: spec.tokenTypes.count))
        }
        let count = spec.tokens.count
        guard count < Int(Int32.max) / 2 else {
            throw TokenizerError(.tokenIDOutOfRange(name: "vocabulary", id: Int32.max, vocabularySize: count))
        }

        func checked(_ id: Int32?, _ name: String) throws(TokenizerError) -> Int32? {
            guard let id else { return nil }
            guard id >= 0 && Int(id) < count else {
                throw TokenizerError(.tokenIDOutOfRange(name: name, id: id, vocabularySize: count))
            }
            return id
        }
        /// Optional ids that are out of range are dropped rather than rejected.
        func lenient(_ id: Int32?) -> Int32? {
            guard let id, id >= 0, Int(id) < count else { return nil }
            return id
        }

        var spec = spec
        spec.bosID = try checked(spec.bosID, "BOS")
        spec.eosID = try checked(spec.eosID, "EOS")
        spec.eotID = try checked(spec.eotID, "EOT")
        spec.eomID = try checked(spec.eomID, "EOM")
        spec.unknownID = lenient(spec.unknownID)
        spec.paddingID = lenient(spec.paddingID)
        spec.fimPrefixID = lenient(spec.fimPrefixID)
        spec.fimSuffixID = lenient(spec.fimSuffixID)
        spec.fimMiddleID = lenient(spec.fimMiddleID)
        spec.fimPadID = lenient(spec.fimPadID)
        spec.fimRepoID = lenient(spec.fimRepoID)
        spec.fimSeparatorID = lenient(spec.fimSeparatorID)
        if spec.addBOS && spec.bosID == nil {
            throw TokenizerError(.missingSpecialToken(name: "BOS"))
        }
        if spec.addEOS && spec.eosID == nil {
            throw TokenizerError(.missingSpecialToken(name: "EOS"))
        }

        // Texts, types and the text lookup.
        var texts = spec.tokens
        var declared: [TokenType] = []
        declared.reserveCapacity(count)
        var attributes: [TokenAttributes] = []
        attributes.reserveCapacity(count)
        var idForText: [[UInt8]: Int32] = [:]
        idForText.reserveCapacity(count)
        for id in 0..<count {
            if texts[id].isEmpty {
                texts[id] = "[EMPTY_\(id)]"
            }
            let raw = spec.tokenTypes.isEmpty ? TokenType.normal.rawValue : spec.tokenTypes[id]
            declared.append(TokenType(rawValue: raw) ?? .undefined)
            attributes.append(TokenAttributes(declaredType: raw))
            idForText[Array(texts[id].utf8)] = Int32(id)
        }

        // Merge rules over the byte-level form of the tokens.
        let tokenBytes = texts.map { ByteLevel.decode($0) }
        mergeTable = try MergeTable(tokenBytes: tokenBytes, merges: spec.merges)

        // Roles of special tokens, which may change attributes.
        let lookup = { (text: String) -> Int32? in idForText[Array(text.utf8)] }
        let roles = SpecialTokenRoles(spec: spec, texts: texts, lookup: lookup, attributes: &attributes)

        // Special-token matching.
        var matched: [(id: Int32, text: String, alwaysMatched: Bool)] = []
        for id in 0..<count where !attributes[id].isDisjoint(with: .matchedWhole) {
            let alwaysMatched = attributes[id].isDisjoint(with: .hiddenUnlessRendered)
            matched.append((Int32(id), texts[id], alwaysMatched))
        }
        specialTokens = SpecialTokenMatcher(tokens: matched)

        // Pieces.
        var storage: [UInt8] = []
        storage.reserveCapacity(count * 6)
        var starts: [Int] = []
        starts.reserveCapacity(count + 1)
        for id in 0..<count {
            starts.append(storage.count)
            storage.append(contentsOf: Self.piece(text: texts[id], attributes: attributes[id]))
        }
        starts.append(storage.count)

        self.texts = texts
        self.declaredTypes = declared
        self.attributes = attributes
        self.idForText = idForText
        self.preTokenizer = PreTokenizer(kind: kind)
        self.ignoresMerges = kind == .llama3
        self.cleansSpaces = kind != .smollm
        self.pieceBytesStorage = storage
        self.pieceStarts = starts
        self.endOfGenerationSet = roles.endOfGeneration
        self.bosID = spec.bosID
        self.eosID = spec.eosID
        self.unknownID = spec.unknownID
        self.paddingID = spec.paddingID
        self.eotID = roles.endOfTurn
        self.addsBOS = spec.addBOS
        self.addsEOS = spec.addEOS
    }

    /// The bytes a token stands for when rendered.
    private static func piece(text: String, attributes: TokenAttributes) -> [UInt8] {
        if !attributes.isDisjoint(with: [.unknown, .control, .userDefined]) {
            return Array(text.utf8)
        }
        if attributes.contains(.normal) {
            return ByteLevel.decodeMarkingUnknown(text)
        }
        if attributes.contains(.byte) {
            // "<0xXX>": up to two hex digits from the fourth character on.
            let utf8 = Array(text.utf8)
            var value: UInt8 = 0
            for index in 3..<min(5, utf8.count) {
                guard let digit = hexValue(utf8[index]) else { break }
                value = value << 4 | digit
            }
            return [value]
        }
        return []
    }

    private static func hexValue(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return character - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    // MARK: Vocabulary

    /// Number of tokens in the vocabulary.
    public var vocabularySize: Int { texts.count }

    /// Whether a token ends generation: EOS, plus end-of-turn style control tokens
    /// (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>`, ...) present in the vocabulary.
    public func isEndOfGeneration(_ id: Int32) -> Bool {
        endOfGenerationSet.contains(id)
    }

    /// All tokens that end generation, in ascending order.
    public var endOfGenerationIDs: [Int32] {
        endOfGenerationSet.sorted()
    }

    /// The id of the token whose stored text is exactly `text` (byte-level form, e.g. `"Ġthe"`).
    public func tokenID(_ text: String) -> Int32? {
        idForText[Array(text.utf8)]
    }

    /// The stored text of a token, or nil if the id is out of range.
    public func tokenText(_ id: Int32) -> String? {
        guard id >= 0 && Int(id) < texts.count else { return nil }
        return texts[Int(id)]
    }

    /// The declared type of a token, or nil if the id is out of range.
    public func tokenType(_ id: Int32) -> TokenType? {
        guard id >= 0 && Int(id) < declaredTypes.count else { return nil }
        return declaredTypes[Int(id)]
    }

    /// Whether a token is hidden when decoding without `renderSpecial` (control and unknown
    /// tokens, including tokens that end generation).
    public func isSpecial(_ id: Int32) -> Bool {
        guard id >= 0 && Int(id) < attributes.count else { return false }
        return !attributes[Int(id)].isDisjoint(with: .hiddenUnlessRendered)
    }

    // MARK: Encoding

    /// Converts text to token ids.
    /// - Parameters:
    ///   - addSpecial: put BOS in front and EOS at the end, as the model asks (`addsBOS`, `addsEOS`).
    ///   - parseSpecial: match control tokens written literally in the text (such as
    ///     `"<|im_start|>"`) as those tokens. User-defined tokens are matched either way.
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int32] {
        var output: [Int32] = []
        output.reserveCapacity(text.utf8.count / 3 + 2)
        if addSpecial && addsBOS, let bosID {
            output.append(bosID)
        }
        var text = text
        text.withUTF8 { bytes in
            encodeBytes(bytes, parseSpecial: parseSpecial, into: &output)
        }
        if addSpecial && addsEOS, let eosID {
            output.append(eosID)
        }
        return output
    }

    /// Splits text into the words the pre-tokenizer produces (no special-token matching).
    public func preTokenize(_ text: String) -> [String] {
        preTokenizer.words(text)
    }

    private func encodeBytes(_ bytes: UnsafeBufferPointer<UInt8>, parseSpecial: Bool, into output: inout [Int32]) {
        guard !bytes.isEmpty else { return }
        let fragments: [SpecialTokenMatcher.Fragment] =
            specialTokens.isEmpty ? [.text(0..<bytes.count)] : specialTokens.partition(bytes, parseSpecial: parseSpecial)
        var scratch = EncodingScratch()
        for fragment in fragments {
            switch fragment {
            case .token(let id):
                output.append(id)
            case .text(let range):
                encodeText(bytes, range: range, scratch: &scratch, into: &output)
            }
        }
    }

    /// Buffers reused across the fragments of one call.
    private struct EncodingScratch {
        var text = ScalarText()
        var ends: [Int] = []
        var symbols: [Int32] = []
    }

    private func encodeText(
        _ bytes: UnsafeBufferPointer<UInt8>,
        range: Range<Int>,
        scratch: inout EncodingScratch,
        into output: inout [Int32]
    ) {
        scratch.text.load(bytes, range: range)
        scratch.ends.removeAll(keepingCapacity: true)
        preTokenizer.split(scratch.text, into: &scratch.ends)
        var start = 0
        for end in scratch.ends {
            let word = UnsafeBufferPointer(
                rebasing: bytes[scratch.text.byteOffsets[start]..<scratch.text.byteOffsets[end]])
            start = end
            if ignoresMerges && word.count > 1, let id = mergeTable.tokenForBytes[Array(word)] {
                output.append(id)
                continue
            }
            scratch.symbols.removeAll(keepingCapacity: true)
            mergeTable.merge(word, into: &scratch.symbols)
            for symbol in scratch.symbols {
                if Int(symbol) < mergeTable.vocabularySize {
                    output.append(symbol)
                } else {
                    appendUnknownSymbol(symbol, into: &output)
                }
            }
        }
    }

    /// A merged piece that is not a token: its byte-level characters that are tokens on
    /// their own are emitted one by one, the rest dropped.
    private func appendUnknownSymbol(_ symbol: Int32, into output: inout [Int32]) {
        let encoded = ByteLevel.encode(mergeTable.bytes(ofExtraSymbol: symbol))
        for unit in encoded.utf8 {
            if let id = idForText[[unit]] {
                output.append(id)
            }
        }
    }

    // MARK: Decoding

    /// The bytes a token stands for. Control and unknown tokens give nothing unless
    /// `renderSpecial` is set, in which case they give their text.
    public func pieceBytes(_ id: Int32, renderSpecial: Bool = false) -> [UInt8] {
        guard id >= 0 && Int(id) < texts.count else { return [] }
        if !renderSpecial && !attributes[Int(id)].isDisjoint(with: .hiddenUnlessRendered) {
            return []
        }
        return Array(pieceBytesStorage[pieceStarts[Int(id)]..<pieceStarts[Int(id) + 1]])
    }

    /// Appends the bytes of a token to `buffer` (see `pieceBytes`).
    public func appendPieceBytes(_ id: Int32, renderSpecial: Bool = false, to buffer: inout [UInt8]) {
        guard id >= 0 && Int(id) < texts.count else { return }
        if !renderSpecial && !attributes[Int(id)].isDisjoint(with: .hiddenUnlessRendered) {
            return
        }
        buffer.append(contentsOf: pieceBytesStorage[pieceStarts[Int(id)]..<pieceStarts[Int(id) + 1]])
    }

    /// Converts token ids back to text; invalid UTF-8 becomes U+FFFD. Ids outside the
    /// vocabulary are skipped.
    public func decode(_ ids: [Int32], renderSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids {
            appendPieceBytes(id, renderSpecial: renderSpecial, to: &bytes)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Converts token ids back to text for display, with clean-up: optionally
    /// dropping a leading BOS / trailing EOS that `encode` would add, and, for the `gpt2`,
    /// `llama-bpe` and `default` pre-tokenizers, removing the space before `?!.,`, around a
    /// lone `'`, and before `'s`, `'m`, `'re`, `'ve`.
    public func detokenize(_ ids: [Int32], removeSpecial: Bool = false, renderSpecial: Bool = false) -> String {
        var ids = ids[...]
        if removeSpecial && addsBOS, let first = ids.first, first == bosID {
            ids = ids.dropFirst()
        }
        if removeSpecial && addsEOS, let last = ids.last, last == eosID {
            ids = ids.dropLast()
        }
        var bytes: [UInt8] = []
        for id in ids {
            appendPieceBytes(id, renderSpecial: renderSpecial, to: &bytes)
        }
        if cleansSpaces {
            Self.cleanSpaces(&bytes)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The three space-tidying passes of `detokenize`.
    static func cleanSpaces(_ text: inout [UInt8]) {
        let space = UInt8(ascii: " ")
        let apostrophe = UInt8(ascii: "'")
        guard !text.isEmpty else { return }
        // " ?", " !", " .", " ,"
        var output: [UInt8] = [text[0]]
        for index in 1..<text.count {
            let character = text[index]
            if text[index - 1] == space && [UInt8(ascii: "?"), UInt8(ascii: "!"), UInt8(ascii: "."),
                                            UInt8(ascii: ",")].contains(character) {
                output.removeLast()
            }
            output.append(character)
        }
        text = output
        // " ' " -> "'"; the space after the apostrophe is blanked, so it cannot also
        // serve as the space before a following apostrophe.
        output = [text[0]]
        var index = 1
        while index < text.count {
            let character = text[index]
            if character == apostrophe && index + 1 < text.count && text[index - 1] == space
                && text[index + 1] == space {
                output.removeLast()
                index += 1
                text[index] = 0
            }
            output.append(character)
            index += 1
        }
        text = output
        // " 's", " 'm", " 're", " 've"
        output = [text[0]]
        for index in 1..<text.count {
            let character = text[index]
            if text[index - 1] == space && character == apostrophe && index + 1 < text.count {
                let next = text[index + 1]
                if next == UInt8(ascii: "s") || next == UInt8(ascii: "m") {
                    output.removeLast()
                } else if next != UInt8(ascii: "t") && next != UInt8(ascii: "d") && index + 2 < text.count {
                    let third = text[index + 2]
                    if (next == UInt8(ascii: "r") || next == UInt8(ascii: "v")) && third == UInt8(ascii: "e") {
                        output.removeLast()
                    }
                }
            }
            output.append(character)
        }
        text = output
    }
}
