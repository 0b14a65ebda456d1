#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The daemon's HTTP/1.1 listeners: the Unix domain socket (bound here, or passed by systemd
/// socket activation) and, optionally, loopback TCP. Every connection on the Unix socket starts
/// by reading its peer's credentials (SO_PEERCRED, SO_PEERGROUPS); one whose credentials cannot
/// be read is closed. A connection over `server.max_connections` or its user's
/// `server.max_connections_per_user` is answered 503 or 429 at once and closed (`ConnectionLimiter`).
public final class HTTPServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let service: APIService
    private let logger: Logger
    private let connections = ConnectionLimiter()

    public init(service: APIService, logger: Logger = Logger(label: "kvtierd")) {
        self.service = service
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    private func bootstrap(local: Bool) -> ServerBootstrap {
        let service = self.service
        let logger = self.logger
        let connections = self.connections
        return ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            // A client that half-closes after sending its request (`shutdown(SHUT_WR)`, as
            // `nc -N` and some scripted clients do) still gets its response; the HTTP pipeline
            // closes once it is written. A client that is really gone is noticed when a write fails.
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                let peer: EventLoopFuture<Peer> =
                    local ? PeerCredentials.read(from: channel).map { Peer.local($0) } : channel.eventLoop.makeSucceededFuture(.tcp)
                // The future completes on the channel's own loop, so the pipeline is built in place.
                return peer.flatMapThrowing { peer in
                    let user = peer.namespace
                    if let refusal = connections.admit(user, limits: service.limits.withLockedValue { $0 }) {
                        try channel.pipeline.syncOperations.addHandler(HTTPResponseEncoder())
                        try channel.pipeline.syncOperations.addHandler(ConnectionRefusal(refusal))
                        return
                    }
                    channel.closeFuture.whenComplete { _ in connections.release(user) }
                    try HTTPServer.installConnectionPipeline(channel.pipeline.syncOperations, service: service, peer: peer)
                }.flatMapErrorThrowing { error in
                    logger.warning("closing a connection whose peer credentials cannot be read", metadata: ["error": "\(error)"])
                    throw error
                }
            }
    }

    /// Installs one connection's handlers, in order: the timeouts (on raw bytes), NIO's HTTP/1.1
    /// decoder and encoder with pipelining, `ProtocolErrorResponder`, `WritabilityGate` (no more
    /// requests while the answers are not being read), and `HTTPHandler` in front of `service`. Runs on the channel's event loop. The fuzz tests build the same pipeline on an
    /// `EmbeddedChannel` through this function.
    static func installConnectionPipeline(
        _ pipeline: ChannelPipeline.SynchronousOperations, service: any HTTPRequestResponder, peer: Peer
    ) throws {
        let timeouts = ConnectionTimeouts(limits: { service.limits.withLockedValue { $0 } })
        try pipeline.addHandler(timeouts)
        try pipeline.configureHTTPServerPipeline(withErrorHandling: false)
        try pipeline.addHandler(ProtocolErrorResponder())
        try pipeline.addHandler(WritabilityGate())
        try pipeline.addHandler(HTTPHandler(service: service, peer: peer, timeouts: timeouts))
    }

    /// Binds the socket (replacing a stale socket file), sets its mode and group, and returns
    /// the listening channel.
    public func start(socketPath: String, mode: mode_t = 0o660, group groupName: String? = nil) throws -> Channel {
        unlink(socketPath)
        let channel = try bootstrap(local: true).bind(unixDomainSocketPath: socketPath).wait()
        chmod(socketPath, mode)
        if let groupName {
            guard let gid = AccessPolicy.groupID(named: groupName) else {
                try? channel.close().wait()
                throw Failure(description: "socket group '\(groupName)' does not exist; create it or change server.socket_group")
            }
            guard chown(socketPath, uid_t.max, gid) == 0 else {
                try? channel.close().wait()
                throw Failure(description: "cannot give \(socketPath) to group '\(groupName)': \(String(cString: strerror(errno)))")
            }
        }
        return channel
    }

    /// Serves on a Unix socket that is already bound and listening (systemd socket activation).
    public func start(listeningSocket fd: Int32) throws -> Channel {
        try bootstrap(local: true).withBoundSocket(fd).wait()
    }

    /// Listens on loopback TCP (the configuration only admits loopback hosts).
    public func start(tcpHost host: String, port: Int) throws -> Channel {
        try bootstrap(local: false).bind(host: host, port: port).wait()
    }

    /// Returns once the event loop has run a task: the watchdog pings only when the loop that
    /// serves every connection is alive, so a wedged loop gets the daemon restarted.
    public func probeEventLoop() async throws {
        try await group.next().submit {}.get()
    }

    public func shutdown() {
        try? group.syncShutdownGracefully()
    }
}
