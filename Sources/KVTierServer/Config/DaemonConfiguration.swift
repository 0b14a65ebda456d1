import Foundation
import KVTierEngine
import KVTierModel
import KVTierStore
import KVTierTOML

/// Everything kvtierd can be told, from defaults, then the TOML file, then `KVTIER_*`
/// environment variables, then flags. Unknown keys and bad values are errors that name the key.
public struct DaemonConfiguration: Sendable {
    public var socket = "run/kvtierd.sock"
    public var socketMode: UInt16 = 0o660
    public var socketGroup: String?
    /// Group whose members (primary or supplementary) may use the admin endpoints that change
    /// state; root and the daemon's own user always may.
    public var adminGroup: String?
    /// Optional extra listener on loopback TCP ("127.0.0.1:8080"); off unless set.
    public var tcpListen: (host: String, port: Int)?
    public var limits = ServerLimits()
    /// Write all of DRAM to disk on SIGTERM (a restarted daemon then continues every chat).
    public var flushOnStop = true
    public var logLevel = "info"
    public var logFormat = JournalLogHandler.Format.text
    public var model: String?
    public var threads: Int?
    public var stateDirectory = "run/state"
    public var hbmBytes = 512 << 20
    public var dramBytes = 4 << 30
    public var diskBytes = 20 << 30
    public var blockTokens = 256
    public var linkBandwidth = 25e9
    public var linkLatencySeconds = 10e-6
    /// How often a degraded disk tier retries (seconds; 0: only at the next start).
    public var diskRetrySeconds = DiskTierRecovery.serving.retryIntervalSeconds
    public var policy = StoreConfiguration.PolicyKind.hintDriven
    public var kvPrecision = KVElementType.f16
    public var contextWindow: Int?
    public var sinkTokens = 4
    public var lookAhead = EngineConfiguration().lookAhead
    public var maxBatch = EngineConfiguration().maxBatch
    public var prefillChunkTokens = EngineConfiguration().prefillChunkTokens
    public var activationBits = EngineConfiguration().activationBits
    public var readAheadLayers = 8
    public var truncationFraction = 0.25
    /// Chats without a session id whose last turn is older than this are forgotten, with the KV
    /// only they read (seconds; 0: never).
    public var anonymousSessionIdleSeconds = 86_400.0
    /// `[store.remote]`: the Redis Cluster tier shared by several nodes (off unless seeds are set).
    public var remoteSeeds: [String] = []
    public var remoteUser: String?
    public var remotePasswordFile: String?
    public var remoteKeyPrefix = "kvtier:"
    public var remoteMaxObjectBytes = 8 << 20
    public var remoteTTLSeconds = 7 * 86_400
    public var remoteRetrySeconds = 5.0

