import Dispatch
import Foundation
import KVTierModel
import KVTierStore

/// A FIFO queue of turns in front of the engine, one turn at a time. Its look-ahead window of
/// the next `lookAhead` queued turns steers the store: those sessions are prefetched from disk
/// to DRAM before they reach the head (scheduler-aware fetching) and, with the hint-driven
/// policy, spared by eviction, the one needed last going first (scheduler-aware eviction).
///
/// Batching would slot in at `next()`: take up to B turns from the head instead of one, load
/// their sessions together and run one batched forward pass; the window logic is unchanged.
///
/// Threads: `lock` guards `pending` and `externalHints`; turns run on the serial `worker` queue.
public final class TurnScheduler: @unchecked Sendable {
    public struct Turn: Sendable {
        public var session: String
        public var messages: [ChatMessage]
        public var options: GenerationOptions
        /// Seconds until the session's next turn is expected, if the caller knows (placement hint).
        public var nextTurnInSeconds: Double?
        /// Recorded as the session's owner when the turn creates it (`ChatEngine.runTurn`).
        public var owner: String?
        /// Receives the reply's text as it is generated (on the scheduler's queue).
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

    public let engine: ChatEngine
    public let lookAhead: Int
    private let lock = NSLock()
    private var pending: [(Turn, @Sendable (Result<TurnReport, Error>) -> Void)] = []
    private var externalHints: [String] = []
    private var prefetched: Set<String> = []
    private let worker = DispatchQueue(label: "kvtier.scheduler")

    public init(engine: ChatEngine, lookAhead: Int? = nil) {
        self.engine = engine
        self.lookAhead = max(0, lookAhead ?? engine.configuration.lookAhead)
    }

    /// Queues a turn; `completion` runs on the scheduler's queue when it is done.
    public func submit(_ turn: Turn, completion: @escaping @Sendable (Result<TurnReport, Error>) -> Void) {
        lock.withLock {
            pending.append((turn, completion))
            refreshWindow()
        }
        worker.async { [self] in runNext() }
    }

    /// Tells the engine which sessions an outside scheduler will run next (in order).
    public func hint(upcoming sessions: [String]) {
        lock.withLock {
            externalHints = sessions
            refreshWindow()
        }
    }

    /// Number of queued turns.
    public var depth: Int { lock.withLock { pending.count } }

    /// Fails every turn still waiting (not the running one) with `error`; returns how many.
    @discardableResult
    public func cancelPending(with error: Error) -> Int {
        let dropped = lock.withLock {
            let d = pending
            pending.removeAll()
            prefetched.removeAll()
            refreshWindow()
            return d
        }
        for (_, completion) in dropped { completion(.failure(error)) }
        return dropped.count
    }

    /// Waits until every queued turn has run.
    public func drain() { worker.sync {} }

    // Called with `lock` held.
    private func refreshWindow() {
        let window = pending.prefix(lookAhead).map(\.0.session)
        var order: [String] = []
        for s in window + externalHints where !order.contains(s) { order.append(s) }
        engine.store.setUpcoming(order)
        // The running turn is no longer in `pending`: every session in the window is still to come.
        for s in order where !prefetched.contains(s) {
            prefetched.insert(s)
            engine.store.prefetch(session: s)
        }
    }

    private func runNext() {
        let job: (Turn, @Sendable (Result<TurnReport, Error>) -> Void)? = lock.withLock {
            guard !pending.isEmpty else { return nil }
            let j = pending.removeFirst()
            prefetched.remove(j.0.session)
            return j
        }
        guard let (turn, completion) = job else { return }
        let placement: Placement =
            (turn.nextTurnInSeconds ?? 0) > engine.configuration.writeThroughAfterSeconds ? .writeThrough : .keepInDRAM
        let result = Result {
            try engine.runTurn(
                session: turn.session, owner: turn.owner, messages: turn.messages, options: turn.options, placement: placement,
                onText: { turn.onText?($0) })
        }
        lock.withLock { refreshWindow() }
        completion(result)
    }
}
