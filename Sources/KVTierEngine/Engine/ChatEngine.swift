import Dispatch
import Foundation
import KVTierModel
import KVTierStore
import KVTierTokenizer

/// Multi-turn chat on top of the decoder and the tiered store (CachedAttention's engine):
/// each turn reuses the KV of the longest cached prefix of its history, loads it layer by
/// layer while computing, saves new KV layer by layer, truncates position-decoupled when the
/// window overflows, and reports what it did.
///
/// Threads: turns of different sessions run at once, each on its caller's thread (the
/// scheduler's turn threads); their forward passes meet in `executor`, which runs them together
/// as one batched step after another (continuous batching). Two turns of one session never
/// overlap: `runTurn` and `deleteSession` hold the session in `gate`. `sessions`,
/// `prefixIndex`, `references` and `claimed` are guarded by `stateLock`; `freeing` has its own
/// lock (taken inside `stateLock`, never the other way round). Blocks no
/// session references any more are removed on the `cleanup` queue, off the turn's critical path.
///
/// Prefix cache: blocks are immutable and shared by reference. A session forked from another
/// (a request without a session id that does not extend a whole anonymous chat, or a new named
/// session) references the other's blocks for their common prefix, so a shared prefix is
/// stored once and reused by every chat of that owner. A block's key is never written while a
/// session references it (a turn that must rewrite such a range writes it under an alternate
/// namespace of its session, `id~turn`), and a block is removed only when its last reference
/// goes.
public final class ChatEngine: @unchecked Sendable {
    public let model: LlamaModel
    public let store: TieredStore
    public let configuration: EngineConfiguration
    public let contextWindow: Int
    /// Runs every turn's forward passes, batched (owns the transformer).
    public let executor: BatchExecutor
    /// Which kernel the linear layers use from how many rows, and the measurements behind it.
    public let kernelChoice: String
    let conversation: ConversationTokenizer
    private let gate = SessionGate()
    /// Running turns that may swap out of HBM for one another.
    let swapper = SwapCoordinator()
    let stateLock = NSLock()
    var sessions: [String: SessionState] = [:]
    /// Hash-chain link -> sessions whose cached tokens contain that prefix (guarded by `stateLock`).
    var prefixIndex: [UInt64: Set<String>] = [:]
    /// How many sessions reference each stored block (guarded by `stateLock`).
    var references: [SessionState.BlockRange: Int] = [:]
    /// Which stored block holds the KV of which tokens, whoever computed it (guarded by `stateLock`).
    var contentIndex = BlockContentIndex()
    /// Blocks whose last reference went, until `cleanup` has removed them: not written meanwhile.
    private let freeing = FreeingBlocks()
    /// Anonymous sessions a request without a session id is about to continue (guarded by `stateLock`).
    var claimed: Set<String> = []
    private let cleanup = DispatchQueue(label: "kvtier.engine.cleanup")
    /// When the engine started (seconds since 1970): the last use of sessions whose records have none.
    private let startedAt = Date().timeIntervalSince1970
    private var blockTokens: Int { store.configuration.blockTokens }
    // `conversation`, `stateLock`, `sessions`, `prefixIndex`, `references`, `contentIndex`,
    // `claimed`, `release`, `removeLater`, `persist` and `persistRecord` are internal for
    // ChatEngine's own extension files (+PrefixCache, +SharedBlocks, +RemoteRecords); nothing
    // else in the module touches them.
    /// Tests: sees every logits vector a token is sampled from, with its session (called on the
    /// turn's thread; set it before turns run).
    var logitsObserver: ((String, [Float]) -> Void)?

    public init(model: LlamaModel, store: TieredStore, configuration: EngineConfiguration = EngineConfiguration()) {
        self.model = model
        self.store = store
        self.configuration = configuration
        self.contextWindow = min(configuration.contextWindow ?? model.config.contextLength, model.config.contextLength)
        let transformer = model.makeTransformer(threads: configuration.threads)
        transformer.activationBits = configuration.activationBits
        var calibration = "linear layers: sgemm from \(configuration.linearGemmThreshold ?? 0) rows (configured)"
        transformer.linearGemmThreshold =
            configuration.linearGemmThreshold ?? transformer.calibrateLinearGemmThreshold { calibration = $0 }
        self.kernelChoice = calibration
        self.executor = BatchExecutor(transformer: transformer, prefillChunkTokens: configuration.prefillChunkTokens)
        self.conversation = ConversationTokenizer(model: model)
        // Sessions saved before a restart.
        for name in store.metadataNames(prefix: "session/").sorted() {
            if let bytes = store.metadata(name: name),
                let s = try? JSONDecoder().decode(SessionState.self, from: Data(bytes))
            {
                sessions[s.id] = s
                index(s)
                indexContent(s)
                for b in s.blocks { references[b, default: 0] += 1 }
            }
        }
        // With a remote tier, blocks this node no longer has (or never had) may be in the cluster.
        if store.remote != nil {
            store.adoptRemote(sessions.values.flatMap { keys(of: $0.blocks) })
        }
    }

