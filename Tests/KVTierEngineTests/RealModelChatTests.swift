import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// A 5-turn chat with SmolLM2 through the engine, each turn's KV coming from a different tier,
/// against full recomputation of every turn.
final class RealModelChatTests: XCTestCase {
    /// F16 KV (the default): same greedy tokens, logits within 0.03 (see below).
    func testFiveTurnChatWithReuseEqualsRecomputation() throws {
        try fiveTurns(elementType: .f16, tolerance: 0.03)
    }

    /// F32 KV: logits within 1e-3 of full recomputation.
    func testFiveTurnChatWithF32KVEqualsRecomputationWithin1e3() throws {
        try fiveTurns(elementType: .f32, tolerance: 1e-3)
    }

    private func fiveTurns(elementType: KVElementType, tolerance: Float) throws {
        let model = try RealModel.load()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-chat-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.hbmCapacityBytes = 64 << 20
        c.dramCapacityBytes = 64 << 20
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: elementType)
        var e = EngineConfiguration()
        e.threads = 2
        let engine = ChatEngine(model: model, store: store, configuration: e)
        let questions = [
            "What is the capital of France?", "And of Germany?", "Which of the two is larger?",
            "Name a famous museum in the first one.", "Thank you! Summarize our chat in one sentence.",
        ]
        let tiers: [Tier?] = [nil, nil, .dram, .disk, .disk]
        var messages: [ChatMessage] = []
        var replies: [String: [Int32]] = [:]
        var worstOverall: Float = 0
        for (turn, q) in questions.enumerated() {
            if let tier = tiers[turn] { try store.demote(session: "real", to: tier) }
            messages.append(ChatMessage(role: "user", content: q))
            var seen: [[Float]] = []
            engine.logitsObserver = { seen.append($1) }
            let r = try engine.runTurn(session: "real", messages: messages, options: GenerationOptions(maxTokens: 16))
            engine.quiesce()
            let prompt = ConversationTokenizer(model: model).tokens(for: messages, replies: replies)
            // Full recomputation: one prefill of the whole history, then the same tokens one by one.
            let t = model.makeTransformer(threads: 2)
            let cache = InMemoryKVCache(
                layout: model.kvLayout, capacity: prompt.count + 32, precision: elementType == .f32 ? .f32 : .f16)
            var ref: [[Float]] = []
            try t.forward(tokens: prompt, positions: (0..<prompt.count).map { Int32($0) }, cache: cache, logits: .last)
            { _, l in ref.append(Array(l)) }
            for (k, tok) in r.generated.enumerated() {
                try t.forward(tokens: [tok], positions: [Int32(prompt.count + k)], cache: cache, logits: .last) {
                    _, l in ref.append(Array(l))
                }
            }
            var worst: Float = 0
            for (a, b) in zip(seen, ref) {
                XCTAssertEqual(Sampler.argmax(a), Sampler.argmax(b), "turn \(turn): greedy token differs")
                worst = max(worst, zip(a, b).map { abs($0 - $1) }.max() ?? 0)
            }
            worstOverall = max(worstOverall, worst)
            print(
                "real chat (\(elementType) KV) turn \(turn): prompt \(prompt.count) reused \(r.tokensReused) "
                    + "recomputed \(r.tokensRecomputed) hits \(r.hitsHBM)/\(r.hitsDRAM)/\(r.hitsDisk) "
                    + "stall \(String(format: "%.2f", r.loadStallMs)) ms, ttft \(String(format: "%.1f", r.ttftMs)) ms, "
                    + "max |dlogit| \(worst): \(r.text.debugDescription)"
            )
            if turn > 0 { XCTAssertGreaterThan(r.tokensReused, prompt.count / 2) }
            switch tiers[turn] {
            case .dram?: XCTAssertGreaterThan(r.hitsDRAM, 0)
            case .disk?: XCTAssertGreaterThan(r.hitsDisk, 0)
            default: if turn > 0 { XCTAssertGreaterThan(r.hitsHBM, 0) }
            }
            replies[r.text] = r.generated
            messages.append(ChatMessage(role: "assistant", content: r.text))
        }
        // With F16 KV the logits are not bit-identical: a single new token runs the matrix-vector
        // kernel, a recompute runs sgemm; their different summation order flips the F16 rounding
        // of a few cached K/V values, which 30 layers turn into ~0.01 (measured 0.009-0.014).
        // With F32 KV there is no rounding to flip.
        // On the quantized-activation path (AVX-512 VNNI) every kernel computes a row on its own:
        // reuse is recomputation's bits, with either KV type.
        XCTAssertLessThan(worstOverall, tolerance, "\(elementType) KV")
        if model.makeTransformer(threads: 1).batchInvariant { XCTAssertEqual(worstOverall, 0, "\(elementType) KV") }
    }
}

/// A reply the client edits before sending it back: its KV is reused up to the first token where
/// the edited text's tokens differ from the generated ones, not all-or-nothing.
final class RealModelEditedReplyTests: XCTestCase {
    func testAnEditedReplyIsReusedUpToWhereItsTokensDiffer() throws {
        let model = try RealModel.load()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-edit-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.hbmCapacityBytes = 64 << 20
        c.dramCapacityBytes = 64 << 20
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f16)
        var e = EngineConfiguration()
        e.threads = 2
        let engine = ChatEngine(model: model, store: store, configuration: e)
        let first = [ChatMessage(role: "user", content: "Describe the sea in two sentences.")]
        let options = GenerationOptions(maxTokens: 24, sampling: .greedy, stopAtEndOfGeneration: false)
        let r1 = try engine.runTurn(session: "edit", messages: first, options: options)
        try XCTSkipIf(r1.generated.count < 12, "the reply is too short to edit")
        // The client keeps the reply's first half, to the end of a word.
        let middle = r1.text.index(r1.text.startIndex, offsetBy: r1.text.count / 2)
        let edited = String(r1.text[..<(r1.text[..<middle].lastIndex(of: " ") ?? middle)])
        let next =
            first + [ChatMessage(role: "assistant", content: edited), ChatMessage(role: "user", content: "More.")]
        let r2 = try engine.runTurn(session: "edit", messages: next, options: GenerationOptions(maxTokens: 4))
        let replyReused = r2.tokensReused - r1.promptTokens
        print("edited reply: \(replyReused) of \(r1.generated.count) reply tokens reused")
        XCTAssertGreaterThan(replyReused, r1.generated.count / 4, "the kept half's KV is reused")
        XCTAssertLessThan(replyReused, r1.generated.count - 1, "only up to where the edited text's tokens differ")
    }
}
