import Dispatch
import Foundation
import KVTierEngine
import KVTierModel
import KVTierStore

/// One policy's replay of the workload: a fresh store in a scratch state directory, the engine,
/// and its `TurnScheduler`, driven by a discrete-event clock.
///
/// Time: sessions arrive and think in virtual seconds; turns take the real seconds they take.
/// Every turn that has arrived by the clock is queued in the scheduler (which prefetches and
/// spares the sessions in its look-ahead window, as in the server); when one finishes, the
/// clock moves to its end, the session's next turn is due a think time later, and arrivals up
/// to the clock are queued. Idle gaps are skipped, so prefetch gets no free time in them.
public struct ReplayRun {
    public struct TurnRecord: Codable {
        public var session: String
        public var turn: Int
        public var arrival_s: Double
        public var start_s: Double
        /// Time to first token of the turn itself: loading, prefill and the first token.
        public var ttft_ms: Double
        /// Time waiting in the queue before the turn started.
        public var queue_ms: Double
        /// Wall time of the whole turn (waiting for earlier saves, prefill, the reply, saving).
        public var total_ms: Double
        public var prompt_tokens: Int
        /// Tokens of this prompt that the previous turn left in the session (what a perfect cache holds).
        public var reusable: Int
        public var reused: Int
        public var recomputed: Int
        public var hits_hbm: Int
        public var hits_dram: Int
        public var hits_disk: Int
        /// KV bytes the turn's own load read from disk (its critical path).
        public var disk_bytes: Int
        public var stall_ms: Double
        public var save_lag_ms: Double
    }

    public let policy: ReplayPolicy
    public let store: StoreConfiguration
    public let threads: Int
    /// Generate each reply (greedy, at most the recorded reply's length) instead of feeding the
    /// recorded one; the next turn sends the generated text back as the assistant message.
    public var generate = false
    /// Send no session ids: each turn runs in the session the engine's prefix cache picks for it
    /// (as the daemon does for a stock OpenAI client).
    public var anonymous = false

    public init(
        policy: ReplayPolicy, store: StoreConfiguration, threads: Int, generate: Bool = false, anonymous: Bool = false
    ) {
        self.policy = policy
        self.store = store
        self.threads = threads
        self.generate = generate
        self.anonymous = anonymous
    }

    /// The store configuration the policy runs with: the given one, with the policy's eviction
    /// and tiers, and for the all-in-HBM oracle an arena of 12 GiB (reserved, not touched, so
    /// only the pages used take memory).
    public var effectiveStore: StoreConfiguration {
        var c = store
        c.policy = policy.eviction
        c.lowerTiers = policy.lowerTiers
        if policy.hbmHoldsEverything { c.hbmCapacityBytes = max(c.hbmCapacityBytes, 12 << 30) }
        return c
    }

    /// Runs the trace; `progress(turnsDone, sessionsDone)` after each turn.
    public func run(_ workload: ReplayWorkload, model: LlamaModel, progress: (Int, Int) -> Void) throws -> (
        turns: [TurnRecord], stats: StoreStats
    ) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "kvtier-replay-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var c = effectiveStore
        c.stateDirectory = dir
        let tiered: TieredStore
        do {
            tiered = try TieredStore(configuration: c, model: ModelFingerprint(model: model), layout: model.kvLayout)
        } catch {
            throw ReplayError("cannot open a store for \(policy.name): \(error)")
        }
        defer { try? tiered.close(flushingDRAM: false) }
        let engine = ChatEngine(
            model: model, store: tiered, configuration: policy.engineConfiguration(threads: threads))
        // The replay models CachedAttention's serving loop, one turn at a time in virtual time.
        let scheduler = TurnScheduler(
            engine: engine, lookAhead: policy.lookAhead, maxRunning: 1, measuresThinkTimes: false)

