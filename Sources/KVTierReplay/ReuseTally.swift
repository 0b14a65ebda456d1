/// The reuse figures of a run's turns 2+ (the replay's and the simulator's alike): each turn's
/// reusable tokens (what the previous turn left), those reused, and where the reused ones were.
public struct ReuseTally: Sendable {
    public private(set) var reusable = 0
    public private(set) var reused = 0
    public private(set) var hbm = 0
    public private(set) var dram = 0
    public private(set) var disk = 0

    public init() {}

    /// The tally of turns given as (reusable, reused, hbm, dram, disk) tokens.
    public init(_ turns: [(reusable: Int, reused: Int, hbm: Int, dram: Int, disk: Int)]) {
        for t in turns { add(reusable: t.reusable, reused: t.reused, hbm: t.hbm, dram: t.dram, disk: t.disk) }
    }

    public mutating func add(reusable: Int, reused: Int, hbm: Int, dram: Int, disk: Int) {
        self.reusable += reusable
        self.reused += reused
        self.hbm += hbm
        self.dram += dram
        self.disk += disk
    }

    private var base: Double { Double(max(1, reusable)) }
    /// Share of the reusable tokens reused from any tier.
    public var reuseRate: Double { Double(reused) / base }
    /// Share found in memory (HBM or DRAM): a disk hit waits on the disk in the turn's critical path.
    public var hitRate: Double { Double(hbm + dram) / base }
    public var hitRateByTier: [String: Double] {
        ["hbm": Double(hbm) / base, "dram": Double(dram) / base, "disk": Double(disk) / base]
    }
}