    deinit {
        executor.stop()
        cleanup.sync {}  // no removal outlives the engine (nor releases the store on `cleanup`)
    }

    /// Sessions the engine knows.
    public var sessionIDs: [String] { stateLock.withLock { sessions.keys.sorted() } }

    /// Token history length and live KV of a session, for inspection.
    public func sessionSummary(_ id: String) -> (tokens: Int, kv: Int, dropped: Int)? {
        stateLock.withLock { sessions[id].map { ($0.tokens.count, $0.kvCount, max(0, $0.dropEnd - $0.sinks)) } }
    }

    /// Bytes of the session's live KV over all layers as the store keeps it (0 for an unknown session).
    public func sessionKVBytes(_ id: String) -> Int {
        let tokens = stateLock.withLock { sessions[id]?.kvCount ?? 0 }
        return tokens * 2 * model.kvLayout.layers * model.kvLayout.rowWidth * store.elementType.byteWidth
    }

    /// The conversation session `id` holds, decoded from its token history (empty for an
    /// unknown session): what a client resends to continue it.
    public func sessionMessages(_ id: String) -> [ChatMessage] {
        guard let tokens = stateLock.withLock({ sessions[id]?.tokens }) else { return [] }
        return conversation.messages(from: tokens)
    }

    /// Who created session `id` (nil: made in-process, or unknown session).
    public func sessionOwner(_ id: String) -> String? { stateLock.withLock { sessions[id]?.owner } }

    func stateForTesting(_ id: String) -> SessionState? { stateLock.withLock { sessions[id] } }

    /// Forgets a session and its KV everywhere.
    public func deleteSession(_ id: String) throws {
        _ = try gate.withSession(id) { try deleteSessionHeld(id) }
    }

    /// Forgets the anonymous sessions (made for requests without a session id) whose last turn
    /// ended more than `idleSeconds` before `now`, with the KV no other session reads; returns
    /// their ids. A session a request is about to continue, or whose turn is running, is kept.
    /// Sessions from records without a last use count from the engine's start.
    public func expireIdleAnonymousSessions(idleSeconds: Double, now: Date = Date()) -> [String] {
        let cutoff = now.timeIntervalSince1970 - idleSeconds
        let idle: (SessionState) -> Bool = { [startedAt] s in s.anonymous && (s.lastUsed ?? startedAt) < cutoff }
        let candidates = stateLock.withLock {
            sessions.values.filter { idle($0) && !claimed.contains($0.id) }.map(\.id).sorted()
        }
        var expired: [String] = []
        for id in candidates {
            // Checked again under the lock the deletion takes: a request may have claimed it since.
            let gone = try? gate.withSessionIfFree(id) {
                try deleteSessionHeld(id) { s in idle(s) && !claimed.contains(id) }
            }
            if gone == true { expired.append(id) }
        }
        return expired
    }

    /// Deletes session `id` when `condition` holds for it (checked under `stateLock`); returns
    /// whether it did. The caller holds the session in `gate`.
    @discardableResult
    private func deleteSessionHeld(_ id: String, if condition: (SessionState) -> Bool = { _ in true }) throws -> Bool {
        cleanup.sync {}
        let (found, released, keep) = stateLock.withLock {
            () -> (Bool, [SessionState.BlockRange], Set<SessionState.BlockRange>) in
            guard let state = sessions[id], condition(state) else { return (false, [], []) }
            let old = sessions.removeValue(forKey: id) ?? state
            unindex(old)
            claimed.remove(id)
            return (true, release(old.blocks), Set(references.keys.filter { isOwnNamespace($0.home, of: id) }))
        }
        guard found else { return false }
        try store.deleteMetadata(name: "session/" + id)
        // The session's own namespaces go whole (with any block a failed turn left behind),
        // except the blocks other sessions still reference.
        for ns in store.sessions where isOwnNamespace(ns, of: id) {
            if keep.contains(where: { $0.home == ns }) {
                for k in store.blockKeys(session: ns).values.joined()
                where !keep.contains(.init(home: ns, start: k.start, count: k.count)) {
                    try store.remove(k)
                }
            } else {
                try store.delete(session: ns)
            }
        }
        removeNow(released.filter { !isOwnNamespace($0.home, of: id) })
        return true
    }