        struct Finished {
            public let conversation: Int
            public let turn: Int
            public let result: Result<TurnReport, Error>
            public let endedAt: UInt64
        }
        let finished = FinishedQueue<Finished>()
        var due: [(time: Double, conversation: Int, turn: Int)] = workload.conversations.enumerated().map {
            ($0.element.arrivalSeconds, $0.offset, 0)
        }
        due.sort { $0.time < $1.time }
        var submittedAt: [String: UInt64] = [:]
        var arrivalOf: [String: Double] = [:]
        var clock = 0.0
        var lastEnd = 0.0
        var lastEndReal = DispatchTime.now().uptimeNanoseconds
        var inFlight = 0
        var records: [TurnRecord] = []
        var previousContext: [Int: Int] = [:]
        /// Generated reply texts by conversation, in turn order (only with `generate`).
        var generatedReplies: [Int: [String]] = [:]
        let total = workload.turnCount
        var sessionsDone = 0
        while records.count < total {
            while let next = due.first, next.time <= clock || inFlight == 0 {
                due.removeFirst()
                clock = max(clock, next.time)
                let conv = workload.conversations[next.conversation]
                let key = "\(next.conversation)/\(next.turn)"
                submittedAt[key] = DispatchTime.now().uptimeNanoseconds
                arrivalOf[key] = next.time
                var options = GenerationOptions(maxTokens: max(1, conv.turns[next.turn].reply.count))
                let messages: [ChatMessage]
                if generate {
                    let replies = generatedReplies[next.conversation] ?? []
                    messages = workload.messages(conv, upTo: next.turn) { replies[$0] }
                } else {
                    options.forcedReply = conv.turns[next.turn].reply
                    messages = workload.messages(conv, upTo: next.turn)
                }
                let session = engine.sessionForRequest(
                    named: anonymous ? nil : conv.session, messages: messages, owner: nil,
                    newID: "\(conv.session)-\(next.turn)")
                // The gap before this turn is what a server sees when the request arrives.
                if policy.placementHints == .estimated, next.turn > 0 {
                    scheduler.observeThinkTime(session: session, seconds: conv.turns[next.turn - 1].thinkSeconds)
                }
                let turn = TurnScheduler.Turn(
                    session: session, messages: messages, options: options,
                    nextTurnInSeconds: policy.placementHints == .oracle ? conv.turns[next.turn].thinkSeconds : nil)
                let (ci, ti) = (next.conversation, next.turn)
                scheduler.submit(turn) { result in
                    engine.requestEnded(session: session)
                    finished.push(
                        Finished(
                            conversation: ci, turn: ti, result: result, endedAt: DispatchTime.now().uptimeNanoseconds))
                }
                inFlight += 1
            }
            let f = finished.pop()
            inFlight -= 1
            let report: TurnReport
            switch f.result {
            case .success(let r): report = r
            case .failure(let e):
                throw ReplayError(
                    "\(policy.name): turn \(f.turn) of \(workload.conversations[f.conversation].session) failed: \(e)")
            }
            // Real wall time from when the turn could start (its submission, or the end of the
            // turn before it) to its end.
            let startReal = max(lastEndReal, submittedAt["\(f.conversation)/\(f.turn)"] ?? lastEndReal)
            let wall = Double(f.endedAt - startReal) / 1e9
            lastEndReal = f.endedAt
            let conv = workload.conversations[f.conversation]
            let arrival = arrivalOf["\(f.conversation)/\(f.turn)"] ?? clock
            let start = max(lastEnd, arrival)
            lastEnd = start + wall
            clock = max(clock, lastEnd)
            records.append(
                TurnRecord(
                    session: conv.session, turn: f.turn, arrival_s: arrival, start_s: start, ttft_ms: report.ttftMs,
                    queue_ms: (start - arrival) * 1000, total_ms: wall * 1000, prompt_tokens: report.promptTokens,
                    reusable: f.turn == 0 ? 0 : min(previousContext[f.conversation] ?? 0, report.promptTokens),
                    reused: report.tokensReused, recomputed: report.tokensRecomputed, hits_hbm: report.hitsHBM,
                    hits_dram: report.hitsDRAM, hits_disk: report.hitsDisk, disk_bytes: report.diskBytesRead,
                    stall_ms: report.loadStallMs,
                    save_lag_ms: report.saveLagMs))
            previousContext[f.conversation] = report.promptTokens + report.tokensGenerated
            if generate { generatedReplies[f.conversation, default: []].append(report.text) }
            if f.turn + 1 < conv.turns.count {
                let t = lastEnd + conv.turns[f.turn].thinkSeconds
                let at = due.firstIndex { $0.time > t } ?? due.count
                due.insert((t, f.conversation, f.turn + 1), at: at)
            } else {
                sessionsDone += 1
            }
            progress(records.count, sessionsDone)
        }
        scheduler.drain()
        tiered.waitForSaves()
        return (records, tiered.stats)
    }
}

/// A blocking queue between the scheduler's completions and the replay loop.
final class FinishedQueue<T: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [T] = []

    public func push(_ item: T) {
        condition.lock()
        items.append(item)
        condition.signal()
        condition.unlock()
    }

    public func pop() -> T {
        condition.lock()
        defer { condition.unlock() }
        while items.isEmpty { condition.wait() }
        return items.removeFirst()
    }
}
