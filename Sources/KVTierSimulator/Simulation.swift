import KVTierEngine
import KVTierReplay
import KVTierStore

/// A discrete-event model of serving a multi-turn trace on a GPU deployment: virtual time, no
/// model and no bytes, the costs from a `CostProfile`.
///
/// What it shares with kvtierd, as code: the admission rules and look-ahead window
/// (`AdmissionQueue`, as `TurnScheduler` runs them), the eviction policies (`LRUPolicy`,
/// `HintDrivenPolicy`), the think-time estimator behind placement hints, and the replay's
/// policies (`ReplayPolicy`). What it models: the tiers' capacity accounting (`SimulatedTiers`,
/// the store's rules over block sets) and the time every step, load, prefetch and save takes.
///
/// Serving is continuous batching: each step runs one token of every decoding turn plus up to a
/// chunk of prompt tokens of the turns being prefilled (`stepSeconds`). A turn starts when the
/// batch has room and HBM can hold its KV next to the running turns'. Its history comes up from
/// DRAM or disk over the link (loads in order, one at a time; a disk read pipelined with the
/// link layer by layer); with layer-wise loading its first chunk may start while later layers
/// still move, as long as every layer arrives before that chunk computes it; without, only once
/// the whole load is in. Other turns keep computing meanwhile. The prefix all chats share (the
/// template's system prompt) counts as resident in HBM. Saves go out over the link in the
/// other direction when a turn ends; with synchronous saving the GPU waits for them. Sessions in
/// the look-ahead window are prefetched from disk behind the loads.
public struct Simulation {
    public struct Options: Sendable {
        public var policy: ReplayPolicy
        public var hbmBytes: Int
        public var dramBytes: Int
        public var diskBytes: Int
        public var maxBatch: Int
        public var prefillChunkTokens: Int
        public var writeThroughAfterSeconds = 60.0
        /// Whether HBM keeps a session's KV after its turn (kvtierd's store), or holds only the
        /// running turns' KV, every turn loading its history from DRAM or disk (CachedAttention).
        public var hbmCachesSessions = true

        /// The profile's capacities and batch limits.
        public init(policy: ReplayPolicy, profile: CostProfile) {
            self.policy = policy
            hbmBytes = Int(profile.accelerator.kvBytes)
            dramBytes = Int(profile.host.dramBytes)
            diskBytes = Int(profile.host.diskBytes)
            maxBatch = profile.accelerator.maxBatch
            prefillChunkTokens = profile.accelerator.prefillChunkTokens
        }
    }

    /// One simulated turn. Times are virtual seconds; durations milliseconds.
    public struct TurnRecord: Codable, Sendable {
        public var session: String
        public var turn: Int
        public var arrival_s: Double
        public var start_s: Double
        public var first_token_s: Double
        public var end_s: Double
        /// Prompt tokens after any truncation to the context window.
        public var prompt_tokens: Int
        public var reply_tokens: Int
        /// Tokens of this prompt that the previous turn left in the session.
        public var reusable: Int
        public var reused: Int
        public var recomputed: Int
        public var hits_hbm: Int
        public var hits_dram: Int
        public var hits_disk: Int
        public var disk_bytes: Int
        /// From the turn's start until its load was in.
        public var load_ms: Double
        /// How long its first chunk waited for the load.
        public var stall_ms: Double
        /// From the turn's end until its KV was saved to DRAM.
        public var save_lag_ms: Double

        /// Time to first token from the turn's start (the replay's `ttft_ms`).
        public var ttft_ms: Double { (first_token_s - start_s) * 1000 }
        /// Time to first token from the request's arrival: every wait the user feels.
        public var ttft_from_arrival_ms: Double { (first_token_s - arrival_s) * 1000 }
    }

