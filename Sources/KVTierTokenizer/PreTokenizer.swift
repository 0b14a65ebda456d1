/// Splits text into the words that byte-level BPE then encodes one at a time.
///
/// Each supported pre-tokenizer is a hand-written scanner equivalent to the splitting
/// regular expressions of the corresponding tokenizer:
///
/// - `gpt2`: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// - `smollm`: every `\p{N}` scalar is first cut out on its own, then the rest is split as `gpt2`.
/// - `llama3`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
///   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// - `standard` (`default`): runs of punctuation and `$+<=>^~|` are cut out, the pieces are split
///   as `gpt2`, then runs of `\p{N}` and finally groups of three ASCII digits are cut out.
///
/// `\s+(?!\S)` is applied as: a run of two or more whitespace scalars that is followed by
/// something else in the same segment gives up its last scalar to the next word, so
/// `"a   b"` splits as `"a"`, `"  "`, `" b"`. Segments (the pieces left between special tokens,
/// and the pieces of an earlier splitting stage) are never crossed.
struct PreTokenizer: Sendable {
    /// The supported pre-tokenizers.
    enum Kind: Sendable, Equatable {
        case gpt2
        case smollm
        case llama3
        case standard

        /// The kind for a `tokenizer.ggml.pre` value, or nil if unsupported.
        init?(name: String) {
            switch name {
            case "gpt2", "gpt-2": self = .gpt2
            case "smollm": self = .smollm
            case "llama-bpe", "llama3", "llama-v3": self = .llama3
            case "default", "": self = .standard
            default: return nil
            }
        }
    }

    let kind: Kind

    init(kind: Kind) {
        self.kind = kind
    }

    /// Splits `text` into words and appends the scalar index where each word ends to `ends`.
    /// Words are contiguous and cover all of `text`.
    func split(_ text: ScalarText, into ends: inout [Int]) {
        text.values.withUnsafeBufferPointer { values in
            text.classes.withUnsafeBufferPointer { classes in
                let scanner = Scanner(values: values, classes: classes)
                let whole = 0..<values.count
                switch kind {
                case .gpt2:
                    scanner.splitGPT2(whole, into: &ends)
                case .llama3:
                    scanner.splitLlama3(whole, into: &ends)
                case .smollm:
                    scanner.splitSmolLM(whole, into: &ends)
                case .standard:
                    scanner.splitStandard(whole, into: &ends)
                }
            }
        }
    }

    /// Splits a string into its words (for inspection and tests).
    func words(_ string: String) -> [String] {
        let text = ScalarText(string)
        var ends: [Int] = []
        split(text, into: &ends)
        var result: [String] = []
        var start = 0
        for end in ends {
            var scalars = String.UnicodeScalarView()
            for value in text.values[start..<end] {
                if let scalar = Unicode.Scalar(value) {
                    scalars.append(scalar)
                }
            }
            result.append(String(scalars))
            start = end
        }
        return result
    }
}

/// The scanning routines, over one decoded text.
private struct Scanner {
    let values: UnsafeBufferPointer<UInt32>
    let classes: UnsafeBufferPointer<ScalarClass>

    private static let apostrophe = UInt32(UInt8(ascii: "'"))
    private static let space = UInt32(UInt8(ascii: " "))
    private static let carriageReturn = UInt32(UInt8(ascii: "\r"))
    private static let lineFeed = UInt32(UInt8(ascii: "\n"))
    private static let letterS = UInt32(UInt8(ascii: "s"))
    private static let letterT = UInt32(UInt8(ascii: "t"))
    private static let letterM = UInt32(UInt8(ascii: "m"))
    private static let letterD = UInt32(UInt8(ascii: "d"))
    private static let letterR = UInt32(UInt8(ascii: "r"))
    private static let letterE = UInt32(UInt8(ascii: "e"))
    private static let letterV = UInt32(UInt8(ascii: "v"))
    private static let letterL = UInt32(UInt8(ascii: "l"))

    /// The class at `index`, or the empty class outside `segment`.
    @inline(__always)
    private func classAt(_ index: Int, _ segment: Range<Int>) -> ScalarClass {
        segment.contains(index) ? classes[index] : []
    }

    /// Whether `values[index]` is CR or LF (false outside `segment`).
    @inline(__always)
    private func isLineBreak(_ index: Int, _ segment: Range<Int>) -> Bool {
        guard segment.contains(index) else { return false }
        let value = values[index]
        return value == Self.carriageReturn || value == Self.lineFeed
    }

