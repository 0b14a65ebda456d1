import Foundation
import KVTierEngine
import KVTierServer
import Logging
import ServiceLifecycle

/// Forgets chats without a session id once they have been idle for `idleSeconds`
/// (`engine.anonymous_session_idle_seconds`): stock OpenAI clients start a session per chat and
/// never delete it, so without this their records and KV would pile up for as long as the daemon
/// lives. Sweeps every tenth of the limit (at least every second, at most every minute) until
/// shutdown; logs one line per sweep that forgot any, and counts them in
/// `kvtier_sessions_expired_total`. Does nothing when the limit is 0.
struct SessionExpiryService: Service {
    let engine: ChatEngine
    let idleSeconds: Double
    let metrics: ServerMetrics
    let logger: Logger

    func run() async throws {
        guard idleSeconds > 0 else { return }
        let interval = Duration.milliseconds(Int64(min(60, max(1, idleSeconds / 10)) * 1000))
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            guard !Task.isShuttingDownGracefully && !Task.isCancelled else { return }
            // Deleting waits for the store's queues: off the cooperative pool.
            let expired = await withCheckedContinuation { done in
                DispatchQueue.global(qos: .utility).async { [engine, idleSeconds] in
                    done.resume(returning: engine.expireIdleAnonymousSessions(idleSeconds: idleSeconds))
                }
            }
            guard !expired.isEmpty else { continue }
            metrics.recordExpiredSessions(expired.count)
            logger.info(
                "forgot idle chats without a session id",
                metadata: ["sessions": "\(expired.count)", "idle_seconds": "\(idleSeconds)"])
        }
    }
}
