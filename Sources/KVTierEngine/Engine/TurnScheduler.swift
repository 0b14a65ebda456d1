import Dispatch
import Foundation
import KVTierModel
import KVTierStore

/// The queue of turns in front of the engine, and the running batch behind it.
///
/// Up to `maxRunning` turns run at once, each on a thread of its own; their forward passes meet
/// in the engine's `BatchExecutor`, one batched step after another (continuous batching). A turn
/// that finishes frees its place at once and the next queued turn starts, joining the batch at
/// its next step.
///
/// Admission is fair across owners: the owners with queued turns take turns (round-robin, in
/// the order they first queued), and each owner's turns start in the order they came (FCFS).
/// HBM bounds the batch: the next turn starts only when its stored KV fits in the arena beside
/// the running turns' (`fitsInHBM`).
/// A turn whose session is already running waits for it (turns of one session never overlap),
/// without holding up other sessions. A queued turn whose client has gone is dropped before it
/// starts (`EngineError.clientGone`).
///
/// Its look-ahead window steers the store: the sessions of the next turns to start, as many as
/// fit in DRAM together (CachedAttention's window of C_mem / S_kv sessions, counted with each
/// session's own KV size) and at most `lookAhead`, are prefetched from disk to DRAM before they
/// start (scheduler-aware fetching) and, with the hint-driven policy, spared by eviction, the one
/// needed last going first (scheduler-aware eviction). A window that held more than DRAM would
/// only make its own prefetches evict each other.
///
/// Threads: `lock` guards the queues, `running`, `externalHints` and `prefetched`; each turn runs
/// on its own thread; completions run on the turn's thread after it has left the batch.
public final class TurnScheduler: @unchecked Sendable {
    public struct Turn: Sendable {
        public var session: String
        public var messages: [ChatMessage]
        /// `messages` tokenized, when the caller has done it already (the API does, once per
        /// request, for the prefix cache); else the engine tokenizes them.
        public var chat: TokenizedConversation?
        public var options: GenerationOptions
        /// Seconds until the session's next turn is expected, if the caller knows (placement hint).
        public var nextTurnInSeconds: Double?
        /// Recorded as the session's owner when the turn creates it (`ChatEngine.runTurn`); also
        /// the unit of fair admission (nil is one owner of its own).
        public var owner: String?
        /// Receives the reply's text as it is generated (on the turn's thread).
        public var onText: (@Sendable (String) -> Void)?

        public init(
            session: String, owner: String? = nil, messages: [ChatMessage], options: GenerationOptions,
            nextTurnInSeconds: Double? = nil, onText: (@Sendable (String) -> Void)? = nil
        ) {
            self.session = session
            self.owner = owner
            self.messages = messages
            self.options = options
            self.nextTurnInSeconds = nextTurnInSeconds
            self.onText = onText
        }
    }

    private struct Job: AdmissionJob {
        let turn: Turn
        let completion: @Sendable (Result<TurnReport, Error>) -> Void
        /// When `submit` queued it (uptime nanoseconds).
        let submitted = DispatchTime.now().uptimeNanoseconds
        var session: String { turn.session }
        var ownerKey: String { turn.owner ?? "" }
    }

    public let engine: ChatEngine
    public let lookAhead: Int
    /// Turns running at once at most.
    public let maxRunning: Int
    private let lock = NSLock()
    /// Queued and running turns, in the order they start (the rules `kvtier-bench simulate` runs too).
    private var queue = AdmissionQueue<Job>()
    private var externalHints: [String] = []
    private var prefetched: Set<String> = []
    /// The sessions of the last look-ahead window, next first.
    private var lastWindow: [String] = []
    /// Each session's observed think times: the placement hint when a turn carries none.
    private var thinkTimes = ThinkTimeEstimator()
    /// Entered for every submitted turn, left when its completion has run.
    private let outstanding = DispatchGroup()

    /// Whether think times are measured on the wall clock (a replay in virtual time feeds them
    /// with `observeThinkTime` instead).
    private let measuresThinkTimes: Bool

    /// `maxRunning` defaults to the engine's `maxBatch`; 1 runs one turn at a time.
    public init(engine: ChatEngine, lookAhead: Int? = nil, maxRunning: Int? = nil, measuresThinkTimes: Bool = true) {
        self.engine = engine
        self.measuresThinkTimes = measuresThinkTimes
        self.lookAhead = max(0, lookAhead ?? engine.configuration.lookAhead)
        self.maxRunning = max(1, maxRunning ?? engine.configuration.maxBatch)
    }

    /// Queues a turn; `completion` runs (on the turn's thread) when it is done.
    public func submit(_ turn: Turn, completion: @escaping @Sendable (Result<TurnReport, Error>) -> Void) {
        outstanding.enter()
        let start: [Job] = lock.withLock {
            if measuresThinkTimes { thinkTimes.arrived(turn.session, at: DispatchTime.now().uptimeNanoseconds) }
            queue.enqueue(Job(turn: turn, completion: completion))
            let started = admit()
            refreshWindow()
            return started
        }
        for job in start { launch(job) }
    }

    /// Records a think time of `session` measured by the caller (the replay, in its virtual
    /// time): it counts in the session's estimate as a measured one would.
    public func observeThinkTime(session: String, seconds: Double) {
        lock.withLock { thinkTimes.observe(session, gap: seconds) }
    }

