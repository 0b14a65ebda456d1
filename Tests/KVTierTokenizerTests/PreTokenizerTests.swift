import XCTest
@testable import KVTierTokenizer

final class PreTokenizerTests: XCTestCase {
    private let gpt2 = PreTokenizer(kind: .gpt2)
    private let smollm = PreTokenizer(kind: .smollm)
    private let llama3 = PreTokenizer(kind: .llama3)
    private let standard = PreTokenizer(kind: .standard)

    func testKindNames() {
        XCTAssertEqual(PreTokenizer.Kind(name: "smollm"), .smollm)
        XCTAssertEqual(PreTokenizer.Kind(name: "gpt2"), .gpt2)
        XCTAssertEqual(PreTokenizer.Kind(name: "gpt-2"), .gpt2)
        XCTAssertEqual(PreTokenizer.Kind(name: "llama-bpe"), .llama3)
        XCTAssertEqual(PreTokenizer.Kind(name: "default"), .standard)
        XCTAssertNil(PreTokenizer.Kind(name: "qwen2"))
    }

    // MARK: gpt2

    func testGPT2WordsAndLeadingSpace() {
        XCTAssertEqual(gpt2.words("Hello world"), ["Hello", " world"])
        XCTAssertEqual(gpt2.words(" Hello"), [" Hello"])
    }

    func testGPT2Contractions() {
        XCTAssertEqual(
            gpt2.words("I'm here, they'll go"),
            ["I", "'m", " here", ",", " they", "'ll", " go"])
        XCTAssertEqual(gpt2.words("we've you're he'd it's"), ["we", "'ve", " you", "'re", " he", "'d", " it", "'s"])
        // Case-sensitive: "'T" is not a contraction.
        XCTAssertEqual(gpt2.words("DON'T"), ["DON", "'", "T"])
    }

    func testGPT2Numbers() {
        XCTAssertEqual(gpt2.words("abc 12345 x"), ["abc", " 12345", " x"])
        XCTAssertEqual(gpt2.words("x2"), ["x", "2"])
    }

    func testGPT2Whitespace() {
        // A whitespace run followed by a word leaves its last space to the word.
        XCTAssertEqual(gpt2.words("a   b"), ["a", "  ", " b"])
        XCTAssertEqual(gpt2.words("hello  \n\n world"), ["hello", "  \n\n", " world"])
        // At the end the whole run is one word.
        XCTAssertEqual(gpt2.words("hi  "), ["hi", "  "])
        // Only an ASCII space may lead a word.
        XCTAssertEqual(gpt2.words("a\tb"), ["a", "\t", "b"])
        XCTAssertEqual(gpt2.words("a\u{A0}\u{A0}b"), ["a", "\u{A0}", "\u{A0}", "b"])
        XCTAssertEqual(gpt2.words("\n\n"), ["\n\n"])
    }

    func testGPT2Punctuation() {
        XCTAssertEqual(gpt2.words("wow!!! ok"), ["wow", "!!!", " ok"])
        XCTAssertEqual(gpt2.words(" ?!x"), [" ?!", "x"])
    }

    func testGPT2CJKAndEmoji() {
        XCTAssertEqual(gpt2.words("日本語 テスト"), ["日本語", " テスト"])
        // U+2764 and the variation selector U+FE0F are neither letters nor numbers.
        XCTAssertEqual(gpt2.words("I ❤️ 🦙s"), ["I", " ❤️", " 🦙", "s"])
        // Works on scalars, not characters: the combining accent is split from its letter.
        XCTAssertEqual(gpt2.words("cafe\u{301}"), ["cafe", "\u{301}"])
    }

    // MARK: smollm

    func testSmolLMSplitsEveryDigit() {
        XCTAssertEqual(smollm.words("abc 12345 x"), ["abc", " ", "1", "2", "3", "4", "5", " x"])
        XCTAssertEqual(smollm.words("x²"), ["x", "²"])
    }

    func testSmolLMDigitsCutSegments() {
        // The digit cuts the text first, so the two spaces end their segment and stay together.
        XCTAssertEqual(smollm.words("a  1"), ["a", "  ", "1"])
        XCTAssertEqual(smollm.words("I'm 2 old"), ["I", "'m", " ", "2", " old"])
    }

    // MARK: llama3

    func testLlama3NumbersInGroupsOfThree() {
        XCTAssertEqual(llama3.words("abc 12345 x"), ["abc", " ", "123", "45", " x"])
        XCTAssertEqual(llama3.words("1234567"), ["123", "456", "7"])
        XCTAssertEqual(llama3.words("123"), ["123"])
    }

    func testLlama3CaseInsensitiveContractions() {
        XCTAssertEqual(llama3.words("DON'T"), ["DON", "'T"])
        XCTAssertEqual(llama3.words("I'M WE'LL"), ["I", "'M", " WE", "'LL"])
    }

    func testLlama3LetterPrefix() {
        // Any one scalar other than CR, LF, a letter or a number may lead a word.
        XCTAssertEqual(llama3.words("(hello"), ["(hello"])
        XCTAssertEqual(llama3.words("\thello"), ["\thello"])
        XCTAssertEqual(llama3.words("\nhello"), ["\n", "hello"])
    }

    func testLlama3PunctuationTakesLineBreaks() {
        XCTAssertEqual(llama3.words("ok!!\n\nnext"), ["ok", "!!\n\n", "next"])
    }

    func testLlama3Whitespace() {
        XCTAssertEqual(llama3.words("a \n\n  b"), ["a", " \n\n", " ", " b"])
        XCTAssertEqual(llama3.words("a   b"), ["a", "  ", " b"])
        XCTAssertEqual(llama3.words("x  "), ["x", "  "])
    }

    // MARK: default

    func testDefaultPreTokenizer() {
        XCTAssertEqual(standard.words("Hello, world!"), ["Hello", ",", " world", "!"])
        XCTAssertEqual(standard.words("x 1234567"), ["x", " ", "123", "456", "7"])
        XCTAssertEqual(standard.words("a+=b"), ["a", "+=", "b"])
    }

    // MARK: character classes

    func testCharacterClasses() {
        XCTAssertTrue(ScalarClass.of(0x41).contains(.letter))
        XCTAssertTrue(ScalarClass.of(0x65E5).contains(.letter))  // 日
        XCTAssertTrue(ScalarClass.of(0xB2).contains(.number))  // ²
        XCTAssertTrue(ScalarClass.of(0x2167).contains(.number))  // Ⅷ, a letter number
        for value: UInt32 in [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x200A,
                              0x2028, 0x2029, 0x202F, 0x205F, 0x3000] {
            XCTAssertTrue(ScalarClass.of(value).contains(.whitespace), String(value, radix: 16))
        }
        for value: UInt32 in [0x1C, 0x1F, 0x200B, 0xFEFF, 0x180E] {
            XCTAssertFalse(ScalarClass.of(value).contains(.whitespace), String(value, radix: 16))
        }
        XCTAssertTrue(ScalarClass.of(0x1F999).isOther)  // 🦙
        // Assigned after Unicode 15.1 (CYRILLIC CAPITAL LETTER TJE): treated as unassigned.
        XCTAssertTrue(ScalarClass.of(0x1C89).isOther)
        XCTAssertEqual(gpt2.words("a\u{1C89}b"), ["a", "\u{1C89}", "b"])
    }
}
