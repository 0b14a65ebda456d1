import Foundation
import KVTierAPI
import NIOCore
import NIOHTTP1
import NIOPosix

/// kvtierctl's HTTP/1.1 client for kvtierd's Unix socket, on SwiftNIO's own client pieces
/// (`ClientBootstrap`, the HTTP client codec, `NIOAsyncChannel`): one request per connection;
/// NIO decodes the chunked bodies, this type reads the server-sent events out of them. Bodies
/// are the shared `KVTierAPI` types, read with `APIJSON`.
struct DaemonClient: Sendable {
    let socketPath: String

    struct Failure: Error, CustomStringConvertible {
        /// What went wrong, as the exit status `kvtierctl` ends with (docs/operations.md).
        enum Kind: Int32 {
            case failed = 1
            case notRunning = 3
            case notFound = 4
            case denied = 5
            case rejected = 6
            case serverError = 7
        }
        let description: String
        var kind = Kind.failed

        /// The kind an HTTP error status stands for.
        static func kind(status: Int) -> Kind {
            switch status {
            case 404: return .notFound
            case 401, 403: return .denied
            case 400..<500: return .rejected
            default: return .serverError
            }
        }
    }

    /// The socket: `--socket`, then `KVTIER_SOCKET`, then `run/kvtierd.sock` (what `make run` uses).
    static func socketPath(flag: String?) -> String {
        if let flag, !flag.isEmpty { return flag }
        if let env = ProcessInfo.processInfo.environment["KVTIER_SOCKET"], !env.isEmpty { return env }
        return "run/kvtierd.sock"
    }

    /// Sends a request; `onBody` gets the body's bytes as they arrive. Returns the status.
    /// Cancelling the calling task closes the connection (kvtierd then cancels a running turn).
    func exchange(
        _ method: HTTPMethod, _ path: String, body: [UInt8]? = nil, onBody: (ByteBuffer) throws -> Void
    ) async throws -> Int {
        let channel = try await connect()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: "kvtier")
        head.headers.add(name: "Connection", value: "close")
        if let body {
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: String(body.count))
        }
        return try await channel.executeThenClose { inbound, outbound in
            // One write and one flush for the whole request: kvtierd may answer a GET as soon as
            // its head arrives and close the connection (`Connection: close`), and a separate
            // later write of the end would then fail on the closed channel.
            var parts: [HTTPClientRequestPart] = [.head(head)]
            if let body { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
            try await outbound.write(contentsOf: parts)
            var status = 0
            for try await part in inbound {
                switch part {
                case .head(let h): status = Int(h.status.code)
                case .body(let b): try onBody(b)
                case .end: return status
                }
            }
            // A cancelled task ends the stream early: that is not an answer.
            try Task.checkCancellation()
            guard status != 0 else { throw Failure(description: "kvtierd closed the connection without an answer") }
            return status
        }
    }

    /// Sends a request; returns the status and the whole body.
    func send(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil) async throws -> (status: Int, body: [UInt8]) {
        var all: [UInt8] = []
        let status = try await exchange(method, path, body: body) { all += $0.readableBytesView }
        return (status, all)
    }

    /// A request whose answer is a stream of server-sent events: `onEvent` gets each event's
    /// data as it arrives. Returns the status and, for an error, the body.
    func stream(
        _ method: HTTPMethod, _ path: String, body: [UInt8], onEvent: (String) throws -> Void
    ) async throws -> (status: Int, body: [UInt8]) {
        var pending: [UInt8] = []
        let status = try await exchange(method, path, body: body) { chunk in
            pending += chunk.readableBytesView
            // Events end with a blank line.
            while let end = Self.blankLine(in: pending) {
                let event = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeFirst(end + 2)
                if event.hasPrefix("data: ") { try onEvent(String(event.dropFirst(6))) }
            }
        }
        return (status, pending)
    }

    private static func blankLine(in b: [UInt8]) -> Int? {
        guard b.count >= 2 else { return nil }
        for i in 0..<(b.count - 1) where b[i] == 10 && b[i + 1] == 10 { return i }
        return nil
    }

    /// Sends a request and decodes its JSON answer as `T`, turning API errors into a `Failure`.
    func call<T: Decodable>(
        _ method: HTTPMethod, _ path: String, body: (some Encodable)? = Optional<String>.none,
        as type: T.Type
    ) async throws -> T {
        let payload = try body.map { try APIJSON.encode($0) }
        let (status, data) = try await send(method, path, body: payload)
        try Self.check(status: status, body: data)
        do {
            return try APIJSON.decode(type, from: Data(data))
        } catch {
            throw Failure(
                description: "kvtierd's answer to \(method) \(path) is not what this kvtierctl expects: \(error)")
        }
    }

    /// Throws the API's error message for a status outside 2xx.
    static func check(status: Int, body: [UInt8]) throws {
        guard !(200..<300).contains(status) else { return }
        let message = (try? APIJSON.decode(ErrorBody.self, from: Data(body)))?.error.message ?? "HTTP \(status)"
        throw Failure(description: message, kind: Failure.kind(status: status))
    }

    /// The text of a GET (`/metrics`).
    func text(_ path: String) async throws -> String {
        let (status, data) = try await send(.GET, path)
        try Self.check(status: status, body: data)
        return String(decoding: data, as: UTF8.self)
    }

    /// Connects to the daemon's socket, or explains why not.
    private func connect() async throws -> NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> {
        do {
            return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw Self.connectFailure(error, socketPath: socketPath)
        }
    }

    static func connectFailure(_ error: Error, socketPath: String) -> Failure {
        let code = (error as? IOError)?.errnoCode
        if code == EACCES {
            return Failure(
                description:
                    "permission denied on \(socketPath): the socket admits its owner and group (server.socket_mode, server.socket_group)",
                kind: .denied)
        }
        let reason = code.map { String(cString: strerror($0)) } ?? "\(error)"
        return Failure(
            description:
                "kvtierd is not running on \(socketPath) (\(reason)); start it with `kvtierd --socket \(socketPath)` or pass --socket",
            kind: .notRunning)
    }
}
