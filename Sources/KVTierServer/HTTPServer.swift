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

    public init(service: APIService) {
        self.service = service
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// Binds the socket (replacing a stale socket file) and returns the listening channel.
    public func start(socketPath: String, mode: mode_t = 0o660) throws -> Channel {
        unlink(socketPath)
        let service = self.service
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(HTTPHandler(service: service))
                }
            }
            .bind(unixDomainSocketPath: socketPath)
            .wait()
        chmod(socketPath, mode)
        return channel
    }

    public func shutdown() {
        try? group.syncShutdownGracefully()
    }
}