    /// Whether store namespace `ns` is session `id`'s own (its id, or an alternate `id~n`).
    private func isOwnNamespace(_ ns: String, of id: String) -> Bool {
        ns == id || (ns.hasPrefix(id + "~") && ns.dropFirst(id.count + 1).allSatisfy(\.isNumber))
    }

    /// Drops one reference to each of `blocks`; returns those nobody references any more, now
    /// marked `freeing` (caller holds `stateLock`).
    func release(_ blocks: [SessionState.BlockRange]) -> [SessionState.BlockRange] {
        var gone: [SessionState.BlockRange] = []
        for b in blocks {
            let n = (references[b] ?? 1) - 1
            if n > 0 {
                references[b] = n
            } else {
                references[b] = nil
                contentIndex.remove(b)
                freeing.insert(b)
                gone.append(b)
            }
        }
        return gone
    }

    /// Removes blocks nobody references from every tier, on `cleanup`.
    func removeLater(_ blocks: [SessionState.BlockRange]) {
        guard !blocks.isEmpty else { return }
        let keys = blocks.flatMap { b in (0..<model.kvLayout.layers).map { key($0, b) } }
        // The closure holds the store and `freeing`, not the engine, so the engine is never
        // released on `cleanup` (its deinit waits for `cleanup`).
        cleanup.async { [store, freeing] in
            for k in keys { try? store.remove(k) }
            freeing.subtract(blocks)
        }
    }

    private func removeNow(_ blocks: [SessionState.BlockRange]) {
        removeLater(blocks)
        cleanup.sync {}
    }

    // MARK: A turn

    /// Runs one turn: `messages` is the whole chat so far, ending with the new user message
    /// (as an OpenAI client sends it). Returns the reply and the turn's report.
    /// `owner` is recorded when the turn creates the session (see `matchSession`).
    /// `chat`: `messages` as `tokenize` gives them, when the caller has them (else they are
    /// tokenized here).
    public func runTurn(
        session id: String, owner: String? = nil, messages: [ChatMessage], chat: TokenizedConversation? = nil,
        options: GenerationOptions, placement: Placement = .keepInDRAM, onText: (String) -> Void = { _ in }
    ) throws -> TurnReport {
        // The turn's clock starts here: a wait for another turn of this session counts in TTFT.
        let received = DispatchTime.now().uptimeNanoseconds
        let chat = chat ?? conversation.tokenize(messages)
        return try gate.withSession(id) {
            try runTurnHeld(
                session: id, owner: owner, messages: messages, chat: chat, options: options, placement: placement,
                received: received, onText: onText)
        }
    }

    /// `messages` tokenized message by message, once per request: the prefix cache and the turn
    /// put each session's view of it together without tokenizing again.
    public func tokenize(_ messages: [ChatMessage]) -> TokenizedConversation { conversation.tokenize(messages) }

