import Foundation

/// Whether the remote tier is doing its job, and if not, why, since when and what to do.
///
/// * `healthy`: the cluster answers and takes writes.
/// * `degraded`: the cluster cannot be reached, refuses authentication or keeps redirecting.
///   Reads miss at once (the tokens are recomputed or served from the local tiers), writes are
///   dropped and counted; the tier probes the cluster every `retryIntervalSeconds`.
/// * `full`: the cluster refused a write for lack of memory (maxmemory reached with a
///   noeviction policy). Reads go on; writes are dropped until a probe write succeeds.
public struct RemoteTierHealth: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable {
        case healthy, degraded, full
    }

    public var state: State = .healthy
    public var reason: String?
    public var action: String?
    /// ISO 8601 UTC (nil when healthy).
    public var since: String?

    public init() {}

    public var isHealthy: Bool { state == .healthy }
    public var readable: Bool { state != .degraded }

    /// One line for logs and the CLI.
    public var summary: String {
        switch state {
        case .healthy: return "healthy"
        case .degraded, .full:
            return "\(state.rawValue.uppercased()) since \(since ?? "?"): \(reason ?? "unknown")"
                + (action.map { "; \($0)" } ?? "")
        }
    }
}

/// What the remote tier has done since it was created.
public struct RemoteTierStats: Sendable, Equatable, Codable {
    public var health = RemoteTierHealth()
    /// Blocks read and found valid, read and absent (expired, evicted, never written).
    public var hits = 0, misses = 0
    /// Blocks read whose value failed a check (key, header, LZ4 or checksum): never served.
    public var corrupt = 0
    /// Reads not attempted because the tier was degraded.
    public var skippedReads = 0
    /// Blocks and records written, bytes written and read (stored form).
    public var writes = 0, bytesWritten = 0, bytesRead = 0
    /// Writes dropped: the tier was degraded or full, the queue was over its byte limit, or the
    /// block was larger than `maxObjectBytes`.
    public var droppedWrites = 0
    /// Writes waiting to go out now, and their bytes.
    public var pendingWrites = 0, pendingBytes = 0
    /// Requests that failed (connection, authentication, refused writes).
    public var errors = 0
    /// Blocks the tier knows to be in the cluster (written here, or named by a session record
    /// read from it).
    public var knownBlocks = 0
}

extension RemoteTierStats {
    /// The remote tier in the store's per-tier table (`/v1/tiers`, metrics, `kvtierctl tiers`):
    /// blocks it knows of, reads and writes in stored bytes, corrupt values as checksum failures,
    /// and its health in the disk tier's form ("full" is degraded but readable).
    public var tierStats: TierStats {
        var h = DiskTierHealth(
            state: health.isHealthy ? .healthy : .degraded, reason: health.reason, action: health.action,
            since: health.since, readable: health.readable, writeErrors: errors)
        if health.state == .full { h.notice = "the cluster is full (maxmemory): writes are dropped" }
        return TierStats(
            tier: "remote", blocks: knownBlocks, hits: hits, misses: misses, bytesIn: bytesWritten, bytesOut: bytesRead,
            checksumFailures: corrupt, health: h)
    }
}
