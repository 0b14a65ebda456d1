import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore

/// Saving around the running batch: a block completed during a step is admitted and saved off
/// the executor's thread, so no turn's steps wait for another turn's saves.
final class BatchSavingTests: XCTestCase {
    /// A link so slow that every save takes 250 ms, one at a time: a 160-token prompt's saves
    /// (5 blocks in each of 2 layers) take about 2.5 s. A reply generated meanwhile by another
    /// session never pauses for them (with the saves on the executor's thread, each 32-token step
    /// of the prompt held every lane for 2 saves, 500 ms).
    func testSavesOfAPromptNeverHoldUpAnotherTurnsSteps() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-saving-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = 32
        c.hbmCapacityBytes = 32 << 20
        c.dramCapacityBytes = 32 << 20
        c.link = .init(bandwidthBytesPerSecond: 1e12, latencySeconds: 0.25)
        c.maxSavesInFlight = 1
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f32)
        var e = EngineConfiguration()
        e.threads = 2
        e.prefillChunkTokens = 32
        e.linearGemmThreshold = 24
        let engine = ChatEngine(model: model, store: store, configuration: e)
        let stamps = Stamps()
        engine.logitsObserver = { session, _ in stamps.add(session) }
        let scheduler = TurnScheduler(engine: engine, lookAhead: 2)
        let reports = ReportBox()
        func submit(_ session: String, _ text: String, maxTokens: Int) {
            let options = GenerationOptions(maxTokens: maxTokens, sampling: .greedy, stopAtEndOfGeneration: false)
            let turn = TurnScheduler.Turn(
                session: session, owner: session, messages: [ChatMessage(role: "user", content: text)], options: options)
            scheduler.submit(turn) { result in
                if case .success(let r) = result { reports.append(r) } else { XCTFail("\(result)") }
            }
        }
        submit("reply", "write something long", maxTokens: 120)
        let deadline = Date().addingTimeInterval(30)
        while stamps.times("reply").count < 3 && Date() < deadline { usleep(1000) }
        XCTAssertGreaterThanOrEqual(stamps.times("reply").count, 3, "the reply is under way")
        let promptSubmitted = Date()
        submit("prompt", String(repeating: "a long prompt with many words ", count: 25), maxTokens: 1)
        scheduler.drain()
        engine.quiesce()

        let prompt = try XCTUnwrap(reports.all.first { $0.session == "prompt" })
        XCTAssertGreaterThanOrEqual(prompt.tokensRecomputed, 160)
        XCTAssertGreaterThan(prompt.saveLagMs, 1000, "the prompt's saves were slow (the test's premise)")
        // The reply's tokens while the prompt was computed and saved: no pause near a save's 250 ms.
        let during = stamps.times("reply").filter { $0 > promptSubmitted.timeIntervalSinceReferenceDate }
        XCTAssertGreaterThan(during.count, 20, "the reply went on while the prompt ran")
        let gaps = zip(during, during.dropFirst()).map { $1 - $0 }
        let worst = gaps.max() ?? 0
        print("reply tokens during the prompt's saves: \(during.count), longest gap \(Int(worst * 1000)) ms")
        XCTAssertLessThan(worst, 0.2, "a step of the batch waited for a save")
    }
}

/// When each session's tokens were sampled, from several turn threads.
final class Stamps: @unchecked Sendable {
    private let lock = NSLock()
    private var bySession: [String: [TimeInterval]] = [:]
    func add(_ session: String) {
        let now = Date().timeIntervalSinceReferenceDate
        lock.withLock { bySession[session, default: []].append(now) }
    }
    func times(_ session: String) -> [TimeInterval] { lock.withLock { bySession[session] ?? [] } }
}