    private func runTurnHeld(
        session id: String, owner: String?, messages: [ChatMessage], chat: TokenizedConversation,
        options: GenerationOptions, placement: Placement, received: UInt64, onText: (String) -> Void
    ) throws -> TurnReport {
        try options.sampling.validate()
        guard options.maxTokens >= 1 else {
            throw DecoderError.badInput("max_tokens must be at least 1, got \(options.maxTokens)")
        }
        adoptFromRemote(id)  // a chat another node served (no-op without a remote tier)
        refreshFromRemote(id)  // a chat this node served before and another node since
        // Earlier saves to the namespaces this turn reads or writes finish first, so no block key
        // is written twice at once; other sessions' saves go on. Removals of blocks nobody
        // references go on too: this turn never writes a key still being removed (`writeGuard`
        // sends such a range to an alternate namespace) and reads only referenced blocks. The
        // wait counts in TTFT and is reported on its own (`saveWaitMs`).
        let homes = Set((stateLock.withLock { sessions[id] }?.blocks ?? []).map(\.home))
        let mine: (String) -> Bool = { ns in ns == id || ns.hasPrefix(id + "~") || homes.contains(ns) }
        var saveWait = DispatchTime.now().uptimeNanoseconds
        store.waitForSaves(of: mine)
        saveWait = DispatchTime.now().uptimeNanoseconds - saveWait
        let started = received
        var state = stateLock.withLock { sessions[id] } ?? SessionState(id: id, owner: owner)
        state.turns += 1
        state.lastUsed = Date().timeIntervalSince1970
        let prompt = chat.tokens(replies: state.replies)
        var report = TurnReport(session: id)
        report.promptTokens = prompt.count
        let maxNew = min(options.maxTokens, contextWindow / 2)
        guard !prompt.isEmpty else { throw DecoderError.badInput("empty prompt") }

        // Reuse: the longest common prefix with what is stored, inside the live window.
        var reuse = configuration.reuseKV ? commonPrefix(prompt, state.tokens, limit: state.kvCount) : 0
        if reuse >= prompt.count { reuse = prompt.count - 1 }  // recompute the last token for its logits
        if reuse < state.dropEnd && state.dropEnd > state.sinks {
            // The history changed inside the dropped part: nothing cached is usable.
            reuse = 0
        }
        if reuse < state.kvCount {
            // Tokens after the divergence are stale: forget the blocks that start there. A block
            // straddling the divergence still serves its first part and is rewritten after the turn.
            dropBlocks(&state, from: reuse)
            state.kvCount = reuse
            if reuse == 0 {
                state.sinks = 0
                state.dropEnd = 0
            }
        }
        state.tokens = Array(prompt)
        let hasSystem =
            ChatMessage.completionPromptText(messages) == nil
            && (messages.first?.role == "system" || model.template.defaultSystemMessage != nil)
        // Blocks end where the system message does (through its "<|im_end|>\n"), so every chat
        // with the same system prompt shares its blocks whole (a block across the end would hold
        // each chat's own first tokens too).
        let systemEnd =
            hasSystem
            ? model.tokenizer.tokenID("<|im_end|>").flatMap { prompt.firstIndex(of: $0) }.map {
                min($0 + 2, prompt.count)
            }
            : nil

        // What other chats of this owner stored for the same tokens since this session's KV was
        // last kept (chats that arrived together: the first to compute a shared prompt serves the
        // rest). Held until the turn's state is kept. Their saves are not waited for: a kept
        // state's blocks are in HBM already, and leave it only copied down.
        let ownReuse = reuse
        let adopted = adoptStoredBlocks(
            &state, prompt: prompt, reuse: &reuse, systemEnd: systemEnd, blockTokens: blockTokens)
        defer { releaseAdopted(adopted) }
        if reuse >= prompt.count { reuse = prompt.count - 1 }
        report.tokensAdopted = max(0, reuse - ownReuse)

        // Truncation: keep the live window plus the new tokens and the reply within C.
        let truncated = truncateIfNeeded(&state, total: prompt.count, reserve: maxNew, hasSystemMessage: hasSystem)
        report.truncatedTokens = truncated

        // Blocks evicted from every tier (a full disk, an HBM-only store) are recomputed from the
        // start, without a failed load attempt first.
        var failed = missingBlocks(state)
        unaddress(failed)
        report.blocksRecovered = failed.count
        var completed = false
        for _ in 0..<3 {
            let waitStart = DispatchTime.now().uptimeNanoseconds
            store.waitForSaves(of: mine)
            saveWait += DispatchTime.now().uptimeNanoseconds - waitStart
            report.saveWaitMs = Double(saveWait) / 1e6
            let attempt = try runForward(
                state: &state, prompt: prompt, reuse: reuse, failed: failed, systemEnd: systemEnd, options: options,
                maxNew: maxNew, placement: placement, report: &report, started: started, onText: onText)
            if attempt.isEmpty {
                completed = true
                break
            }
            failed += attempt
            unaddress(attempt)
            report.blocksRecovered += attempt.count
        }
        guard completed else {
            persist(state)
            throw EngineError.loadKeepsFailing(session: id, blocks: failed.count)
        }
        report.totalMs = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
        state.lastUsed = Date().timeIntervalSince1970  // idle from the end of its reply
        report.blocksShared = persist(state)
        return report
    }

