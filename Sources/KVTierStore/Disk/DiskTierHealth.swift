import Foundation

/// Whether the disk tier is doing its job, and if not, why, since when and what to do.
///
/// A value snapshot taken on the disk tier's queue; `TieredStore.stats` carries it to the server,
/// which reports it in `/healthz` and `/v1/tiers` (docs/protocol.md).
///
/// * `healthy`: RocksDB is open and takes writes.
/// * `degraded`: RocksDB could not be opened (locked by another process, read-only or missing
///   permissions, damage that could not be moved aside), or a write failed at run time (no space,
///   I/O error) and RocksDB went read-only. Puts fail with `DiskTierError.unavailable` and are
///   counted in `writeErrors`; gets still read the open database when `readable`, and miss
///   otherwise. The tier retries (probe the directory, then close and reopen RocksDB) every
///   `retryIntervalSeconds` and becomes healthy again by itself.
public struct DiskTierHealth: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable {
        case healthy, degraded
    }

    public var state: State
    /// What went wrong, with the underlying error (nil when healthy).
    public var reason: String?
    /// What the operator should do (nil when healthy).
    public var action: String?
    /// When the tier became degraded, ISO 8601 UTC (nil when healthy).
    public var since: String?
    /// Whether reads still reach the database while degraded (RocksDB open read-only).
    public var readable: Bool
    /// Puts and deletes that failed because of the database or the file system since the tier was
    /// created (capacity refusals and malformed blocks are not counted).
    public var writeErrors: Int
    /// Something the tier did on its own that the operator should know about, e.g. where a
    /// damaged database was moved at start-up (nil if nothing).
    public var notice: String?

    public init(state: State = .healthy, reason: String? = nil, action: String? = nil, since: String? = nil,
                readable: Bool = true, writeErrors: Int = 0, notice: String? = nil) {
        self.state = state
        self.reason = reason
        self.action = action
        self.since = since
        self.readable = readable
        self.writeErrors = writeErrors
        self.notice = notice
    }

    public var isHealthy: Bool { state == .healthy }

    /// One line for logs and the CLI.
    public var summary: String {
        switch state {
        case .healthy:
            return "healthy"
        case .degraded:
            return "DEGRADED since \(since ?? "?"): \(reason ?? "unknown")" + (action.map { "; \($0)" } ?? "")
        }
    }

    static func timestamp(_ date: Date = Date()) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: date)
    }
}
