import Foundation

/// Chooses which sessions leave a tier when it must make room (the store demotes them: HBM ->
/// DRAM -> disk). A policy only ranks sessions; the store decides which sessions are
/// candidates (those with blocks in the full tier and not pinned by a running request) and
/// moves the data.
///
/// Implementations are `Sendable` classes whose state is guarded by a lock, so the store may
/// call them from any of its queues.
public protocol EvictionPolicy: AnyObject, Sendable {
    /// Short name for statistics and logs ("lru", "hint").
    var name: String { get }
    /// `session` was just used (loaded, saved, decoded).
    func touch(session: String)
    /// `session` is gone (ended or deleted everywhere); drops what the policy knows of it.
    func forget(session: String)
    /// The scheduler's upcoming-use order (`sessions[0]` is needed next); a policy that does not
    /// look ahead ignores it.
    func setUpcoming(_ sessions: [String])
    /// The same, with the sessions whose turns run now (`running`) spared before every queued
    /// one, except when a block of their own needs the room (`evictionOrder(of:placing:)`).
    func setUpcoming(_ sessions: [String], running: [String])
    /// `candidates` (duplicates ignored) ordered from first to evict to last.
    func evictionOrder(of candidates: [String]) -> [String]
    /// The order when a block of `session` needs the room: `candidates` and `session` itself,
    /// ranked by when each is needed next (the store evicts those before `session`, and keeps
    /// the block out of the tier when they are not enough). A running session ranks here by its
    /// next turn, not the one now running: its new blocks are needed no sooner than that.
    func evictionOrder(of candidates: [String], placing session: String) -> [String]
    /// Sessions to demote, in order, until enough bytes are freed; the default implementation
    /// below takes `evictionOrder(of:)` and is what both policies use.
    func victims(among candidates: [String], bytesNeeded: Int, sizeOf: (String) -> Int) -> [String]
}

extension EvictionPolicy {
    public func setUpcoming(_ sessions: [String]) {}

    public func setUpcoming(_ sessions: [String], running: [String]) { setUpcoming(running + sessions) }

    /// A policy that does not look ahead always lets the entering block in (a classic LRU cache:
    /// the least recently used others go), so `session` itself is never in the order.
    public func evictionOrder(of candidates: [String], placing session: String) -> [String] {
        evictionOrder(of: candidates.filter { $0 != session })
    }

    /// Sessions to demote, in order, so that a block of `session` finds `bytesNeeded` bytes: only
    /// those the policy ranks before `session` (`evictionOrder(of:placing:)`), sessions of size 0
    /// skipped; nil when they are not enough (the block then stays out of the tier).
    public func victims(
        placing session: String, among candidates: [String], bytesNeeded: Int, sizeOf: (String) -> Int
    ) -> [String]? {
        guard bytesNeeded > 0 else { return [] }
        var chosen: [String] = []
        var freed = 0
        for s in evictionOrder(of: candidates, placing: session) {
            if s == session { break }
            let size = sizeOf(s)
            guard size > 0 else { continue }
            chosen.append(s)
            freed += size
            if freed >= bytesNeeded { return chosen }
        }
        return nil
    }

    /// Sessions to demote, in order, until their sizes add up to at least `bytesNeeded`.
    /// Sessions of size 0 are skipped (evicting them frees nothing). If all candidates together
    /// are not enough, all of them are returned (the caller sees the shortfall by summing and
    /// must then wait or fail). `bytesNeeded <= 0` returns an empty list.
    ///
    /// `sizeOf` is called without any policy lock held, so it may take the tier's lock.
    public func victims(among candidates: [String], bytesNeeded: Int, sizeOf: (String) -> Int) -> [String] {
        guard bytesNeeded > 0 else { return [] }
        var chosen: [String] = []
        var freed = 0
        for session in evictionOrder(of: candidates) {
            let size = sizeOf(session)
            guard size > 0 else { continue }
            chosen.append(session)
            freed += size
            if freed >= bytesNeeded { break }
        }
        return chosen
    }
}

/// Recency bookkeeping shared by the policies: a logical clock stamped on each touch.
/// Not thread-safe by itself; each policy keeps one under its own lock.
struct SessionRecency {
    private var clock: UInt64 = 0
    private var lastUse: [String: UInt64] = [:]

    mutating func touch(_ session: String) {
        clock += 1
        lastUse[session] = clock
    }

    mutating func forget(_ session: String) {
        lastUse[session] = nil
    }

    /// When `session` was last touched; 0 (older than anything) if never.
    func stamp(_ session: String) -> UInt64 { lastUse[session] ?? 0 }

    /// `sessions` in their order, each once.
    static func unique(_ sessions: [String]) -> [String] {
        var seen = Set<String>()
        return sessions.filter { seen.insert($0).inserted }
    }

    /// `sessions` least recently used first; never-touched ones first of all, ties by name.
    func leastRecentFirst(_ sessions: [String]) -> [String] {
        sessions.map { ($0, stamp($0)) }
            .sorted { ($0.1, $0.0) < ($1.1, $1.0) }
            .map(\.0)
    }
}

