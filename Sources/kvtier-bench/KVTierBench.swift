import ArgumentParser
import KVTierBuildInfo
import KVTierModel

@main
struct KVTierBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvtier-bench",
        abstract: "KVTier benchmarks; each subcommand prints a table, or one JSON object with --json.",
        version: BuildInfo.description,
        subcommands: [
            DecoderBench.self, StoreBench.self, TruncationBench.self, ReplayBench.self, ServeBench.self,
            SharedPrefixBench.self, KernelsBench.self, RemoteBench.self, OverlapBench.self, SimulateBench.self,
        ]
    )

    /// ArgumentParser's `main`, after making sure OpenBLAS runs this CPU's kernels
    /// (`OpenBLASCore`: it may start the process again, so it comes before anything else).
    static func main() {
        OpenBLASCore.restartWithTheCPUsKernelsIfNeeded()
        main(nil)
    }
}
