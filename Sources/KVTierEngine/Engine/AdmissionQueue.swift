/// A job the admission queue orders: the session it runs in and the owner it counts against.
public protocol AdmissionJob {
    var session: String { get }
    /// The unit of fair admission ("" for requests without an owner).
    var ownerKey: String { get }
}

/// The order in which queued turns start: the scheduling rules of `TurnScheduler`, as a value
/// that knows nothing of threads or engines, so that `kvtier-bench simulate` runs the same rules
/// in virtual time.
///
/// Admission is fair across owners: the owners with queued jobs take turns (round-robin, in the
/// order they first queued), and each owner's jobs start in the order they came (FCFS). A job
/// whose session is already running waits for it (turns of one session never overlap), without
/// holding up other sessions. The look-ahead window is the sessions of the next jobs to start
/// whose KV fits in DRAM together (CachedAttention's C_mem / S_kv), at most `lookAhead`.
///
/// Not thread-safe: its owner (the scheduler's lock, or the simulator's single thread) guards it.
public struct AdmissionQueue<Job: AdmissionJob> {
    /// Queued jobs per owner, oldest first.
    private var queues: [String: [Job]] = [:]
    /// Owners with queued jobs, the next to be served first.
    private var ring: [String] = []
    /// Sessions running now, and running jobs per owner.
    private var running: Set<String> = []
    private var runningPerOwner: [String: Int] = [:]

    public init() {}

    /// Queues `job` behind its owner's earlier ones.
    public mutating func enqueue(_ job: Job) {
        if queues[job.ownerKey] == nil { ring.append(job.ownerKey) }
        queues[job.ownerKey, default: []].append(job)
    }

    /// The job that would start next, left queued.
    public func peek() -> Job? { locate().map { queues[ring[$0.ring]]![$0.index] } }

    /// Takes the next job in fair order and marks it running: the oldest startable job of the
    /// first owner in the ring that has one; that owner goes to the back of the ring.
    public mutating func start() -> Job? {
        guard let at = locate() else { return nil }
        let owner = ring[at.ring]
        var rest = queues[owner] ?? []
        let job = rest.remove(at: at.index)
        ring.remove(at: at.ring)
        if rest.isEmpty {
            queues[owner] = nil
        } else {
            queues[owner] = rest
            ring.append(owner)
        }
        running.insert(job.session)
        runningPerOwner[job.ownerKey, default: 0] += 1
        return job
    }

    /// A running job has ended: its session may start again.
    public mutating func finished(_ job: Job) {
        running.remove(job.session)
        let left = runningPerOwner[job.ownerKey, default: 1] - 1
        runningPerOwner[job.ownerKey] = left > 0 ? left : nil
    }

    /// Removes every queued job (not the running ones), in ring order.
    public mutating func removeAllQueued() -> [Job] {
        let all = ring.flatMap { queues[$0] ?? [] }
        queues.removeAll()
        ring.removeAll()
        return all
    }

    private func locate() -> (ring: Int, index: Int)? {
        for (ri, owner) in ring.enumerated() {
            if let qi = queues[owner]?.firstIndex(where: { !running.contains($0.session) }) {
                return (ri, qi)
            }
        }
        return nil
    }

    /// Number of queued jobs.
    public var depth: Int { queues.values.reduce(0) { $0 + $1.count } }

    /// Number of running jobs.
    public var runningCount: Int { running.count }

    public func isRunning(_ session: String) -> Bool { running.contains(session) }

    /// The sessions running now, in a stable order.
    public var runningSessions: [String] { running.sorted() }

    /// Queued plus running jobs of `ownerKey`.
    public func outstanding(ownerKey: String) -> Int {
        (queues[ownerKey]?.count ?? 0) + (runningPerOwner[ownerKey] ?? 0)
    }

    /// The sessions of the next `limit` queued jobs in admission order (round-robin over owners).
    public func upcoming(_ limit: Int) -> [String] {
        var order: [String] = []
        var round = 0
        while order.count < limit {
            var any = false
            for owner in ring {
                guard let q = queues[owner], round < q.count else { continue }
                any = true
                order.append(q[round].session)
                if order.count == limit { break }
            }
            guard any else { break }
            round += 1
        }
        return order
    }

    /// The next sessions to start whose KV (`size`) fits in `capacity` bytes together (at least
    /// one), at most `lookAhead` jobs ahead: the window to prefetch and to spare.
    public func window(lookAhead: Int, capacity: Int, size: (String) -> Int) -> [String] {
        var bytes = 0
        var out: [String] = []
        for s in upcoming(lookAhead) where !out.contains(s) {
            let n = size(s)
            if !out.isEmpty && bytes + n > capacity { break }
            bytes += n
            out.append(s)
        }
        return out
    }
}