    /// Tells the engine which sessions an outside scheduler will run next (in order).
    public func hint(upcoming sessions: [String]) {
        lock.withLock {
            externalHints = sessions
            refreshWindow()
        }
    }

    /// Number of queued turns (not running yet).
    public var depth: Int { lock.withLock { queue.depth } }

    /// The sessions of the look-ahead window now, next to start first.
    public var window: [String] { lock.withLock { lastWindow } }

    /// Number of turns running now.
    public var running: Int { lock.withLock { queue.runningCount } }

    /// Queued plus running turns of `owner`.
    public func outstanding(owner: String?) -> Int {
        lock.withLock { queue.outstanding(ownerKey: owner ?? "") }
    }

    /// Fails every turn still waiting (not the running ones) with `error`; returns how many.
    @discardableResult
    public func cancelPending(with error: Error) -> Int {
        let dropped: [Job] = lock.withLock {
            let d = queue.removeAllQueued()
            prefetched.removeAll()
            refreshWindow()
            return d
        }
        for job in dropped {
            job.completion(.failure(error))
            outstanding.leave()
        }
        return dropped.count
    }

    /// Waits until every submitted turn has run and completed.
    public func drain() { outstanding.wait() }

    // MARK: Admission (called with `lock` held)

    /// Takes the turns that may start now, in fair order, and marks them running.
    private func admit() -> [Job] {
        var started: [Job] = []
        while queue.runningCount < maxRunning, let next = queue.peek(), fitsInHBM(next.turn.session),
            let job = queue.start()
        {
            prefetched.remove(job.turn.session)
            started.append(job)
        }
        return started
    }

    /// Whether `session`'s stored KV fits in HBM beside the running turns' (a running turn's
    /// loaded blocks stay pinned until it ends): HBM capacity bounds the batch. A turn that does
    /// not fit waits, first in line, until running turns end, rather than load what fits and
    /// recompute the rest. A turn always starts when none runs (its load then goes layer by
    /// layer through the whole arena).
    private func fitsInHBM(_ session: String) -> Bool {
        let running = queue.runningSessions
        guard !running.isEmpty else { return true }
        return engine.hbmPages(of: running + [session]) <= engine.store.hbmPages
    }

    /// The next sessions to start whose KV fits in DRAM together (at least one), at most `lookAhead`.
    private func fittingWindow() -> [String] {
        queue.window(lookAhead: lookAhead, capacity: engine.store.configuration.dramCapacityBytes) {
            engine.sessionKVBytes($0)
        }
    }

    private func refreshWindow() {
        var order: [String] = []
        lastWindow = fittingWindow()
        for s in lastWindow + externalHints where !order.contains(s) { order.append(s) }
        // The store spares the running turns' sessions first, needed now: a turn's load pins its
        // blocks only once it starts, a moment after admission, and until then nothing but this
        // keeps the next prefetch from evicting its DRAM copy (the simulator's pin found it).
        // Then the window's own namespaces; of chats whose prefix they share, only the blocks
        // they read (sparing that chat's namespace would spare its whole history).
        let running = queue.runningSessions
        engine.store.setUpcoming(order, running: running, borrowed: engine.borrowedBlocks(of: running + order))
        for s in order where !prefetched.contains(s) && !queue.isRunning(s) {
            prefetched.insert(s)
            engine.prefetch(session: s)
        }
    }

    // MARK: Running

    private func launch(_ job: Job) {
        let thread = Thread { [self] in execute(job) }
        thread.name = "kvtier.turn"
        thread.stackSize = 4 << 20
        thread.start()
    }

    private func execute(_ job: Job) {
        let turn = job.turn
        let queued = Double(DispatchTime.now().uptimeNanoseconds - job.submitted) / 1e6
        var result: Result<TurnReport, Error>
        if turn.options.isCancelled?() == true {
            result = .failure(EngineError.clientGone(session: turn.session))
        } else {
            // The client's hint, else what this session's own history says.
            let expected = turn.nextTurnInSeconds ?? lock.withLock { thinkTimes.estimate(turn.session) }
            let placement: Placement =
                (expected ?? 0) > engine.configuration.writeThroughAfterSeconds ? .writeThrough : .keepInDRAM
            result = Result {
                try engine.runTurn(
                    session: turn.session, owner: turn.owner, messages: turn.messages, chat: turn.chat,
                    options: turn.options, placement: placement, onText: { turn.onText?($0) })
            }
            result = result.map { report in
                var r = report
                r.queueMs = queued
                return r
            }
        }
        let next: [Job] = lock.withLock {
            if measuresThinkTimes { thinkTimes.ended(turn.session, at: DispatchTime.now().uptimeNanoseconds) }
            queue.finished(job)
            let started = admit()
            // The finished chat now gives way to the queued ones in DRAM: what their prefetches
            // could not fit before comes up now (a prefetch skips the blocks already up). Only
            // a policy that knows the order may ask again: under LRU the window's prefetches
            // would evict each other at every turn (prefetched once, as LMCache does on arrival).
            if engine.store.configuration.policy == .hintDriven { prefetched.removeAll() }
            refreshWindow()
            return started
        }
        for j in next { launch(j) }
        job.completion(result)
        outstanding.leave()
    }
}
