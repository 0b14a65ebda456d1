/// Sizing a deployment: the smallest DRAM and disk tiers with which a policy reaches a target
/// TTFT p99 (from arrival, all turns) or hit rate on a given trace. Every pair of the given
/// sizes is simulated; the answer is the pair meeting the target at the least storage cost,
/// priced as in CachedAttention's cost model (AWS: $0.0088 per GB-hour of DRAM, $0.00082 per
/// GB-hour of SSD).
public struct CapacityPlan: Sendable {
    public enum Target: Sendable, Equatable {
        case ttftP99Ms(Double)
        case hitRate(Double)

        public var description: String {
            switch self {
            case .ttftP99Ms(let ms): return "TTFT p99 from arrival at most \(ms) ms"
            case .hitRate(let r): return "memory hit rate at least \(100 * r)%"
            }
        }
    }

    public struct Point: Codable, Sendable {
        public var dram_bytes: Int
        public var disk_bytes: Int
        public var ttft_p99_ms: Double
        public var hit_rate: Double
        public var reuse_rate: Double
        public var storage_dollars_per_hour: Double
        public var meets_target: Bool
    }

    public static let dramDollarsPerGBHour = 0.0088
    public static let diskDollarsPerGBHour = 0.00082

    public let profile: CostProfile
    /// The policy and limits every configuration runs with (its DRAM and disk sizes are replaced).
    public let options: Simulation.Options
    public let target: Target

    public init(profile: CostProfile, options: Simulation.Options, target: Target) {
        self.profile = profile
        self.options = options
        self.target = target
    }

    /// Simulates every (DRAM, disk) pair; `progress(done, total)` after each.
    public func evaluate(
        _ trace: SimulatedTrace, dramSizes: [Int], diskSizes: [Int], progress: (Int, Int) -> Void = { _, _ in }
    ) throws(SimulatorError) -> [Point] {
        guard !dramSizes.isEmpty, !diskSizes.isEmpty else { throw .invalid("the plan needs DRAM and disk sizes") }
        var points: [Point] = []
        for disk in diskSizes.sorted() {
            for dram in dramSizes.sorted() {
                var o = options
                o.dramBytes = dram
                o.diskBytes = disk
                let r = try Simulation(profile: profile, options: o).run(trace)
                let s = SimulationSummary(policy: o.policy.name, options: o, result: r)
                let cost =
                    Double(dram) / 1e9 * Self.dramDollarsPerGBHour + Double(disk) / 1e9 * Self.diskDollarsPerGBHour
                let meets: Bool
                switch target {
                case .ttftP99Ms(let ms): meets = s.ttft_from_arrival_ms.p99 <= ms
                case .hitRate(let rate): meets = s.hit_rate >= rate
                }
                points.append(
                    Point(
                        dram_bytes: dram, disk_bytes: disk, ttft_p99_ms: s.ttft_from_arrival_ms.p99,
                        hit_rate: s.hit_rate, reuse_rate: s.reuse_rate, storage_dollars_per_hour: cost,
                        meets_target: meets))
                progress(points.count, dramSizes.count * diskSizes.count)
            }
        }
        return points
    }

    /// The pair meeting the target at the least cost (the smaller DRAM on a tie).
    public static func cheapest(_ points: [Point]) -> Point? {
        points.filter(\.meets_target).min {
            ($0.storage_dollars_per_hour, $0.dram_bytes) < ($1.storage_dollars_per_hour, $1.dram_bytes)
        }
    }
}
