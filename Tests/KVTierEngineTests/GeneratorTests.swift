import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierTestSupport

/// `Generator` (the local tools' decoder) on a tiny model: it stops where it says, keeps the last
/// sampled token for the next call, and a generation continued from it equals one run whole.
final class GeneratorTests: XCTestCase {
    private let greedy = GenerationOptions(maxTokens: 12, sampling: .greedy, stopAtEndOfGeneration: false)

    func testItStopsAtMaxTokensAndKeepsTheLastTokenUnfed() throws {
        let model = try LlamaModel(path: TinyModel(context: 256).write())
        let generator = Generator(model: model, threads: 2)
        let prompt = model.tokenizer.encode("hello there", addSpecial: false, parseSpecial: false)
        let result = try generator.generate(prompt: prompt, options: greedy)
        XCTAssertEqual(result.generated.count, 12)
        XCTAssertEqual(result.stopReason, .maxTokens)
        XCTAssertEqual(generator.pendingToken, result.generated.last)
        XCTAssertEqual(generator.cache.count, prompt.count + 11, "the last sampled token is not fed")
    }

    func testAContinuedGenerationEqualsOneRunWhole() throws {
        let model = try LlamaModel(path: TinyModel(context: 256).write())
        let prompt = model.tokenizer.encode("a tiny model talks", addSpecial: false, parseSpecial: false)
        let whole = Generator(model: model, threads: 2)
        var long = greedy
        long.maxTokens = 24
        let all = try whole.generate(prompt: prompt, options: long).generated

        let parts = Generator(model: model, threads: 2)
        let first = try parts.generate(prompt: prompt, options: greedy).generated
        let pending = try XCTUnwrap(parts.pendingToken)
        let second = try parts.generate(prompt: [pending], options: greedy).generated
        XCTAssertEqual(first + second, all)
    }

    func testAFullContextEndsTheReply() throws {
        let model = try LlamaModel(path: TinyModel(context: 256).write())
        let prompt = model.tokenizer.encode("one two", addSpecial: false, parseSpecial: false)
        XCTAssertLessThan(prompt.count, 10)
        let generator = Generator(model: model, threads: 2, contextLength: 20)
        var options = greedy
        options.maxTokens = 100
        let result = try generator.generate(prompt: prompt, options: options)
        XCTAssertEqual(result.stopReason, .contextFull)
        XCTAssertEqual(generator.cache.count, 20)
        XCTAssertEqual(result.generated.count, 20 - prompt.count + 1, "the cache is full and one more is sampled")
        let tooLong = try generator.generate(prompt: prompt, options: options)  // on top of the full cache
        XCTAssertEqual(tooLong.stopReason, .contextFull)
        XCTAssertEqual(tooLong.generated, [])
        XCTAssertThrowsError(try generator.generate(prompt: prompt, options: GenerationOptions(maxTokens: 0)))
    }

    /// A stop sequence ends the reply before it: its text is not in the reply.
    func testAStopSequenceEndsTheReply() throws {
        let model = try LlamaModel(path: TinyModel(context: 256).write())
        let prompt = model.tokenizer.encode("hello", addSpecial: false, parseSpecial: false)
        let free = try Generator(model: model, threads: 2).generate(prompt: prompt, options: greedy)
        let text = free.text
        guard text.count >= 4 else { throw XCTSkip("the tiny model's reply is too short to cut") }
        let cut = String(text.dropFirst(text.count / 2).prefix(2))
        var options = greedy
        options.stopSequences = [cut]
        let stopped = try Generator(model: model, threads: 2).generate(prompt: prompt, options: options)
        XCTAssertEqual(stopped.stopReason, .endOfGeneration)
        let expected = String(text[..<text.range(of: cut)!.lowerBound])
        XCTAssertEqual(stopped.text, expected)
    }
}
