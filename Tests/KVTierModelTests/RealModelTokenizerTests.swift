import KVTierTokenizer
import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// SmolLM2's tokenizer, built from the GGUF metadata, against llama.cpp's `llama-tokenize` on
/// 387 strings (ShareGPT English, code, CJK, emoji, digits, whitespace runs, specials; see
/// Golden/README.md for how they were chosen and tokenized).
final class RealModelTokenizerTests: XCTestCase {
    struct Corpus: Decodable {
        struct Case: Decodable {
            let text: String
            let ids: [Int32]
            let category: String
        }
        let cases: [Case]
    }

    func testTokenIdsEqualLlamaCpp() throws {
        let model = try RealModel.load()
        let corpus = try RealModel.golden("tokenizer-corpus.json", as: Corpus.self)
        XCTAssertGreaterThanOrEqual(corpus.cases.count, 300)
        var mismatches = 0
        for c in corpus.cases {
            let ids = model.tokenizer.encode(c.text, addSpecial: true, parseSpecial: true)
            if ids != c.ids {
                mismatches += 1
                if mismatches <= 5 {
                    XCTFail("[\(c.category)] \(c.text.debugDescription)\n  expected \(c.ids)\n  got      \(ids)")
                }
            }
            // Decoding the ids gives the text back, byte for byte.
            XCTAssertEqual(model.tokenizer.decode(c.ids, renderSpecial: true), c.text)
        }
        XCTAssertEqual(mismatches, 0, "\(mismatches) of \(corpus.cases.count) strings tokenize differently from llama.cpp")
        let categories = Set(corpus.cases.map(\.category))
        print("tokenizer: \(corpus.cases.count - mismatches)/\(corpus.cases.count) identical to llama.cpp; categories: \(categories.sorted())")
    }

    func testStreamingDecodeHoldsPartialCharacters() throws {
        let model = try RealModel.load()
        let text = "日本語のテキスト 🎉👩‍💻 done"
        let ids = model.tokenizer.encode(text)
        var decoder = StreamingDecoder(tokenizer: model.tokenizer)
        var out = ""
        for id in ids {
            let piece = decoder.append(id)
            XCTAssertFalse(piece.contains("\u{FFFD}"), "a partial character leaked out")
            out += piece
        }
        out += decoder.flush()
        XCTAssertEqual(out, text)
    }
}
