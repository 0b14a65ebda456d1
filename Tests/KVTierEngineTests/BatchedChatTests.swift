import Foundation
import Synchronization
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// Many chats at once through the scheduler and the batch executor, on a tiny model.
final class BatchedChatTests: XCTestCase {
    private func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-batched-\(UUID().uuidString)")
            .path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    private func makeEngine(
        _ model: LlamaModel, elementType: KVElementType = .f32, maxBatch: Int = 16, blockTokens: Int = 16,
        memory: Int = 32 << 20, hbm: Int? = nil
    ) throws -> ChatEngine {
        var c = StoreConfiguration(stateDirectory: tempDir())
        c.blockTokens = blockTokens
        c.hbmCapacityBytes = hbm ?? memory
        c.dramCapacityBytes = memory
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: elementType)
        var e = EngineConfiguration()
        e.threads = 2
        e.maxBatch = maxBatch
        e.prefillChunkTokens = 32
        // Alone and together run in two engines: both take the same kernels (not each its own
        // measurement), so that their results can be compared bit for bit.
        e.linearGemmThreshold = 24
        return ChatEngine(model: model, store: store, configuration: e)
    }

    /// An engine with F32 KV whose DRAM tier holds `dram` bytes (HBM 32 MiB), one turn at a time
    /// unless a scheduler runs more.
    private func makeEngine(_ model: LlamaModel, dram: Int) throws -> ChatEngine {
        var c = StoreConfiguration(stateDirectory: tempDir())
        c.blockTokens = 16
        c.hbmCapacityBytes = 32 << 20
        c.dramCapacityBytes = dram
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f32)
        var e = EngineConfiguration()
        e.threads = 2
        e.linearGemmThreshold = 24
        return ChatEngine(model: model, store: store, configuration: e)
    }

    /// Each chat's turns, one chat after another (alone) or all chats' turn k at once (together).
    /// Each chat has its own owner: chats of one owner share the blocks of a common prompt that
    /// one of them stored before the other's turn starts (only alone), which would make the two
    /// runs compute different tokens.
    private func chat(
        _ engine: ChatEngine, sessions: [String], turns: Int, together: Bool, options: GenerationOptions
    ) throws -> (replies: [String: [[Int32]]], logits: [String: [[Float]]]) {
        let seen = Collected()
        engine.logitsObserver = { session, l in seen.add(session, l) }
        let scheduler = TurnScheduler(engine: engine, lookAhead: 2)
        var messages: [String: [ChatMessage]] = [:]
        var replies: [String: [[Int32]]] = [:]
        for turn in 0..<turns {
            let groups = together ? [sessions] : sessions.map { [$0] }
            for group in groups {
                let reports = ReportBox()
                for s in group {
                    let text =
                        "\(s) says hello number \(turn)" + String(repeating: " and more", count: turn * 3 + s.count % 4)
                    messages[s, default: []].append(ChatMessage(role: "user", content: text))
                    scheduler.submit(
                        TurnScheduler.Turn(
                            session: s, owner: "u-\(s)", messages: messages[s]!, options: options)
                    ) {
                        result in
                        if case .success(let r) = result { reports.append(r) } else { XCTFail("\(result)") }
                    }
                }
                scheduler.drain()
                engine.quiesce()
                for r in reports.all {
                    replies[r.session, default: []].append(r.generated)
                    messages[r.session]!.append(ChatMessage(role: "assistant", content: r.text))
                }
            }
        }
        engine.logitsObserver = nil
        return (replies, seen.all)
    }

    func testChatsRunTogetherGetTheRepliesAndLogitsTheyGetAlone() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let sessions = (0..<8).map { "chat-\($0)" + String(repeating: "x", count: $0) }
        let options = GenerationOptions(maxTokens: 12, sampling: .greedy, stopAtEndOfGeneration: false)
        let aloneEngine = try makeEngine(model)
        let alone = try chat(aloneEngine, sessions: sessions, turns: 3, together: false, options: options)
        XCTAssertEqual(aloneEngine.executor.counters.widestStep, 1)
        let batchedEngine = try makeEngine(model)
        let together = try chat(batchedEngine, sessions: sessions, turns: 3, together: true, options: options)
        for s in sessions {
            XCTAssertEqual(alone.replies[s]?.count, 3)
            XCTAssertEqual(alone.replies[s], together.replies[s], "\(s): the reply changes when batched")
            let a = alone.logits[s] ?? []
            let b = together.logits[s] ?? []
            XCTAssertEqual(a.count, b.count)
            let worst = zip(a, b).map { x, y in zip(x, y).map { abs($0 - $1) }.max() ?? 0 }.max() ?? .infinity
            // F32 KV and batch-invariant kernels: bit for bit, not merely within 1e-3.
            XCTAssertEqual(worst, 0, "\(s): logits differ by \(worst) when batched")
        }
        let c = batchedEngine.executor.counters
        print(
            "8 chats x 3 turns together: \(c.steps) steps, \(c.rows) rows, widest step \(c.widestStep) chats, "
                + "\(c.mixedSteps) mixed steps"
        )
        XCTAssertGreaterThan(c.widestStep, 1, "the chats shared steps")
        XCTAssertLessThan(
            c.steps, aloneEngine.executor.counters.steps, "batching took fewer steps than one chat at a time")
        // Turns 2 and 3 reused their history in both runs.
        XCTAssertTrue(together.replies.values.allSatisfy { $0.count == 3 })
    }

    /// SmolLM2, 8 chats of 2 turns: with F32 KV and with the default F16 KV, each chat gets the
    /// same greedy reply and the same logits, bit for bit, in the batch as alone.
    func testRealModelEightChatsTogetherGetWhatTheyGetAlone() throws {
        let model = try RealModel.load()
        let sessions = (0..<8).map { "real-\($0)" }
        let options = GenerationOptions(maxTokens: 16, sampling: .greedy, stopAtEndOfGeneration: false)
        for elementType in [KVElementType.f32, .f16] {
            let alone = try chat(
                makeEngine(model, elementType: elementType, blockTokens: 64, memory: 256 << 20), sessions: sessions,
                turns: 2,
                together: false, options: options)
            let engine = try makeEngine(model, elementType: elementType, blockTokens: 64, memory: 256 << 20)
            let together = try chat(engine, sessions: sessions, turns: 2, together: true, options: options)
            var worst: Float = 0
            for s in sessions {
                XCTAssertEqual(
                    alone.replies[s], together.replies[s], "\(elementType) \(s): the reply changes when batched")
                let a = alone.logits[s] ?? []
                let b = together.logits[s] ?? []
                XCTAssertEqual(a.count, 32)
                XCTAssertEqual(a.count, b.count)
                for (x, y) in zip(a, b) { worst = max(worst, zip(x, y).map { abs($0 - $1) }.max() ?? 0) }
            }
            let c = engine.executor.counters
            print(
                "SmolLM2, 8 chats x 2 turns, \(elementType) KV: batched vs alone max |logit diff| \(worst); "
                    + "\(c.steps) steps, widest \(c.widestStep)"
            )
            XCTAssertEqual(worst, 0, "\(elementType) KV: logits differ by \(worst) when batched")
            XCTAssertGreaterThan(c.widestStep, 1)
        }
    }

    func testAdmissionTakesOwnersInTurnAndEachOwnersTurnsInOrder() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let engine = try makeEngine(model, maxBatch: 1)
        let scheduler = TurnScheduler(engine: engine, lookAhead: 2)
        XCTAssertEqual(scheduler.maxRunning, 1)
        let order = OrderBox()
        let release = DispatchSemaphore(value: 0)
        let options = GenerationOptions(maxTokens: 2, sampling: .greedy, stopAtEndOfGeneration: false)
        func submit(_ session: String, owner: String, hold: Bool = false) {
            let wait: @Sendable (String) -> Void = { _ in release.wait() }
            let turn = TurnScheduler.Turn(
                session: session, owner: owner, messages: [ChatMessage(role: "user", content: "hi from \(session)")],
                options: options,
                onText: hold ? wait : nil)
            scheduler.submit(turn) { _ in order.append(session) }
        }
        // a1 runs (held until everything is queued); a2, a3 and b1 wait.
        submit("a1", owner: "alice", hold: true)
        submit("a2", owner: "alice")
        submit("a3", owner: "alice")
        submit("b1", owner: "bob")
        XCTAssertEqual(scheduler.outstanding(owner: "alice"), 3)
        XCTAssertEqual(scheduler.outstanding(owner: "bob"), 1)
        XCTAssertEqual(scheduler.depth, 3)
        for _ in 0..<4 { release.signal() }
        scheduler.drain()
        // First come first served would run a3 before b1.
        XCTAssertEqual(order.items, ["a1", "a2", "b1", "a3"])
        XCTAssertEqual(scheduler.outstanding(owner: "alice"), 0)
    }

    /// The look-ahead window holds the next sessions to start only as far as their KV fits in DRAM
    /// together (C_mem / S_kv), whatever `lookAhead` allows.
    func testLookAheadWindowHoldsWhatFitsInDRAM() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let options = GenerationOptions(maxTokens: 4, sampling: .greedy, stopAtEndOfGeneration: false)
        let sessions = ["w0", "w1", "w2", "w3", "w4", "w5"]
        // Sessions of similar size; DRAM holds two and a half of them.
        let sizer = try makeEngine(model)
        for s in sessions {
            _ = try sizer.runTurn(
                session: s, messages: [ChatMessage(role: "user", content: "hello from \(s)")], options: options)
        }
        let perSession = sizer.sessionKVBytes("w1")
        XCTAssertGreaterThan(perSession, 0)

        let engine = try makeEngine(model, dram: perSession * 5 / 2)
        for s in sessions {
            _ = try engine.runTurn(
                session: s, messages: [ChatMessage(role: "user", content: "hello from \(s)")], options: options)
        }
        engine.quiesce()

        let scheduler = TurnScheduler(engine: engine, lookAhead: 10, maxRunning: 1)
        let release = DispatchSemaphore(value: 0)
        let hold: @Sendable (String) -> Void = { _ in release.wait() }
        for (i, s) in sessions.enumerated() {
            let messages = [
                ChatMessage(role: "user", content: "hello from \(s)"), ChatMessage(role: "assistant", content: "x"),
                ChatMessage(role: "user", content: "again"),
            ]
            scheduler.submit(
                TurnScheduler.Turn(
                    session: s, owner: "u", messages: messages, options: options, onText: i == 0 ? hold : nil)
            ) { _ in }
        }
        // w0 runs (held); w1..w5 wait, and only two of them fit in DRAM together.
        XCTAssertEqual(scheduler.depth, 5)
        XCTAssertEqual(scheduler.window, ["w1", "w2"])
        // The store spares the running session first, then the window's: a turn's load pins its
        // blocks only once its thread starts, and until then nothing else keeps a prefetch for the
        // window from evicting its DRAM copy.
        let upcoming = try XCTUnwrap(engine.store.policy as? HintDrivenPolicy).upcoming
        XCTAssertEqual(upcoming.first, "w0")
        XCTAssertTrue(upcoming.contains("w1") && upcoming.contains("w2"), "\(upcoming)")
        for _ in 0..<8 { release.signal() }
        scheduler.drain()
        XCTAssertEqual(scheduler.window, [])
    }

    /// A prefetch that finds DRAM full of chats needed sooner brings up only part of its chat;
    /// when a turn ends, that chat gives way and the scheduler prefetches the window again, so
    /// the rest comes up before its turn (prefetched once, it would wait on disk for its load).
    func testTheWindowIsPrefetchedAgainWhenATurnEnds() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let options = GenerationOptions(maxTokens: 4, sampling: .greedy, stopAtEndOfGeneration: false)
        func opening(_ s: String) -> [ChatMessage] {
            let text = "\(s) writes: " + String(repeating: "\(s) is a chat of its own. ", count: 3)
            return [ChatMessage(role: "user", content: text)]
        }
        func next(_ s: String) -> [ChatMessage] {
            opening(s) + [ChatMessage(role: "assistant", content: "x"), ChatMessage(role: "user", content: "again")]
        }
        let sizer = try makeEngine(model)
        _ = try sizer.runTurn(session: "w1", messages: opening("w1"), options: options)
        sizer.quiesce()
        let perSession = sizer.store.dram.bytes(session: "w1")

        let engine = try makeEngine(model, dram: perSession * 5 / 2)
        for s in ["r", "w1", "w2"] { _ = try engine.runTurn(session: s, messages: opening(s), options: options) }
        engine.quiesce()
        for s in ["r", "w1", "w2"] { try engine.store.demote(session: s, to: .disk) }
        XCTAssertEqual(engine.store.dram.sessions, [])
        func prefetchesDone() {
            let done = DispatchSemaphore(value: 0)
            engine.store.prefetch(session: "none") { done.signal() }  // the prefetcher is one serial queue
            done.wait()
        }

        let scheduler = TurnScheduler(engine: engine, lookAhead: 10, maxRunning: 1)
        let gate = TurnGate()
        let rDone = DispatchSemaphore(value: 0)
        scheduler.submit(
            TurnScheduler.Turn(session: "r", owner: "u", messages: next("r"), options: options, onText: gate.hold("r"))
        ) { _ in rDone.signal() }
        gate.reached.wait()  // r's load is in; its turn holds at its first piece of text
        engine.store.waitForSaves()
        for s in ["w1", "w2"] {
            scheduler.submit(
                TurnScheduler.Turn(session: s, owner: "u", messages: next(s), options: options, onText: gate.hold(s))
            ) { _ in }
        }
        XCTAssertEqual(scheduler.window, ["w1", "w2"])
        prefetchesDone()
        let w2Blocks = engine.store.blockKeys(session: "w2").values.reduce(0) { $0 + $1.count }
        let partly = engine.store.dram.keys(session: "w2").count
        XCTAssertGreaterThan(partly, 0)
        XCTAssertLessThan(partly, w2Blocks, "DRAM holds r (running) and w1 (needed before w2)")
        gate.release.signal()  // r ends; w1 starts and holds
        rDone.wait()
        gate.reached.wait()
        prefetchesDone()
        XCTAssertEqual(engine.store.dram.keys(session: "w2").count, w2Blocks, "r gave way to the rest of w2")
        for _ in 0..<4 { gate.release.signal() }
        scheduler.drain()
    }

    /// HBM bounds the batch: a turn whose stored KV does not fit in the arena beside the running
    /// turn's waits until that one ends, then loads all of it. Started at once (as before), its
    /// load found the arena full of the running turn's pinned pages and it recomputed the blocks
    /// that did not fit.
    func testATurnWhoseKVDoesNotFitInHBMBesideTheRunningOnesWaitsAndRecomputesNothing() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let options = GenerationOptions(maxTokens: 4, sampling: .greedy, stopAtEndOfGeneration: false)
        func opening(_ s: String) -> [ChatMessage] {
            let question = String(repeating: "a long question about the tiers, ", count: 8)
            return [ChatMessage(role: "user", content: s + ": " + question)]
        }
        let sizer = try makeEngine(model)
        _ = try sizer.runTurn(session: "c", messages: opening("c"), options: options)
        let blocks = try XCTUnwrap(sizer.stateForTesting("c")).blocks.count
        XCTAssertGreaterThanOrEqual(blocks, 4)
        let page = 2 * 16 * model.kvLayout.rowWidth * 4
        // Room for one chat's blocks and a half in every layer: one chat fits, two do not.
        let engine = try makeEngine(model, hbm: (blocks * 3 / 2) * model.kvLayout.layers * page + page / 2)
        var next: [String: [ChatMessage]] = [:]
        var history: [String: Int] = [:]
        for s in ["c1", "c2"] {
            let r = try engine.runTurn(session: s, messages: opening(s), options: options)
            next[s] =
                opening(s) + [ChatMessage(role: "assistant", content: r.text), ChatMessage(role: "user", content: "ok")]
            history[s] = r.promptTokens + r.generated.count - 1
        }
        engine.quiesce()
        for s in ["c1", "c2"] { try engine.store.demote(session: s, to: .dram) }

        let scheduler = TurnScheduler(engine: engine, lookAhead: 4, maxRunning: 2)
        let gate = TurnGate()
        let reports = ReportBox()
        scheduler.submit(
            TurnScheduler.Turn(session: "c1", messages: next["c1"]!, options: options, onText: gate.hold("c1"))
        ) { if case .success(let r) = $0 { reports.append(r) } }
        gate.reached.wait()  // c1's KV is pinned in HBM; its turn holds at its first piece of text
        let c2Done = DispatchSemaphore(value: 0)
        scheduler.submit(TurnScheduler.Turn(session: "c2", messages: next["c2"]!, options: options)) {
            if case .success(let r) = $0 { reports.append(r) }
            c2Done.signal()
        }
        XCTAssertEqual(c2Done.wait(timeout: .now() + 2), .timedOut, "c2 did not run beside c1")
        XCTAssertEqual(scheduler.running, 1)
        gate.release.signal()
        scheduler.drain()
        let all = reports.all
        XCTAssertEqual(all.count, 2)
        for r in all {
            XCTAssertEqual(r.blocksRecovered, 0, "\(r.session) recomputed no stored block")
            XCTAssertEqual(r.tokensReused, history[r.session], "\(r.session) reused its whole history")
        }
    }

    /// A queued chat that shares a prefix with another chat is spared with its chain: its own
    /// namespace and, of the other chat's, only the blocks it reads (sparing the other chat's
    /// namespace would spare that chat's whole history while this one waits). The shared blocks
    /// come with the queued chat's prefetch.
    func testQueuedChatsAreSparedWithTheBlocksTheyReadNotTheWholeChatTheyForkedFrom() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model)
        let options = GenerationOptions(maxTokens: 4, sampling: .greedy, stopAtEndOfGeneration: false)
        let system = ChatMessage(role: "system", content: String(repeating: "a shared system prompt. ", count: 4))
        func chat(_ user: String) -> [ChatMessage] { [system, ChatMessage(role: "user", content: user)] }
        _ = try engine.runTurn(session: "first", messages: chat("the first chat"), options: options)
        let forked = engine.sessionForRequest(named: "forked", messages: chat("another chat"), owner: nil, newID: "f")
        XCTAssertEqual(forked, "forked")
        _ = try engine.runTurn(session: forked, messages: chat("another chat"), options: options)
        XCTAssertTrue(engine.storeNamespaces(of: forked).contains("first"), "the fork reads the first chat's blocks")
        engine.quiesce()

        let scheduler = TurnScheduler(engine: engine, lookAhead: 4, maxRunning: 1)
        let release = DispatchSemaphore(value: 0)
        let hold: @Sendable (String) -> Void = { _ in release.wait() }
        scheduler.submit(
            TurnScheduler.Turn(
                session: "other", messages: [ChatMessage(role: "user", content: "x")], options: options,
                onText: hold)
        ) { _ in }
        let next =
            chat("another chat") + [
                ChatMessage(role: "assistant", content: "y"), ChatMessage(role: "user", content: "z"),
            ]
        scheduler.submit(TurnScheduler.Turn(session: forked, messages: next, options: options)) { _ in }
        let upcoming = try XCTUnwrap(engine.store.policy as? HintDrivenPolicy).upcoming
        XCTAssertEqual(upcoming, ["other", "forked"])
        // DRAM's eviction ranks the blocks the fork reads of the first chat's namespace with the
        // fork, the first chat's own blocks with the first chat.
        let shared = try XCTUnwrap(engine.stateForTesting(forked)?.blocks.filter { $0.home == "first" })
        let own = try XCTUnwrap(engine.stateForTesting("first")?.blocks.filter { !shared.contains($0) })
        XCTAssertFalse(shared.isEmpty)
        XCTAssertFalse(own.isEmpty)
        for b in shared { XCTAssertEqual(engine.store.evictionRanker(of: engine.key(1, b)), forked) }
        for b in own { XCTAssertEqual(engine.store.evictionRanker(of: engine.key(1, b)), "first") }
        for _ in 0..<8 { release.signal() }
        scheduler.drain()

        // Its prefetch reads, of the first chat's namespace, only the blocks they share.
        engine.quiesce()
        for s in ["first", forked] { try engine.store.demote(session: s, to: .disk) }
        XCTAssertEqual(engine.store.dram.keys(session: "first"), [])
        let firstBlocks = engine.store.blockKeys(session: "first").values.reduce(0) { $0 + $1.count }
        engine.prefetch(session: forked)
        let done = DispatchSemaphore(value: 0)
        engine.store.prefetch(session: "none") { done.signal() }  // the prefetcher is one serial queue
        done.wait()
        let up = engine.store.dram.keys(session: "first").count
        XCTAssertGreaterThan(up, 0)
        XCTAssertLessThan(up, firstBlocks, "the rest of the first chat stays on disk")
        XCTAssertGreaterThan(engine.store.dram.keys(session: forked).count, 0)
    }

    func testQueuedTurnOfAGoneClientIsDroppedBeforeItStarts() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let engine = try makeEngine(model)
        let scheduler = TurnScheduler(engine: engine)
        var options = GenerationOptions(maxTokens: 4, sampling: .greedy)
        options.isCancelled = { true }
        let outcome = OrderBox()
        scheduler.submit(
            TurnScheduler.Turn(
                session: "gone", messages: [ChatMessage(role: "user", content: "hello")], options: options)
        ) {
            result in
            if case .failure(let e as EngineError) = result, case .clientGone = e {
                outcome.append("dropped")
            } else {
                outcome.append("\(result)")
            }
        }
        scheduler.drain()
        XCTAssertEqual(outcome.items, ["dropped"])
        XCTAssertFalse(engine.sessionIDs.contains("gone"), "nothing was computed or stored")
        XCTAssertEqual(engine.executor.counters.steps, 0)
    }

    func testTwoTurnsOfOneSessionNeverOverlap() throws {
        let model = try LlamaModel(path: TinyModel().write())
        let engine = try makeEngine(model)
        let options = GenerationOptions(maxTokens: 6, sampling: .greedy, stopAtEndOfGeneration: false)
        let messages = [ChatMessage(role: "user", content: "the same chat twice")]
        let errors = OrderBox()
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            do {
                let r = try engine.runTurn(session: "one", messages: messages, options: options)
                XCTAssertEqual(r.tokensGenerated, 6)
            } catch {
                errors.append("\(error)")
            }
        }
        XCTAssertEqual(errors.items, [])
        XCTAssertEqual(engine.executor.counters.widestStep, 1, "turns of one session ran one after another")
    }
}

/// Logits by session, from several turn threads.
final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var bySession: [String: [[Float]]] = [:]
    func add(_ session: String, _ logits: [Float]) { lock.withLock { bySession[session, default: []].append(logits) } }
    var all: [String: [[Float]]] { lock.withLock { bySession } }
}

/// Holds each session's turn at its first piece of text until `release` is signalled: `reached`
/// is signalled when a turn holds.
private final class TurnGate: Sendable {
    let reached = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    private let held = Mutex<Set<String>>([])

    func hold(_ session: String) -> @Sendable (String) -> Void {
        { [self] _ in
            guard held.withLock({ $0.insert(session).inserted }) else { return }
            reached.signal()
            release.wait()
        }
    }
}
