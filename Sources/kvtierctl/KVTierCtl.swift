import ArgumentParser
import KVTierBuildInfo
import KVTierModel

@main
struct KVTierCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtierctl",
        abstract: "Inspect and drive KVTier: a running kvtierd over its socket, or the model locally.",
        version: BuildInfo.description,
        subcommands: [ModelCommand.self, DaemonChatCommand.self, DebugCommand.self, StatusCommand.self, TiersCommand.self, SessionsCommand.self, SessionCommand.self, DropCommand.self, DemoteCommand.self, FlushCommand.self, HintCommand.self, MetricsCommand.self, TopCommand.self]
    )

    /// ArgumentParser's `main`, after making sure OpenBLAS runs this CPU's kernels
    /// (`OpenBLASCore`: it may start the process again, so it comes before anything else).
    static func main() async {
        OpenBLASCore.restartWithTheCPUsKernelsIfNeeded()
        await main(nil)
    }
}

/// Options every command that loads the model shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?

    @Option(name: .long, help: "Compute threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, !(1...256).contains(threads) {
            throw ValidationError("--threads must be between 1 and 256.")
        }
    }
}