    /// One attempt at the turn. Returns the blocks that failed to load (the caller retries with
    /// them recomputed), or [] when the turn completed.
    private func runForward(
        state: inout SessionState, prompt: [Int32], reuse: Int, failed: [SessionState.BlockRange], systemEnd: Int?,
        options: GenerationOptions, maxNew: Int, placement: Placement, report: inout TurnReport, started: UInt64,
        onText: (String) -> Void
    ) throws -> [SessionState.BlockRange] {
        let plan = TurnPlan(
            state: state, promptCount: prompt.count, reuse: reuse, failed: failed, systemEnd: systemEnd,
            blockTokens: blockTokens)
        // HBM bounds the batch: when this turn finds no page for the KV it computes, another
        // running turn swaps out to make room (and this one, when another needs room, may).
        // The ticket goes last, once this turn's pages are let go, so a turn it swapped out
        // loads back into them.
        let ticket = swapper.register(session: state.id)
        defer { swapper.unregister(ticket) }
        let saver = LayerSaver(
            store: store, key: { [self] in key($0, $1) }, layers: model.kvLayout.layers, from: plan.saveFrom,
            sinks: state.sinks, dropEnd: state.dropEnd, systemEnd: systemEnd, blockTokens: blockTokens,
            placement: placement, homeFor: writeGuard(for: state))
        let cache = TurnCache(
            store: store, session: state.id, layout: model.kvLayout, capacity: plan.live.count + maxNew + 1)
        // However the attempt ends, no admission of its blocks outlives it (the session's next
        // turn may remove or rewrite the same keys); then the cache's pages go back or are let go.
        defer {
            saver.drain()
            let adopted = saver.adopted
            // Pages the store did not adopt go back to the arena: no partial copy may still read them.
            if cache.holdsPages(besides: adopted) { saver.waitForPartialCopies() }
            cache.finish(adopted: adopted)
            saver.forgetLeftoverPartials()
        }
        if !plan.needed.isEmpty { cache.startLoad(blocks: plan.needed, readAhead: configuration.readAheadLayers) }
        let id = state.id
        let own: (String) -> Bool = { ns in ns == id || ns.hasPrefix(id + "~") }
        cache.onNoPage = { [swapper] in swapper.makeRoom(for: ticket, timeout: 2) }
        let stepper = TurnStepper(
            cache: cache, saver: saver, executor: executor, layers: model.kvLayout.layers,
            layerwiseLoading: configuration.layerwiseLoading,
            layerwiseSave: configuration.asyncSaving && configuration.reuseKV, saves: configuration.reuseKV,
            swapping: .init(
                coordinator: swapper, ticket: ticket, store: store, readAhead: configuration.readAheadLayers,
                ownNamespace: own))
        defer { stepper.close() }
        var logits: [Float] = []
        for seg in plan.segments {
            switch seg {
            case .load(let b, let off, let idx):
                stepper.assignSlots(idx, computed: false)
                do {
                    try cache.appendLoaded(block: b, offset: off, positions: idx.map { state.position(of: $0) })
                } catch {
                    throw DecoderError.cache(error)
                }
            case .compute(let idx):
                stepper.assignSlots(idx, computed: true)
                let lane = try stepper.lane()
                let tokens = idx.map { prompt[$0] }
                let positions = idx.map { state.position(of: $0) }
                var result: [Float] = []
                let outcome = Result { () throws(DecoderError) in
                    try lane.forward(
                        tokens: tokens, positions: positions, cache: cache, logits: .last,
                        isCancelled: options.isCancelled
                    ) {
                        _, l in result = Array(l)
                    }
                }
                switch outcome {
                case .success: logits = result
                case .failure(.cancelled): throw EngineError.cancelledDuringPrompt(session: state.id)
                case .failure(let error): throw error
                }
            }
        }
        if !cache.failedBlocks.isEmpty { return cache.failedBlocks }

        // Generation.
        var reply = ReplyBuilder(tokenizer: model.tokenizer, options: options, prompt: prompt)
        var firstTokenAt = DispatchTime.now().uptimeNanoseconds
        var cancelled = false
        var forced: [Int32] = []
        if let f = options.forcedReply {
            // Teacher forcing: the recorded reply's KV, in one batch after the first token.
            forced = Array(f.prefix(maxNew))
            let indices = Array(prompt.count..<(prompt.count + forced.count))
            stepper.assignSlots(indices, computed: true)
            if !forced.isEmpty {
                try stepper.lane().forward(
                    tokens: forced, positions: indices.map { state.position(of: $0) }, cache: cache, logits: .none
                ) { _, _ in }
            }
        }
        if options.forcedReply == nil {
            var fed = 0  // reply tokens fed so far: the next one is history index prompt.count + fed
            let end = try reply.decode(
                logits: logits, maxNew: maxNew, isCancelled: options.isCancelled, onText: onText,
                observe: { logitsObserver?(state.id, $0) },
                sampled: { if $0 <= 1 { firstTokenAt = DispatchTime.now().uptimeNanoseconds } }
            ) { next in
                let i = prompt.count + fed
                fed += 1
                stepper.assignSlots([i], computed: true)
                var out: [Float] = []
                try stepper.lane().forward(
                    tokens: [next], positions: [state.position(of: i)], cache: cache, logits: .last
                ) { _, l in out = Array(l) }
                return out
            }
            cancelled = end == .cancelled
        }
        reply.finish(onText: onText)
        stepper.close()  // nothing more to compute: the batch's next step goes on without this turn
        let isForced = options.forcedReply != nil
        let history = isForced ? prompt + forced : reply.history
        let generated = isForced ? forced : reply.generated
        let text = isForced ? model.tokenizer.decode(forced) : reply.text
        let stop =
            cancelled ? "cancelled" : reply.endedByModel || reply.endedByStopSequence || isForced ? "stop" : "length"
        // The token that hit max_tokens or completed a stop sequence was sampled but never fed
        // (a forced reply is fed whole). Then save what is left (the partial last block of every layer).
        let fedCount =
            !isForced && (generated.count == maxNew || reply.endedByStopSequence) ? history.count - 1 : history.count
        let t = DispatchTime.now().uptimeNanoseconds
        if configuration.reuseKV {
            stepper.saveRest()
            saver.drain()
            // Ablation: the turn ends only when its KV has been written back.
            if !configuration.asyncSaving { store.waitForSaves() }
        }
        let saveSeconds = stepper.saveSeconds + Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9

        // The reply's own ids serve the next turn when the client sends this text back. Not after
        // a stop sequence or a cancel: the client's text then differs from what the model fed, so
        // the next turn reuses the common prefix and recomputes from where they part.
        let keepReply = !reply.endedByStopSequence && !cancelled && (stop == "stop" || !generated.isEmpty)
        commit(
            &state, saveFrom: plan.saveFrom, saver: saver, history: history, fedCount: fedCount,
            reply: keepReply ? (text, generated) : nil)

        report.tokensReused = plan.live.filter { $0 < prompt.count }.count - plan.computedCount
        report.tokensRecomputed = plan.computedCount
        report.tokensGenerated = generated.count
        report.recordLoad(cache)
        report.saveLagMs = saveSeconds * 1000
        (report.blocksSavedInPlace, report.blocksSavedByCopy) = saver.savedCounts
        report.rowsSavedAtEnd = saver.rowsSavedAtEnd
        report.swappedOut = stepper.swaps
        report.ttftMs = Double(firstTokenAt - started) / 1e6
        report.text = text
        report.generated = generated
        report.stopReason = stop
        if options.logprobs != nil && !isForced { report.logprobs = reply.logprobs }
        return []
    }

