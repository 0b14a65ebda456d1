import CSystemd
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

    /// The watchdog interval systemd asked for (`WatchdogSec`), in microseconds, if it asked.
    public static func watchdogInterval() -> UInt64? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return usec
    }

    public static func watchdogPing() {
        _ = sd_notify(0, "WATCHDOG=1")
    }

    /// The listening socket systemd passed (socket activation), if exactly one was.
    public static func activatedSocket() -> Int32? {
        let n = sd_listen_fds(1)
        guard n == 1, sd_is_socket_unix(SD_LISTEN_FDS_START, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else { return nil }
        return SD_LISTEN_FDS_START
    }
}
