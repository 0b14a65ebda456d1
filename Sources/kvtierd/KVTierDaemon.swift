import ArgumentParser
import Foundation
import KVTierBuildInfo
import KVTierEngine
import KVTierModel
import KVTierServer
import KVTierStore
import Logging
import ServiceLifecycle

/// kvtierd: builds the model, the tiered store in the state directory and the engine, and serves
/// the HTTP API on a Unix socket (or, with --terminal, one chat on its terminal). It runs four
/// services under swift-service-lifecycle: APIServerService, WatchdogService, ReloadService and
/// SessionExpiryService.
@main
struct KVTierDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtierd",
        abstract: "KVTier daemon: the engine and its tiers behind an HTTP API on a Unix socket (docs/protocol.md).",
        version: BuildInfo.description)

    /// ArgumentParser's `main`, after making sure OpenBLAS runs this CPU's kernels
    /// (`OpenBLASCore`: it may start the process again, so it comes before anything else).
    static func main() async {
        OpenBLASCore.restartWithTheCPUsKernelsIfNeeded()
        await main(nil)
    }

    @Option(
        name: .long, help: "TOML configuration (default: $KVTIER_CONFIG, then /etc/kvtier/kvtierd.toml if present).")
    var config: String?

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?

    @Option(name: .long, help: "State directory for the disk tier (default: $KVTIER_STATE_DIR, then run/state).")
    var stateDir: String?

    @Option(name: .long, help: "Unix socket to serve HTTP on (default: $KVTIER_SOCKET, then run/kvtierd.sock).")
    var socket: String?

    @Flag(help: "Chat on the terminal through the engine instead of serving the socket.")
    var terminal = false

    @Option(name: .long, help: "Compute threads (default: all cores).")
    var threads: Int?

    @Option(name: .long, help: "Turns computed at once, batched (default: engine.max_batch, 16).")
    var maxBatch: Int?

    @Option(name: .long, help: "Prompt tokens per batched step (default: engine.prefill_chunk_tokens, 256).")
    var prefillChunkTokens: Int?

    /// Defaults, then the file, then the environment, then flags.
    func resolvedConfiguration() throws -> DaemonConfiguration {
        let env = ModelLocator.currentEnvironment()
        func envValue(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        var c = DaemonConfiguration()
        let file =
            config ?? envValue("KVTIER_CONFIG")
            ?? (FileManager.default.fileExists(atPath: "/etc/kvtier/kvtierd.toml") ? "/etc/kvtier/kvtierd.toml" : nil)
        if let file {
            do { try c.apply(tomlFile: file) } catch { throw ValidationError(error.description) }
        }
        if let v = envValue("KVTIER_SOCKET") { c.socket = v }
        if let v = envValue("KVTIER_STATE_DIR") { c.stateDirectory = v }
        if let v = envValue("KVTIER_MODEL") { c.model = v }
        if let socket { c.socket = socket }
        if let stateDir { c.stateDirectory = stateDir }
        if let model { c.model = model }
        if let threads { c.threads = threads }
        if let maxBatch {
            guard (1...1024).contains(maxBatch) else {
                throw ValidationError("--max-batch must be 1...1024, got \(maxBatch)")
            }
            c.maxBatch = maxBatch
        }
        if let prefillChunkTokens {
            guard (1...512).contains(prefillChunkTokens) else {
                throw ValidationError("--prefill-chunk-tokens must be 1...512, got \(prefillChunkTokens)")
            }
            c.prefillChunkTokens = prefillChunkTokens
        }
        return c
    }

    /// Raises the soft limit on open files to the hard one (at most 1,048,576): each connection
    /// takes a descriptor, and `server.max_connections` is held below what the limit allows.
    private static func raiseDescriptorLimit() {
        var rl = rlimit()
        let resource = Int32(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &rl) == 0 else { return }
        let target = min(rl.rlim_max, 1 << 20)
        if rl.rlim_cur < target {
            rl.rlim_cur = target
            _ = setrlimit(resource, &rl)
        }
    }

    func run() async throws {
        // Everything kvtierd creates is private (the state holds every conversation's tokens),
        // whatever umask it was started with; the socket gets `server.socket_mode` explicitly.
        umask(0o077)
        Self.raiseDescriptorLimit()
        let c = try resolvedConfiguration()
        LoggingSystem.bootstrap(JournalLogHandler.init)
        JournalLogHandler.level.withLockedValue { $0 = Logger.Level(rawValue: c.logLevel) ?? .info }
        JournalLogHandler.format.withLockedValue { $0 = c.logFormat }
        let logger = Logger(label: "kvtierd")
        var adminGroup: UInt32?
        if let name = c.adminGroup {
            guard let gid = AccessPolicy.groupID(named: name) else {
                throw ValidationError(
                    "'server.admin_group': group '\(name)' does not exist; create it or change the setting")
            }
            adminGroup = gid
        }
        let path = ModelLocator.resolve(flag: c.model)
        let loaded: LlamaModel
        do {
            loaded = try LlamaModel(path: path)
        } catch {
            throw ValidationError("\(error)")
        }
        let fingerprint = ModelFingerprint(model: loaded)
        // The fingerprint read every byte of the file; the kernels use repacked copies of the
        // quantized weights, so those mapped pages need not stay resident.
        loaded.file.dropResidentTensorPages()
        let store: TieredStore
        do {
            var storeConfiguration = c.store
            storeConfiguration.remote = try c.remoteTier()
            store = try TieredStore(
                configuration: storeConfiguration, model: fingerprint, layout: loaded.kvLayout,
                elementType: c.kvPrecision)
        } catch {
            throw ValidationError("\(error)")
        }
        DiskHealthLog.report(store, logger: logger)
        if let remote = store.remote { RemoteHealthLog.report(remote, logger: logger) }
        let engine = ChatEngine(model: loaded, store: store, configuration: c.engine)
        guard !terminal else {
            print(
                "kvtierd: model \(path), state \(c.stateDirectory), \(engine.sessionIDs.count) stored sessions; "
                    + "terminal chat"
            )
            TerminalChat(engine: engine).run(
                options: GenerationOptions(
                    maxTokens: 256, sampling: SamplingParameters(temperature: 0.7, topP: 0.9, seed: 42)))
            try? store.close()
            return
        }
        // The model's id in the API: the GGUF's file stem, a stable token without spaces
        // ("SmolLM2-135M-Instruct.Q4_1"), as clients put it in `model` and `GET /v1/models/{id}`.
        let modelName = String(
            URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent.map { $0.isWhitespace ? "-" : $0 })
        let service = APIService(
            engine: engine, modelName: modelName, access: AccessPolicy(adminGroup: adminGroup), limits: c.limits,
            logger: logger)
        let server = HTTPServer(service: service, logger: logger)
        let listeners: [Listener]
        do {
            listeners = try Listener.open(server: server, configuration: c)
        } catch {
            server.shutdown()
            try? store.close()
            throw ValidationError("\(error)")
        }
        logger.info(
            "serving",
            metadata: [
                "version": "\(BuildInfo.description)",
                "model": "\(path)", "state": "\(c.stateDirectory)", "sessions": "\(engine.sessionIDs.count)",
                "listen": "\(listeners.map(\.description).joined(separator: ", "))",
                "batch": "\(c.maxBatch) turns, \(c.prefillChunkTokens)-token prefill chunks",
                "kernels": "\(engine.kernelChoice)", "openblas": "\(OpenBLASCore.name)",
            ])
        let api = APIServerService(
            service: service, server: server, listeners: listeners, engine: engine, store: store,
            flushOnStop: c.flushOnStop,
            logger: logger)
        let reload = ReloadService(service: service, logger: logger) { try resolvedConfiguration() }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                // A graceful shutdown reaches the services in reverse order, each after the one
                // before has returned: the expiry sweeps, then the API (it stops accepting at once
                // and drains), while the watchdog keeps pinging until it is done.
                services: [
                    .init(service: WatchdogService(server: server), successTerminationBehavior: .ignore),
                    .init(service: reload, successTerminationBehavior: .ignore),
                    .init(service: api),
                    .init(
                        service: SessionExpiryService(
                            engine: engine, idleSeconds: c.anonymousSessionIdleSeconds, metrics: service.metrics,
                            logger: logger),
                        successTerminationBehavior: .ignore),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}
