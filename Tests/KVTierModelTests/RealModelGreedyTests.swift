import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// Greedy 32-token continuations of 10 chat prompts against llama.cpp's (Golden/greedy-continuations.json,
/// flash attention on, llama.cpp's CPU default).
///
/// The prompt ids must be identical. Where a continuation differs, the first divergence must be
/// explained by numerics, not by a bug: with float activations (the path that matches the
/// float64 reference to 0.01, see RealModelLogitsTests) the two candidates are within 0.05 of
/// each other, or that accurate path picks our token, i.e. llama.cpp's flash attention (F16
/// accumulation) is what flipped the step. llama.cpp itself diverges between its two attention
/// modes in 6 of these 10 prompts, at top-2 margins of 0.07 to 0.29.
final class RealModelGreedyTests: XCTestCase {
    struct Golden: Decodable {
        struct Case: Decodable {
            let prompt: String
            let prompt_text: String
            let prompt_ids: [Int32]
            let generated_ids: [Int32]
            let stopped_at_eog: Bool
            struct Variant: Decodable { let generated_ids: [Int32] }
            let flash_attn_off: Variant
        }
        let cases: [Case]
    }

    var reference: (Golden.Case) -> [Int32] = { $0.generated_ids }

    func testGreedyContinuationsMatchLlamaCpp() throws {
        let model = try RealModel.load()
        let golden = try RealModel.golden("greedy-continuations.json", as: Golden.self)
        XCTAssertEqual(golden.cases.count, 10)
        let t = model.makeTransformer(threads: 2)
        var identical = 0
        for c in golden.cases {
            // The template and tokenizer must give llama.cpp's prompt ids.
            let rendered = model.template.render([ChatMessage(role: "user", content: c.prompt)])
            XCTAssertEqual(rendered, c.prompt_text)
            XCTAssertEqual(model.tokenizer.encode(rendered), c.prompt_ids, c.prompt)

            let cache = InMemoryKVCache(layout: model.kvLayout, capacity: 256)
            var logits: [Float] = []
            try t.forward(tokens: c.prompt_ids, positions: (0..<c.prompt_ids.count).map { Int32($0) }, cache: cache, logits: .last) {
                _, l in logits = Array(l)
            }
            var diverged = false
            for (step, expected) in reference(c).enumerated() {
                let ours = Sampler.argmax(logits)
                if ours != expected {
                    let gap = abs(logits[Int(ours)] - logits[Int(expected)])
                    // The same prefix through the float-activation (sgemm) path.
                    let prefix = c.prompt_ids + reference(c)[..<step]
                    let exactCache = InMemoryKVCache(layout: model.kvLayout, capacity: 256)
                    let saved = t.gemmThreshold
                    t.gemmThreshold = 1
                    var exact: [Float] = []
                    try t.forward(tokens: prefix, positions: (0..<prefix.count).map { Int32($0) }, cache: exactCache, logits: .last) { _, l in exact = Array(l) }
                    t.gemmThreshold = saved
                    let exactGap = exact[Int(ours)] - exact[Int(expected)]
                    print("greedy '\(c.prompt)': first divergence at step \(step): ours \(ours) vs llama.cpp \(expected), logit gap \(gap), float-activation gap \(exactGap) argmax \(Sampler.argmax(exact))")
                    XCTAssertTrue(
                        abs(exactGap) <= 0.05 || Sampler.argmax(exact) == ours,
                        "'\(c.prompt)' diverges at step \(step): not a near-tie (accurate gap \(exactGap)) and not the accurate path's choice")
                    diverged = true
                    break
                }
                if model.tokenizer.isEndOfGeneration(expected) { break }
                let pos = Int32(cache.count)
                try t.forward(tokens: [expected], positions: [pos], cache: cache, logits: .last) { _, l in logits = Array(l) }
            }
            if !diverged { identical += 1 }
        }
        print("greedy: \(identical)/\(golden.cases.count) continuations identical to llama.cpp")
        XCTAssertGreaterThanOrEqual(identical, 4)
    }
}
