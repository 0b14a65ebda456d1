import ArgumentParser
import Foundation
import KVTierEngine
import KVTierModel
import KVTierReplay
import KVTierSimulator

/// `kvtier-bench simulate`: the ShareGPT trace the replay uses, served in virtual time on a GPU
/// deployment described by a cost profile (deploy/simulate/*.toml), per policy; or, with
/// `--plan`, the smallest DRAM and disk tiers that reach a target.
struct SimulateBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Simulate serving the ShareGPT trace on a GPU deployment (discrete events, virtual time).",
        discussion: """
            The scheduler's admission rules and the store's eviction policies run as they do in kvtierd; \
            compute, links and disks are modelled from the cost profile. See docs/benchmarks.md.
            """
    )

    @Option(help: "Cost profile (TOML).") var profile = "deploy/simulate/llama2-13b-a100x4.toml"
    @Option(name: .long, help: "GGUF whose chat template and tokenizer count the trace's tokens.") var model: String?
    @Option(help: "ShareGPT JSON (`make data` fetches it).") var data = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
    @Option(help: "Sessions (conversations).") var sessions = 1000
    @Option(help: "Seed of the conversation selection, arrivals and think times.") var seed: UInt64 = 1
    @Option(help: "Each message is cut to this many tokens (default: the model's context window).")
    var messageTokens: Int?
    @Option(help: "At most this many turns per conversation.") var maxTurns = 20
    @Option(help: "Session arrivals per second (Poisson; the paper's rate is 1.0).") var arrivalRate = 1.0
    @Option(help: "Mean think time between a reply and the next turn, seconds (exponential).") var thinkMean = 60.0
    @Option(help: "Policies, comma-separated (default: all, hbm-oracle and lru-no-prefetch).") var policies: String?
    @Option(help: "HBM for KV (default: the profile's).") var hbm: SizeArgument?
    @Option(help: "DRAM tier (default: the profile's).") var dram: SizeArgument?
    @Option(help: "Disk tier (default: the profile's).") var disk: SizeArgument?
    @Option(help: "Turns in a batch at most (default: the profile's).") var maxBatch: Int?
    @Option(help: "Prompt tokens per step at most (default: the profile's).") var prefillChunk: Int?
    @Flag(
        help:
            "HBM holds only running turns, as in CachedAttention (default: it keeps sessions, as kvtierd's store does)."
    )
    var hbmRunningOnly = false
    @Option(help: "Output directory for JSON, CSV and Markdown (and plots).") var out: String?
    @Flag(help: "Print one JSON object on stdout (no progress, no table).") var json = false
    @Flag(help: "Do not render the PNG plots.") var noPlots = false

    @Flag(help: "Size the tiers: the cheapest DRAM and disk reaching --target-ttft-p99-ms or --target-hit-rate.")
    var plan = false
    @Option(help: "The plan's target: TTFT p99 from arrival, all turns (ms).") var targetTtftP99Ms: Double?
    @Option(help: "The plan's target: memory hit rate of turns 2+ (0-1).") var targetHitRate: Double?
    @Option(help: "The plan's DRAM sizes, comma-separated.") var planDram = "16GB,32GB,64GB,128GB,256GB,512GB,1TB"
    @Option(help: "The plan's disk sizes, comma-separated.") var planDisk = "0.5TB,1TB,2TB,4TB,8TB,16TB"
    @Option(help: "The policy the plan sizes for.") var planPolicy = "kvtier"

    func validate() throws {
        guard sessions > 0, maxTurns > 0 else { throw ValidationError("--sessions and --max-turns must be above 0") }
        guard arrivalRate > 0, thinkMean >= 0 else {
            throw ValidationError("--arrival-rate must be above 0 and --think-mean at least 0")
        }
        if plan && (targetTtftP99Ms == nil) == (targetHitRate == nil) {
            throw ValidationError("--plan needs exactly one of --target-ttft-p99-ms and --target-hit-rate")
        }
    }

    func run() throws {
        let started = Date()
        let cost: CostProfile
        do { cost = try CostProfile.load(path: profile) } catch { throw ValidationError("\(error)") }
        let m: LlamaModel
        do { m = try LlamaModel(path: ModelLocator.resolve(flag: model)) } catch { throw ValidationError("\(error)") }
        let workload = try ReplayWorkload(
            data: data, model: m,
            parameters: .init(
                sessions: sessions, seed: seed, messageTokens: messageTokens ?? cost.model.contextWindow,
                maxTurns: maxTurns, arrivalRate: arrivalRate, thinkMeanSeconds: thinkMean),
            log: log)
        let trace = SimulatedTrace(workload: workload, model: m)
        let promptTokens = trace.sessions.flatMap(\.turns).map(\.promptTokens)
        let meanPrompt = promptTokens.reduce(0, +) / max(1, promptTokens.count)
        log(
            "\(trace.sessions.count) sessions, \(trace.turnCount) turns, prompts of \(meanPrompt) "
                + "tokens on average; profile \(cost.name): \(cost.model.name) on \(cost.accelerator.count) x "
                + "\(cost.accelerator.name)")
        let dir = out ?? "run/bench/simulate-\(cost.name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if plan {
            try runPlan(cost, trace, dir: dir, started: started)
            return
        }
        let names =
            policies.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
            ?? (ReplayPolicy.all + ReplayPolicy.extra).map(\.name)
        let chosen = try names.map { name -> ReplayPolicy in
            guard let p = ReplayPolicy.named(name) else {
                let known = (ReplayPolicy.all + ReplayPolicy.extra).map(\.name).joined(separator: ", ")
                throw ValidationError("unknown policy '\(name)'; known: \(known)")
            }
            return p
        }
        var summaries: [SimulationSummary] = []
        var records: [(String, Simulation.TurnRecord)] = []
        for p in chosen {
            let o = options(p, cost)
            let t0 = Date()
            let r = try Simulation(profile: cost, options: o).run(trace) { done in
                showProgress("\(p.name): \(done)/\(trace.turnCount) turns", done: done, total: trace.turnCount)
            }
            clearProgress()
            summaries.append(SimulationSummary(policy: p.name, options: o, result: r))
            records += r.turns.map { (p.name, $0) }
            if !json { log(summaries.last!.line + String(format: " (%.1f s)", Date().timeIntervalSince(t0))) }
        }
        let report = Report(
            profile: cost.name, model: cost.model.name,
            accelerator: "\(cost.accelerator.count) x \(cost.accelerator.name)", sessions: trace.sessions.count,
            turns: trace.turnCount, seed: seed, arrival_rate_per_s: arrivalRate, think_mean_s: thinkMean,
            policies: summaries, seconds: Date().timeIntervalSince(started))
        try write(report, records: records, dir: dir)
        if !noPlots { renderPlots(dir) }
        if json {
            print(String(decoding: try encoder().encode(report), as: UTF8.self))
        } else {
            print(SimulationSummary.markdown(summaries))
            print("files in \(dir)")
        }
    }

    struct Report: Codable {
        let profile: String, model: String, accelerator: String
        let sessions: Int, turns: Int, seed: UInt64, arrival_rate_per_s: Double, think_mean_s: Double
        let policies: [SimulationSummary]
        let seconds: Double
    }

    struct PlanReport: Codable {
        let profile: String, policy: String, target: String, sessions: Int, turns: Int
        let points: [CapacityPlan.Point]
        let cheapest: CapacityPlan.Point?
    }

    private func options(_ p: ReplayPolicy, _ cost: CostProfile) -> Simulation.Options {
        var o = Simulation.Options(policy: p, profile: cost)
        if let hbm { o.hbmBytes = hbm.bytes }
        if let dram { o.dramBytes = dram.bytes }
        if let disk { o.diskBytes = disk.bytes }
        if let maxBatch { o.maxBatch = max(1, maxBatch) }
        if let prefillChunk { o.prefillChunkTokens = max(1, prefillChunk) }
        o.hbmCachesSessions = !hbmRunningOnly
        return o
    }

    private func runPlan(_ cost: CostProfile, _ trace: SimulatedTrace, dir: String, started: Date) throws {
        guard let p = ReplayPolicy.named(planPolicy) else { throw ValidationError("unknown policy '\(planPolicy)'") }
        let target: CapacityPlan.Target =
            targetTtftP99Ms.map { .ttftP99Ms($0) } ?? .hitRate(targetHitRate ?? 0)
        let drams = try SizeArgument.list(planDram, option: "--plan-dram")
        let disks = try SizeArgument.list(planDisk, option: "--plan-disk")
        let points = try CapacityPlan(profile: cost, options: options(p, cost), target: target).evaluate(
            trace, dramSizes: drams, diskSizes: disks
        ) { done, total in
            showProgress("plan: \(done)/\(total) configurations", done: done, total: total, step: 1)
        }
        clearProgress()
        let best = CapacityPlan.cheapest(points)
        let report = PlanReport(
            profile: cost.name, policy: p.name, target: target.description, sessions: trace.sessions.count,
            turns: trace.turnCount, points: points, cheapest: best)
        try encoder().encode(report).write(to: URL(fileURLWithPath: dir + "/plan.json"))
        if json {
            print(String(decoding: try encoder().encode(report), as: UTF8.self))
            return
        }
        var s = "| DRAM | disk | TTFT p99 from arrival (ms) | memory hit rate | reused | storage $/h | meets |\n"
        s += "|---:|---:|---:|---:|---:|---:|---|\n"
        for q in points {
            s += String(
                format: "| %@ | %@ | %.0f | %.1f%% | %.1f%% | %.3f | %@ |\n", gb(q.dram_bytes), gb(q.disk_bytes),
                q.ttft_p99_ms, 100 * q.hit_rate, 100 * q.reuse_rate, q.storage_dollars_per_hour,
                q.meets_target ? "yes" : "")
        }
        print(s)
        if let best {
            print(
                "cheapest meeting \(target.description): DRAM \(gb(best.dram_bytes)), disk \(gb(best.disk_bytes)) "
                    + String(format: "($%.3f/h of storage)", best.storage_dollars_per_hour))
        } else {
            print("no size tried meets \(target.description); try larger --plan-dram / --plan-disk")
        }
        try Data(s.utf8).write(to: URL(fileURLWithPath: dir + "/plan.md"))
        log(String(format: "%.1f s", Date().timeIntervalSince(started)))
    }

    private func gb(_ bytes: Int) -> String {
        bytes >= 1_000_000_000_000
            ? String(format: "%.1f TB", Double(bytes) / 1e12) : String(format: "%.0f GB", Double(bytes) / 1e9)
    }

    private func write(_ report: Report, records: [(String, Simulation.TurnRecord)], dir: String) throws {
        try encoder().encode(report).write(to: URL(fileURLWithPath: dir + "/simulate.json"))
        var csv =
            "policy,session,turn,arrival_s,start_s,first_token_s,end_s,prompt_tokens,reply_tokens,reusable,reused,"
            + "recomputed,hits_hbm,hits_dram,hits_disk,disk_bytes,load_ms,stall_ms,save_lag_ms\n"
        for (p, t) in records {
            csv +=
                "\(p),\(t.session),\(t.turn),\(t.arrival_s),\(t.start_s),\(t.first_token_s),\(t.end_s),"
                + "\(t.prompt_tokens),\(t.reply_tokens),\(t.reusable),\(t.reused),\(t.recomputed),\(t.hits_hbm),"
                + "\(t.hits_dram),\(t.hits_disk),\(t.disk_bytes),\(t.load_ms),\(t.stall_ms),\(t.save_lag_ms)\n"
        }
        try Data(csv.utf8).write(to: URL(fileURLWithPath: dir + "/simulate.csv"))
        try Data(SimulationSummary.markdown(report.policies).utf8).write(
            to: URL(fileURLWithPath: dir + "/simulate.md"))
    }

    private func encoder() -> JSONEncoder {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return enc
    }

    private func renderPlots(_ dir: String) {
        PlotScript.run(
            "deploy/bench/plot_simulate.py", [dir + "/simulate.json", dir + "/simulate.csv", dir], json: json)
    }

    private func showProgress(_ text: String, done: Int, total: Int, step: Int = 500) {
        guard !json, isatty(STDERR_FILENO) != 0, done % step == 0 || done == total else { return }
        FileHandle.standardError.write(Data(("\r" + text + "   ").utf8))
    }

    private func clearProgress() {
        guard !json, isatty(STDERR_FILENO) != 0 else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }

    private func log(_ s: String) {
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}
