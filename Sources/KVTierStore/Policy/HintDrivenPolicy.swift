import Foundation

/// Scheduler-aware eviction (CachedAttention): the caller supplies the order in which sessions
/// will be used next (the scheduler's queue or look-ahead window) with `setUpcoming(_:)`.
///
/// Eviction order:
/// 1. sessions not in the upcoming list, least recently used first;
/// 2. then, only if that was not enough, upcoming sessions, the one needed *last* first
///    (so the session about to run stays resident longest).
///
/// Thread-safety: `recency` and `upcomingRank` are guarded by `lock` (an `NSLock`).
public final class HintDrivenPolicy: EvictionPolicy, @unchecked Sendable {
    // @unchecked: the mutable state is only touched while holding `lock`.

    public let name = "hint"
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var recency = SessionRecency()
    /// Guarded by `lock`: position of each session in the latest upcoming list (0 = next).
    private var upcomingRank: [String: Int] = [:]

    public init() {}

    /// Replaces the upcoming-use order: `sessions[0]` is needed next. A session listed twice
    /// keeps its first (earliest) position.
    public func setUpcoming(_ sessions: [String]) {
        var rank: [String: Int] = [:]
        for (i, s) in sessions.enumerated() where rank[s] == nil { rank[s] = i }
        lock.withLock { upcomingRank = rank }
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
        let unique = SessionRecency.unique(candidates)
        return lock.withLock {
            let spare = unique.filter { upcomingRank[$0] == nil }
            let queued = unique.compactMap { s in upcomingRank[s].map { (s, $0) } }
                .sorted { $0.1 > $1.1 }
                .map(\.0)
            return recency.leastRecentFirst(spare) + queued
        }
    }
}
