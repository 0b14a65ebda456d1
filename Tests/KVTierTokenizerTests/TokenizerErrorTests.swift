import XCTest
@testable import KVTierTokenizer

final class TokenizerErrorTests: XCTestCase {
    private func error(_ spec: TokenizerSpec) -> TokenizerError? {
        do {
            _ = try BPETokenizer(spec: spec)
            return nil
        } catch {
            return error
        }
    }

    private let tokens = TestVocabulary.byteTokens

    func testUnsupportedModel() {
        let found = error(TokenizerSpec(model: "llama", pre: "gpt2", tokens: tokens, merges: []))
        XCTAssertEqual(found?.kind, .unsupportedModel("llama"))
        XCTAssertTrue(found?.description.contains("gpt2") ?? false)
    }

    func testUnsupportedPreTokenizer() {
        let found = error(TokenizerSpec(pre: "qwen2", tokens: tokens, merges: []))
        XCTAssertEqual(found?.kind, .unsupportedPreTokenizer("qwen2"))
        XCTAssertTrue(found?.description.contains("smollm") ?? false)
    }

    func testEmptyVocabulary() {
        XCTAssertEqual(error(TokenizerSpec(tokens: [], merges: []))?.kind, .emptyVocabulary)
    }

    func testBadMerges() {
        XCTAssertEqual(error(TokenizerSpec(tokens: tokens, merges: ["a b", "ab"]))?.kind, .badMerge(index: 1, line: "ab"))
        XCTAssertEqual(error(TokenizerSpec(tokens: tokens, merges: ["a "]))?.kind, .badMerge(index: 0, line: "a "))
        XCTAssertEqual(error(TokenizerSpec(tokens: tokens, merges: [""]))?.kind, .badMerge(index: 0, line: ""))
        let found = error(TokenizerSpec(tokens: tokens, merges: ["x y", "z y", "bad"]))
        XCTAssertTrue(found?.description.contains("merge rule 2") ?? false, found?.description ?? "no error")
    }

    func testTokenTypeCount() {
        XCTAssertEqual(
            error(TokenizerSpec(tokens: tokens, tokenTypes: [1, 1, 1], merges: []))?.kind,
            .tokenTypeCountMismatch(tokens: 256, types: 3))
    }

    func testSpecialTokenOutOfRange() {
        XCTAssertEqual(
            error(TokenizerSpec(tokens: tokens, merges: [], bosID: 999))?.kind,
            .tokenIDOutOfRange(name: "BOS", id: 999, vocabularySize: 256))
        XCTAssertEqual(
            error(TokenizerSpec(tokens: tokens, merges: [], eosID: -1))?.kind,
            .tokenIDOutOfRange(name: "EOS", id: -1, vocabularySize: 256))
    }

    func testMissingBOS() {
        XCTAssertEqual(
            error(TokenizerSpec(tokens: tokens, merges: [], addBOS: true))?.kind,
            .missingSpecialToken(name: "BOS"))
    }

    func testValidSpecBuilds() {
        XCTAssertNil(error(TokenizerSpec(pre: "smollm", tokens: tokens, merges: ["a b"])))
        XCTAssertNil(error(TokenizerSpec(pre: "llama-bpe", tokens: tokens, merges: [])))
        XCTAssertNil(error(TokenizerSpec(pre: "default", tokens: tokens, merges: [])))
    }

    func testDefaultAddBOS() {
        XCTAssertTrue(TokenizerSpec.defaultAddBOS(pre: "llama-bpe"))
        XCTAssertFalse(TokenizerSpec.defaultAddBOS(pre: "smollm"))
    }
}
