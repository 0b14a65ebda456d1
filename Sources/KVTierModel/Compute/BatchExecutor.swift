import Dispatch
import Foundation

/// Continuous batching over one `Transformer`: iteration-level scheduling (Orca) with chunked
/// prefill (Sarathi-Serve).
///
/// Each sequence being served holds a `Lane`. A lane's `forward` hands its tokens to the
/// executor and blocks until they have gone through the decoder. The executor runs one step
/// after another; each step carries the pending rows of every lane at once: all decode rows,
/// plus prompt tokens in chunks of at most `prefillChunkTokens` (a long prompt takes several
/// steps, so the decoders beside it never wait for a whole prompt). A lane that closes leaves
/// at the next step; a new lane joins at the next step.
///
/// A step starts when every open lane has a request waiting (the lanes sample between steps,
/// which takes microseconds), or `gatherSeconds` after the first request came, whichever is
/// first, so one slow lane never holds up the others for longer.
///
/// Chunks are cut at multiples of `prefillChunkTokens` from the start of each request, never
/// by what else is in the step, and the transformer computes each sequence's rows as it would
/// alone (see `Transformer`): a sequence's logits do not depend on its neighbours.
///
/// Prefill budget per step: decode rows (one token) always run and are not counted. Prompt
/// slices run shortest first (a short new message does not wait behind a long prompt), in
/// arrival order among equals, while the step's prompt tokens stay within `prefillChunkTokens`;
/// the first always runs. A slice passed over in `agingSteps` steps goes first, so a long
/// prompt is never starved by a stream of short ones.
///
/// Threads: the executor's own thread owns the transformer and runs the steps (the caches'
/// callbacks, `KVCache.didFinish` among them, run there, while the lane's thread is blocked in
/// `forward`). `cond` guards `waiting`, `openLanes`, `gatherDeadline`, `stopping` and the
/// totals.
public final class BatchExecutor: @unchecked Sendable {
    public let prefillChunkTokens: Int
    public let gatherSeconds: Double
    /// Steps a prompt slice may be passed over before it goes first.
    static let agingSteps = 4
    private let transformer: Transformer
    private let cond = NSCondition()
    private var waiting: [Request] = []
    private var openLanes = 0
    private var nextSequence: UInt64 = 0
    private var gatherDeadline: UInt64?
    private var stopping = false
    private var totals = Counters()
    private var thread: Thread?

    /// What the executor has done so far (tests, metrics).
    public struct Counters: Sendable, Equatable {
        /// Steps run.
        public var steps = 0
        /// Rows (tokens) through the decoder.
        public var rows = 0
        /// The most sequences one step carried.
        public var widestStep = 0
        /// Steps that carried a prompt chunk and decode rows together.
        public var mixedSteps = 0
        /// Seconds spent computing steps (the rest of the executor's time it waited for lanes).
        public var computeSeconds = 0.0
    }