    /// ASCII lower-casing, which is all the contraction rule needs: no other scalar
    /// lower-cases to one of the contraction letters.
    @inline(__always)
    private static func lowercased(_ value: UInt32) -> UInt32 {
        (65...90).contains(value) ? value + 32 : value
    }

    /// The length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) starting at
    /// `position`, or 0.
    @inline(__always)
    private func contractionLength(at position: Int, _ segment: Range<Int>, caseInsensitive: Bool) -> Int {
        guard values[position] == Self.apostrophe, position + 1 < segment.upperBound else { return 0 }
        var next = values[position + 1]
        if caseInsensitive {
            next = Self.lowercased(next)
        }
        if next == Self.letterS || next == Self.letterT || next == Self.letterM || next == Self.letterD {
            return 2
        }
        guard position + 2 < segment.upperBound else { return 0 }
        var third = values[position + 2]
        if caseInsensitive {
            third = Self.lowercased(third)
        }
        if (next == Self.letterR && third == Self.letterE) || (next == Self.letterV && third == Self.letterE)
            || (next == Self.letterL && third == Self.letterL) {
            return 3
        }
        return 0
    }

    /// The first index at or after `start` whose class lacks `member`.
    @inline(__always)
    private func skip(_ member: ScalarClass, from start: Int, _ segment: Range<Int>) -> Int {
        var index = start
        while index < segment.upperBound && classes[index].contains(member) {
            index += 1
        }
        return index
    }

    /// The first index at or after `start` that is not in the `[^\s\p{L}\p{N}]` class.
    @inline(__always)
    private func skipOther(from start: Int, _ segment: Range<Int>) -> Int {
        var index = start
        while index < segment.upperBound && classes[index].isOther {
            index += 1
        }
        return index
    }

    // MARK: gpt2

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    func splitGPT2(_ segment: Range<Int>, into ends: inout [Int]) {
        var position = segment.lowerBound
        while position < segment.upperBound {
            let contraction = contractionLength(at: position, segment, caseInsensitive: false)
            if contraction > 0 {
                position += contraction
                ends.append(position)
                continue
            }
            let leadingSpace = values[position] == Self.space
            let body = leadingSpace ? position + 1 : position
            let bodyClass = classAt(body, segment)
            if bodyClass.contains(.letter) {
                position = skip(.letter, from: body, segment)
                ends.append(position)
                continue
            }
            if bodyClass.contains(.number) {
                position = skip(.number, from: body, segment)
                ends.append(position)
                continue
            }
            if bodyClass.isOther {
                position = skipOther(from: body, segment)
                ends.append(position)
                continue
            }
            position = whitespaceEnd(from: position, segment)
            ends.append(position)
        }
    }

    /// The end of `\s+(?!\S)|\s+` at `position`, or `position + 1` if nothing matches.
    @inline(__always)
    private func whitespaceEnd(from position: Int, _ segment: Range<Int>) -> Int {
        let runEnd = skip(.whitespace, from: position, segment)
        let run = runEnd - position
        if run > 1 && runEnd < segment.upperBound {
            return runEnd - 1
        }
        if run > 0 {
            return runEnd
        }
        return position + 1
    }

    // MARK: llama3

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
    /// \s*[\r\n]+|\s+(?!\S)|\s+`
    func splitLlama3(_ segment: Range<Int>, into ends: inout [Int]) {
        var position = segment.lowerBound
        while position < segment.upperBound {
            let contraction = contractionLength(at: position, segment, caseInsensitive: true)
            if contraction > 0 {
                position += contraction
                ends.append(position)
                continue
            }
            let value = values[position]
            let current = classes[position]
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(value == Self.carriageReturn || value == Self.lineFeed || current.contains(.number)) {
                if current.contains(.letter) || classAt(position + 1, segment).contains(.letter) {
                    position = skip(.letter, from: position + 1, segment)
                    ends.append(position)
                    continue
                }
            }
            // \p{N}{1,3}
            if current.contains(.number) {
                let runEnd = skip(.number, from: position, segment)
                while runEnd - position > 3 {
                    position += 3
                    ends.append(position)
                }
                position = runEnd
                ends.append(position)
                continue
            }
            //  ?[^\s\p{L}\p{N}]+[\r\n]*
            let leadingSpace = value == Self.space
            let body = leadingSpace ? position + 1 : position
            let bodyClass = classAt(body, segment)
            if bodyClass.isOther || (leadingSpace && body == segment.upperBound) {
                position = skipOther(from: body, segment)
                while isLineBreak(position, segment) {
                    position += 1
                }
                ends.append(position)
                continue
            }
            // \s*[\r\n]+ : the whitespace run up to and including its last line break.
            let runEnd = skip(.whitespace, from: position, segment)
            var lastBreakEnd = -1
            for index in position..<runEnd where isLineBreak(index, segment) {
                lastBreakEnd = index + 1
            }
            if lastBreakEnd > 0 {
                position = lastBreakEnd
                ends.append(position)
                continue
            }
            position = whitespaceEnd(from: position, segment)
            ends.append(position)
        }
    }

