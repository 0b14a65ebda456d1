/// Sizes and behaviour of a `TieredStore`.
public struct StoreConfiguration: Sendable {
    /// Directory of the RocksDB disk tier.
    public var stateDirectory: String
    /// Simulated device memory (HBM) arena.
    public var hbmCapacityBytes: Int = 512 << 20
    /// Host memory tier.
    public var dramCapacityBytes: Int = 4 << 30
    /// Stored (compressed) bytes on disk.
    public var diskCapacityBytes: Int = 20 << 30
    /// Tokens per block (one block = one layer's keys and values for this many tokens).
    public var blockTokens: Int = 256
    /// The modelled DRAM <-> HBM link.
    public var link = CopyEngine.Configuration()
    /// A modelled disk, for tests and benchmarks: every block the store reads from the disk tier
    /// takes at least `latency + bytes / bandwidth`. Unthrottled by default (the disk is the
    /// machine's own).
    public var diskReadModel = CopyEngine.Configuration.unthrottled
    /// Keep DRAM blocks byte-shuffled and LZ4-compressed.
    public var compressDRAM = false
    /// Byte-shuffle F16 data before LZ4 on disk.
    public var shuffleOnDisk = true
    /// fsync the disk tier's WAL on every block written (survives power loss) instead of only
    /// on `flush()` (survives a process kill; see docs/operations.md).
    public var syncEveryDiskWrite = false
    /// Group commit: how often the disk tier's WAL is synced when blocks were written (seconds;
    /// 0 turns the timer off, leaving `flush()` and `close()`).
    public var diskFlushInterval: Double = 0.2
    /// What the disk tier does when RocksDB cannot be used: `.strict` (the default) makes the
    /// store's init throw when it cannot be opened; the daemon uses `.serving` (start degraded,
    /// move a damaged database aside, retry every 5 s). Either way a tier degraded at run time
    /// keeps serving reads and retries.
    public var diskRecovery: DiskTierRecovery = .strict
    /// At most this many saves in flight; `save` blocks the caller beyond it (back-pressure).
    public var maxSavesInFlight = 256
    /// Keep KV below HBM: saves go on to DRAM and disk, and HBM evictions move blocks down.
    /// false makes the store an HBM-only prefix cache (what an engine's own cache gives, like
    /// vLLM's automatic prefix caching): evicted blocks are gone. A benchmark baseline.
    public var lowerTiers = true
    public var policy: PolicyKind = .hintDriven
    /// A Redis Cluster below the disk tier, shared by several nodes (nil: none).
    public var remote: RemoteTierConfiguration?

    public enum PolicyKind: String, Sendable {
        case lru
        case hintDriven = "hint"
    }

    public init(stateDirectory: String) {
        self.stateDirectory = stateDirectory
    }
}

/// Where a saved block should stay.
public enum Placement: Sendable, Equatable {
    /// Keep in DRAM; it goes to disk only when DRAM must make room (write-back).
    case keepInDRAM
    /// Write to disk now as well (the session's next turn is far away).
    case writeThrough
}

/// A storage tier.
public enum Tier: String, Sendable, Codable, Comparable {
    case hbm, dram, disk, remote

    public static func < (a: Tier, b: Tier) -> Bool {
        let order: [Tier] = [.hbm, .dram, .disk, .remote]
        return order.firstIndex(of: a)! < order.firstIndex(of: b)!
    }
}
