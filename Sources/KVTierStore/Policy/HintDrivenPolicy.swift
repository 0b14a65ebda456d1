import Foundation

/// Scheduler-aware eviction (CachedAttention): the caller supplies the order in which sessions
/// will be used next (the scheduler's running turns, then its queue or look-ahead window) with
/// `setUpcoming(_:running:)`.
///
/// Eviction order:
/// 1. sessions not in the upcoming list, least recently used first;
/// 2. then, only if that was not enough, upcoming sessions, the one needed *last* first
///    (so the session about to run stays resident longest), the running ones last of all.
///
/// When a block of a running session needs the room (its turn saves new KV), that session
/// ranks by its next turn instead: queued again, at that place; otherwise with the sessions
/// not upcoming. So a chat whose next turn comes after the queued ones does not push them out.
///
/// Thread-safety: `recency`, `upcomingRank` and `queuedRank` are guarded by `lock` (an `NSLock`).
public final class HintDrivenPolicy: EvictionPolicy, @unchecked Sendable {
    // @unchecked: the mutable state is only touched while holding `lock`.

    public let name = "hint"
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var recency = SessionRecency()
    /// Guarded by `lock`: position of each session in the latest upcoming list, running
    /// sessions first (0 = next).
    private var upcomingRank: [String: Int] = [:]
    /// Guarded by `lock`: the same without the running turns (a running session here has a
    /// turn queued too), on the same scale.
    private var queuedRank: [String: Int] = [:]

    public init() {}

    /// Replaces the upcoming-use order: `sessions[0]` is needed next. A session listed twice
    /// keeps its first (earliest) position.
    public func setUpcoming(_ sessions: [String]) {
        setUpcoming(sessions, running: [])
    }

    public func setUpcoming(_ sessions: [String], running: [String]) {
        var rank: [String: Int] = [:]
        var queued: [String: Int] = [:]
        for (i, s) in (running + sessions).enumerated() {
            if rank[s] == nil { rank[s] = i }
            if i >= running.count && queued[s] == nil { queued[s] = i }
        }
        lock.withLock {
            upcomingRank = rank
            queuedRank = queued
        }
    }

    /// The current upcoming-use order.
    public var upcoming: [String] {
        lock.withLock { upcomingRank.sorted { $0.value < $1.value }.map(\.key) }
    }

    public func touch(session: String) {
        lock.withLock { recency.touch(session) }
    }

    /// Forgets the session's recency and removes it from the upcoming list.
    public func forget(session: String) {
        lock.withLock {
            recency.forget(session)
            upcomingRank[session] = nil
        }
    }

    public func evictionOrder(of candidates: [String]) -> [String] {
        lock.withLock { order(SessionRecency.unique(candidates)) { upcomingRank[$0] } }
    }

    public func evictionOrder(of candidates: [String], placing session: String) -> [String] {
        lock.withLock {
            order(SessionRecency.unique(candidates.filter { $0 != session } + [session])) {
                $0 == session ? queuedRank[$0] : upcomingRank[$0]
            }
        }
    }

    /// Not upcoming, least recent first; then upcoming, needed last first. Called with `lock` held.
    private func order(_ sessions: [String], rank: (String) -> Int?) -> [String] {
        let spare = sessions.filter { rank($0) == nil }
        let queued = sessions.compactMap { s in rank(s).map { (s, $0) } }
            .sorted { $0.1 > $1.1 }
            .map(\.0)
        return recency.leastRecentFirst(spare) + queued
    }
}
