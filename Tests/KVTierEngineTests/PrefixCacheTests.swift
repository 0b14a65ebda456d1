import Foundation
import XCTest

@testable import KVTierEngine
@testable import KVTierModel
@testable import KVTierStore
@testable import KVTierTestSupport

/// The prefix cache: requests without a session id keep their own chats, every chat reuses the
/// longest prefix any chat of its owner computed, shared blocks are stored once and stay
/// immutable while referenced, and a block goes only with its last reference.
final class PrefixCacheTests: XCTestCase {
    private func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-prefix-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    private func makeEngine(_ model: LlamaModel, dir: String, reuse: Bool = true, hbmBytes: Int = 16 << 20) throws
        -> ChatEngine
    {
        var c = StoreConfiguration(stateDirectory: dir)
        c.blockTokens = 16
        c.hbmCapacityBytes = hbmBytes
        c.dramCapacityBytes = 16 << 20
        c.link = .init(bandwidthBytesPerSecond: 0, latencySeconds: 0)
        let store = try TieredStore(
            configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout, elementType: .f32)
        var e = EngineConfiguration()
        e.threads = 2
        e.reuseKV = reuse
        return ChatEngine(model: model, store: store, configuration: e)
    }

    private let greedy = GenerationOptions(maxTokens: 6, sampling: .greedy, stopAtEndOfGeneration: false)
    private let system = ChatMessage(
        role: "system",
        content: "You are a careful assistant for a team of engineers. Answer briefly, cite the manual where you can, "
            + "and say so when you do not know. Never invent command names or flags.")

    /// A request as the daemon runs it: the session chosen for it, then its turn.
    private func request(
        _ engine: ChatEngine, named: String? = nil, _ messages: [ChatMessage], owner: String = "1000"
    ) throws -> (session: String, report: TurnReport) {
        let id = engine.sessionForRequest(
            named: named, messages: messages, owner: owner, newID: "1000:s-\(UUID().uuidString.prefix(8))")
        defer { engine.requestEnded(session: id) }
        let r = try engine.runTurn(session: id, owner: owner, messages: messages, options: greedy)
        return (id, r)
    }

    /// What full recomputation of a turn gives: the first token's logits and the greedy reply,
    /// from the prompt ids the engine built for it (the engine's own ids for its earlier replies).
    private func reference(_ model: LlamaModel, _ engine: ChatEngine, _ session: String, _ r: TurnReport) throws -> (
        [Int32], [Float]
    ) {
        let prompt = Array(try XCTUnwrap(engine.stateForTesting(session)).tokens.prefix(r.promptTokens))
        let t = model.makeTransformer(threads: 2)
        let cache = InMemoryKVCache(layout: model.kvLayout, capacity: prompt.count + 8, precision: .f32)
        var logits: [Float] = []
        try t.forward(tokens: prompt, positions: (0..<prompt.count).map { Int32($0) }, cache: cache, logits: .last) {
            _, l in logits = Array(l)
        }
        let first = logits
        var reply: [Int32] = []
        while reply.count < r.generated.count {
            let next = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
            reply.append(next)
            try t.forward(
                tokens: [next], positions: [Int32(prompt.count + reply.count - 1)], cache: cache, logits: .last
            ) { _, l in logits = Array(l) }
        }
        return (reply, first)
    }

    private func maxDiff(_ a: [Float], _ b: [Float]) -> Float {
        XCTAssertEqual(a.count, b.count)
        return zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
    }

