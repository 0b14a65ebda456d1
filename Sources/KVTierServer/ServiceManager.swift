import CSystemd
import Dispatch
import Foundation

/// The daemon's side of systemd: readiness and stopping notifications (`Type=notify`), the
/// watchdog when `WatchdogSec` is set, and a listening socket passed by socket activation.
/// Outside systemd every call is a no-op.
public enum ServiceManager {
    /// `READY=1`: the model is loaded, the disk tier open and the socket listening.
    public static func ready(status: String) {
        _ = sd_notify(0, "READY=1\nSTATUS=\(status)")
    }

    public static func stopping() {
        _ = sd_notify(0, "STOPPING=1")
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asked for, if it asked; keep the result.
    public static func startWatchdog() -> DispatchSourceTimer? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        let timer = DispatchSource.makeTimerSource(queue: .global())
        let interval = DispatchTimeInterval.microseconds(Int(usec / 2))
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { _ = sd_notify(0, "WATCHDOG=1") }
        timer.resume()
        return timer
    }

    /// The listening socket systemd passed (socket activation), if exactly one was.
    public static func activatedSocket() -> Int32? {
        let n = sd_listen_fds(1)
        guard n == 1, sd_is_socket_unix(SD_LISTEN_FDS_START, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else { return nil }
        return SD_LISTEN_FDS_START
    }
}
