/// Turns token ids into text one id at a time, for streaming generated output.
///
/// Each `append` returns only text that is complete: when a multi-byte character is split
/// across tokens, its first bytes are held back until the rest arrives. Bytes that can never
/// form a valid character come out as U+FFFD as soon as that is certain. `flush` returns
/// whatever is still held (an unfinished character becomes U+FFFD).
///
/// Concatenating every `append` result and the final `flush` gives the same text as
/// `BPETokenizer.decode` on all the ids.
public struct StreamingDecoder: Sendable {
    /// The tokenizer whose pieces are decoded.
    public let tokenizer: BPETokenizer
    /// Whether control tokens are rendered as their text.
    public let renderSpecial: Bool
    /// Bytes of an unfinished character.
    private var pending: [UInt8] = []

    /// Creates a decoder with nothing held.
    public init(tokenizer: BPETokenizer, renderSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.renderSpecial = renderSpecial
    }

    /// Whether bytes of an unfinished character are being held.
    public var hasPendingBytes: Bool { !pending.isEmpty }

    /// Adds one token and returns the text that became complete.
    public mutating func append(_ id: Int32) -> String {
        tokenizer.appendPieceBytes(id, renderSpecial: renderSpecial, to: &pending)
        let complete = Self.completePrefixLength(pending)
        guard complete > 0 else { return "" }
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Returns everything still held and starts afresh.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// The length of the longest prefix that does not end in the middle of a character that
    /// could still be completed by more bytes.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let count = bytes.count
        // An unfinished character is at most 3 bytes long, so its lead byte is among the last 3.
        var start = count - 1
        while start >= 0 && start >= count - 3 {
            let byte = bytes[start]
            if byte & 0xC0 != 0x80 {
                // A lead byte (or ASCII): does it start a character that is still incomplete?
                let expected = expectedLength(lead: byte)
                let available = count - start
                if expected > available && isValidPrefix(bytes[start...]) {
                    return start
                }
                return count
            }
            start -= 1
        }
        return count
    }

    /// The length a sequence starting with `lead` must have, or 1 for bytes that cannot start one.
    private static func expectedLength(lead: UInt8) -> Int {
        switch lead {
        case 0xC2...0xDF: return 2
        case 0xE0...0xEF: return 3
        case 0xF0...0xF4: return 4
        default: return 1
        }
    }

    /// Whether `bytes` (lead byte first) can still be completed to a valid character.
    private static func isValidPrefix(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard let lead = bytes.first else { return false }
        var index = bytes.startIndex + 1
        while index < bytes.endIndex {
            let byte = bytes[index]
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            if index == bytes.startIndex + 1 {
                switch lead {
                case 0xE0: low = 0xA0
                case 0xED: high = 0x9F
                case 0xF0: low = 0x90
                case 0xF4: high = 0x8F
                default: break
                }
            }
            guard byte >= low && byte <= high else { return false }
            index += 1
        }
        return true
    }
}
