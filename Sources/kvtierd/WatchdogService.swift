import KVTierServer
import ServiceLifecycle

/// Sends `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec`) until shutdown,
/// each time after the server's event loop has run a task, so a wedged loop stops the pings and
/// systemd restarts the daemon. Returns at once when no watchdog is set, and as soon as a graceful
/// shutdown starts (the sleep between pings is cancelled: with `WatchdogSec=60` a sleep left to run
/// out held every stop for up to 30 s).
struct WatchdogService: Service {
    let server: HTTPServer

    func run() async throws {
        guard let interval = ServiceManager.watchdogInterval() else { return }
        let half = Duration.microseconds(Int64(interval / 2))
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if (try? await server.probeEventLoop()) != nil { ServiceManager.watchdogPing() }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: half) }
        }
    }
}