    // MARK: smollm

    /// Every `\p{N}` scalar on its own, the stretches between them split as `gpt2`.
    func splitSmolLM(_ segment: Range<Int>, into ends: inout [Int]) {
        var position = segment.lowerBound
        while position < segment.upperBound {
            if classes[position].contains(.number) {
                position += 1
                ends.append(position)
                continue
            }
            var stretchEnd = position + 1
            while stretchEnd < segment.upperBound && !classes[stretchEnd].contains(.number) {
                stretchEnd += 1
            }
            splitGPT2(position..<stretchEnd, into: &ends)
            position = stretchEnd
        }
    }

    // MARK: default

    /// Punctuation runs cut out, then `gpt2`, then `\p{N}+` runs, then ASCII digit triples.
    func splitStandard(_ segment: Range<Int>, into ends: inout [Int]) {
        // Stage 1: [\p{P}\$\+<=>\^~\|]+ runs and the stretches between them.
        var stage1: [Int] = []
        splitRuns(segment, into: &stage1) { isStandardPunctuation($0) }
        // Stage 2: gpt2 within each stretch.
        var stage2: [Int] = []
        var start = segment.lowerBound
        for end in stage1 {
            splitGPT2(start..<end, into: &stage2)
            start = end
        }
        // Stage 3: \p{N}+ runs.
        var stage3: [Int] = []
        start = segment.lowerBound
        for end in stage2 {
            splitRuns(start..<end, into: &stage3) { classes[$0].contains(.number) }
            start = end
        }
        // Stage 4: [0-9][0-9][0-9], leftmost first.
        start = segment.lowerBound
        for end in stage3 {
            splitDigitTriples(start..<end, into: &ends)
            start = end
        }
    }

    /// Whether the scalar at `index` is in `[\p{P}\$\+<=>\^~\|]`.
    private func isStandardPunctuation(_ index: Int) -> Bool {
        let value = values[index]
        if value < 128 {
            switch UInt8(value) {
            case UInt8(ascii: "$"), UInt8(ascii: "+"), UInt8(ascii: "<"), UInt8(ascii: "="),
                 UInt8(ascii: ">"), UInt8(ascii: "^"), UInt8(ascii: "~"), UInt8(ascii: "|"):
                return true
            default:
                return classes[index].contains(.punctuation)
            }
        }
        let scalarClass = classes[index]
        return scalarClass.contains(.punctuation) && !scalarClass.contains(.whitespace)
    }

    /// Splits `segment` into maximal runs of scalars that are and are not `member`.
    private func splitRuns(_ segment: Range<Int>, into ends: inout [Int], member: (Int) -> Bool) {
        var position = segment.lowerBound
        while position < segment.upperBound {
            let inside = member(position)
            position += 1
            while position < segment.upperBound && member(position) == inside {
                position += 1
            }
            ends.append(position)
        }
    }

    /// Cuts out non-overlapping groups of three ASCII digits, leftmost first.
    private func splitDigitTriples(_ segment: Range<Int>, into ends: inout [Int]) {
        func isDigit(_ index: Int) -> Bool {
            (48...57).contains(values[index])
        }
        var gapStart = segment.lowerBound
        var position = segment.lowerBound
        while position + 3 <= segment.upperBound {
            if isDigit(position) && isDigit(position + 1) && isDigit(position + 2) {
                if position > gapStart {
                    ends.append(position)
                }
                position += 3
                ends.append(position)
                gapStart = position
            } else {
                position += 1
            }
        }
        if gapStart < segment.upperBound {
            ends.append(segment.upperBound)
        }
    }
}
