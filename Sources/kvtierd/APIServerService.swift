import Dispatch
import KVTierEngine
import KVTierServer
import KVTierStore
import Logging
import ServiceLifecycle

/// Serves the API until graceful shutdown (SIGTERM, SIGINT), then: `STOPPING=1`, stop accepting,
/// fail waiting turns with 503 and let the running one finish, flush DRAM to disk (unless
/// `server.flush_on_stop = false`) and close RocksDB cleanly.
struct APIServerService: Service {
    let service: APIService
    let server: HTTPServer
    let listeners: [Listener]
    let engine: ChatEngine
    let store: TieredStore
    let flushOnStop: Bool
    let logger: Logger

    func run() async throws {
        // The group traps its signals before it runs services, so systemd hears READY=1 only
        // when a SIGTERM would already be handled.
        ServiceManager.ready(status: "serving on \(listeners.map(\.description).joined(separator: ", "))")
        do {
            try await gracefulShutdown()
        } catch {
            // Cancelled rather than shut down gracefully: stop the same way.
        }
        ServiceManager.stopping()
        logger.info("stopping: no new connections; waiting turns get 503, the running one finishes")
        await Self.offloaded { [self] in
            for l in listeners { l.close() }
            let failed = service.beginShutdown()
            service.drain()
            engine.quiesce()
            do {
                try store.close(flushingDRAM: flushOnStop)
                logger.info(
                    "stopped", metadata: ["waiting_turns_failed": "\(failed)", "dram_flushed": "\(flushOnStop)"])
            } catch {
                if store.diskHealth.isHealthy {
                    logger.error(
                        "the disk tier did not close cleanly; RocksDB recovers from its WAL at the next start",
                        metadata: ["error": "\(error)"])
                } else {
                    logger.warning(
                        """
                        stopped with the disk tier degraded: KV only in memory was not written and is recomputed \
                        after the restart
                        """,
                        metadata: ["error": "\(error)"])
                }
            }
            server.shutdown()
        }
    }

    /// Runs blocking work on a Dispatch thread, not on the concurrency pool.
    static func offloaded(_ work: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                work()
                c.resume()
            }
        }
    }
}
