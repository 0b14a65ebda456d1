import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// Log probabilities of a reply on a tiny model, checked against the logits themselves: one
/// entry per generated token, the log-softmax of the logits it was sampled from, the
/// alternatives the most likely ones, in order; stop sequences and streaming keep them aligned
/// with the text.
final class LogprobTests: XCTestCase {
    private func engine() throws -> ChatEngine {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-lp-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.hbmCapacityBytes = 16 << 20
        c.dramCapacityBytes = 16 << 20
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f16)
        var e = EngineConfiguration()
        e.threads = 2
        return ChatEngine(model: model, store: store, configuration: e)
    }

    func testLogprobsAreTheLogSoftmaxOfEachTokensLogits() throws {
        let engine = try engine()
        let seen = ValueBox<[Float]>()
        engine.logitsObserver = { _, l in seen.append(l) }
        var options = GenerationOptions(maxTokens: 12, sampling: .greedy, stopAtEndOfGeneration: false)
        options.logprobs = 4
        let streamed = ValueBox<TokenLogprob>()
        options.onLogprobs = { for t in $0 { streamed.append(t) } }
        let report = try engine.runTurn(
            session: "lp", messages: [ChatMessage(role: "user", content: "say something")], options: options)
        let lps = try XCTUnwrap(report.logprobs)
        XCTAssertEqual(lps.map(\.token), report.generated, "one entry per generated token, in order")
        XCTAssertEqual(streamed.all, lps, "what streaming delivered is the report's")
        let logits = seen.all
        XCTAssertGreaterThanOrEqual(logits.count, lps.count)
        for (k, t) in lps.enumerated() {
            let l = logits[k]
            let m = l.max() ?? 0
            let logZ = m + Float(log(l.reduce(0.0) { $0 + Double(expf($1 - m)) }))
            XCTAssertEqual(t.logprob, l[Int(t.token)] - logZ, accuracy: 1e-4)
            XCTAssertEqual(t.top.count, 4)
            XCTAssertEqual(t.top.first?.token, t.token, "greedy: the chosen token is the most likely")
            let best = l.enumerated().sorted { $0.element > $1.element }.prefix(4).map { Int32($0.offset) }
            XCTAssertEqual(t.top.map(\.token), best)
            XCTAssertEqual(t.bytes, engine.model.tokenizer.pieceBytes(t.token))
        }
        XCTAssertEqual(
            String(decoding: lps.flatMap(\.bytes), as: UTF8.self), report.text, "the tokens' bytes are the reply's text"
        )
    }

    func testAStopSequencesTokensAreNotInTheLogprobs() throws {
        let engine = try engine()
        var options = GenerationOptions(maxTokens: 16, sampling: .greedy, stopAtEndOfGeneration: false)
        let free = try engine.runTurn(
            session: "a", messages: [ChatMessage(role: "user", content: "go on")], options: options)
        // Stop at the text of the first token (after the first) whose text is new: the reply
        // ends before it.
        let tok = engine.model.tokenizer
        let k = try XCTUnwrap(
            (1..<free.generated.count).first { k in
                let t = tok.decode([free.generated[k]])
                return !t.isEmpty && !tok.decode(Array(free.generated.prefix(k))).contains(t)
                    && tok.decode(Array(free.generated.prefix(k + 1))).hasSuffix(t)
            }, "a token with new text in \(free.generated)")
        let prefix = tok.decode(Array(free.generated.prefix(k)))
        options.stopSequences = [tok.decode([free.generated[k]])]
        options.logprobs = 0
        let cut = try engine.runTurn(
            session: "b", messages: [ChatMessage(role: "user", content: "go on")], options: options)
        let lps = try XCTUnwrap(cut.logprobs)
        XCTAssertEqual(cut.text, prefix)
        XCTAssertEqual(String(decoding: lps.flatMap(\.bytes), as: UTF8.self), cut.text)
        XCTAssertTrue(lps.allSatisfy(\.top.isEmpty))

    }
}

/// Values appended from the turn's thread, read by the test.
private final class ValueBox<T: Sendable>: @unchecked Sendable {
    // Unchecked: `list` only under `lock`.
    private let lock = NSLock()
    private var list: [T] = []
    func append(_ v: T) { lock.withLock { list.append(v) } }
    var all: [T] { lock.withLock { list } }
}
