#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KVTierServer
import NIOCore

/// One listening channel of the daemon and how to describe and close it.
struct Listener: Sendable, CustomStringConvertible {
    let channel: Channel
    let description: String
    /// The socket file to remove at stop (not for a socket systemd passed, which systemd owns).
    let socketFile: String?

    /// The Unix socket (from systemd, or bound at the configured path) and, if configured, the
    /// loopback TCP listener.
    static func open(server: HTTPServer, configuration c: DaemonConfiguration) throws -> [Listener] {
        var out: [Listener] = []
        if let fd = ServiceManager.activatedSocket() {
            out.append(Listener(channel: try server.start(listeningSocket: fd), description: "the socket systemd passed", socketFile: nil))
        } else {
            let dir = (c.socket as NSString).deletingLastPathComponent
            if !dir.isEmpty {
                // Clients of every allowed user must reach the socket: its directory is not private.
                try FileManager.default.createDirectory(
                    atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            }
            do {
                let channel = try server.start(socketPath: c.socket, mode: mode_t(c.socketMode), group: c.socketGroup)
                out.append(Listener(channel: channel, description: c.socket, socketFile: c.socket))
            } catch {
                throw HTTPServer.Failure(description: "cannot listen on \(c.socket): \(error)")
            }
        }
        if let tcp = c.tcpListen {
            do {
                out.append(Listener(channel: try server.start(tcpHost: tcp.host, port: tcp.port), description: "tcp \(tcp.host):\(tcp.port)", socketFile: nil))
            } catch {
                for l in out { l.close() }
                throw HTTPServer.Failure(description: "cannot listen on \(tcp.host):\(tcp.port) (server.tcp_listen): \(error)")
            }
        }
        return out
    }

    func close() {
        try? channel.close().wait()
        if let socketFile { unlink(socketFile) }
    }
}
