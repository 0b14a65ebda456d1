/// A snapshot of one tier's size and traffic, filled by the tier (or, for counters the tier
/// cannot see, by the store that moves blocks through it) and aggregated by the store.
///
/// Conventions, the same for every tier:
/// * `hits` / `misses`: lookups of a block in this tier that found / did not find it (a block
///   whose checksum failed on read counts as a miss and in `checksumFailures`).
/// * `promotions`: blocks that arrived in this tier from the slower tier below it
///   (disk -> DRAM, DRAM -> HBM).
/// * `demotions`: blocks that left this tier for the slower tier below it (HBM -> DRAM,
///   DRAM -> disk).
/// * `evictions`: blocks removed from this tier to make room, whether demoted or dropped
///   (only the disk tier drops data).
/// * `bytesIn` / `bytesOut`: payload bytes written into / read out of this tier, any direction.
///
/// A value type: taking a snapshot copies it, so it can be handed to any thread.
public struct TierStats: Sendable, Equatable, Codable, CustomStringConvertible {
    /// Which tier: "hbm", "dram", "disk", or a name the store chooses.
    public var tier: String
    public var capacityBytes: Int
    public var usedBytes: Int
    public var blocks: Int
    public var hits: Int
    public var misses: Int
    public var evictions: Int
    public var promotions: Int
    public var demotions: Int
    public var bytesIn: Int
    public var bytesOut: Int
    /// Blocks whose checksum failed when read back (counted, never returned).
    public var checksumFailures: Int
    /// Uncompressed payload bytes over stored bytes of the blocks held now; nil when the tier
    /// does not compress.
    public var compressionRatio: Double?
    /// Healthy or degraded, with the reason and the failed writes; only the disk tier reports
    /// it (nil for the memory tiers).
    public var health: DiskTierHealth?

    public init(
        tier: String,
        capacityBytes: Int = 0,
        usedBytes: Int = 0,
        blocks: Int = 0,
        hits: Int = 0,
        misses: Int = 0,
        evictions: Int = 0,
        promotions: Int = 0,
        demotions: Int = 0,
        bytesIn: Int = 0,
        bytesOut: Int = 0,
        checksumFailures: Int = 0,
        compressionRatio: Double? = nil,
        health: DiskTierHealth? = nil
    ) {
        self.tier = tier
        self.capacityBytes = capacityBytes
        self.usedBytes = usedBytes
        self.blocks = blocks
        self.hits = hits
        self.misses = misses
        self.evictions = evictions
        self.promotions = promotions
        self.demotions = demotions
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.checksumFailures = checksumFailures
        self.compressionRatio = compressionRatio
        self.health = health
    }

    /// Hits over lookups; nil before the first lookup.
    public var hitRate: Double? {
        let lookups = hits + misses
        return lookups == 0 ? nil : Double(hits) / Double(lookups)
    }

    /// Fraction of the capacity in use (0 when the capacity is 0).
    public var occupancy: Double {
        capacityBytes == 0 ? 0 : Double(usedBytes) / Double(capacityBytes)
    }

    /// Sums sizes and counters of two snapshots (e.g. two shards of one tier, or all tiers
    /// for a store-wide total). The compression ratio of the sum weights each part by its
    /// stored bytes; it is nil only if neither part compresses.
    public func merging(_ other: TierStats, as tier: String? = nil) -> TierStats {
        var ratio: Double?
        switch (compressionRatio, other.compressionRatio) {
        case (nil, nil):
            ratio = nil
        case (let a, let b):
            // original bytes = ratio * stored bytes; a tier without compression has ratio 1.
            let original = (a ?? 1) * Double(usedBytes) + (b ?? 1) * Double(other.usedBytes)
            let stored = Double(usedBytes + other.usedBytes)
            ratio = stored == 0 ? (a ?? b) : original / stored
        }
        return TierStats(
            tier: tier ?? self.tier,
            capacityBytes: capacityBytes + other.capacityBytes,
            usedBytes: usedBytes + other.usedBytes,
            blocks: blocks + other.blocks,
            hits: hits + other.hits,
            misses: misses + other.misses,
            evictions: evictions + other.evictions,
            promotions: promotions + other.promotions,
            demotions: demotions + other.demotions,
            bytesIn: bytesIn + other.bytesIn,
            bytesOut: bytesOut + other.bytesOut,
            checksumFailures: checksumFailures + other.checksumFailures,
            compressionRatio: ratio,
            health: health ?? other.health
        )
    }

    public var description: String {
        var s = "\(tier): \(usedBytes)/\(capacityBytes) B in \(blocks) blocks, hits \(hits), misses \(misses), "
        s += "evictions \(evictions), promotions \(promotions), demotions \(demotions), "
        s += "in \(bytesIn) B, out \(bytesOut) B"
        if checksumFailures > 0 { s += ", checksum failures \(checksumFailures)" }
        if let r = compressionRatio { s += ", compression \((r * 100).rounded() / 100)x" }
        if let h = health, !h.isHealthy { s += ", \(h.summary)" }
        return s
    }
}