    /// Three chats without session ids, interleaved turn by turn, each sending back the
    /// server's replies: every chat keeps its own session, turns 2 and 3 reuse the chat's whole
    /// history, turn 1 of the later chats reuses the shared system prompt from the first one's
    /// blocks (stored once), and every reply equals the one computed with nothing reused.
    func testInterleavedChatsWithoutSessionIDsEachKeepTheirWholeHistory() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, dir: tempDir())
        let questions = ["how do I restart the daemon", "where are the logs kept", "what does the flush command do"]
        var chats = questions.map { [system, ChatMessage(role: "user", content: $0)] }
        var ids: [String?] = [nil, nil, nil]
        var firstReports: [TurnReport] = []
        var lastHistory = [0, 0, 0]
        for turn in 0..<3 {
            for c in 0..<3 {
                let (id, r) = try request(engine, chats[c])
                if let known = ids[c] {
                    XCTAssertEqual(id, known, "chat \(c), turn \(turn + 1): continues its own session")
                    XCTAssertEqual(r.tokensReused, lastHistory[c], "chat \(c), turn \(turn + 1): its whole history")
                } else {
                    ids[c] = id
                    firstReports.append(r)
                }
                XCTAssertEqual(
                    r.generated, try reference(model, engine, id, r).0,
                    "chat \(c), turn \(turn + 1): the reply recomputation gives")
                lastHistory[c] = r.promptTokens + r.generated.count - 1
                chats[c] += [
                    ChatMessage(role: "assistant", content: r.text),
                    ChatMessage(role: "user", content: "and then, step \(turn + 2)?"),
                ]
            }
        }
        XCTAssertEqual(Set(ids.compactMap { $0 }).count, 3, "three chats, three sessions")
        // The later chats' first turns loaded the system prompt's blocks computed by the first.
        XCTAssertEqual(firstReports[0].tokensReused, 0)
        for c in 1..<3 {
            XCTAssertGreaterThanOrEqual(firstReports[c].tokensReused, 32, "chat \(c) reused the shared prefix")
        }
        // Stored once: the system message's blocks (which end where it ends) of chats 1 and 2
        // are chat 0's, the rest their own.
        for c in 0..<3 {
            let state = try XCTUnwrap(engine.stateForTesting(ids[c]!))
            let end =
                try XCTUnwrap(model.tokenizer.tokenID("<|im_end|>").flatMap { state.tokens.firstIndex(of: $0) }) + 2
            let system = state.blocks.filter { $0.end <= end }
            XCTAssertGreaterThanOrEqual(system.count, 2, "chat \(c)")
            XCTAssertEqual(system.last?.end, end, "chat \(c): a block ends with the system message")
            XCTAssertEqual(Set(system.map(\.home)), [ids[0]!], "chat \(c): the system message is chat 0's blocks")
            XCTAssertTrue(state.blocks.filter { $0.end > end }.allSatisfy { $0.home == ids[c]! }, "chat \(c)")
        }
        XCTAssertEqual(engine.storeNamespaces(of: ids[1]!), [ids[1]!, ids[0]!])
    }

    /// A request without a session id never modifies a named session: neither one that is a
    /// prefix of its history nor one that extends it whole. The named chat then goes on reusing
    /// its whole history.
    func testARequestWithoutSessionIDNeverModifiesANamedSession() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, dir: tempDir())
        let first = [system, ChatMessage(role: "user", content: "tell me about the tiers")]
        let (named, r1) = try request(engine, named: "1000:work", first)
        XCTAssertEqual(named, "1000:work")
        let before = try XCTUnwrap(engine.stateForTesting(named))

        // Without an id: a whole continuation of the named chat, then its first message alone.
        let next =
            first + [
                ChatMessage(role: "assistant", content: r1.text),
                ChatMessage(role: "user", content: "and the disk tier?"),
            ]
        let (b, rb) = try request(engine, next)
        let (a, ra) = try request(engine, first)
        XCTAssertNotEqual(a, named)
        XCTAssertNotEqual(b, named)
        XCTAssertNotEqual(a, b, "the continuation does not overwrite the other anonymous chat either")
        XCTAssertGreaterThan(ra.tokensReused, 0, "the anonymous chat reused the named chat's prefix")
        XCTAssertEqual(rb.tokensReused, rb.promptTokens - rb.tokensRecomputed)
        XCTAssertEqual(rb.tokensReused, r1.promptTokens + r1.generated.count - 1, "the whole named history, shared")
        let after = try XCTUnwrap(engine.stateForTesting(named))
        XCTAssertEqual(after.tokens, before.tokens)
        XCTAssertEqual(after.blocks, before.blocks)

        let (again, r2) = try request(engine, named: "1000:work", next)
        XCTAssertEqual(again, named)
        // Its whole history, and the blocks of the new message the anonymous continuation stored.
        XCTAssertGreaterThan(r2.tokensReused, r1.promptTokens + r1.generated.count - 1)
        XCTAssertLessThan(r2.tokensReused, rb.promptTokens, "up to the last whole block of the prompt")
        XCTAssertEqual(r2.generated, try reference(model, engine, named, r2).0)
    }

    /// Anonymous chats idle past the limit are forgotten with the KV only they read; named
    /// sessions, recent chats and a chat a request is about to continue stay, and so do the
    /// blocks a remaining session shares with an expired one.
    func testIdleAnonymousSessionsExpireAndTheBlocksOthersReadStay() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, dir: tempDir())
        let (a, ra) = try request(engine, [system, ChatMessage(role: "user", content: "what is a tier?")])
        let (named, rn) = try request(engine, named: "1000:work", [system, ChatMessage(role: "user", content: "why?")])
        XCTAssertGreaterThan(rn.tokensReused, 0, "the named chat shares the system prompt's blocks of chat a")
        let c1 = [system, ChatMessage(role: "user", content: "and the disk?")]
        let (c, rc) = try request(engine, c1)
        engine.quiesce()
        let shared = try XCTUnwrap(engine.stateForTesting(named)?.blocks.filter { $0.home == a })
        XCTAssertFalse(shared.isEmpty)
        let onlyA = try XCTUnwrap(engine.stateForTesting(a)?.blocks.filter { b in !shared.contains(b) })
        XCTAssertFalse(onlyA.isEmpty)

        XCTAssertEqual(engine.expireIdleAnonymousSessions(idleSeconds: 3600), [], "nothing is idle yet")
        // A request continuing chat c holds it while it is about to run.
        let next = c1 + [ChatMessage(role: "assistant", content: rc.text), ChatMessage(role: "user", content: "ok")]
        let claimed = engine.sessionForRequest(named: nil, messages: next, owner: "1000", newID: "1000:s-new")
        XCTAssertEqual(claimed, c)
        let later = Date().addingTimeInterval(120)
        XCTAssertEqual(engine.expireIdleAnonymousSessions(idleSeconds: 60, now: later), [a])
        engine.requestEnded(session: claimed)
        XCTAssertEqual(engine.expireIdleAnonymousSessions(idleSeconds: 60, now: later), [c])
        engine.quiesce()

        XCTAssertEqual(engine.sessionIDs, [named])
        for b in onlyA { XCTAssertTrue(engine.store.tiers(of: engine.key(0, b)).isEmpty, "chat a's own KV is gone") }
        for b in shared { XCTAssertFalse(engine.store.tiers(of: engine.key(0, b)).isEmpty, "the shared KV stays") }
        // The named chat goes on reusing its whole history, shared part included.
        let (_, r2) = try request(
            engine, named: "1000:work",
            [
                system, ChatMessage(role: "user", content: "why?"), ChatMessage(role: "assistant", content: rn.text),
                ChatMessage(role: "user", content: "go on"),
            ])
        XCTAssertEqual(r2.tokensReused, rn.promptTokens + rn.generated.count - 1)
        XCTAssertEqual(r2.blocksRecovered, 0)
        _ = ra
    }

    /// Two chats that share a prefix, on an arena that holds one of them: each turn evicts the
    /// other chat's pages it does not read, the shared ones included, and reuses its whole
    /// history from DRAM. (Loads once spared every page of the namespaces they read from: with
    /// the shared prefix in the other chat's namespace, nothing could be evicted, the load found
    /// no page and the chat recomputed most of its history.)
    func testChatsSharingAPrefixTakeTurnsOnAnArenaThatHoldsOne() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let page = 2 * 16 * model.kvLayout.rowWidth * 4  // a 16-token block of F32 keys and values
        let reply = Array(
            model.tokenizer.encode("a recorded reply with a few more words than that", addSpecial: false).prefix(12))
        /// Each chat's reports, turn after turn, the two chats taking turns.
        func run(hbmBytes: Int) throws -> (reports: [[TurnReport]], dramHits: Int) {
            let engine = try makeEngine(model, dir: tempDir(), hbmBytes: hbmBytes)
            var chats: [[ChatMessage]] = [[system], [system]]
            var reports: [[TurnReport]] = [[], []]
            for q in ["a first question about tiers", "a second question", "a third one, the last"] {
                for k in 0..<2 {
                    chats[k].append(ChatMessage(role: "user", content: (k == 1 ? "in another chat, " : "") + q))
                    var options = GenerationOptions(maxTokens: 12)
                    options.forcedReply = reply
                    let id = engine.sessionForRequest(
                        named: "1000:c\(k)", messages: chats[k], owner: "1000", newID: "unused")
                    defer { engine.requestEnded(session: id) }
                    let r = try engine.runTurn(session: id, owner: "1000", messages: chats[k], options: options)
                    reports[k].append(r)
                    chats[k].append(ChatMessage(role: "assistant", content: r.text))
                }
            }
            return (reports, engine.store.stats.tiers.first { $0.tier == "dram" }?.hits ?? 0)
        }
        let ample = try run(hbmBytes: 16 << 20)
        // One chat (up to 24 blocks) and what its turn holds besides (the partial block it
        // extends, read while its extension is written in place), not two chats.
        let tight = try run(hbmBytes: 26 * model.kvLayout.layers * page)
        XCTAssertEqual(ample.dramHits, 0)
        XCTAssertGreaterThan(tight.dramHits, 0, "the small arena evicted KV that later turns reused from DRAM")
        for k in 0..<2 {
            XCTAssertEqual(tight.reports[k].map(\.tokensReused), ample.reports[k].map(\.tokensReused), "chat \(k)")
            XCTAssertEqual(tight.reports[k].map(\.blocksRecovered), [0, 0, 0], "chat \(k)")
        }
        XCTAssertGreaterThan(ample.reports[1][0].tokensReused, 0, "chat 1 shares chat 0's system prompt blocks")
    }

    /// A shared block is immutable: when the chat that wrote it rewrites that range (its history
    /// was edited), the rewrite goes under another key, and the fork still reads what it shared.
    /// Its next turn's logits equal recomputation's (F32 KV, within the 1e-4 the engine tests allow).
    func testAForkKeepsItsPrefixWhenTheSourceRewritesIt() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, dir: tempDir())
        let words = (0..<60).map { "w\($0)" }.joined(separator: " ")
        let source = [ChatMessage(role: "user", content: words + " end")]
        _ = try request(engine, named: "1000:src", source)
        // The fork shares the first 50 words; the source's edit keeps only the first 40.
        let forked = [ChatMessage(role: "user", content: (0..<50).map { "w\($0)" }.joined(separator: " ") + " fork")]
        let (fork, rf) = try request(engine, named: "1000:fork", forked)
        XCTAssertGreaterThan(rf.tokensReused, 48)
        let shared = try XCTUnwrap(engine.stateForTesting(fork)?.blocks.filter { $0.home == "1000:src" })
        XCTAssertFalse(shared.isEmpty)

        let edited = [
            ChatMessage(
                role: "user",
                content: (0..<40).map { "w\($0)" }.joined(separator: " ") + " x" + String(repeating: " y", count: 19)
                    + " end")
        ]
        _ = try request(engine, named: "1000:src", edited)
        engine.quiesce()
        let srcBlocks = try XCTUnwrap(engine.stateForTesting("1000:src")?.blocks)
        XCTAssertTrue(srcBlocks.contains { $0.home != "1000:src" }, "a rewritten range went under an alternate key")
        for b in shared {
            XCTAssertFalse(engine.store.tiers(of: engine.key(0, b)).isEmpty, "the shared block is still stored")
        }

        var seen: [Float]?
        engine.logitsObserver = { _, l in if seen == nil { seen = l } }
        let next =
            forked + [ChatMessage(role: "assistant", content: rf.text), ChatMessage(role: "user", content: "go on")]
        let (same, r2) = try request(engine, named: "1000:fork", next)
        engine.logitsObserver = nil
        XCTAssertEqual(same, fork)
        XCTAssertEqual(r2.blocksRecovered, 0)
        XCTAssertEqual(r2.tokensReused, rf.promptTokens + rf.generated.count - 1)
        let (reply, logits) = try reference(model, engine, same, r2)
        XCTAssertEqual(r2.generated, reply)
        XCTAssertLessThan(maxDiff(try XCTUnwrap(seen), logits), 1e-4, "reused KV gives what recomputation gives")
    }

    /// A block goes with its last reference: deleting the chat that wrote it keeps it for the
    /// fork (also across a restart); deleting the fork then leaves nothing stored.
    func testSharedBlocksGoWithTheirLastReferenceAcrossARestart() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let dir = tempDir()
        let first = [system, ChatMessage(role: "user", content: "what is a tier")]
        var next: [ChatMessage] = []
        var forkID = ""
        var expected = 0
        do {
            let engine = try makeEngine(model, dir: dir)
            _ = try request(engine, named: "1000:a", first)
            let (fork, rf) = try request(engine, [system, ChatMessage(role: "user", content: "what is a page")])
            XCTAssertGreaterThan(rf.tokensReused, 0)
            forkID = fork
            // What the scheduler tells the store the fork reads outside its namespace.
            let borrowed = engine.borrowedBlocks(of: [fork, "1000:a"])
            XCTAssertEqual(Array(borrowed.keys), [fork])
            XCTAssertEqual(
                borrowed[fork],
                engine.stateForTesting(fork)?.blocks.filter { $0.home == "1000:a" }.map {
                    BlockSpan(session: $0.home, start: $0.start, count: $0.count)
                })
            XCTAssertFalse(borrowed[fork]?.isEmpty ?? true)
            next =
                [system, ChatMessage(role: "user", content: "what is a page")] + [
                    ChatMessage(role: "assistant", content: rf.text),
                    ChatMessage(role: "user", content: "and a block?"),
                ]
            expected = rf.promptTokens + rf.generated.count - 1
            engine.quiesce()
            try engine.store.close()
        }
        let engine = try makeEngine(model, dir: dir)
        XCTAssertEqual(Set(engine.sessionIDs), ["1000:a", forkID])
        try engine.deleteSession("1000:a")
        engine.quiesce()
        XCTAssertFalse(
            try XCTUnwrap(engine.stateForTesting(forkID)?.blocks.filter { $0.home == "1000:a" }).isEmpty,
            "the fork still references the deleted chat's blocks")
        let (same, r2) = try request(engine, next)
        XCTAssertEqual(same, forkID)
        XCTAssertEqual(r2.blocksRecovered, 0, "nothing the fork references was deleted with its source")
        XCTAssertEqual(r2.tokensReused, expected)
        XCTAssertEqual(r2.generated, try reference(model, engine, same, r2).0)

        try engine.deleteSession(forkID)
        engine.quiesce()
        XCTAssertEqual(engine.store.sessions, [], "no block outlives its last reference")
    }

    /// A fork pins only the blocks it reads: with HBM too small for all of the source's blocks
    /// plus the fork's own, the source's other blocks are evicted and every block the fork
    /// computes is stored (pinning the source's whole namespace made them fail admission).
    func testAForkPinsOnlyTheBlocksItReads() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let page = 2 * 16 * model.kvLayout.rowWidth * 4
        // Room for 30 blocks per layer: the source's 27 (11 of them the system prompt), then the
        // shared 11 and the fork's own 11.
        let engine = try makeEngine(model, dir: tempDir(), hbmBytes: 30 * model.kvLayout.layers * page)
        let long = (0..<80).map { "w\($0)" }.joined(separator: " ")
        _ = try request(engine, named: "1000:src", [system, ChatMessage(role: "user", content: long)])
        let other = (0..<40).map { "v\($0)" }.joined(separator: " ")
        let (fork, rf) = try request(engine, named: "1000:fork", [system, ChatMessage(role: "user", content: other)])
        engine.quiesce()
        XCTAssertGreaterThan(rf.tokensReused, 0, "the fork read the shared system prompt")
        let state = try XCTUnwrap(engine.stateForTesting(fork))
        XCTAssertTrue(state.blocks.contains { $0.home == "1000:src" })
        XCTAssertEqual(
            state.blocks.reduce(0) { $0 + $1.count }, state.kvCount, "every block the fork computed was stored")
    }

    /// The blocks of `state` inside its system message (which ends a block).
    private func systemBlocks(_ model: LlamaModel, _ state: SessionState) throws -> [SessionState.BlockRange] {
        let end = try XCTUnwrap(model.tokenizer.tokenID("<|im_end|>").flatMap { state.tokens.firstIndex(of: $0) }) + 2
        return state.blocks.filter { $0.end <= end }
    }

    /// Chats that arrive together, before any of them has computed their shared system prompt
    /// (none can be forked from another), compute it once: the first to run stores it, and each
    /// later one adopts its blocks at its turn's start, also after a restart. A chat of another
    /// owner sending the same tokens adopts nothing.
    func testChatsThatArriveTogetherComputeTheirSharedPromptOnce() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let dir = tempDir()
        let chats = ["what is a tier", "what is a page", "what is a block"].map {
            [system, ChatMessage(role: "user", content: $0)]
        }
        var ids: [String] = []
        var engine = try makeEngine(model, dir: dir)
        for (k, chat) in chats.enumerated() {
            ids.append(engine.sessionForRequest(named: nil, messages: chat, owner: "1000", newID: "1000:s-\(k)"))
        }
        XCTAssertEqual(Set(ids).count, 3, "three new chats, none forked")
        let r0 = try engine.runTurn(session: ids[0], owner: "1000", messages: chats[0], options: greedy)
        engine.requestEnded(session: ids[0])
        XCTAssertEqual(r0.tokensReused, 0)
        let shared = try systemBlocks(model, try XCTUnwrap(engine.stateForTesting(ids[0])))
        XCTAssertGreaterThanOrEqual(shared.count, 2)
        let r1 = try engine.runTurn(session: ids[1], owner: "1000", messages: chats[1], options: greedy)
        engine.requestEnded(session: ids[1])
        engine.quiesce()
        try engine.store.close()

        engine = try makeEngine(model, dir: dir)
        let r2 = try engine.runTurn(session: ids[2], owner: "1000", messages: chats[2], options: greedy)
        for (k, r) in [(1, r1), (2, r2)] {
            XCTAssertGreaterThanOrEqual(r.tokensReused, shared.last?.end ?? 0, "chat \(k) adopted the system prompt")
            XCTAssertEqual(r.tokensAdopted, r.tokensReused, "chat \(k): all it reused, it adopted")
            XCTAssertEqual(r.blocksRecovered, 0, "chat \(k)")
            XCTAssertEqual(
                try systemBlocks(model, try XCTUnwrap(engine.stateForTesting(ids[k]))), shared,
                "chat \(k) references chat 0's blocks")
            XCTAssertEqual(r.generated, try reference(model, engine, ids[k], r).0, "chat \(k): as recomputation gives")
        }
        let other = try engine.runTurn(session: "1001:s-0", owner: "1001", messages: chats[0], options: greedy)
        XCTAssertEqual(other.tokensReused, 0, "another owner's chat adopts nothing")
        XCTAssertEqual(other.tokensAdopted, 0)
        XCTAssertEqual(r0.tokensAdopted, 0)
    }

    /// Chats that compute the same system prompt in one batch keep one copy of it: the first
    /// whose turn ends stores its blocks, the second exchanges its own for them when its turn
    /// ends and its copy is removed. Its next turn reuses its whole history from the shared
    /// blocks and replies as recomputation does.
    func testChatsComputingTheSamePromptTogetherKeepOneCopy() throws {
        let model = try LlamaModel(path: TinyModel(context: 512).write())
        let engine = try makeEngine(model, dir: tempDir())
        let chats = ["what is a tier", "what is a page"].map { [system, ChatMessage(role: "user", content: $0)] }
        // Chat 0 waits at its first token until chat 1 has computed its prompt: both compute the
        // system prompt (neither has kept its state yet).
        let secondComputed = DispatchSemaphore(value: 0)
        let waited = NSLock()
        nonisolated(unsafe) var seenFirst: Set<String> = []
        engine.logitsObserver = { id, _ in
            let first = waited.withLock { seenFirst.insert(id).inserted }
            guard first else { return }
            if id == "1000:a" {
                XCTAssertEqual(secondComputed.wait(timeout: .now() + 30), .success, "chat 1 computed its prompt")
            } else {
                secondComputed.signal()
            }
        }
        nonisolated(unsafe) var reports: [String: TurnReport] = [:]
        let lock = NSLock()
        let greedy = self.greedy
        DispatchQueue.concurrentPerform(iterations: 2) { k in
            let id = k == 0 ? "1000:a" : "1000:b"
            let r = try? engine.runTurn(session: id, owner: "1000", messages: chats[k], options: greedy)
            lock.withLock { reports[id] = r }
        }
        engine.logitsObserver = nil
        engine.quiesce()
        let ra = try XCTUnwrap(reports["1000:a"])
        let rb = try XCTUnwrap(reports["1000:b"])
        XCTAssertEqual(ra.tokensReused, 0)
        XCTAssertEqual(rb.tokensReused, 0, "both computed the system prompt")
        let a = try systemBlocks(model, try XCTUnwrap(engine.stateForTesting("1000:a")))
        let b = try systemBlocks(model, try XCTUnwrap(engine.stateForTesting("1000:b")))
        XCTAssertGreaterThanOrEqual(a.count, 2)
        XCTAssertEqual(a, b, "one copy, referenced by both")
        XCTAssertEqual(ra.blocksShared + rb.blocksShared, a.count, "the second to end gave its copy up")
        XCTAssertEqual(ra.tokensAdopted + rb.tokensAdopted, 0)
        let kept = try XCTUnwrap(a.first?.home)
        let gaveUp = kept == "1000:a" ? "1000:b" : "1000:a"
        for blk in a {
            let copy = SessionState.BlockRange(home: gaveUp, start: blk.start, count: blk.count)
            XCTAssertTrue(engine.store.tiers(of: engine.key(0, copy)).isEmpty, "the second copy was removed")
        }
        let (chat, r1) = gaveUp == "1000:a" ? (chats[0], ra) : (chats[1], rb)
        let next = chat + [ChatMessage(role: "assistant", content: r1.text), ChatMessage(role: "user", content: "why")]
        let r2 = try engine.runTurn(session: gaveUp, owner: "1000", messages: next, options: greedy)
        XCTAssertEqual(r2.blocksRecovered, 0)
        XCTAssertEqual(r2.tokensReused, r1.promptTokens + r1.generated.count - 1, "its whole history")
        XCTAssertEqual(r2.generated, try reference(model, engine, gaveUp, r2).0)
    }
}