    public init(transformer: Transformer, prefillChunkTokens: Int = 256, gatherSeconds: Double = 0.002) {
        self.transformer = transformer
        self.prefillChunkTokens = max(1, min(prefillChunkTokens, transformer.microBatch))
        self.gatherSeconds = max(0, gatherSeconds)
        let t = Thread { [self] in run() }
        t.name = "kvtier.batch"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Ends the executor's thread once no request is waiting (requests still waiting then fail).
    public func stop() {
        cond.withLock {
            stopping = true
            cond.broadcast()
        }
    }

    public var counters: Counters { cond.withLock { totals } }

    /// Lanes open now (sequences being served).
    public var activeLanes: Int { cond.withLock { openLanes } }

    /// Opens a lane for one sequence; close it when the sequence has nothing more to compute.
    public func lane() -> Lane {
        cond.withLock {
            openLanes += 1
        }
        return Lane(executor: self)
    }

    /// One sequence's way into the batch. Used by one thread at a time (it may be handed from
    /// one thread to another, hence @unchecked Sendable).
    public final class Lane: @unchecked Sendable {
        private let executor: BatchExecutor
        private var closed = false

        init(executor: BatchExecutor) { self.executor = executor }

        deinit { close() }

        /// Runs `tokens` at `positions` on top of what `cache` holds, in as many steps as the
        /// prefill chunking takes, and returns when they are all through. `visit(i, logits)` is
        /// called (on the executor's thread) for each requested row i. `isCancelled` is asked
        /// before each step that would carry some of these tokens; true ends the call with
        /// `DecoderError.cancelled` (the tokens already computed stay in `cache`).
        public func forward(
            tokens: [Int32], positions: [Int32], cache: KVCache, logits: Transformer.Logits,
            isCancelled: (@Sendable () -> Bool)? = nil, visit: (Int, UnsafeBufferPointer<Float>) -> Void
        ) throws(DecoderError) {
            precondition(!closed, "forward on a closed lane")
            guard !tokens.isEmpty else { return }
            guard tokens.count == positions.count else {
                throw DecoderError.badInput("tokens and positions differ in length")
            }
            try withoutActuallyEscaping(visit) { (visit) throws(DecoderError) in
                let request = Request(tokens: tokens, positions: positions, cache: cache, logits: logits, visit: visit)
                request.isCancelled = isCancelled
                try executor.submitAndWait(request)
            }
        }

        /// Leaves the batch (from the next step on).
        public func close() {
            guard !closed else { return }
            closed = true
            executor.cond.withLock {
                executor.openLanes -= 1
                executor.cond.broadcast()
            }
        }
    }

    /// A lane's forward call while it is in the executor. Handed from the lane's thread to the
    /// executor's thread and back under `cond`; the lane's thread is blocked meanwhile.
    final class Request: @unchecked Sendable {
        let tokens: [Int32]
        let positions: [Int32]
        let cache: KVCache
        let logits: Transformer.Logits
        let visit: (Int, UnsafeBufferPointer<Float>) -> Void
        var sequence: UInt64 = 0
        /// Steps that passed this request's next prompt slice over.
        var skipped = 0
        /// Tokens through so far.
        var done = 0
        var error: DecoderError?
        var finished = false
        var isCancelled: (@Sendable () -> Bool)?

        init(
            tokens: [Int32], positions: [Int32], cache: KVCache, logits: Transformer.Logits,
            visit: @escaping (Int, UnsafeBufferPointer<Float>) -> Void
        ) {
            self.tokens = tokens
            self.positions = positions
            self.cache = cache
            self.logits = logits
            self.visit = visit
        }

        var remaining: Int { tokens.count - done }
    }

    private func submitAndWait(_ request: Request) throws(DecoderError) {
        cond.lock()
        defer { cond.unlock() }
        guard !stopping else { throw DecoderError.badInput("the decoder is shutting down") }
        request.sequence = nextSequence
        nextSequence += 1
        if waiting.isEmpty { gatherDeadline = DispatchTime.now().uptimeNanoseconds + UInt64(gatherSeconds * 1e9) }
        waiting.append(request)
        cond.broadcast()
        while !request.finished { cond.wait() }
        if let error = request.error { throw error }
    }

    // MARK: The executor's thread

    /// One request's part of a step.
    private struct Slice {
        let request: Request
        let start: Int
        let count: Int
    }

    private func run() {
        cond.lock()
        while true {
            while !stopping && !readyToStep() {
                if let deadline = gatherDeadline, !waiting.isEmpty {
                    let now = DispatchTime.now().uptimeNanoseconds
                    if now >= deadline { break }
                    _ = cond.wait(until: Date(timeIntervalSinceNow: Double(deadline - now) / 1e9))
                } else {
                    cond.wait()
                }
            }
            if stopping {
                for r in waiting {
                    r.error = .badInput("the decoder is shutting down")
                    r.finished = true
                }
                waiting.removeAll()
                cond.broadcast()
                cond.unlock()
                return
            }
            // Requests whose caller has cancelled leave before the step.
            for r in waiting where r.isCancelled?() == true {
                r.error = .cancelled
                r.finished = true
            }
            if waiting.contains(where: \.finished) {
                waiting.removeAll { $0.finished }
                cond.broadcast()
            }
            guard !waiting.isEmpty else { continue }
            let slices = compose()
            cond.unlock()
            let items = slices.map { s -> Transformer.StepItem in
                let r = s.request
                let last = s.start + s.count == r.tokens.count
                let logits: Transformer.Logits
                switch r.logits {
                case .none: logits = .none
                case .all: logits = .all
                case .last: logits = last ? .last : .none
                }
                let offset = s.start
                return Transformer.StepItem(
                    tokens: Array(r.tokens[s.start..<(s.start + s.count)]),
                    positions: Array(r.positions[s.start..<(s.start + s.count)]),
                    cache: r.cache, logits: logits, visit: { i, row in r.visit(offset + i, row) })
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            let errors = transformer.step(items)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            cond.lock()
            totals.computeSeconds += seconds
            totals.steps += 1
            totals.rows += slices.reduce(0) { $0 + $1.count }
            totals.widestStep = max(totals.widestStep, slices.count)
            if slices.contains(where: { $0.count > 1 }) && slices.contains(where: { $0.count == 1 }) {
                totals.mixedSteps += 1
            }
            for (s, error) in zip(slices, errors) {
                s.request.done += s.count
                if let error { s.request.error = error }
                if error != nil || s.request.remaining == 0 { s.request.finished = true }
            }
            waiting.removeAll { $0.finished }
            gatherDeadline = waiting.isEmpty ? nil : DispatchTime.now().uptimeNanoseconds + UInt64(gatherSeconds * 1e9)
            cond.broadcast()
        }
    }

    /// Called with `cond` held: every open lane has a request waiting.
    private func readyToStep() -> Bool {
        !waiting.isEmpty && waiting.count >= openLanes
    }

    /// Called with `cond` held: this step's slices, decode rows first.
    private func compose() -> [Slice] {
        func chunk(_ r: Request) -> Int { min(r.remaining, prefillChunkTokens - r.done % prefillChunkTokens) }
        var slices = waiting.filter { chunk($0) == 1 }.sorted { $0.sequence < $1.sequence }.map {
            Slice(request: $0, start: $0.done, count: 1)
        }
        let prompts = waiting.filter { chunk($0) > 1 }
        let chosen = Set(
            Self.promptSlices(
                prompts.map { (chunk: chunk($0), skipped: $0.skipped, sequence: $0.sequence) },
                budget: prefillChunkTokens))
        for (i, r) in prompts.enumerated() {
            if chosen.contains(i) {
                slices.append(Slice(request: r, start: r.done, count: chunk(r)))
                r.skipped = 0
            } else {
                r.skipped += 1
            }
        }
        return slices
    }

    /// Which of the waiting prompt slices a step takes, as indices into `candidates`: shortest
    /// first (arrival order among equals), a slice passed over `agingSteps` times before all
    /// others, while their tokens stay within `budget`; the first always runs.
    static func promptSlices(_ candidates: [(chunk: Int, skipped: Int, sequence: UInt64)], budget: Int) -> [Int] {
        func rank(_ i: Int) -> (Int, Int, UInt64) {
            (candidates[i].skipped >= agingSteps ? 0 : 1, candidates[i].chunk, candidates[i].sequence)
        }
        var left = budget
        var chosen: [Int] = []
        for i in candidates.indices.sorted(by: { rank($0) < rank($1) })
        where chosen.isEmpty || candidates[i].chunk <= left {
            chosen.append(i)
            left -= candidates[i].chunk
        }
        return chosen
    }
}
