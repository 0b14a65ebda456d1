import Foundation

/// Least recently used first: the session whose last `touch` is oldest is demoted first.
/// Sessions never touched count as older than all others.
///
/// Thread-safety: `recency` is guarded by `lock` (an `NSLock`).
public final class LRUPolicy: EvictionPolicy, @unchecked Sendable {
    // @unchecked: `recency` is only touched while holding `lock`.

    public let name = "lru"
    private let lock = NSLock()
    /// Guarded by `lock`.
    private var recency = SessionRecency()

    public init() {}

    public func touch(session: String) {
        lock.withLock { recency.touch(session) }
    }

    public func forget(session: String) {
        lock.withLock { recency.forget(session) }
    }

    public func evictionOrder(of candidates: [String]) -> [String] {
        let unique = SessionRecency.unique(candidates)
        return lock.withLock { recency.leastRecentFirst(unique) }
    }
}
