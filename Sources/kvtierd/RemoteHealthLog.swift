import KVTierStore
import Logging

/// The journal lines about the remote tier: where it points at start-up, then one per change of
/// health (degraded, full, healthy again), never one per failed request; those are counted in
/// `kvtier_remote_errors_total` and shown by `kvtierctl tiers`.
enum RemoteHealthLog {
    static func report(_ remote: RemoteTier, logger: Logger) {
        logger.info("remote tier: Redis Cluster", metadata: [
            "seeds": "\(remote.configuration.seeds.joined(separator: ","))",
            "key_prefix": "\(remote.configuration.keyPrefix)",
        ])
        // Called on the remote tier's writer queue or a loader thread; logging does not block on it.
        remote.onHealthChange { h in
            if h.isHealthy {
                logger.notice("remote tier healthy again: blocks go to and come from the cluster")
            } else {
                logger.error("remote tier \(h.state.rawValue): serving from the local tiers", metadata: [
                    "reason": "\(h.reason ?? "?")", "action": "\(h.action ?? "")",
                ])
            }
        }
    }
}
