/// A snapshot of every tier's counters and of the modelled link.
public struct StoreStats: Sendable {
    public var hbm: TierStats
    public var dram: TierStats
    public var disk: TierStats
    public var link: CopyEngine.Counters
    public var savesInFlight: Int
    /// The remote tier's counters and health (nil: no remote tier configured).
    public var remote: RemoteTierStats?

    /// The tiers, top to bottom (the remote tier last, when configured).
    public var tiers: [TierStats] { [hbm, dram, disk] + (remote.map { [$0.tierStats] } ?? []) }
}

/// Where one session's blocks are, per layer.
public struct SessionPlacement: Sendable, Equatable {
    public var session: String
    /// For each layer, the tiers holding each of its blocks (a block may be in several).
    public var layers: [[BlockPlacement]]

    public init(session: String, layers: [[BlockPlacement]]) {
        self.session = session
        self.layers = layers
    }

    public struct BlockPlacement: Sendable, Equatable {
        public var tokens: Range<Int>
        public var tiers: [Tier]

        public init(tokens: Range<Int>, tiers: [Tier]) {
            self.tokens = tokens
            self.tiers = tiers
        }
    }
}
