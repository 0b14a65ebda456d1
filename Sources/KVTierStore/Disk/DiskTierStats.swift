/// A snapshot of the disk tier's counters, taken on its queue.
///
/// Byte counts are of what RocksDB stores for the block records' values (36-byte header plus
/// LZ4 data), the quantity `capacityBytes` limits; RocksDB's own overhead (keys, index records,
/// SST metadata, space not yet reclaimed by compaction) is not included.
public struct DiskTierStats: Sendable, Equatable, CustomStringConvertible {
    /// Limit on `storedBytes`.
    public var capacityBytes: Int
    /// Stored (compressed) bytes of all blocks on disk now.
    public var storedBytes: Int
    /// Raw (uncompressed) payload bytes of all blocks on disk now.
    public var rawBytes: Int
    /// Blocks on disk now.
    public var blockCount: Int
    /// Reads since open that returned a block.
    public var hits: Int
    /// Reads since open that returned no block, including the corrupt ones.
    public var misses: Int
    /// Blocks found damaged since open (on read or while rebuilding the index); each was deleted.
    public var corruptBlocks: Int
    /// Reads since open that failed with an I/O error (reported as misses, block kept).
    public var readErrors: Int
    /// Stored bytes written by puts since open.
    public var bytesWritten: Int
    /// Stored bytes read by gets since open.
    public var bytesRead: Int
    /// Raw payload bytes of the blocks put since open.
    public var rawBytesWritten: Int
    /// Raw payload bytes of the blocks returned by gets since open.
    public var rawBytesRead: Int
    /// Healthy or degraded, and the count of failed writes (filled in by `DiskTier.stats`).
    public var health = DiskTierHealth()

    /// Raw bytes per stored byte of the blocks on disk now (1 when empty).
    public var compressionRatio: Double {
        storedBytes > 0 ? Double(rawBytes) / Double(storedBytes) : 1
    }

    public init(capacityBytes: Int, storedBytes: Int = 0, rawBytes: Int = 0, blockCount: Int = 0, hits: Int = 0,
                misses: Int = 0, corruptBlocks: Int = 0, readErrors: Int = 0, bytesWritten: Int = 0, bytesRead: Int = 0,
                rawBytesWritten: Int = 0, rawBytesRead: Int = 0) {
        self.capacityBytes = capacityBytes
        self.storedBytes = storedBytes
        self.rawBytes = rawBytes
        self.blockCount = blockCount
        self.hits = hits
        self.misses = misses
        self.corruptBlocks = corruptBlocks
        self.readErrors = readErrors
        self.bytesWritten = bytesWritten
        self.bytesRead = bytesRead
        self.rawBytesWritten = rawBytesWritten
        self.rawBytesRead = rawBytesRead
    }

    /// The store-wide form: used bytes are stored (compressed) bytes, bytes in and out are raw
    /// payload bytes, corrupt blocks are checksum failures. Evictions, promotions and demotions
    /// are decided by the store, which fills them in.
    public var tierStats: TierStats {
        TierStats(tier: "disk", capacityBytes: capacityBytes, usedBytes: storedBytes, blocks: blockCount, hits: hits,
                  misses: misses, bytesIn: rawBytesWritten, bytesOut: rawBytesRead, checksumFailures: corruptBlocks,
                  compressionRatio: compressionRatio, health: health)
    }

    public var description: String {
        "disk: \(blockCount) blocks, \(storedBytes)/\(capacityBytes) bytes stored (raw \(rawBytes), ratio "
            + "\(Double(Int(compressionRatio * 1000)) / 1000)), hits \(hits), misses \(misses), corrupt \(corruptBlocks), "
            + "read errors \(readErrors), written \(bytesWritten), read \(bytesRead), write errors \(health.writeErrors), "
            + health.summary
    }
}
