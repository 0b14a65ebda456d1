import XCTest

@testable import KVTierModel
@testable import KVTierTestSupport

/// On the real SmolLM2 model: a chat turn prefilled in one batch and then decoded token by token
/// (the matrix-vector path) against recomputing the whole history in one batch (the sgemm path),
/// which is what the engine does when it reuses cached KV across turns.
///
/// Both paths use F32 activations and the dequantized weights, but they sum in different orders,
/// so they differ in the last bit; where that flips the F16 rounding of a cached K/V value, 30
/// layers amplify it. The sgemm path is no more consistent with itself: over the 10 golden
/// prompts, decode vs one batch differs by 0.003-0.008, the same history as two sgemm batches vs
/// one batch by 0.0015-0.02. So 1e-3 is out of reach with an F16 cache and these two kernel
/// families; the bound here is that 0.02. The q8-activation decode path this replaced gave 0.56.
/// On the quantized-activation path (AVX-512 VNNI), where every kernel computes a row on its own,
/// decoding and recomputing in one or two batches give the same bits.
final class RealModelBatchSplitTests: XCTestCase {
    func testDecodingOnACacheEqualsRecomputingInOneBatch() throws {
        let model = try RealModel.load()
        let t = model.makeTransformer(threads: 2)
        let prompt = model.tokenizer.encode(
            model.template.render([ChatMessage(role: "user", content: "Explain in two short sentences why the sky is blue during the day.")]))
        XCTAssertGreaterThanOrEqual(prompt.count, 35)
        XCTAssertGreaterThanOrEqual(prompt.count, t.gemmThreshold)  // the prefill takes the sgemm path

        // Prefill, then 16 greedy tokens, each fed alone.
        let cache = InMemoryKVCache(layout: model.kvLayout, capacity: 128)
        var logits: [Float] = []
        try t.forward(tokens: prompt, positions: (0..<prompt.count).map { Int32($0) }, cache: cache, logits: .last) { _, l in logits = Array(l) }
        var history = prompt
        for _ in 0..<16 {
            let next = Sampler.argmax(logits)
            history.append(next)
            try t.forward(tokens: [next], positions: [Int32(history.count - 1)], cache: cache, logits: .last) { _, l in logits = Array(l) }
        }

        // The same history in one batch, and (for scale) as two sgemm batches.
        func lastLogits(_ chunks: [Int]) throws -> [Float] {
            let c = InMemoryKVCache(layout: model.kvLayout, capacity: 128)
            var out: [Float] = []
            var start = 0
            for n in chunks {
                try t.forward(tokens: Array(history[start..<(start + n)]), positions: (start..<(start + n)).map { Int32($0) }, cache: c, logits: .last) { _, l in out = Array(l) }
                start += n
            }
            return out
        }
        let expected = try lastLogits([history.count])
        let twoBatches = try lastLogits([prompt.count, 16])
        func maxDiff(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }
        let diff = maxDiff(logits, expected)
        print("batch split: \(prompt.count) prompt + 16 decoded one at a time vs \(history.count) in one batch: max |logit diff| at the last position \(diff) (as two sgemm batches \(prompt.count) + 16: \(maxDiff(twoBatches, expected)))")
        XCTAssertEqual(logits.count, expected.count)
        XCTAssertEqual(Sampler.argmax(logits), Sampler.argmax(expected))
        XCTAssertLessThan(diff, 0.02)
        if t.batchInvariant {
            XCTAssertEqual(logits.map(\.bitPattern), expected.map(\.bitPattern))
            XCTAssertEqual(twoBatches.map(\.bitPattern), expected.map(\.bitPattern))
        }
    }
}
