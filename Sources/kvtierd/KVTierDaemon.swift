import ArgumentParser
import Foundation
import KVTierEngine
import KVTierModel
import KVTierServer
import NIOCore
import KVTierStore
#if canImport(Glibc)
import Glibc
#endif

/// kvtierd: builds the model, the tiered store in the state directory and the engine, and serves
/// the HTTP API on a Unix socket (or, with --terminal, one chat on its terminal).
@main
struct KVTierDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtierd",
        abstract: "KVTier daemon: the engine and its tiers behind an HTTP API on a Unix socket (docs/protocol.md).")

    @Option(name: .long, help: "TOML configuration (default: $KVTIER_CONFIG, then /etc/kvtier/kvtierd.toml if present).")
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

    /// Defaults, then the file, then the environment, then flags.
    func resolvedConfiguration() throws -> DaemonConfiguration {
        let env = ModelLocator.currentEnvironment()
        func envValue(_ k: String) -> String? { env[k].flatMap { $0.isEmpty ? nil : $0 } }
        var c = DaemonConfiguration()
        let file = config ?? envValue("KVTIER_CONFIG") ?? (FileManager.default.fileExists(atPath: "/etc/kvtier/kvtierd.toml") ? "/etc/kvtier/kvtierd.toml" : nil)
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
        return c
    }

    func run() throws {
        let c = try resolvedConfiguration()
        let path = ModelLocator.resolve(flag: c.model)
        let loaded: LlamaModel
        do {
            loaded = try LlamaModel(path: path)
        } catch {
            throw ValidationError("\(error)")
        }
        let store: TieredStore
        do {
            store = try TieredStore(
                configuration: c.store, model: ModelFingerprint(model: loaded), layout: loaded.kvLayout, elementType: c.kvPrecision)
        } catch {
            throw ValidationError("\(error)")
        }
        let engine = ChatEngine(model: loaded, store: store, configuration: c.engine)
        if !terminal {
            let dir = (c.socket as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            try serve(engine: engine, store: store, configuration: c, modelName: loaded.file.metadata["general.name"]?.stringValue ?? "smollm2")
            return
        }
        print("kvtierd: model \(path), state \(c.stateDirectory), \(engine.sessionIDs.count) stored sessions; terminal chat")
        TerminalChat(engine: engine).run(
            options: GenerationOptions(maxTokens: 256, sampling: SamplingParameters(temperature: 0.7, topP: 0.9, seed: 42)))
        try? store.close()
    }

    /// Serves the API until SIGTERM or SIGINT, then stops accepting, lets the running turn
    /// finish, flushes DRAM to disk and closes the store.
    private func serve(engine: ChatEngine, store: TieredStore, configuration c: DaemonConfiguration, modelName: String) throws {
        let service = APIService(engine: engine, modelName: modelName, maxTokensLimit: c.maxTokensLimit)
        let server = HTTPServer(service: service, bodyLimit: c.maxBodyBytes)
        let channel: Channel
        let activated = ServiceManager.activatedSocket()
        do {
            if let fd = activated {
                channel = try server.start(listeningSocket: fd)
            } else {
                channel = try server.start(socketPath: c.socket, mode: mode_t(c.socketMode), group: c.socketGroup)
            }
        } catch {
            throw ValidationError("cannot listen on \(c.socket): \(error)")
        }
        let where_ = activated != nil ? "the socket systemd passed" : c.socket
        print("kvtierd: listening on \(where_) (\(engine.sessionIDs.count) stored sessions)")
        fflush(nil)
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let stop = DispatchSemaphore(value: 0)
        let sources = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { stop.signal() }
            source.resume()
            return source
        }
        // Signals are handled before systemd hears READY=1.
        ServiceManager.ready(status: "serving on \(where_)")
        let watchdog = ServiceManager.startWatchdog()
        stop.wait()
        ServiceManager.stopping()
        watchdog?.cancel()
        print("kvtierd: stopping")
        try? channel.close().wait()
        service.drain()
        engine.quiesce()
        try? store.close()
        server.shutdown()
        if activated == nil { unlink(c.socket) }
        _ = sources
    }
}
