import KVTierEngine
import KVTierStore

/// One way of serving the replayed trace: the baselines CachedAttention compares against, the
/// full system, and its ablations.
public struct ReplayPolicy: Sendable {
    public let name: String
    /// Reuse KV across turns at all.
    public var reuseKV = true
    /// Keep KV below HBM (false: an HBM-only prefix cache).
    public var lowerTiers = true
    /// Waiting turns whose sessions are prefetched and spared by eviction (0: no look-ahead).
    public var lookAhead = 0
    public var eviction = StoreConfiguration.PolicyKind.lru
    public var layerwiseLoading = true
    public var asyncSaving = true
    /// Where the placement hint (write-through for long think times) comes from.
    public enum Hints: Sendable, Equatable {
        /// None: every session stays in DRAM until eviction.
        case none
        /// The scheduler's estimate from each session's past think times, as kvtierd makes it
        /// for a request without `next_turn_in_seconds`.
        case estimated
        /// The trace's real next think time: an oracle no server has, an upper bound.
        case oracle
    }
    /// Scheduler-aware, so only the kvtier variants get hints.
    public var placementHints = Hints.none
    /// An upper bound no deployment reaches: HBM large enough to keep every session's KV, so
    /// nothing is ever loaded from a lower tier (kvtier's TTFT is reported as a multiple of it).
    public var hbmHoldsEverything = false

    public static let all: [ReplayPolicy] = [
        ReplayPolicy(name: "recompute", reuseKV: false),
        ReplayPolicy(name: "hbm-only", lowerTiers: false),
        // LMCache's behaviour: queued turns' KV prefetched on arrival (the same look-ahead as
        // kvtier's), evicted least recently used (LRU does not spare what is queued).
        ReplayPolicy(name: "tiered-lru", lookAhead: 4),
        ReplayPolicy(name: "kvtier", lookAhead: 4, eviction: .hintDriven, placementHints: .estimated),
        ReplayPolicy(name: "kvtier-oracle", lookAhead: 4, eviction: .hintDriven, placementHints: .oracle),
        ReplayPolicy(
            name: "kvtier-no-overlap", lookAhead: 4, eviction: .hintDriven, layerwiseLoading: false,
            placementHints: .estimated),
        ReplayPolicy(
            name: "kvtier-sync-save", lookAhead: 4, eviction: .hintDriven, asyncSaving: false,
            placementHints: .estimated),
    ]

    /// Not in `all` (run it by name): every session resident in HBM.
    public static let hbmOracle = ReplayPolicy(
        name: "hbm-oracle", lookAhead: 4, eviction: .hintDriven, placementHints: .estimated, hbmHoldsEverything: true)

    /// Not in `all` (run it by name): LRU without prefetch, CachedAttention's LRU baseline, which
    /// reads from disk whatever DRAM lost on the turn's critical path.
    public static let lruWithoutPrefetch = ReplayPolicy(name: "lru-no-prefetch")

    /// The policies run only by name.
    public static let extra = [hbmOracle, lruWithoutPrefetch]

    public static func named(_ name: String) -> ReplayPolicy? { (all + extra).first { $0.name == name } }

    /// The policies of the DRAM-capacity sweep.
    public static let swept = ["tiered-lru", "kvtier"]

    public func engineConfiguration(threads: Int) -> EngineConfiguration {
        var e = EngineConfiguration()
        e.threads = threads
        e.lookAhead = lookAhead
        e.reuseKV = reuseKV
        e.layerwiseLoading = layerwiseLoading
        e.asyncSaving = asyncSaving
        return e
    }
}
