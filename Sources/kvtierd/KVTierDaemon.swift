import ArgumentParser
import KVTierEngine
import KVTierModel

/// kvtierd. The socket server and the tiers arrive with their issues; until then the daemon
/// loads and checks the model and serves a chat on its terminal (what `make run` starts).
@main
struct KVTierDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtierd",
        abstract: "KVTier daemon (this build: loads the model and serves a local chat on the terminal).")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?

    @Option(name: .long, help: "Compute threads (default: all cores).")
    var threads: Int?

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let loaded: LlamaModel
        do {
            loaded = try LlamaModel(path: path)
        } catch {
            throw ValidationError("\(error)")
        }
        print("kvtierd: model \(path) loaded; no socket listener in this build, chatting on the terminal")
        try LocalChat(model: loaded, threads: threads ?? LlamaModel.defaultThreads).run(
            options: GenerationOptions(maxTokens: 256, sampling: SamplingParameters(temperature: 0.7, topP: 0.9, seed: 42)))
    }
}
