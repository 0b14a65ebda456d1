import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// The tiers around the running batch: a turn joining it loads its reused KV before its first
/// step, and a block completed during a step is admitted and saved off the executor's thread,
/// so no turn's steps wait for another turn's loads or saves.
final class BatchTierTests: XCTestCase {
    /// An engine whose link takes `latency` seconds for every copy (one per layer loaded, one per
    /// block saved), at most `savesInFlight` saves at once.
    private func makeEngine(
        _ model: LlamaModel, latency: Double, savesInFlight: Int, blockTokens: Int = 32
    ) throws -> ChatEngine {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-tiers-\(UUID().uuidString)")
            .path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = blockTokens
        c.hbmCapacityBytes = 32 << 20
        c.dramCapacityBytes = 32 << 20
        c.link = .init(bandwidthBytesPerSecond: 1e12, latencySeconds: latency)
        c.maxSavesInFlight = savesInFlight
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f32)
        var e = EngineConfiguration()
        e.threads = 2
        e.prefillChunkTokens = 32
        e.linearGemmThreshold = 24
        return ChatEngine(model: model, store: store, configuration: e)
    }

    /// Runs `reply` (a long reply under way first, sampling a token at most every `pace`
    /// microseconds), then `other` once the reply has 3 tokens; returns the reports and the
    /// reply's token times from the last one before `other` was submitted.
    private func replyBeside(
        _ engine: ChatEngine, other: TurnScheduler.Turn, replyTokens: Int = 120, pace: UInt32 = 0
    ) throws -> (reports: [TurnReport], during: [TimeInterval]) {
        let stamps = Stamps()
        engine.logitsObserver = { session, _ in
            stamps.add(session)
            if session == "reply" && pace > 0 { usleep(pace) }
        }
        defer { engine.logitsObserver = nil }
        let scheduler = TurnScheduler(engine: engine, lookAhead: 2)
        let reports = ReportBox()
        func submit(_ turn: TurnScheduler.Turn) {
            scheduler.submit(turn) { result in
                if case .success(let r) = result { reports.append(r) } else { XCTFail("\(result)") }
            }
        }
        let options = GenerationOptions(maxTokens: replyTokens, sampling: .greedy, stopAtEndOfGeneration: false)
        submit(
            .init(
                session: "reply", owner: "a", messages: [.init(role: "user", content: "write something long")],
                options: options))
        let deadline = Date().addingTimeInterval(30)
        while stamps.times("reply").count < 3 && Date() < deadline { usleep(1000) }
        XCTAssertGreaterThanOrEqual(stamps.times("reply").count, 3, "the reply is under way")
        let submitted = Date().timeIntervalSinceReferenceDate
        submit(other)
        scheduler.drain()
        engine.quiesce()
        // From the reply's last token before `other` came, so that a pause spanning it counts.
        let times = stamps.times("reply")
        let from = times.lastIndex { $0 <= submitted } ?? 0
        return (reports.all, Array(times[from...]))
    }

    private func longestGap(_ times: [TimeInterval]) -> TimeInterval {
        zip(times, times.dropFirst()).map { $1 - $0 }.max() ?? 0
    }

    /// A turn whose history is in DRAM joins a running batch over a link that takes 500 ms per
    /// layer: it waits on its own thread until every layer is in HBM, so the reply beside it
    /// never pauses for the load (a lane that joined at once would stall every step on its
    /// layers, 500 ms each). The reply samples a token every 10 ms or more, so that it is still
    /// under way, and its blocks (256 tokens) never fill, so the joining turn waits for no save
    /// (the reply's partial saves, 500 ms each, go out on the link's other direction).
    /// The joining turn then generates 40 tokens, back to back: with 4 it could finish inside
    /// one of the reply's 10 ms pauses between steps and never share a step with it (seen on
    /// a loaded machine).
    /// The margins (a pause of 400 ms fails, the mechanism's absence pauses 500 ms and more)
    /// leave room for a loaded machine.
    func testJoiningTurnLoadsItsKVWithoutStallingTheBatch() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, latency: 0.5, savesInFlight: 256, blockTokens: 256)
        var messages = [ChatMessage(role: "user", content: String(repeating: "a history worth keeping ", count: 12))]
        let options = GenerationOptions(maxTokens: 4, sampling: .greedy, stopAtEndOfGeneration: false)
        let first = try engine.runTurn(session: "joiner", messages: messages, options: options)
        engine.quiesce()
        try engine.store.demote(session: "joiner", to: .dram)
        messages += [
            ChatMessage(role: "assistant", content: first.text), ChatMessage(role: "user", content: "and then?"),
        ]
        let joining = GenerationOptions(maxTokens: 40, sampling: .greedy, stopAtEndOfGeneration: false)

        let (reports, during) = try replyBeside(
            engine, other: .init(session: "joiner", owner: "b", messages: messages, options: joining), replyTokens: 200,
            pace: 10_000)
        let joiner = try XCTUnwrap(reports.first { $0.session == "joiner" })
        XCTAssertGreaterThan(joiner.hitsDRAM, 32, "the history came from DRAM")
        XCTAssertGreaterThan(engine.executor.counters.widestStep, 1, "the turn joined the running reply")
        XCTAssertGreaterThan(joiner.loadStallMs, 800, "the load was slow (the test's premise)")
        XCTAssertGreaterThan(during.count, 20, "the reply went on while the turn joined")
        let worst = longestGap(during)
        print(
            "reply tokens while a turn loaded 2 layers at 500 ms each: \(during.count), "
                + "longest gap \(Int(worst * 1000)) ms"
        )
        XCTAssertLessThan(worst, 0.4, "a step of the batch waited for the joining turn's load")
    }

    /// A link so slow that every save takes 500 ms, one at a time: a 160-token prompt's saves
    /// (5 blocks in each of 2 layers) take about 5 s. A reply generated meanwhile by another
    /// session never pauses for them (with the saves on the executor's thread, each 32-token step
    /// of the prompt held every lane for 2 saves, 1 s; a pause of 400 ms fails).
    func testSavesOfAPromptNeverHoldUpAnotherTurnsSteps() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, latency: 0.5, savesInFlight: 1)
        let options = GenerationOptions(maxTokens: 1, sampling: .greedy, stopAtEndOfGeneration: false)
        let text = String(repeating: "a long prompt with many words ", count: 25)
        let (reports, during) = try replyBeside(
            engine,
            other: .init(
                session: "prompt", owner: "b", messages: [.init(role: "user", content: text)], options: options))
        let prompt = try XCTUnwrap(reports.first { $0.session == "prompt" })
        XCTAssertGreaterThanOrEqual(prompt.tokensRecomputed, 160)
        XCTAssertGreaterThan(prompt.saveLagMs, 2000, "the prompt's saves were slow (the test's premise)")
        XCTAssertGreaterThan(during.count, 20, "the reply went on while the prompt ran")
        let worst = longestGap(during)
        print("reply tokens during the prompt's saves: \(during.count), longest gap \(Int(worst * 1000)) ms")
        XCTAssertLessThan(worst, 0.4, "a step of the batch waited for a save")
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
