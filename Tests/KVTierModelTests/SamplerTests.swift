import XCTest

@testable import KVTierModel

final class SamplerTests: XCTestCase {
    private func sample(_ logits: [Float], _ p: SamplingParameters, recent: [Int32] = [], times: Int = 1) -> [Int32] {
        var s = Sampler(p)
        return (0..<times).map { _ in logits.withUnsafeBufferPointer { s.sample(logits: $0, recent: recent[...]) } }
    }

    func testGreedyPicksTheLargestAndTheFirstOnTies() {
        XCTAssertEqual(sample([0.1, 3, -2, 2.9], .greedy), [1])
        XCTAssertEqual(sample([1, 5, 5, 0], .greedy), [1])
    }

    func testRepetitionPenaltyDemotesSeenTokens() {
        let p = SamplingParameters(repetitionPenalty: 2)
        XCTAssertEqual(sample([0, 3, 2], p, recent: [1]), [2])  // 3/2 = 1.5 < 2
        XCTAssertEqual(sample([-1, -0.5, -0.8], p, recent: [1]), [2])  // -0.5*2 = -1 < -0.8
    }

    func testTopKOneIsGreedyAtAnyTemperature() {
        let p = SamplingParameters(temperature: 5, topK: 1, seed: 9)
        XCTAssertEqual(Set(sample([0, 1, 4, 2], p, times: 50)), [2])
    }

    func testTopPKeepsTheNucleus() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two only.
        let logits: [Float] = [3, 2, 1, 0].map { Float($0) }
        let got = Set(sample(logits, SamplingParameters(temperature: 1, topP: 0.7, seed: 3), times: 400))
        XCTAssertEqual(got, [0, 1])
    }

    func testSeedMakesSamplingReproducible() {
        let logits: [Float] = (0..<50).map { Float($0 % 7) }
        let p = SamplingParameters(temperature: 1, seed: 1234)
        XCTAssertEqual(sample(logits, p, times: 30), sample(logits, p, times: 30))
        var q = p
        q.seed = 1235
        XCTAssertNotEqual(sample(logits, p, times: 30), sample(logits, q, times: 30))
    }

    func testTemperatureSamplesFollowTheDistribution() {
        let logits: [Float] = [log(0.5), log(0.3), log(0.2)].map { Float($0) }
        let draws = sample(logits, SamplingParameters(temperature: 1, seed: 5), times: 4000)
        let freq0 = Double(draws.filter { $0 == 0 }.count) / 4000
        XCTAssertEqual(freq0, 0.5, accuracy: 0.04)
    }

    /// The heap hands out every id in the order a full sort gives (logit down, id up on ties).
    func testCandidatesComeInOrderOfLogitThenId() {
        var rng = SplitMix64(seed: 11)
        let logits = (0..<2000).map { _ in Float(rng.next() % 50) / 4 }  // many ties
        let expected = (0..<logits.count).sorted { (logits[$0], -$0) > (logits[$1], -$1) }
        let got = logits.withUnsafeBufferPointer { l -> [Int] in
            var heap = CandidateHeap(l)
            var out: [Int] = []
            while let i = heap.pop() { out.append(i) }
            return out
        }
        XCTAssertEqual(got, expected)
    }

    /// Top-k and top-p together over a larger vocabulary: only the nucleus of the top k is drawn,
    /// in proportion to the weights.
    func testTopKAndTopPTogetherDrawOnlyTheNucleusInProportion() {
        // Ids 7, 3, 9 carry weights e^2, e^1, e^0 (temperature 1); the rest far below. top_k 2
        // keeps ids 7 and 3; top_p 0.99 of those keeps both, in proportion e : 1.
        var logits = [Float](repeating: -30, count: 1000)
        logits[7] = 2
        logits[3] = 1
        logits[9] = 0
        let draws = sample(logits, SamplingParameters(temperature: 1, topK: 2, topP: 0.99, seed: 21), times: 4000)
        XCTAssertEqual(Set(draws), [7, 3])
        let share7 = Double(draws.filter { $0 == 7 }.count) / 4000
        XCTAssertEqual(share7, exp(1.0) / (exp(1.0) + 1), accuracy: 0.03)
        // Without top-k, top_p 0.5 keeps id 7 alone (its share is 0.67).
        XCTAssertEqual(Set(sample(logits, SamplingParameters(temperature: 1, topP: 0.5, seed: 4), times: 200)), [7])
    }

    func testInvalidParametersAreRejected() {
        XCTAssertThrowsError(try SamplingParameters(temperature: -1).validate())
        XCTAssertThrowsError(try SamplingParameters(topP: 0).validate())
        XCTAssertThrowsError(try SamplingParameters(topK: -3).validate())
        XCTAssertThrowsError(try SamplingParameters(repetitionPenalty: .nan).validate())
        XCTAssertNoThrow(try SamplingParameters(temperature: 0.7, topK: 40, topP: 0.9, repetitionPenalty: 1.1).validate())
    }
}

final class ChatTemplateTests: XCTestCase {
    let source = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

    func testDefaultSystemMessageIsAddedWhenMissing() {
        let t = ChatTemplate(chatTemplateSource: source)
        XCTAssertEqual(
            t.render([ChatMessage(role: "user", content: "Hi")]),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    func testOwnSystemMessageReplacesTheDefault() {
        let t = ChatTemplate(chatTemplateSource: source)
        let s = t.render(
            [ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "Hi"),
             ChatMessage(role: "assistant", content: "Hello!"), ChatMessage(role: "user", content: "Bye")],
            addGenerationPrompt: false)
        XCTAssertEqual(
            s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n")
    }

    func testTemplateWithoutSystemLineAddsNone() {
        let t = ChatTemplate(chatTemplateSource: nil)
        XCTAssertEqual(t.render([ChatMessage(role: "user", content: "x")]), "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")
    }
}
