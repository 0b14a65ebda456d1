import XCTest
@testable import KVTierTokenizer

final class BPETokenizerTests: XCTestCase {
    func testBytesWithoutMerges() throws {
        let tokenizer = try TestVocabulary.make()
        XCTAssertEqual(tokenizer.vocabularySize, 256)
        XCTAssertEqual(tokenizer.encode("hello"), [104, 101, 108, 108, 111])
        XCTAssertEqual(tokenizer.encode(" \n"), [32, 10])
        XCTAssertEqual(tokenizer.encode("é"), [0xC3, 0xA9])
        XCTAssertEqual(tokenizer.encode(""), [])
    }

    func testEveryByteEncodesAndDecodes() throws {
        let tokenizer = try TestVocabulary.make()
        for byte in 0...255 {
            XCTAssertEqual(tokenizer.pieceBytes(Int32(byte)), [UInt8(byte)])
            XCTAssertEqual(tokenizer.tokenID(ByteLevel.encode([UInt8(byte)])), Int32(byte))
        }
    }

    func testMergesBuildWholeWords() throws {
        // "ll" = 256, "he" = 257, "llo" = 258, "hello" = 259, "Ġhello" = 260
        let tokenizer = try TestVocabulary.make(
            extra: [("ll", .normal), ("he", .normal), ("llo", .normal), ("hello", .normal), ("Ġhello", .normal)],
            merges: ["l l", "h e", "ll o", "he llo", "Ġ hello"])
        XCTAssertEqual(tokenizer.encode("hello"), [259])
        XCTAssertEqual(tokenizer.encode("hello hello"), [259, 260])
        XCTAssertEqual(tokenizer.encode("hell"), [257, 256])
        XCTAssertEqual(tokenizer.encode("Hello"), [72, 101, 258])
    }

    func testLowerRankMergesFirst() throws {
        // "ab" = 256, "bc" = 257
        let bcFirst = try TestVocabulary.make(extra: [("ab", .normal), ("bc", .normal)], merges: ["b c", "a b"])
        XCTAssertEqual(bcFirst.encode("abc"), [97, 257])
        let abFirst = try TestVocabulary.make(extra: [("ab", .normal), ("bc", .normal)], merges: ["a b", "b c"])
        XCTAssertEqual(abFirst.encode("abc"), [256, 99])
    }

    func testEqualRanksMergeLeftmostFirst() throws {
        // "aa" = 256
        let tokenizer = try TestVocabulary.make(extra: [("aa", .normal)], merges: ["a a"])
        XCTAssertEqual(tokenizer.encode("aaa"), [256, 97])
        XCTAssertEqual(tokenizer.encode("aaaa"), [256, 256])
    }

    func testDuplicateMergeKeepsFirstRank() throws {
        let tokenizer = try TestVocabulary.make(
            extra: [("ab", .normal), ("bc", .normal)], merges: ["a b", "b c", "a b"])
        XCTAssertEqual(tokenizer.encode("abc"), [256, 99])
    }

    func testMergeIntoMissingTokenFallsBackToSingleCharacters() throws {
        // "xy" is merged but is not a token: its characters that are tokens are used instead.
        let tokenizer = try TestVocabulary.make(merges: ["x y"])
        XCTAssertEqual(tokenizer.encode("xy"), [120, 121])
        // Characters outside printable ASCII have two-byte byte-level forms, which are never
        // tokens on their own, so nothing is left of "ĠĠ".
        let spaces = try TestVocabulary.make(merges: ["Ġ Ġ"])
        XCTAssertEqual(spaces.encode("a  "), [97])
    }

    func testLongWordsMergeLikeShortOnes() throws {
        let merges = ["a b", "b c", "ab c", "a a", "aa aa", "c c", "abc abc", "b b", "cc a", "aaaa b"]
        let extra = ["ab", "bc", "abc", "aa", "aaaa", "cc", "abcabc", "bb", "cca", "aaaab"]
        let tokenizer = try TestVocabulary.make(extra: extra.map { ($0, .normal) }, merges: merges)
        let tokenBytes = (TestVocabulary.byteTokens + extra).map { ByteLevel.decode($0) }
        let table = try MergeTable(tokenBytes: tokenBytes, merges: merges)
        var generator = SplitMix64(seed: 42)
        for length in [2, 3, 10, 65, 100, 300] {
            for _ in 0..<20 {
                let word = (0..<length).map { _ in [UInt8(ascii: "a"), UInt8(ascii: "b"), UInt8(ascii: "c")][Int(generator.next() % 3)] }
                var short: [Int32] = []
                var long: [Int32] = []
                word.withUnsafeBufferPointer { buffer in
                    table.mergeShort(buffer, into: &short)
                    table.mergeLong(buffer, into: &long)
                }
                XCTAssertEqual(short, long, String(decoding: word, as: UTF8.self))
                XCTAssertEqual(tokenizer.decode(tokenizer.encode(String(decoding: word, as: UTF8.self))),
                               String(decoding: word, as: UTF8.self))
            }
        }
    }

    func testLlamaBPETakesWholeWordTokens() throws {
        // "abc" is a token but no merge leads to it.
        let extra: [(String, TokenType)] = [("ab", .normal), ("abc", .normal)]
        let llama = try TestVocabulary.make(pre: "llama-bpe", extra: extra, merges: ["a b"])
        XCTAssertEqual(llama.encode("abc"), [257])
        let gpt2 = try TestVocabulary.make(pre: "gpt2", extra: extra, merges: ["a b"])
        XCTAssertEqual(gpt2.encode("abc"), [256, 99])
    }