    /// The commit step of a completed attempt: the session's blocks from `saveFrom` on become
    /// those the saver wrote (blocks that failed to save in some layer are removed from the store),
    /// its history `history`, of which the first `fedCount` tokens have KV, and `reply`'s ids are
    /// kept under its text. The blocks it no longer references go when it is kept (`persist`).
    private func commit(
        _ state: inout SessionState, saveFrom: Int, saver: LayerSaver, history: [Int32], fedCount: Int,
        reply: (text: String, ids: [Int32])?
    ) {
        let failedSaves = saver.failedKeys
        if !failedSaves.isEmpty { for k in failedSaves { try? store.remove(k) } }
        state.blocks = state.blocks.filter { $0.end <= saveFrom } + saver.written
        state.blocks.removeAll { saver.failedRangesSet.contains($0) }
        state.blocks.sort { $0.start < $1.start }
        state.tokens = history
        state.kvCount = fedCount
        if let reply { state.replies[reply.text] = reply.ids }
    }

    /// The session's recorded blocks that are not in any tier in every layer.
    private func missingBlocks(_ state: SessionState) -> [SessionState.BlockRange] {
        guard !state.blocks.isEmpty else { return [] }
        var present = Set(state.blocks)
        for home in Set(state.blocks.map(\.home)) {
            let stored = store.blockKeys(session: home)
            for layer in 0..<model.kvLayout.layers {
                let here = Set(
                    (stored[layer] ?? []).map { SessionState.BlockRange(home: home, start: $0.start, count: $0.count) })
                present = present.filter { $0.home != home || here.contains($0) }
            }
        }
        return state.blocks.filter { !present.contains($0) }
    }

