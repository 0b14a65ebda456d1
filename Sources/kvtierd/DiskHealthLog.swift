import KVTierStore
import Logging

/// The journal lines about the disk tier's health: one when the daemon starts with the tier
/// degraded or after moving a damaged database aside, then one per change of state (degraded,
/// healthy again), never one per failed write. The failed writes are counted in
/// `kvtier_tier_write_errors_total{tier="disk"}` and in `kvtierctl tiers`.
enum DiskHealthLog {
    static func report(_ store: TieredStore, logger: Logger) {
        let health = store.diskHealth
        let directory = store.diskDirectory
        if let notice = health.notice {
            logger.warning("disk tier: damaged database moved aside, started empty", metadata: [
                "state": "\(directory)", "what_happened": "\(notice)",
            ])
        }
        if !health.isHealthy { log(health, directory: directory, logger: logger) }
        // Called on the disk tier's queue; logging does not block on it.
        store.onDiskHealthChange { h in log(h, directory: directory, logger: logger) }
    }

    private static func log(_ h: DiskTierHealth, directory: String, logger: Logger) {
        if h.isHealthy {
            logger.notice("disk tier healthy again: writes to the state directory resume", metadata: [
                "state": "\(directory)", "write_errors": "\(h.writeErrors)",
            ])
        } else {
            logger.error("disk tier degraded: serving from memory and recomputing", metadata: [
                "state": "\(directory)", "reason": "\(h.reason ?? "?")", "action": "\(h.action ?? "")",
                "readable": "\(h.readable)",
            ])
        }
    }
}
