#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOHTTP1
import NIOPosix

/// The daemon's HTTP/1.1 listener on a Unix domain socket.
public final class HTTPServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let service: APIService
    private let bodyLimit: Int

    public init(service: APIService, bodyLimit: Int = 1 << 20) {
        self.service = service
        self.bodyLimit = bodyLimit
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Binds the socket (replacing a stale socket file) and returns the listening channel.
    public func start(socketPath: String, mode: mode_t = 0o660, group groupName: String? = nil) throws -> Channel {
        unlink(socketPath)
        let service = self.service
        let bodyLimit = self.bodyLimit
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(HTTPHandler(service: service, bodyLimit: bodyLimit))
                }
            }
            .bind(unixDomainSocketPath: socketPath)
            .wait()
        chmod(socketPath, mode)
        if let groupName {
            guard let entry = getgrnam(groupName) else {
                try? channel.close().wait()
                throw Failure(description: "socket group '\(groupName)' does not exist; create it or change server.socket_group")
            }
            guard chown(socketPath, uid_t.max, entry.pointee.gr_gid) == 0 else {
                try? channel.close().wait()
                throw Failure(description: "cannot give \(socketPath) to group '\(groupName)': \(String(cString: strerror(errno)))")
            }
        }
        return channel
    }

    /// Serves on a socket that is already bound and listening (systemd socket activation).
    public func start(listeningSocket fd: Int32) throws -> Channel {
        let service = self.service
        let bodyLimit = self.bodyLimit
        return try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(HTTPHandler(service: service, bodyLimit: bodyLimit))
                }
            }
            .withBoundSocket(fd)
            .wait()
    }

    public func shutdown() {
        try? group.syncShutdownGracefully()
    }
}
