import KVTierModel

/// The fuzz tests' mutation engine: takes a corpus entry and applies one to four stacked edits,
/// some generic (bit flips, random bytes, insert/delete/duplicate ranges, truncation, splicing two
/// corpus entries, NUL bytes, invalid UTF-8), some aware of the input's format (HTTP framing edits,
/// JSON structure edits), chosen by `formats`.
struct ByteMutator {
    struct Formats: OptionSet {
        let rawValue: Int
        static let http = Formats(rawValue: 1)
        static let json = Formats(rawValue: 2)
    }

    let corpus: [[UInt8]]
    let formats: Formats
    /// Tokens worth inserting whole (keywords, header names, field names).
    let dictionary: [[UInt8]]
    /// Longest input produced (a mutation that would grow past it is cut back).
    var maxLength = 256 * 1024

    init(corpus: [[UInt8]], formats: Formats, dictionary: [String] = []) {
        precondition(!corpus.isEmpty, "the fuzz corpus is empty")
        self.corpus = corpus
        self.formats = formats
        self.dictionary = dictionary.map { Array($0.utf8) }
    }

    /// A fresh input: usually a mutated corpus entry, sometimes an entry as it is.
    func generate(_ rng: inout SplitMix64) -> [UInt8] {
        let input = rng.pick(corpus)
        if rng.oneIn(50) { return input }
        return mutated(input, &rng)
    }

    /// `input` after one to four stacked mutations.
    func mutated(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var input = input
        for _ in 0..<(1 + rng.below(4)) { mutate(&input, &rng) }
        if input.count > maxLength { input.removeLast(input.count - maxLength) }
        return input
    }

