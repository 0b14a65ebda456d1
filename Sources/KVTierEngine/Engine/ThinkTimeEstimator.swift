/// Each session's think time (from the end of one of its replies to the arrival of its next
/// request), estimated from that session's own history: the median of its last `window` observed
/// gaps. The scheduler uses it as the placement hint when a request carries no
/// `kvtier.next_turn_in_seconds`. A value type; the `TurnScheduler` owns it under its lock.
public struct ThinkTimeEstimator {
    /// Gaps kept per session.
    let window: Int
    /// Sessions remembered at most; past it the half that ended longest ago is forgotten.
    let capacity: Int
    /// When each session's last turn ended (uptime nanoseconds), and whether a request of it has
    /// arrived since (its gap is recorded once).
    private var lastEnd: [String: (at: UInt64, open: Bool)] = [:]
    private var gaps: [String: [Double]] = [:]

    public init(window: Int = 5, capacity: Int = 100_000) {
        self.window = max(1, window)
        self.capacity = max(2, capacity)
    }

    /// A request of `session` arrived at `now`: the time since its last reply ended is one gap.
    mutating func arrived(_ session: String, at now: UInt64) {
        guard let last = lastEnd[session], last.open, now >= last.at else { return }
        lastEnd[session] = (last.at, false)
        record(session, gap: Double(now - last.at) / 1e9)
    }

    /// A gap measured elsewhere (a replay in virtual time): as if a reply of `session` had ended
    /// `seconds` before a request of it arrived.
    public mutating func observe(_ session: String, gap seconds: Double) {
        guard seconds >= 0, seconds.isFinite else { return }
        record(session, gap: seconds)
        // An entry with no reply end, so the session counts (first, as the oldest) when the
        // capacity is reached and its gaps are forgotten with it.
        if lastEnd[session] == nil { lastEnd[session] = (0, false) }
        if lastEnd.count > capacity { forgetOldest() }
    }

    private mutating func record(_ session: String, gap seconds: Double) {
        var g = gaps[session, default: []]
        g.append(seconds)
        if g.count > window { g.removeFirst(g.count - window) }
        gaps[session] = g
    }

    /// A turn of `session` ended at `now`.
    mutating func ended(_ session: String, at now: UInt64) {
        lastEnd[session] = (now, true)
        if lastEnd.count > capacity { forgetOldest() }
    }

    /// The expected seconds until `session`'s next request; nil before it has shown one gap.
    public func estimate(_ session: String) -> Double? {
        guard let g = gaps[session], !g.isEmpty else { return nil }
        let s = g.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    private mutating func forgetOldest() {
        let cut = lastEnd.values.map(\.at).sorted()[lastEnd.count / 2]
        for (session, last) in lastEnd where last.at < cut {
            lastEnd[session] = nil
            gaps[session] = nil
        }
    }
}
