import KVTierServer
import ServiceLifecycle

/// Sends `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec`) until shutdown;
/// returns at once when no watchdog is set.
struct WatchdogService: Service {
    func run() async throws {
        guard let interval = ServiceManager.watchdogInterval() else { return }
        let half = Duration.microseconds(Int64(interval / 2))
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            ServiceManager.watchdogPing()
            try? await Task.sleep(for: half)
        }
    }
}
