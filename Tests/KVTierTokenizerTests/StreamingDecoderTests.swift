import XCTest
@testable import KVTierTokenizer

final class StreamingDecoderTests: XCTestCase {
    func testEmojiSplitAcrossByteTokens() throws {
        let tokenizer = try TestVocabulary.make()
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        // 🦙 is F0 9F A6 99.
        XCTAssertEqual(decoder.append(0xF0), "")
        XCTAssertEqual(decoder.append(0x9F), "")
        XCTAssertEqual(decoder.append(0xA6), "")
        XCTAssertTrue(decoder.hasPendingBytes)
        XCTAssertEqual(decoder.append(0x99), "🦙")
        XCTAssertFalse(decoder.hasPendingBytes)
        XCTAssertEqual(decoder.append(0x61), "a")
        XCTAssertEqual(decoder.flush(), "")
    }

    func testEmojiSplitAcrossMergedTokens() throws {
        // "ðŁ" (F0 9F) = 256 and "¦Ļ" (A6 99) = 257.
        let tokenizer = try TestVocabulary.make(
            extra: [("ðŁ", .normal), ("¦Ļ", .normal)], merges: ["ð Ł", "¦ Ļ"])
        let ids = tokenizer.encode("🦙!")
        XCTAssertEqual(ids, [256, 257, 33])
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        XCTAssertEqual(ids.map { decoder.append($0) }, ["", "🦙", "!"])
    }

    func testCompleteTextComesOutAtOnce() throws {
        let tokenizer = try TestVocabulary.make()
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        XCTAssertEqual(decoder.append(0x68), "h")
        XCTAssertEqual(decoder.append(0xC3), "")
        XCTAssertEqual(decoder.append(0xA9), "é")
    }

    func testInvalidBytesBecomeReplacementCharacters() throws {
        let tokenizer = try TestVocabulary.make()
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        XCTAssertEqual(decoder.append(0xFF), "\u{FFFD}", "a byte that never starts a character is not held")
        XCTAssertEqual(decoder.append(0xF0), "")
        XCTAssertEqual(decoder.append(0x61), "\u{FFFD}a", "an interrupted character is replaced")
        XCTAssertEqual(decoder.append(0xE2), "")
        XCTAssertEqual(decoder.append(0x82), "")
        XCTAssertEqual(decoder.flush(), "\u{FFFD}", "an unfinished character is replaced at the end")
        XCTAssertEqual(decoder.flush(), "")
        // ED A0 could only begin a surrogate, which is never valid.
        XCTAssertEqual(decoder.append(0xED), "")
        XCTAssertEqual(decoder.append(0xA0), "\u{FFFD}\u{FFFD}")
    }

    func testSpecialTokensFollowRenderSetting() throws {
        let tokenizer = try TestVocabulary.make(extra: [("<|im_end|>", .control)])
        var hidden = StreamingDecoder(tokenizer: tokenizer)
        XCTAssertEqual(hidden.append(256), "")
        var shown = StreamingDecoder(tokenizer: tokenizer, renderSpecial: true)
        XCTAssertEqual(shown.append(256), "<|im_end|>")
    }

    func testStreamMatchesWholeDecode() throws {
        let tokenizer = try TestVocabulary.make(extra: [("ðŁ", .normal)], merges: ["ð Ł"])
        let text = "mixed 🦙 text, 日本語, é and \u{1F469}\u{200D}\u{1F467} end"
        let ids = tokenizer.encode(text)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var streamed = ids.map { decoder.append($0) }.joined()
        streamed += decoder.flush()
        XCTAssertEqual(Array(streamed.utf8), Array(text.utf8))
        XCTAssertEqual(streamed, tokenizer.decode(ids))
    }
}
