import ArgumentParser
import KVTierBuildInfo

@main
struct KVTierBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtier-bench",
        abstract: "KVTier benchmarks; each subcommand prints a table, or one JSON object with --json.",
        version: BuildInfo.description,
        subcommands: [
            DecoderBench.self, StoreBench.self, TruncationBench.self, ReplayBench.self, ServeBench.self,
            SharedPrefixBench.self, KernelsBench.self, RemoteBench.self,
        ]
    )
}
