import ArgumentParser
import Dispatch
import Foundation
import KVTierEngine
import KVTierModel
import KVTierReplay
import KVTierStore

#if canImport(Glibc)
    import Glibc
#endif

/// `kvtier-bench replay`: real ShareGPT chats replayed against recompute, an HBM-only cache,
/// tiered LRU, and KVTier with its ablations, on one identical trace (docs/benchmarks.md).
struct ReplayBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay ShareGPT chats against recompute, hbm-only, tiered-lru and kvtier (with ablations).")

    enum Preset: String, ExpressibleByArgument { case quick, standard }

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "ShareGPT JSON (`make data` fetches it).") var data = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
    @Flag(help: "The quick preset (a check in under 3 minutes); the standard one is the default.") var quick = false
    @Option(help: "Sessions (conversations) replayed.") var sessions: Int?
    @Option(help: "Seed of the conversation selection, arrivals and think times.") var seed: UInt64 = 1
    @Option(help: "Each message is cut to this many tokens (default: 256; quick: 128).") var messageTokens: Int?
    @Option(help: "At most this many turns per conversation.") var maxTurns: Int?
    @Option(help: "Session arrivals per second (Poisson).") var arrivalRate: Double?
    @Option(help: "Mean think time between a reply and the next turn, seconds (exponential).") var thinkMean: Double?
    @Option(help: "HBM arena size (bytes, or like 512MiB).") var hbm: SizeArgument?
    @Option(help: "DRAM tier size (bytes, or like 1GiB).") var dram: SizeArgument?
    @Option(help: "Disk tier size (bytes, or like 20GiB).") var disk = SizeArgument(bytes: 20 << 30)
    @Option(help: "Tokens per block.") var blockTokens = 64
    @Option(
        help:
            "Policies, comma-separated (recompute, hbm-only, tiered-lru, kvtier, kvtier-no-overlap, kvtier-sync-save).")
    var policies = ReplayPolicy.all.map(\.name).joined(separator: ",")
    @Option(help: "DRAM capacities for the tiered-lru vs kvtier hit-rate sweep, comma-separated sizes (\"\" for none).")
    var sweep: String?
    @Option(help: "Output directory for JSON, CSV, Markdown and plots.") var out: String?
    @Option(help: "Also write the trace for deploy/bench/peer_replay.py here.") var exportTrace: String?
    @Option(help: "Compute threads.") var threads = 2
    @Flag(
        help: """
            Generate each reply (greedy, at most the recorded reply's length) instead of feeding the recorded \
            one; the next turn sends the generated text back. Histories then depend on the model's output, \
            so policies are no longer replayed on an identical trace.
            """)
    var generate = false
    @Flag(help: "Send no session ids: the prefix cache finds each turn's chat (as for a stock OpenAI client).")
    var anonymous = false
    @Flag(help: "Print one JSON object on stdout (no progress, no table).") var json = false
    @Flag(help: "Do not render the PNG plots.") var noPlots = false

    struct Sizes {
        var sessions: Int, maxTurns: Int, messageTokens: Int, rate: Double, think: Double, hbm: Int, dram: Int,
            sweep: [Int]
    }

    /// Preset sizes. A session's KV is up to maxTurns x 2 x messageTokens tokens at 23,040 B per
    /// token (F16): HBM holds the running session and little more, DRAM a fraction of the
    /// sessions in flight, disk all of them.
    private var sizes: Sizes {
        var z =
            quick
            ? Sizes(
                sessions: 8, maxTurns: 3, messageTokens: 128, rate: 0.5, think: 8, hbm: 32 << 20, dram: 40 << 20,
                sweep: [24 << 20, 96 << 20])
            : Sizes(
                sessions: 200, maxTurns: 6, messageTokens: 256, rate: 0.25, think: 30, hbm: 160 << 20, dram: 1 << 30,
                sweep: [256 << 20, 512 << 20, 2 << 30])
        if let messageTokens { z.messageTokens = messageTokens }
        if let sessions { z.sessions = sessions }
        if let maxTurns { z.maxTurns = maxTurns }
        if let arrivalRate { z.rate = arrivalRate }
        if let thinkMean { z.think = thinkMean }
        if let hbm { z.hbm = hbm.bytes }
        if let dram { z.dram = dram.bytes }
        return z
    }

    func run() throws {
        let started = Date()
        let chosen = try policies.split(separator: ",").map { name -> ReplayPolicy in
            guard let p = ReplayPolicy.named(String(name).trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError(
                    "unknown policy '\(name)'; known: \(ReplayPolicy.all.map(\.name).joined(separator: ", "))")
            }
            return p
        }
        let z = sizes
        let sweepSizes = try sweep.map { try SizeArgument.list($0, option: "--sweep") } ?? z.sweep
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }
        let workload = try ReplayWorkload(
            data: data, model: m,
            parameters: .init(
                sessions: z.sessions, seed: seed, messageTokens: z.messageTokens, maxTurns: z.maxTurns,
                arrivalRate: z.rate, thinkMeanSeconds: z.think),
            log: log)
        log(
            "\(workload.conversations.count) sessions, \(workload.turnCount) turns; conversations: "
                + "\(workload.conversations.map(\.id).joined(separator: ","))"
        )
        if let exportTrace { try writeTrace(workload, to: exportTrace) }

        var store = StoreConfiguration(stateDirectory: "")
        store.hbmCapacityBytes = z.hbm
        store.dramCapacityBytes = z.dram
        store.diskCapacityBytes = disk.bytes
        store.blockTokens = blockTokens

        let dir = out ?? "run/bench/replay-\(quick ? "quick" : "standard")"
        let workloadSummary = ReplaySummary.Workload(
            sessions: workload.conversations.count, turns: workload.turnCount, arrival_rate_per_s: z.rate,
            think_mean_s: z.think,
            message_tokens: z.messageTokens, max_turns: z.maxTurns, hbm_bytes: z.hbm, dram_bytes: z.dram,
            block_tokens: blockTokens,
            replies: generate ? "generated" : "teacher-forced", session_ids: anonymous ? "none" : "named")
        func summary(_ policies: [ReplaySummary.Policy], _ sweep: [ReplaySummary.SweepPoint]) -> ReplaySummary {
            ReplaySummary(
                preset: quick ? "quick" : "standard", seed: seed, conversations: workload.conversations.map(\.id),
                workload: workloadSummary,
                policies: policies, sweep: sweep, seconds: Date().timeIntervalSince(started))
        }
        var results: [ReplaySummary.Policy] = []
        for p in chosen {
            let (turns, stats) = try runPolicy(p, store: store, workload: workload, model: m, label: p.name)
            let used = ReplayRun(policy: p, store: store, threads: threads).effectiveStore
            results.append(ReplaySummary.Policy(policy: p.name, store: used, turns: turns, stats: stats))
            if !json { log(results.last!.line) }
            try summary(results, []).write(to: dir)  // what is done so far survives an interrupted run
        }
        var sweepRows: [ReplaySummary.SweepPoint] = []
        for bytes in sweepSizes {
            for name in ReplayPolicy.swept {
                guard let p = ReplayPolicy.named(name) else { continue }
                var s = store
                s.dramCapacityBytes = bytes
                let (turns, stats) = try runPolicy(
                    p, store: s, workload: workload, model: m, label: "\(name) @ DRAM \(bytes >> 20) MiB")
                let row = ReplaySummary.Policy(policy: p.name, store: s, turns: turns, stats: stats)
                sweepRows.append(
                    .init(
                        policy: name, dram_bytes: bytes, hit_rate: row.hit_rate, hit_rate_by_tier: row.hit_rate_by_tier)
                )
                if !json { log("sweep: " + row.line) }
                try summary(results, sweepRows).write(to: dir)
            }
        }
        // The main runs of the two swept policies are the sweep's point at the preset's DRAM size.
        for row in results where ReplayPolicy.swept.contains(row.policy) && !sweepSizes.contains(z.dram) {
            sweepRows.append(
                .init(
                    policy: row.policy, dram_bytes: z.dram, hit_rate: row.hit_rate,
                    hit_rate_by_tier: row.hit_rate_by_tier))
        }
        sweepRows.sort { ($0.dram_bytes, $0.policy) < ($1.dram_bytes, $1.policy) }
        let summary = summary(results, sweepRows)
        try summary.write(to: dir)
        if !noPlots { renderPlots(dir) }
        if json {
            print(String(decoding: try summary.jsonData(), as: UTF8.self))
        } else {
            print(summary.markdown)
            print("files in \(dir)")
        }
    }

    private func runPolicy(
        _ p: ReplayPolicy, store: StoreConfiguration, workload: ReplayWorkload, model: LlamaModel, label: String
    ) throws
        -> ([ReplayRun.TurnRecord], StoreStats)
    {
        let showProgress = !json && isatty(STDERR_FILENO) != 0
        let t0 = Date()
        let total = workload.turnCount
        let result = try ReplayRun(policy: p, store: store, threads: threads, generate: generate, anonymous: anonymous)
            .run(workload, model: model) { done, sessionsDone in
                guard showProgress else { return }
                let elapsed = Date().timeIntervalSince(t0)
                let remaining = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
                let line = String(
                    format: "\r%@: %d/%d sessions, %d/%d turns, %.0f s elapsed, ~%.0f s left   ",
                    label, sessionsDone, workload.conversations.count, done, total, elapsed, remaining)
                FileHandle.standardError.write(Data(line.utf8))
            }
        if showProgress { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        return result
    }

    /// The trace for replaying through HTTP servers: conversations and the interleaved order of
    /// turns by their arrival when every reply is instant (policy-independent).
    private func writeTrace(_ w: ReplayWorkload, to path: String) throws {
        var order: [(Double, String, Int)] = []
        for c in w.conversations {
            var t = c.arrivalSeconds
            for (k, turn) in c.turns.enumerated() {
                order.append((t, c.session, k))
                t += turn.thinkSeconds
            }
        }
        order.sort { $0.0 < $1.0 }
        struct Trace: Encodable {
            let conversations: [ReplayWorkload.Conversation]
            let order: [[String]]
        }
        // peer_replay.py reads order entries as [session, turn]; the turn index is numeric there.
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var text = String(decoding: try enc.encode(Trace(conversations: w.conversations, order: [])), as: UTF8.self)
        let orderJSON = "[" + order.map { "[\"\($0.1)\",\($0.2)]" }.joined(separator: ",") + "]"
        text = text.replacingOccurrences(of: "\"order\":[]", with: "\"order\":" + orderJSON)
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent.isEmpty
                ? "." : (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        log("trace written to \(path)")
    }

    private func renderPlots(_ dir: String) {
        PlotScript.run("deploy/bench/plot_replay.py", [dir + "/replay.json", dir], json: json)
    }

    private func log(_ s: String) {
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}
