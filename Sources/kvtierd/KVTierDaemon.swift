import ArgumentParser
import Foundation
import KVTierEngine
import KVTierModel
import KVTierServer
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

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let env = ModelLocator.currentEnvironment()
        let state = stateDir ?? env["KVTIER_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "run/state"
        let loaded: LlamaModel
        do {
            loaded = try LlamaModel(path: path)
        } catch {
            throw ValidationError("\(error)")
        }
        let store: TieredStore
        do {
            store = try TieredStore(
                configuration: StoreConfiguration(stateDirectory: state), model: ModelFingerprint(model: loaded), layout: loaded.kvLayout)
        } catch {
            throw ValidationError("\(error)")
        }
        var config = EngineConfiguration()
        if let threads { config.threads = threads }
        let engine = ChatEngine(model: loaded, store: store, configuration: config)
        if !terminal {
            let socketPath = socket ?? env["KVTIER_SOCKET"].flatMap({ $0.isEmpty ? nil : $0 }) ?? "run/kvtierd.sock"
            try FileManager.default.createDirectory(
                atPath: (socketPath as NSString).deletingLastPathComponent.isEmpty ? "." : (socketPath as NSString).deletingLastPathComponent,
                withIntermediateDirectories: true)
            try serve(engine: engine, store: store, socketPath: socketPath, modelName: loaded.file.metadata["general.name"]?.stringValue ?? "smollm2")
            return
        }
        print("kvtierd: model \(path), state \(state), \(engine.sessionIDs.count) stored sessions; terminal chat")
        TerminalChat(engine: engine).run(
            options: GenerationOptions(maxTokens: 256, sampling: SamplingParameters(temperature: 0.7, topP: 0.9, seed: 42)))
        try? store.close()
    }

    /// Serves the API until SIGTERM or SIGINT, then stops accepting, lets the running turn
    /// finish, flushes DRAM to disk and closes the store.
    private func serve(engine: ChatEngine, store: TieredStore, socketPath: String, modelName: String) throws {
        let service = APIService(engine: engine, modelName: modelName)
        let server = HTTPServer(service: service)
        let channel = try server.start(socketPath: socketPath)
        print("kvtierd: listening on \(socketPath) (\(engine.sessionIDs.count) stored sessions)")
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
        stop.wait()
        print("kvtierd: stopping")
        try? channel.close().wait()
        service.drain()
        engine.quiesce()
        try? store.close()
        server.shutdown()
        unlink(socketPath)
        _ = sources
    }
}