    public init() {}

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Applies a TOML file's settings.
    public mutating func apply(tomlFile path: String) throws(Failure) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(description: "cannot read the configuration file \(path)")
        }
        try apply(toml: String(decoding: data, as: UTF8.self), source: path)
    }

    /// Applies the settings of a TOML text; `source` names it in errors (the file's path).
    mutating func apply(toml text: String, source: String) throws(Failure) {
        let entries: [TOMLConfigFile.Entry]
        do {
            entries = try TOMLConfigFile.parse(text)
        } catch {
            throw Failure(description: "\(source): \(error)")
        }
        for e in entries {
            do {
                try set(e.key, e.value)
            } catch {
                throw Failure(description: "\(source)\(e.line.map { " line \($0)" } ?? ""): \(error.description)")
            }
        }
    }

    /// Sets one key ("section.key").
    mutating func set(_ key: String, _ v: TOMLConfigFile.Value) throws(Failure) {
        func bad(_ what: String) -> Failure { Failure(description: "'\(key)' \(what)") }
        func int(_ range: ClosedRange<Int>) throws(Failure) -> Int {
            guard case .integer(let i) = v, range.contains(i) else {
                throw bad("must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return i
        }
        func string() throws(Failure) -> String {
            guard case .string(let s) = v, !s.isEmpty else { throw bad("must be a non-empty string") }
            return s
        }
        /// A size of at least `minimum` bytes (a smaller one is a mistake, such as a unit left out).
        func size(atLeast minimum: Int) throws(Failure) -> Int {
            var bytes: Int?
            switch v {
            case .integer(let i) where i > 0: bytes = i
            case .string(let s): if let n = ByteSize.parse(s), n > 0 { bytes = n }
            default: break
            }
            guard let bytes else {
                throw bad("must be a positive size: bytes, or a string like \"512MiB\" or \"4GiB\"")
            }
            guard bytes >= minimum else {
                throw bad(
                    "must be at least \(Self.describe(minimum)), got \(bytes) bytes (a unit left out? e.g. \"512MiB\")")
            }
            return bytes
        }
        func number(_ range: ClosedRange<Double>) throws(Failure) -> Double {
            let d: Double
            switch v {
            case .integer(let i): d = Double(i)
            case .float(let f): d = f
            default: throw bad("must be a number")
            }
            guard range.contains(d) else { throw bad("must be in \(range.lowerBound)...\(range.upperBound)") }
            return d
        }
        switch key {
        case "server.socket": socket = try string()
        case "server.socket_mode":
            guard case .string(let s) = v, let m = UInt16(s, radix: 8), m <= 0o777 else {
                throw bad("must be an octal string like \"0660\"")
            }
            socketMode = m
        case "server.socket_group": socketGroup = try string()
        case "server.admin_group": adminGroup = try string()
        case "server.tcp_listen":
            let t = try string()
            guard let colon = t.lastIndex(of: ":"), let port = Int(t[t.index(after: colon)...]),
                (1...65535).contains(port),
                ["127.0.0.1", "::1", "[::1]", "localhost"].contains(String(t[..<colon]))
            else { throw bad("must be a loopback address and port like \"127.0.0.1:8080\" (only loopback is allowed)") }
            let host = String(t[..<colon])
            tcpListen = (host == "[::1]" ? "::1" : host == "localhost" ? "127.0.0.1" : host, port)
        case "server.max_body_bytes": limits.maxBodyBytes = try size(atLeast: 1 << 10)
        case "server.max_tokens": limits.maxTokens = try int(1...1_000_000)
        case "server.max_messages": limits.maxMessages = try int(1...1_000_000)
        case "server.max_queue": limits.maxQueue = try int(1...1_000_000)
        case "server.max_turns_per_user": limits.maxTurnsPerUser = try int(1...1_000_000)
        case "server.max_connections": limits.maxConnections = try int(1...1_000_000)
        case "server.max_connections_per_user": limits.maxConnectionsPerUser = try int(1...1_000_000)
        case "server.idle_timeout_seconds": limits.idleTimeoutSeconds = try number(0.1...86400)
        case "server.request_timeout_seconds": limits.requestTimeoutSeconds = try number(0.1...86400)
        case "server.flush_on_stop":
            guard case .bool(let b) = v else { throw bad("must be true or false") }
            flushOnStop = b
        case "log.level":
            let l = try string()
            guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(l) else {
                throw bad("must be one of trace, debug, info, notice, warning, error, critical")
            }
            logLevel = l
        case "log.format":
            guard let f = JournalLogHandler.Format(rawValue: try string()) else {
                throw bad("must be \"text\" or \"json\"")
            }
            logFormat = f
        case "model.path": model = try string()
        case "model.threads": threads = try int(1...256)
        case "store.state_directory": stateDirectory = try string()
        case "store.hbm_bytes": hbmBytes = try size(atLeast: 64 << 10)
        case "store.dram_bytes": dramBytes = try size(atLeast: 64 << 10)
        case "store.disk_bytes": diskBytes = try size(atLeast: 1 << 20)
        case "store.block_tokens": blockTokens = try int(1...65536)
        case "store.link_bandwidth_bytes_per_second": linkBandwidth = try number(0...1e13)
        case "store.link_latency_us": linkLatencySeconds = try number(0...1e6) / 1e6
        case "store.disk_retry_seconds": diskRetrySeconds = try number(0...3600)
        case "store.policy":
            guard let p = StoreConfiguration.PolicyKind(rawValue: try string()) else {
                throw bad("must be \"lru\" or \"hint\"")
            }
            policy = p
        case "store.kv_precision":
            switch try string() {
            case "f16": kvPrecision = .f16
            case "f32": kvPrecision = .f32
            default: throw bad("must be \"f16\" or \"f32\"")
            }
        case "engine.context_window": contextWindow = try int(16...1 << 22)
        case "engine.sink_tokens": sinkTokens = try int(0...4096)
        case "engine.look_ahead": lookAhead = try int(0...1024)
        case "engine.max_batch": maxBatch = try int(1...1024)
        case "engine.prefill_chunk_tokens": prefillChunkTokens = try int(1...512)
        case "engine.activation_bits":
            guard let bits = ActivationBits(rawValue: try int(8...16)) else { throw bad("must be 8 or 16") }
            activationBits = bits
        case "engine.read_ahead_layers": readAheadLayers = try int(0...1024)
        case "engine.truncation_fraction": truncationFraction = try number(0...0.9)
        case "engine.anonymous_session_idle_seconds": anonymousSessionIdleSeconds = try number(0...31_536_000)
        case "store.remote.seeds":
            switch v {
            case .strings(let a): remoteSeeds = a
            case .string(let s): remoteSeeds = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            default: throw bad("must be an array of \"host:port\" strings")
            }
        case "store.remote.user": remoteUser = try string()
        case "store.remote.password_file": remotePasswordFile = try string()
        case "store.remote.key_prefix": remoteKeyPrefix = try string()
        case "store.remote.max_object_bytes": remoteMaxObjectBytes = try size(atLeast: 1 << 10)
        case "store.remote.ttl_seconds": remoteTTLSeconds = try int(0...(365 * 86_400))
        case "store.remote.retry_seconds": remoteRetrySeconds = try number(0.1...3600)
        default:
            throw Failure(description: "unknown key '\(key)'; see deploy/kvtierd.toml for the keys")
        }
    }

    /// "1 KiB", "16 MiB": a minimum as the error message names it.
    static func describe(_ bytes: Int) -> String {
        if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        return bytes % 1024 == 0 ? "\(bytes >> 10) KiB" : "\(bytes) bytes"
    }

    /// The store's configuration.
    public var store: StoreConfiguration {
        var c = StoreConfiguration(stateDirectory: stateDirectory)
        c.hbmCapacityBytes = hbmBytes
        c.dramCapacityBytes = dramBytes
        c.diskCapacityBytes = diskBytes
        c.blockTokens = blockTokens
        c.link = .init(bandwidthBytesPerSecond: linkBandwidth, latencySeconds: linkLatencySeconds)
        c.policy = policy
        // A daemon keeps serving without its disk tier rather than refusing to start
        // (docs/operations.md, "When the disk tier is degraded").
        c.diskRecovery = .serving
        c.diskRecovery.retryIntervalSeconds = diskRetrySeconds
        return c
    }

    /// The remote tier's configuration, its password read from `store.remote.password_file`
    /// (which must not be readable by others); nil when no seeds are configured.
    public func remoteTier() throws(Failure) -> RemoteTierConfiguration? {
        guard !remoteSeeds.isEmpty else { return nil }
        var r = RemoteTierConfiguration(seeds: remoteSeeds, user: remoteUser)
        r.keyPrefix = remoteKeyPrefix
        r.maxObjectBytes = remoteMaxObjectBytes
        r.ttlSeconds = remoteTTLSeconds
        r.retryIntervalSeconds = remoteRetrySeconds
        if let path = remotePasswordFile {
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                let data = FileManager.default.contents(atPath: path)
            else {
                throw Failure(description: "'store.remote.password_file': cannot read \(path)")
            }
            let mode = (attributes[.posixPermissions] as? NSNumber)?.uint16Value ?? 0
            guard mode & 0o007 == 0 else {
                throw Failure(
                    description: "'store.remote.password_file': \(path) is readable by every user; "
                        + "chmod o-rwx it (0600 or 0640)")
            }
            let password = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !password.isEmpty else {
                throw Failure(description: "'store.remote.password_file': \(path) is empty")
            }
            r.password = password
        }
        if let problem = r.problem { throw Failure(description: problem) }
        return r
    }

    /// The engine's configuration.
    public var engine: EngineConfiguration {
        var e = EngineConfiguration()
        e.contextWindow = contextWindow
        e.sinkTokens = sinkTokens
        e.lookAhead = lookAhead
        e.maxBatch = maxBatch
        e.prefillChunkTokens = prefillChunkTokens
        e.activationBits = activationBits
        e.readAheadLayers = readAheadLayers
        e.truncationFraction = truncationFraction
        if let threads { e.threads = threads }
        return e
    }
}