    func testSmolLMEncodesDigitsSeparately() throws {
        // "12" = 256, "Ġ1" = 257
        let extra: [(String, TokenType)] = [("12", .normal), ("Ġ1", .normal)]
        let smollm = try TestVocabulary.make(pre: "smollm", extra: extra, merges: ["1 2", "Ġ 1"])
        XCTAssertEqual(smollm.encode(" 12"), [32, 49, 50])
        let gpt2 = try TestVocabulary.make(pre: "gpt2", extra: extra, merges: ["1 2", "Ġ 1"])
        XCTAssertEqual(gpt2.encode(" 12"), [32, 256])
    }

    func testBOSAndEOS() throws {
        let extra: [(String, TokenType)] = [("<s>", .control), ("</s>", .control)]
        let tokenizer = try TestVocabulary.make(extra: extra, bosID: 256, eosID: 257, addBOS: true, addEOS: true)
        XCTAssertEqual(tokenizer.encode("a"), [256, 97, 257])
        XCTAssertEqual(tokenizer.encode("a", addSpecial: false), [97])
        XCTAssertEqual(tokenizer.encode("", addSpecial: true), [256, 257])
        XCTAssertEqual(tokenizer.bosID, 256)
        XCTAssertEqual(tokenizer.eosID, 257)
        XCTAssertTrue(tokenizer.isEndOfGeneration(257))
        XCTAssertFalse(tokenizer.isEndOfGeneration(256))
    }

    func testRoundTripOnVariedText() throws {
        let tokenizer = try TestVocabulary.make(
            extra: [("he", .normal), ("ll", .normal), ("Ġw", .normal), ("ĠĠ", .normal), ("ðŁ", .normal)],
            merges: ["h e", "l l", "Ġ w", "Ġ Ġ", "ð Ł"])
        let samples = [
            "Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n\n", "numbers 1234567890 ²³",
            "日本語のテキスト", "emoji 🦙🦙 👩‍👩‍👧 ❤️", "cafe\u{301} naïve", "I'm can't WE'LL",
            "<|im_start|>not special here", "\u{0}\u{1}\u{7F}", "mixed  \u{A0}\u{3000} spaces",
        ]
        for sample in samples {
            let ids = tokenizer.encode(sample, addSpecial: false)
            XCTAssertEqual(Array(tokenizer.decode(ids).utf8), Array(sample.utf8), sample)
        }
        var generator = SplitMix64(seed: 7)
        let alphabet = Array("ab ,.'1\n\tÅé日🦙\u{301}")
        for _ in 0..<200 {
            let sample = String((0..<Int(generator.next() % 40)).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
            XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(sample)).utf8), Array(sample.utf8))
        }
    }

    func testDecodeReplacesInvalidUTF8() throws {
        let tokenizer = try TestVocabulary.make()
        XCTAssertEqual(tokenizer.decode([0xF0, 0x9F]), "\u{FFFD}")
        XCTAssertEqual(tokenizer.decode([0x61, 0xFF, 0x62]), "a\u{FFFD}b")
        XCTAssertEqual(tokenizer.decode([0x61, 9999, -1, 0x62]), "ab", "ids out of range are skipped")
    }

    func testDetokenizeCleansSpacesLikeGPT2() throws {
        let gpt2 = try TestVocabulary.make(pre: "gpt2")
        let text = "a , b ' c 's ok ?"
        XCTAssertEqual(gpt2.detokenize(gpt2.encode(text)), "a, b'c's ok?")
        let smollm = try TestVocabulary.make(pre: "smollm")
        XCTAssertEqual(smollm.detokenize(smollm.encode(text)), text)
    }

    func testTokenLookups() throws {
        let tokenizer = try TestVocabulary.make(extra: [("Ġthe", .normal), ("<|im_end|>", .control)], merges: ["Ġ t"])
        XCTAssertEqual(tokenizer.tokenID("Ġthe"), 256)
        XCTAssertNil(tokenizer.tokenID(" the"))
        XCTAssertEqual(tokenizer.tokenText(257), "<|im_end|>")
        XCTAssertEqual(tokenizer.tokenType(257), .control)
        XCTAssertNil(tokenizer.tokenText(258))
        XCTAssertEqual(tokenizer.preTokenize("a  b"), ["a", " ", " b"])
    }

    func testPiecesByTokenType() throws {
        // "<0x41>" = 256 (byte), "zz" = 257 (unused), "yy" = 258 (undefined), "Ġé" = 259 (normal).
        var tokens = TestVocabulary.byteTokens
        tokens += ["<0x41>", "zz", "yy", "Ġé"]
        let types = [Int32](repeating: 1, count: 256) + [6, 5, 0, 1]
        let tokenizer = try BPETokenizer(spec: TokenizerSpec(tokens: tokens, tokenTypes: types, merges: []))
        XCTAssertEqual(tokenizer.pieceBytes(256), [0x41])
        XCTAssertEqual(tokenizer.pieceBytes(257), [])
        XCTAssertEqual(tokenizer.pieceBytes(258), [])
        XCTAssertEqual(tokenizer.pieceBytes(259), [0x20, 0xE9], "byte-level text decodes to raw bytes")
        XCTAssertEqual(tokenizer.tokenType(256), .byte)
        XCTAssertEqual(tokenizer.tokenType(258), .undefined)
        XCTAssertEqual(tokenizer.pieceBytes(-1), [])
        XCTAssertEqual(tokenizer.pieceBytes(260), [])
    }

    func testEmptyTokenTextIsReplaced() throws {
        var tokens = TestVocabulary.byteTokens
        tokens.append("")
        let tokenizer = try BPETokenizer(spec: TokenizerSpec(tokens: tokens, merges: []))
        XCTAssertEqual(tokenizer.tokenText(256), "[EMPTY_256]")
    }
}

/// A small deterministic random number generator for reproducible test inputs.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var value = state
        value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
        value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
        return value ^ (value >> 31)
    }
}
