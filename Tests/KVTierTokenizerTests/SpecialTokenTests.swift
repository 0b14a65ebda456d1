import XCTest
@testable import KVTierTokenizer

final class SpecialTokenTests: XCTestCase {
    /// Bytes, then "<|im_start|>" = 256 and "<|im_end|>" = 257 (control), "<tool>" = 258 (user-defined).
    private func chatTokenizer() throws -> BPETokenizer {
        try TestVocabulary.make(
            extra: [("<|im_start|>", .control), ("<|im_end|>", .control), ("<tool>", .userDefined)],
            bosID: 256, eosID: 257)
    }

    func testControlTokensMatchedWholeWhenParsingSpecial() throws {
        let tokenizer = try chatTokenizer()
        XCTAssertEqual(
            tokenizer.encode("<|im_start|>hi<|im_end|>\n", addSpecial: false, parseSpecial: true),
            [256, 104, 105, 257, 10])
    }

    func testControlTokensAreTextWhenNotParsingSpecial() throws {
        let tokenizer = try chatTokenizer()
        XCTAssertEqual(
            tokenizer.encode("<|im_start|>hi", addSpecial: false, parseSpecial: false),
            TestVocabulary.byteIDs("<|im_start|>hi"))
    }

    func testUserDefinedTokensAlwaysMatched() throws {
        let tokenizer = try chatTokenizer()
        XCTAssertEqual(tokenizer.encode("a<tool>b", addSpecial: false, parseSpecial: false), [97, 258, 98])
        XCTAssertEqual(tokenizer.encode("a<tool>b", addSpecial: false, parseSpecial: true), [97, 258, 98])
    }

    func testSpecialTokensSplitPreTokenizerSegments() throws {
        // Without the token, " x" would be one word; the token cuts the space from the "x".
        let tokenizer = try TestVocabulary.make(extra: [("Ġx", .normal), ("<m>", .control)], merges: ["Ġ x"])
        XCTAssertEqual(tokenizer.encode(" x", addSpecial: false), [256])
        XCTAssertEqual(tokenizer.encode(" <m>x", addSpecial: false), [32, 257, 120])
    }

    func testLongestTokenTriedFirst() throws {
        let tokenizer = try TestVocabulary.make(extra: [("<x>", .control), ("<x><y>", .control)])
        XCTAssertEqual(tokenizer.encode("<x><y><x>", addSpecial: false), [257, 256])
        // Longer tokens are cut out first even when a shorter one starts further left.
        let overlapping = try TestVocabulary.make(extra: [("ab", .control), ("bcd", .control)])
        XCTAssertEqual(overlapping.encode("abcd", addSpecial: false), [97, 257])
        XCTAssertEqual(overlapping.encode("abab", addSpecial: false), [256, 256])
    }

    func testPartialSpecialTokenIsText() throws {
        let tokenizer = try chatTokenizer()
        XCTAssertEqual(tokenizer.encode("<|im_start", addSpecial: false), TestVocabulary.byteIDs("<|im_start"))
    }

    func testSpecialTokensHiddenWhenDecodingUnlessRendered() throws {
        let tokenizer = try chatTokenizer()
        let ids: [Int32] = [256, 104, 105, 257, 258]
        XCTAssertEqual(tokenizer.decode(ids), "hi<tool>")
        XCTAssertEqual(tokenizer.decode(ids, renderSpecial: true), "<|im_start|>hi<|im_end|><tool>")
        XCTAssertEqual(tokenizer.pieceBytes(256), [])
        XCTAssertEqual(tokenizer.pieceBytes(256, renderSpecial: true), Array("<|im_start|>".utf8))
        XCTAssertTrue(tokenizer.isSpecial(256))
        XCTAssertFalse(tokenizer.isSpecial(258))
        XCTAssertFalse(tokenizer.isSpecial(97))
    }

    func testEndOfGeneration() throws {
        // "<|im_end|>" = 256, "<|endoftext|>" = 257, "<|eot_id|>" = 258 (declared normal),
        // "<end_of_turn>" = 259, "<|im_start|>" = 260, "<reponame>" = 261
        let tokenizer = try TestVocabulary.make(
            extra: [("<|im_end|>", .control), ("<|endoftext|>", .control), ("<|eot_id|>", .normal),
                    ("<end_of_turn>", .control), ("<|im_start|>", .control), ("<reponame>", .control)],
            eosID: 97)
        XCTAssertEqual(tokenizer.endOfGenerationIDs, [97, 256, 257, 258, 259, 261])
        XCTAssertTrue(tokenizer.isEndOfGeneration(97))
        XCTAssertFalse(tokenizer.isEndOfGeneration(260))
        XCTAssertFalse(tokenizer.isEndOfGeneration(98))
        // A token that ends generation is treated as a control token whatever its declared type.
        XCTAssertTrue(tokenizer.isSpecial(258))
        XCTAssertEqual(tokenizer.decode([258]), "")
        XCTAssertEqual(tokenizer.encode("x<|eot_id|>", addSpecial: false), [120, 258])
        XCTAssertEqual(tokenizer.eotID, 258, "the first end-of-turn text found, in the order they are tried")
    }

    func testEndTokenNotEndOfGenerationWhenReturnAndCallExist() throws {
        // "<|end|>" = 256, "<|return|>" = 257, "<|call|>" = 258
        let tokenizer = try TestVocabulary.make(
            extra: [("<|end|>", .control), ("<|return|>", .control), ("<|call|>", .control)])
        XCTAssertEqual(tokenizer.endOfGenerationIDs, [257, 258])
        XCTAssertEqual(tokenizer.decode([256]), "<|end|>")
    }
}