    public struct Result: Sendable {
        public var turns: [TurnRecord] = []
        /// Seconds the GPU computed (steps, and waits for synchronous saves).
        public var gpuSeconds = 0.0
        /// Seconds of those that prefill's arithmetic took (prompt chunks at the profile's FLOP rate).
        public var prefillGPUSeconds = 0.0
        /// Seconds the GPU waited with turns running but none able to compute (loads).
        public var gpuStallSeconds = 0.0
        /// Virtual seconds from the first arrival to the last reply.
        public var makespanSeconds = 0.0
        public var linkBytesIn = 0
        public var linkBytesOut = 0
        public var diskBytesRead = 0
        public var diskBytesWritten = 0
        public var blocksDropped = 0
    }

    public let profile: CostProfile
    public let options: Options

    public init(profile: CostProfile, options: Options) {
        self.profile = profile
        self.options = options
    }

    private struct Job: AdmissionJob {
        let sessionIndex: Int
        let turn: Int
        let arrival: Double
        let session: String
        var ownerKey: String { "" }
    }

    /// A running turn.
    private struct Running {
        let job: Job
        let start: Double
        var prompt: Int
        var reply: Int
        var reusable: Int
        var reused: Int
        /// Tokens whose KV exists (reused plus computed so far).
        var context: Int
        var loadStart: Double
        var loadSeconds: Double
        var hits: SimulatedTiers.Load
        /// Tokens of the prefix every chat shares that this chat reads from another's namespace.
        var sharedPrefix = 0
        var firstChunkAt: Double?
        var waitedForLoad = false
        var firstToken: Double?
        var decodeLeft = 0
        var writeThrough: Bool

        var prefillLeft: Int { prompt - context }
        var loadEnd: Double { loadStart + loadSeconds }
    }

