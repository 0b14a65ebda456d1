import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// HBM bounds the batch: when a running turn finds no page for the KV it computes, another
/// running turn is swapped out to DRAM (its KV put below, its pages let go) and loaded back
/// layer by layer once the first has ended: nothing is dropped or recomputed, and each reply is
/// the one it gets alone.
final class SwapTests: XCTestCase {
    private func makeEngine(_ model: LlamaModel, hbmBlocks: Int) throws -> ChatEngine {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-swap-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = 16
        let page = 2 * 16 * model.kvLayout.rowWidth * 4  // a 16-token block of F32 keys and values
        c.hbmCapacityBytes = hbmBlocks * model.kvLayout.layers * page
        c.dramCapacityBytes = 32 << 20
        c.link = .unthrottled
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f32)
        var e = EngineConfiguration()
        e.threads = 2
        e.prefillChunkTokens = 32
        return ChatEngine(model: model, store: store, configuration: e)
    }

    func testARunningTurnSwapsOutForAnotherAndBothRepliesAreTheirOwn() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let long = GenerationOptions(maxTokens: 150, sampling: .greedy, stopAtEndOfGeneration: false)
        let short = GenerationOptions(maxTokens: 60, sampling: .greedy, stopAtEndOfGeneration: false)
        let a = [ChatMessage(role: "user", content: "write something long")]
        let b = [ChatMessage(role: "user", content: String(repeating: "a second chat with its own words ", count: 3))]
        // Alone, each in an arena with room to spare.
        let roomy = try makeEngine(model, hbmBlocks: 64)
        let aloneA = try roomy.runTurn(session: "a", messages: a, options: long)
        let aloneB = try roomy.runTurn(session: "b", messages: b, options: short)
        roomy.quiesce()

        // Together in an arena that holds one of them at its longest (about 14 blocks a layer)
        // and not both: "b" joins while "a" is under way.
        let engine = try makeEngine(model, hbmBlocks: 17)
        let stamps = Stamps()
        engine.logitsObserver = { session, _ in
            stamps.add(session)
            if session == "a" { usleep(3000) }
        }
        let scheduler = TurnScheduler(engine: engine, lookAhead: 2)
        let reports = ReportBox()
        func submit(_ session: String, _ messages: [ChatMessage], _ options: GenerationOptions) {
            scheduler.submit(.init(session: session, owner: session, messages: messages, options: options)) {
                result in
                if case .success(let r) = result { reports.append(r) } else { XCTFail("\(session): \(result)") }
            }
        }
        submit("a", a, long)
        let deadline = Date().addingTimeInterval(30)
        while stamps.times("a").count < 40 && Date() < deadline { usleep(1000) }
        submit("b", b, short)
        scheduler.drain()
        engine.quiesce()

        let ra = try XCTUnwrap(reports.all.first { $0.session == "a" })
        let rb = try XCTUnwrap(reports.all.first { $0.session == "b" })
        XCTAssertEqual(ra.swappedOut + rb.swappedOut, 1, "one turn swapped out for the other")
        XCTAssertEqual(engine.swapper.swaps, 1)
        XCTAssertEqual(ra.blocksSavedByCopy + rb.blocksSavedByCopy, 0, "every new block was computed in its page")
        XCTAssertEqual(ra.generated, aloneA.generated, "a's reply is the one it gets alone")
        XCTAssertEqual(rb.generated, aloneB.generated, "b's reply is the one it gets alone")
        // Their next turns reuse as much as they do where no turn was swapped: nothing was dropped.
        for (id, messages, r) in [("a", a, ra), ("b", b, rb)] {
            let next =
                messages + [
                    ChatMessage(role: "assistant", content: r.text), ChatMessage(role: "user", content: "more"),
                ]
            let n = try engine.runTurn(session: id, messages: next, options: short)
            let unswapped = try roomy.runTurn(session: id, messages: next, options: short)
            XCTAssertEqual(n.blocksRecovered, 0, id)
            XCTAssertEqual(n.tokensReused, unswapped.tokensReused, id)
            XCTAssertEqual(n.generated, unswapped.generated, id)
        }
    }
}