    func key(_ layer: Int, _ b: SessionState.BlockRange) -> BlockKey {
        BlockKey(model: store.model, session: b.home, layer: layer, start: b.start, count: b.count)
    }

    /// The namespaces a turn of `state` may not write to, taken when the turn starts: every
    /// referenced or still-freeing block in the session's own namespaces, and the ids of other
    /// sessions. Nothing joins this set during the turn: a fork references only blocks of
    /// persisted states, which are in it already, and the session's state changes only at its
    /// turn's end. So the saver decides without taking `stateLock` inside a batched step.
    private func writeGuard(for state: SessionState) -> @Sendable (Int, Int) -> String {
        let id = state.id
        let (taken, sessionsNamed) = stateLock.withLock {
            (
                Set(references.keys.filter { isOwnNamespace($0.home, of: id) }).union(freeing.all),
                Set(sessions.keys.filter { $0.hasPrefix(id + "~") })
            )
        }
        let turn = state.turns
        return { start, count in
            // The session's own namespace, else its alternate one for this turn, else the next free one.
            for n in [nil] + (turn..<(turn + 64)).map(Optional.some) {
                let ns = n.map { "\(id)~\($0)" } ?? id
                let b = SessionState.BlockRange(home: ns, start: start, count: count)
                if !taken.contains(b) && !sessionsNamed.contains(ns) { return ns }
            }
            return "\(id)~\(UInt64.random(in: 1_000_000_000...UInt64.max))"
        }
    }

    /// Moves a session's blocks from disk to DRAM ahead of its turn: every block of its own
    /// namespace, and of another chat's namespace (a prefix it shares) only the blocks it reads,
    /// not the rest of that chat's history.
    public func prefetch(session id: String) {
        let foreign = stateLock.withLock { sessions[id]?.blocks.filter { $0.home != id } ?? [] }
        store.prefetch(session: id)
        for (home, blocks) in Dictionary(grouping: foreign, by: \.home) {
            let wanted = Set(keys(of: blocks))
            store.prefetch(session: home, only: { wanted.contains($0) })
        }
    }

    /// HBM pages the stored KV of `ids` takes, each block counted once however many of them
    /// share it: what their turns' loads pin while they run.
    public func hbmPages(of ids: [String]) -> Int {
        let blocks = stateLock.withLock { Set(ids.flatMap { sessions[$0]?.blocks ?? [] }) }
        return blocks.count * model.kvLayout.layers
    }

    /// For each of `ids`, the blocks it reads from other sessions' namespaces (a prefix it shares):
    /// the store ranks them with it for eviction.
    public func borrowedBlocks(of ids: [String]) -> [String: [BlockSpan]] {
        stateLock.withLock {
            var out: [String: [BlockSpan]] = [:]
            for id in ids {
                guard out[id] == nil, let s = sessions[id] else { continue }
                let foreign = s.blocks.filter { $0.home != id }
                if !foreign.isEmpty {
                    out[id] = foreign.map { BlockSpan(session: $0.home, start: $0.start, count: $0.count) }
                }
            }
            return out
        }
    }

    /// Store namespaces holding a session's blocks (its own first): what placement hints and
    /// demotion act on.
    public func storeNamespaces(of id: String) -> [String] {
        let homes = stateLock.withLock { sessions[id].map { Set($0.blocks.map(\.home)) } ?? [] }
        return [id] + homes.subtracting([id]).sorted()
    }

