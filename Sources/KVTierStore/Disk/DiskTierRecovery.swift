/// How a `DiskTier` reacts when RocksDB cannot be used (docs/operations.md, "When the disk tier
/// is degraded").
public struct DiskTierRecovery: Sendable, Equatable {
    /// When the database cannot be opened: true starts the tier degraded (puts fail, gets miss,
    /// reopen retried on the timer); false makes `DiskTier.init` throw.
    public var degradeOnOpenFailure: Bool
    /// When RocksDB reports the database as damaged at open: move its files into
    /// `<state>/quarantine-<UTC time>/` and start empty (one notice in `DiskTierHealth`).
    /// Without it a damaged database is an open failure like any other.
    public var quarantineDamaged: Bool
    /// Seconds between attempts to bring a degraded tier back (probe the directory with a small
    /// write, then close and reopen RocksDB); 0 never retries.
    public var retryIntervalSeconds: Double

    public init(degradeOnOpenFailure: Bool, quarantineDamaged: Bool, retryIntervalSeconds: Double) {
        self.degradeOnOpenFailure = degradeOnOpenFailure
        self.quarantineDamaged = quarantineDamaged
        self.retryIntervalSeconds = retryIntervalSeconds
    }

    /// Open failures throw; a tier degraded at run time still retries every 5 s. For tools and
    /// tests that want to see every error.
    public static let strict = DiskTierRecovery(degradeOnOpenFailure: false, quarantineDamaged: false, retryIntervalSeconds: 5)

    /// What the daemon uses: keep serving without the disk rather than refusing to start, move a
    /// damaged database aside, retry every 5 s (well inside the 30 s goal D10).
    public static let serving = DiskTierRecovery(degradeOnOpenFailure: true, quarantineDamaged: true, retryIntervalSeconds: 5)
}