    static let interestingNumbers = [
        "0", "-0", "-1", "1", "00", "+1", "0x10", "1e999", "-1e999", "1.5", "1e-400", "NaN", "Infinity", "255", "256", "65535", "65536",
        "2147483647", "2147483648", "4294967295", "4294967296", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
        "18446744073709551615", "18446744073709551616", "99999999999999999999999999999999999999",
    ]
    static let interestingBytes: [UInt8] = [0, 0x7F, 0x80, 0xFF, 0x0D, 0x0A, 0x20, 0x09, 0x3A, 0x22, 0x5C, 0x25, 0x3F, 0x2F, 0x7B, 0x5B]
    static let invalidUTF8: [[UInt8]] = [[0x80], [0xC0, 0x80], [0xC3], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFE], [0xEF, 0xBF, 0xBF]]
    static let jsonValues = [
        "null", "true", "false", "[]", "{}", "\"\"", "\"x\"", "0", "-1", "1e308", "-1.7976931348623157e309", "[1,\"a\",null]",
        "{\"role\":\"user\"}", "\"\\u0000\"", "\"\\ud800\"", "\"\\u12\"", "[[]]", "9223372036854775808",
    ]

    func mutate(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        var kinds = 12
        if formats.contains(.http) { kinds += 4 }
        if formats.contains(.json) { kinds += 3 }
        var k = rng.below(kinds)
        switch k {
        case 0: if !b.isEmpty { b[rng.below(b.count)] ^= 1 << UInt8(rng.below(8)) }
        case 1: if !b.isEmpty { for _ in 0..<rng.size(upTo: 8) { b[rng.below(b.count)] = UInt8(truncatingIfNeeded: rng.next()) } }
        case 2: b.insert(contentsOf: (0..<rng.size(upTo: 32)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: rng.below(b.count + 1))
        case 3:
            if !b.isEmpty {
                let start = rng.below(b.count)
                b.removeSubrange(start..<min(b.count, start + rng.size(upTo: b.count)))
            }
        case 4:
            if !b.isEmpty {
                let start = rng.below(b.count)
                let piece = Array(b[start..<min(b.count, start + rng.size(upTo: 256))])
                let times = rng.oneIn(8) ? rng.size(upTo: 64) : 1
                for _ in 0..<times { b.insert(contentsOf: piece, at: rng.below(b.count + 1)) }
            }
        case 5: if !b.isEmpty { b.removeLast(rng.below(b.count) + 1) }
        case 6:
            let other = rng.pick(corpus)
            let cut = rng.below(b.count + 1)
            b = Array(b[..<cut]) + Array(other[rng.below(other.count + 1)...])
        case 7: if !dictionary.isEmpty { b.insert(contentsOf: rng.pick(dictionary), at: rng.below(b.count + 1)) }
        case 8:
            if !b.isEmpty { b[rng.below(b.count)] = rng.pick(Self.interestingBytes) }
        case 9: b.insert(contentsOf: rng.pick(Self.invalidUTF8), at: rng.below(b.count + 1))
        case 10: b.insert(contentsOf: [UInt8](repeating: 0, count: rng.size(upTo: 4)), at: rng.below(b.count + 1))
        case 11: replaceNumber(&b, &rng)
        default:
            k -= 12
            if formats.contains(.http) {
                switch k {
                case 0: editContentLength(&b, &rng); return
                case 1: makeChunked(&b, &rng); return
                case 2: explodeHeaders(&b, &rng); return
                case 3: fixContentLength(&b); return
                default: k -= 4
                }
            }
            switch k {
            case 0: nestDeeply(&b, &rng)
            case 1: replaceJSONValue(&b, &rng)
            default: insertLongString(&b, &rng)
            }
        }
    }

    // MARK: Generic

    /// A position holding a byte that passes `test`: the first one at or after a random start,
    /// wrapping around (no index list is built; inputs run to 256 KiB).
    static func randomPosition(_ b: [UInt8], _ rng: inout SplitMix64, where test: (UInt8) -> Bool) -> Int? {
        guard !b.isEmpty else { return nil }
        let start = rng.below(b.count)
        if let i = b[start...].firstIndex(where: test) { return i }
        return b[..<start].firstIndex(where: test)
    }

    /// Replaces a run of digits with an interesting number.
    private func replaceNumber(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        guard var start = Self.randomPosition(b, &rng, where: { (0x30...0x39).contains($0) }) else { return }
        while start > 0, (0x30...0x39).contains(b[start - 1]) { start -= 1 }
        var end = start
        while end < b.count, (0x30...0x39).contains(b[end]) { end += 1 }
        b.replaceSubrange(start..<end, with: Array(rng.pick(Self.interestingNumbers).utf8))
    }

    // MARK: HTTP

    /// Where the head ends (index just past CRLF CRLF), if it does.
    static func headEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 0x0D && b[i + 1] == 0x0A && b[i + 2] == 0x0D && b[i + 3] == 0x0A { return i + 4 }
        return nil
    }

    /// Range of the value of the first `name:` header line, if any (name matched case-insensitively).
    static func headerValueRange(_ b: [UInt8], _ name: String) -> Range<Int>? {
        let needle = Array(("\r\n" + name + ":").lowercased().utf8)
        let limit = min(b.count, headEnd(b) ?? b.count)
        guard limit >= needle.count else { return nil }
        func matches(at i: Int) -> Bool {
            for j in 0..<needle.count {
                let c = b[i + j]
                if ((0x41...0x5A).contains(c) ? c + 32 : c) != needle[j] { return false }
            }
            return true
        }
        for i in 0...(limit - needle.count) where b[i] == 0x0D && matches(at: i) {
            let start = i + needle.count
            var end = start
            while end < b.count, b[end] != 0x0D { end += 1 }
            return start..<end
        }
        return nil
    }

    /// Content-Length: an interesting value, a duplicate with another value, or removed.
    private func editContentLength(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        let value = rng.pick(Self.interestingNumbers + ["", " ", "1, 2", "5 5", "\t7", "0x1F"])
        if let range = Self.headerValueRange(b, "Content-Length") {
            switch rng.below(3) {
            case 0: b.replaceSubrange(range, with: Array((" " + value).utf8))
            case 1: b.insert(contentsOf: Array("\r\nContent-Length: \(value)".utf8), at: range.upperBound)
            default:
                let lineStart = range.lowerBound - "\r\nContent-Length:".utf8.count
                b.removeSubrange(lineStart..<range.upperBound)
            }
        } else if let end = Self.headEnd(b) {
            b.insert(contentsOf: Array("Content-Length: \(value)\r\n".utf8), at: end - 2)
        }
    }

    /// Re-frames the body as chunked, with chunk sizes that are right or wrong on purpose.
    private func makeChunked(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        guard let end = Self.headEnd(b) else { return }
        var head = Array(b[..<(end - 2)])
        let body = Array(b[end...])
        if let range = Self.headerValueRange(head + [0x0D], "Content-Length") {
            let lineStart = range.lowerBound - "\r\nContent-Length:".utf8.count
            if !rng.oneIn(4) { head.removeSubrange(lineStart..<min(head.count, range.upperBound)) }
        }
        head += Array(rng.pick(["Transfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "transfer-encoding:  Chunked \r\n", "Transfer-Encoding: identity\r\n"]).utf8)
        var out = head + [0x0D, 0x0A]
        var offset = 0
        while offset < body.count {
            let n = min(body.count - offset, rng.size(upTo: 64))
            let size: String
            switch rng.below(12) {
            case 0: size = rng.pick(["-1", "ffffffffffffffff", "10000000000000000", "", "zz", " 1", "0x1", "1;ext=\"a\"", "1 ;", "7fffffffffffffff"])
            case 1: size = String(n + 1, radix: 16)
            default: size = String(n, radix: 16, uppercase: rng.oneIn(2))
            }
            out += Array(size.utf8) + [0x0D, 0x0A] + body[offset..<(offset + n)]
            out += rng.oneIn(20) ? [0x0A] : [0x0D, 0x0A]
            offset += n
        }
        out += Array(rng.pick(["0\r\n\r\n", "0\r\nX-Trailer: 1\r\n\r\n", "0\r\n", "", "00000\r\n\r\n"]).utf8)
        b = out
    }

    /// Many header fields, or one very long one, or a header line without a colon.
    private func explodeHeaders(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        guard let end = Self.headEnd(b) else { return }
        var extra: [UInt8] = []
        switch rng.below(4) {
        case 0: for i in 0..<(100 + rng.below(200)) { extra += Array("X-F\(i): \(i)\r\n".utf8) }
        case 1: extra = Array("X-Long: ".utf8) + [UInt8](repeating: 0x61, count: rng.size(upTo: 120_000)) + [0x0D, 0x0A]
        case 2: extra = Array(rng.pick(["NoColon\r\n", ": empty-name\r\n", " folded\r\n", "X-A:\u{7F}\r\n", "Host: a\r\nHost: b\r\n", "X: \0\r\n"]).utf8)
        default: for _ in 0..<rng.size(upTo: 300) { extra += Array("Cookie: a=b\r\n".utf8) }
        }
        b.insert(contentsOf: extra, at: end - 2)
    }

    /// Sets Content-Length to the bytes after the head, so body mutations reach the JSON decoder.
    func fixContentLength(_ b: inout [UInt8]) {
        guard let end = Self.headEnd(b), let range = Self.headerValueRange(b, "Content-Length") else { return }
        b.replaceSubrange(range, with: Array(" \(b.count - end)".utf8))
    }

    // MARK: JSON

    /// An array or object nested up to 20,000 deep where a value starts; sometimes the input
    /// ends right there, and sometimes the depth sits next to a power of two (parsers' limits:
    /// Foundation's is 512).
    private func nestDeeply(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        let depth = rng.oneIn(2) ? rng.size(upTo: 20_000) : max(1, (1 << (5 + rng.below(6))) + rng.below(5) - 2 - rng.below(4))
        let (open, close): ([UInt8], [UInt8]) = rng.oneIn(2) ? ([0x5B], [0x5D]) : (Array("{\"a\":".utf8), [0x7D])
        var nested: [UInt8] = []
        nested.reserveCapacity(depth * (open.count + 1) + 1)
        for _ in 0..<depth { nested += open }
        let at = Self.randomPosition(b, &rng, where: { $0 == 0x3A }).map { $0 + 1 } ?? rng.below(b.count + 1)
        if rng.oneIn(4) {
            b = Array(b[..<at]) + nested
            return
        }
        nested += Array("1".utf8)
        if !rng.oneIn(8) { for _ in 0..<depth { nested += close } }
        b.insert(contentsOf: nested, at: at)
    }

    /// Replaces the value after a `:` (up to the next `,` or `}`) with a value of another type.
    private func replaceJSONValue(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        guard let colon = Self.randomPosition(b, &rng, where: { $0 == 0x3A }) else { return }
        let start = colon + 1
        var end = start
        var inString = false
        while end < b.count {
            let c = b[end]
            if inString { if c == 0x5C { end += 1 } else if c == 0x22 { inString = false } } else if c == 0x22 { inString = true } else if c == 0x2C || c == 0x7D { break }
            end += 1
        }
        b.replaceSubrange(start..<min(end, b.count), with: Array(rng.pick(Self.jsonValues).utf8))
    }

    /// A long run of one character (up to 200 KB) after a quote, so inside some string literal.
    private func insertLongString(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        let quote = Self.randomPosition(b, &rng, where: { $0 == 0x22 }) ?? 0
        let fill = rng.pick([UInt8(0x61), 0x5C, 0x20, 0xC3])
        let count = rng.oneIn(2) ? 200 + rng.below(200) : rng.size(upTo: 200_000)
        b.insert(contentsOf: [UInt8](repeating: fill, count: count), at: min(b.count, quote + 1))
    }
}