    /// Where each of a session's blocks is, per layer (empty for an unknown session).
    public func placement(of id: String) -> SessionPlacement {
        let blocks = stateLock.withLock { sessions[id]?.blocks ?? [] }
        let layers = (0..<model.kvLayout.layers).map { layer in
            blocks.map { b in
                SessionPlacement.BlockPlacement(tokens: b.start..<b.end, tiers: store.tiers(of: key(layer, b)))
            }
        }
        return SessionPlacement(session: id, layers: layers)
    }

    func commonPrefix(_ a: [Int32], _ b: [Int32], limit: Int) -> Int {
        var i = 0
        let n = min(a.count, b.count, limit)
        while i < n && a[i] == b[i] { i += 1 }
        return i
    }

    /// Forgets the blocks that start at or after `index` (removed when the turn's state is kept,
    /// unless another session still references them).
    private func dropBlocks(_ state: inout SessionState, from index: Int) {
        state.blocks.removeAll { $0.start >= index }
    }

    /// Drops the oldest history tokens (after the sinks) so that the live tokens, the new ones
    /// and `reserve` generated tokens fit the window. Returns how many tokens were dropped.
    private func truncateIfNeeded(_ state: inout SessionState, total: Int, reserve: Int, hasSystemMessage: Bool) -> Int
    {
        var sinks = configuration.sinkTokens
        if configuration.pinSystemMessage, hasSystemMessage, let end = model.tokenizer.tokenID("<|im_end|>"),
            let i = state.tokens.firstIndex(of: end)
        {
            sinks = max(sinks, i + 2)  // the system message through its "<|im_end|>\n"
        }
        sinks = min(sinks, total, contextWindow / 2)
        let live = state.liveIndices(upTo: total).count
        guard live + reserve > contextWindow else { return 0 }
        if state.dropEnd <= state.sinks {
            state.sinks = sinks
            state.dropEnd = sinks
        }
        let g = max(1, configuration.truncationGranularity)
        var drop = live + reserve - contextWindow + Int(Double(contextWindow) * configuration.truncationFraction)
        drop = (drop + g - 1) / g * g
        drop = min(drop, total - state.dropEnd - 1)
        let before = state.dropEnd
        state.dropEnd += max(0, drop)
        // Blocks wholly inside the dropped range are deleted; partly dropped blocks keep serving their kept part.
        state.blocks.removeAll { $0.start >= state.sinks && $0.end <= state.dropEnd }
        return state.dropEnd - before
    }

    /// Keeps a session's new state, its new blocks exchanged for equal ones already stored
    /// (`shareStoredCopies`): its record first, then the blocks nobody references any more are
    /// removed (a crash in between leaves only unreferenced blocks behind). Returns how many
    /// blocks were exchanged.
    @discardableResult
    func persist(_ state: SessionState) -> Int {
        var state = state
        let (gone, exchanged) = stateLock.withLock {
            let givenUp = shareStoredCopies(&state)
            let old = sessions[state.id]
            if let old { unindex(old) }
            sessions[state.id] = state
            index(state)
            for b in state.blocks { references[b, default: 0] += 1 }
            var gone = release(old?.blocks ?? [])
            // A copy this turn wrote and gave up is referenced by nobody.
            for b in givenUp where references[b] == nil && !gone.contains(b) {
                freeing.insert(b)
                gone.append(b)
            }
            indexContent(state)
            return (gone, givenUp.count)
        }
        persistRecord(state)
        removeLater(gone)
        return exchanged
    }

    func persistRecord(_ state: SessionState) {
        if let data = try? JSONEncoder().encode(state) {
            try? store.putMetadata(name: "session/" + state.id, value: Array(data))
        }
    }

    /// Waits until background removals are done (tests, shutdown).
    public func quiesce() {
        cleanup.sync {}
        store.waitForSaves()
    }
}

/// Blocks whose last reference went, until the engine's `cleanup` queue has removed them (its
/// own lock: the queue updates it without the engine).
private final class FreeingBlocks: @unchecked Sendable {
    private let lock = NSLock()
    private var blocks: Set<SessionState.BlockRange> = []  // guarded by `lock`

    func insert(_ b: SessionState.BlockRange) { lock.withLock { _ = blocks.insert(b) } }
    func subtract(_ bs: [SessionState.BlockRange]) { lock.withLock { blocks.subtract(bs) } }
    var all: Set<SessionState.BlockRange> { lock.withLock { blocks } }
}