    /// Runs the trace; `progress(turnsDone)` after each turn.
    public func run(_ trace: SimulatedTrace, progress: (Int) -> Void = { _ in }) throws(SimulatorError) -> Result {
        let p = options.policy
        let b = profile.host.blockTokens
        let layers = Double(max(1, profile.model.layers))
        guard profile.model.contextWindow > b else {
            throw .invalid("the context window (\(profile.model.contextWindow)) must exceed a block (\(b) tokens)")
        }
        let policy: EvictionPolicy = p.eviction == .lru ? LRUPolicy() : HintDrivenPolicy()
        var tiers = SimulatedTiers(
            policy: policy, blockTokens: b, bytesPerToken: profile.model.kvBytesPerToken,
            hbmBytes: p.hbmHoldsEverything ? Int.max / 4 : options.hbmBytes, dramBytes: options.dramBytes,
            diskBytes: options.diskBytes, lowerTiers: p.lowerTiers)
        var queue = AdmissionQueue<Job>()
        var thinkTimes = ThinkTimeEstimator()
        var due = ArrivalHeap()
        for (i, s) in trace.sessions.enumerated() where !s.turns.isEmpty {
            due.push(.init(time: s.arrivalSeconds, session: i, turn: 0))
        }
        let total = trace.turnCount
        var records: [TurnRecord] = []
        records.reserveCapacity(total)
        var running: [Running] = []
        /// Tokens dropped from the front of each session's chat, and its stored context.
        var offset: [Int: Int] = [:]
        var stored: [Int: Int] = [:]
        var prefetched: Set<String> = []
        var prefixOwner: String?
        var prefetchReady: [String: Double] = [:]
        var now = trace.sessions.map(\.arrivalSeconds).min() ?? 0
        let firstArrival = now
        var linkFree = 0.0
        var linkOutFree = 0.0
        var diskLoadFree = 0.0
        var diskBusy = 0.0
        var result = Result()

        /// Names the sessions to spare as the scheduler does, the running ones first, then the
        /// queued ones (not the chat whose namespace holds a prefix they share: only the shared
        /// blocks of it are prefetched); returns the window.
        func spareWindow() -> [String] {
            let window = queue.window(lookAhead: p.lookAhead, capacity: options.dramBytes) { name in
                tiers.sessionBytes(name)
            }
            policy.setUpcoming(window, running: queue.runningSessions)
            return window
        }

        func refreshWindow() {
            let window = spareWindow()
            let sharedBlocks = (trace.sharedPrefixTokens + b - 1) / b
            for s in window where !prefetched.contains(s) && !queue.isRunning(s) {
                prefetched.insert(s)
                var targets = [(s, Int?.none)]
                if let owner = prefixOwner, owner != s, !queue.isRunning(owner) {
                    targets.append((owner, sharedBlocks))
                }
                for (ns, blocks) in targets {
                    let bytes = tiers.prefetch(ns, blocks: blocks)
                    guard bytes > 0 else { continue }
                    let start = max(now, diskBusy)
                    diskBusy = start + profile.diskReadSeconds(bytes)
                    prefetchReady[ns] = diskBusy
                    result.diskBytesRead += bytes
                }
            }
        }

        /// Disk writes (demotions, write-through) run behind everything on the write-back queue and
        /// hold up no turn: only their bytes are counted.
        func chargeWrites(_ moved: SimulatedTiers.Moved) {
            result.diskBytesWritten += moved.diskWriteBytes
        }

        /// Starts the turns the batch and HBM have room for, in the queue's order.
        func admit() {
            while running.count < options.maxBatch, let job = queue.peek() {
                let s = trace.sessions[job.sessionIndex]
                let t = s.turns[job.turn]
                let off = offset[job.sessionIndex] ?? 0
                var prompt = max(1, t.promptTokens - off)
                var reusable = p.reuseKV ? min(stored[job.sessionIndex] ?? 0, prompt - 1) : 0
                // Outgrowing the window drops the oldest whole blocks; the rest stays valid.
                let excess = prompt + t.replyTokens - profile.model.contextWindow
                var dropBlocks = 0
                if excess > 0 {
                    dropBlocks = min((excess + b - 1) / b, max(0, prompt - 1) / b)
                    prompt -= dropBlocks * b
                    reusable = max(0, reusable - dropBlocks * b)
                }
                let pages = (prompt + t.replyTokens + b - 1) / b
                guard running.isEmpty || tiers.fits(session: job.session, pages: pages) else { break }
                _ = queue.start()
                prefetched.remove(job.session)
                // The scheduler renames the sessions to spare as it admits a turn, before the
                // turn's load begins (its prefetches queue behind the load).
                _ = spareWindow()
                if dropBlocks > 0 {
                    tiers.dropFront(job.session, blocks: dropBlocks)
                    offset[job.sessionIndex] = off + dropBlocks * b
                }
                // The prefix every chat shares (the template's system prompt) is stored once, in
                // the namespace of the chat that computed it first: every load touches that chat,
                // its copy counts as resident in HBM (the prefix cache's one hot copy), and the
                // other chats store only what follows it.
                let shared = p.reuseKV ? min(trace.sharedPrefixTokens, prompt - 1) : 0
                if shared > 0 {
                    if prefixOwner == nil { prefixOwner = job.session }
                    if let owner = prefixOwner, owner != job.session { policy.touch(session: owner) }
                }
                let own = prefixOwner == job.session ? 0 : shared
                var load = tiers.load(job.session, reusable: max(0, reusable - own))
                chargeWrites(load.moved)
                tiers.computed(job.session, total: prompt + t.replyTokens - own, from: load.reusedTokens)
                load.hbm += own
                load.reusedTokens += own
                chargeWrites(tiers.take())
                // The load: a disk read pipelined with the link layer by layer, behind earlier loads.
                let diskSeconds = profile.diskReadSeconds(load.moved.diskReadBytes)
                let linkSeconds = profile.linkSeconds(load.moved.linkBytes)
                var start = max(now, linkFree, prefetchReady[job.session] ?? 0)
                var seconds = linkSeconds
                if diskSeconds > 0 {
                    start = max(start, diskLoadFree)
                    seconds = max(diskSeconds, linkSeconds) + min(diskSeconds, linkSeconds) / layers
                    diskLoadFree = start + diskSeconds
                    diskBusy = max(diskBusy, diskLoadFree)
                }
                if seconds > 0 { linkFree = start + seconds }
                prefetchReady[job.session] = nil
                result.linkBytesIn += load.moved.linkBytes
                result.diskBytesRead += load.moved.diskReadBytes
                let writeThrough: Bool
                switch p.placementHints {
                case .none: writeThrough = false
                case .estimated:
                    writeThrough = (thinkTimes.estimate(job.session) ?? 0) > options.writeThroughAfterSeconds
                case .oracle: writeThrough = t.thinkSeconds > options.writeThroughAfterSeconds
                }
                running.append(
                    Running(
                        job: job, start: now, prompt: prompt, reply: t.replyTokens, reusable: reusable,
                        reused: load.reusedTokens, context: load.reusedTokens, loadStart: start, loadSeconds: seconds,
                        hits: load, sharedPrefix: own, writeThrough: writeThrough))
            }
        }

        func finish(_ r: Running) {
            let job = r.job
            let s = trace.sessions[job.sessionIndex]
            var saved = SimulatedTiers.Moved()
            if p.reuseKV {
                saved = tiers.save(job.session, from: r.reused - r.sharedPrefix, writeThrough: r.writeThrough)
                stored[job.sessionIndex] = r.prompt + r.reply
                if !options.hbmCachesSessions && p.lowerTiers {
                    tiers.releaseHBM(job.session)
                    saved.linkOutBytes += tiers.take().linkOutBytes
                }
            } else {
                tiers.discard(job.session)
            }
            chargeWrites(saved)
            result.linkBytesOut += saved.linkOutBytes
            var lag = 0.0
            if saved.linkOutBytes > 0 {
                let done = max(now, linkOutFree) + profile.linkSeconds(saved.linkOutBytes)
                linkOutFree = done
                if p.asyncSaving {
                    lag = done - now
                } else {
                    // The GPU holds until the save is out (the paper's synchronous baseline).
                    result.gpuSeconds += done - now
                    now = done
                }
            }
            queue.finished(job)
            // As the scheduler does: under the scheduler-aware policy the window is prefetched again.
            if p.eviction != .lru { prefetched.removeAll() }
            let firstToken = r.firstToken ?? now
            records.append(
                TurnRecord(
                    session: s.name, turn: job.turn, arrival_s: job.arrival, start_s: r.start,
                    first_token_s: firstToken,
                    end_s: now, prompt_tokens: r.prompt, reply_tokens: r.reply, reusable: r.reusable, reused: r.reused,
                    recomputed: r.prompt - r.reused, hits_hbm: r.hits.hbm, hits_dram: r.hits.dram,
                    hits_disk: r.hits.disk, disk_bytes: r.hits.moved.diskReadBytes,
                    load_ms: max(0, r.loadEnd - r.start) * 1000,
                    stall_ms: r.waitedForLoad ? max(0, (r.firstChunkAt ?? r.start) - r.start) * 1000 : 0,
                    save_lag_ms: lag * 1000))
            if job.turn + 1 < s.turns.count {
                due.push(
                    .init(time: now + s.turns[job.turn].thinkSeconds, session: job.sessionIndex, turn: job.turn + 1))
            }
            progress(records.count)
        }

        /// When a turn's first chunk may start in a step of `step` seconds: every layer of its
        /// load in before the step computes that layer.
        func earliestFirstChunk(_ r: Running, step: Double) -> Double {
            guard r.loadSeconds > 0 else { return r.loadStart }
            guard p.layerwiseLoading else { return r.loadEnd }
            return r.loadStart + max(r.loadSeconds / layers, r.loadSeconds - (layers - 1) / layers * step)
        }

        while records.count < total {
            while let next = due.first, next.time <= now {
                _ = due.pop()
                let s = trace.sessions[next.session]
                let name = s.name
                if p.placementHints == .estimated, next.turn > 0 {
                    thinkTimes.observe(name, gap: s.turns[next.turn - 1].thinkSeconds)
                }
                queue.enqueue(Job(sessionIndex: next.session, turn: next.turn, arrival: next.time, session: name))
            }
            // As the scheduler does: start what can start, then prefetch and spare the window.
            admit()
            refreshWindow()
            guard !running.isEmpty else {
                guard let next = due.first else {
                    throw .invalid("the simulation stalled with \(total - records.count) turns left (a bug)")
                }
                now = next.time
                continue
            }
            // The step: every decoding row, then prompt chunks in start order within the budget.
            let decoding = running.indices.filter { running[$0].firstToken != nil }
            var chunks: [(index: Int, tokens: Int)] = []
            var excluded: Set<Int> = []
            var step = 0.0
            for _ in 0..<3 {
                chunks = []
                var budget = options.prefillChunkTokens
                for i in running.indices where running[i].firstToken == nil && !excluded.contains(i) && budget > 0 {
                    let n = min(running[i].prefillLeft, budget)
                    chunks.append((i, n))
                    budget -= n
                }
                step = profile.stepSeconds(
                    decodeContexts: decoding.map { running[$0].context },
                    prefill: chunks.map { (tokens: $0.tokens, context: running[$0.index].context) })
                let late = chunks.filter { c in
                    running[c.index].firstChunkAt == nil
                        && earliestFirstChunk(running[c.index], step: step) > now + 1e-12
                }
                if late.isEmpty { break }
                for c in late {
                    excluded.insert(c.index)
                    running[c.index].waitedForLoad = true
                }
            }
            chunks.removeAll { excluded.contains($0.index) }
            if decoding.isEmpty && chunks.isEmpty {
                // Nothing can compute until a load is in (or a new turn arrives).
                var wake =
                    running.map { r in
                        let n = min(r.prefillLeft, options.prefillChunkTokens)
                        return earliestFirstChunk(
                            r, step: profile.stepSeconds(decodeContexts: [], prefill: [(tokens: n, context: r.context)])
                        )
                    }.min() ?? now
                if let next = due.first { wake = min(wake, next.time) }
                let until = max(wake, now + 1e-9)
                result.gpuStallSeconds += until - now
                now = until
                continue
            }
            // Decoding alone until the next event: take the steps together.
            var steps = 1
            if chunks.isEmpty && excluded.isEmpty {
                steps = decoding.map { running[$0].decodeLeft }.min() ?? 1
                if let next = due.first { steps = min(steps, max(1, Int(((next.time - now) / step).rounded(.up)))) }
                steps = max(1, steps)
            }
            let start = now
            result.prefillGPUSeconds += profile.prefillComputeSeconds(
                chunks.map { (tokens: $0.tokens, context: running[$0.index].context) })
            now += step * Double(steps)
            result.gpuSeconds += step * Double(steps)
            for c in chunks {
                if running[c.index].firstChunkAt == nil { running[c.index].firstChunkAt = start }
                running[c.index].context += c.tokens
                if running[c.index].prefillLeft == 0 {
                    running[c.index].firstToken = now
                    running[c.index].decodeLeft = running[c.index].reply - 1
                }
            }
            for i in decoding {
                running[i].decodeLeft -= steps
                running[i].context += steps
            }
            let done = running.indices.filter { running[$0].firstToken != nil && running[$0].decodeLeft <= 0 }
            for i in done.reversed() {
                let r = running.remove(at: i)
                finish(r)
            }
        }
        result.turns = records
        result.makespanSeconds = now - firstArrival
        result.blocksDropped = tiers.blocksDropped
        return result
    }
}
