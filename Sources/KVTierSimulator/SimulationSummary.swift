import Foundation
import KVTierReplay

/// One policy's simulated run, reduced to the figures CachedAttention reports: TTFT (from the
/// turn's start, and from the request's arrival), prompt-prefill throughput, GPU time, hit rates
/// per tier, load stall and save lag, and the bytes every link and disk moved.
public struct SimulationSummary: Codable, Sendable {
    /// The replay's percentiles (p50, p90, p99, mean), so both summaries read alike.
    public typealias Percentiles = ReplaySummary.Percentiles

    public var policy: String
    public var hbm_bytes: Int
    public var dram_bytes: Int
    public var disk_bytes: Int
    public var turns: Int
    public var ttft_ms: Percentiles
    public var ttft_ms_turn2plus: Percentiles
    /// From the request's arrival, queueing included: every wait the user feels.
    public var ttft_from_arrival_ms: Percentiles
    public var ttft_from_arrival_ms_turn2plus: Percentiles
    public var prefill_tokens_computed: Int
    public var prefill_tokens_reused: Int
    /// Prompt tokens served per second of time to first token (the replay's definition).
    public var prefill_throughput_tokens_per_s: Double
    /// Share of the reusable tokens of turns 2+ found in HBM or DRAM.
    public var hit_rate: Double
    public var hit_rate_by_tier: [String: Double]
    /// Share of the reusable tokens of turns 2+ reused from any tier.
    public var reuse_rate: Double
    public var gpu_seconds: Double
    /// GPU seconds of prefill arithmetic (what reuse saves; decode steps are the same for all).
    public var prefill_gpu_seconds: Double
    public var gpu_stall_seconds: Double
    public var makespan_seconds: Double
    public var load_stall_ms_mean: Double
    public var save_lag_ms_mean: Double
    public var link_bytes_in: Int
    public var link_bytes_out: Int
    public var disk_bytes_read: Int
    public var disk_bytes_written: Int
    public var blocks_dropped: Int

    public init(policy: String, options: Simulation.Options, result r: Simulation.Result) {
        self.policy = policy
        hbm_bytes = options.hbmBytes
        dram_bytes = options.dramBytes
        disk_bytes = options.diskBytes
        let all = r.turns
        let later = all.filter { $0.turn > 0 }
        turns = all.count
        ttft_ms = Percentiles(all.map(\.ttft_ms))
        ttft_ms_turn2plus = Percentiles(later.map(\.ttft_ms))
        ttft_from_arrival_ms = Percentiles(all.map(\.ttft_from_arrival_ms))
        ttft_from_arrival_ms_turn2plus = Percentiles(later.map(\.ttft_from_arrival_ms))
        prefill_tokens_computed = all.reduce(0) { $0 + $1.recomputed }
        prefill_tokens_reused = all.reduce(0) { $0 + $1.reused }
        let ttftSeconds = all.reduce(0) { $0 + $1.ttft_ms } / 1000
        prefill_throughput_tokens_per_s =
            ttftSeconds > 0 ? Double(all.reduce(0) { $0 + $1.prompt_tokens }) / ttftSeconds : 0
        let tally = ReuseTally(later.map { ($0.reusable, $0.reused, $0.hits_hbm, $0.hits_dram, $0.hits_disk) })
        reuse_rate = tally.reuseRate
        hit_rate = tally.hitRate
        hit_rate_by_tier = tally.hitRateByTier
        gpu_seconds = r.gpuSeconds
        prefill_gpu_seconds = r.prefillGPUSeconds
        gpu_stall_seconds = r.gpuStallSeconds
        makespan_seconds = r.makespanSeconds
        load_stall_ms_mean = all.isEmpty ? 0 : all.reduce(0) { $0 + $1.stall_ms } / Double(all.count)
        save_lag_ms_mean = all.isEmpty ? 0 : all.reduce(0) { $0 + $1.save_lag_ms } / Double(all.count)
        link_bytes_in = r.linkBytesIn
        link_bytes_out = r.linkBytesOut
        disk_bytes_read = r.diskBytesRead
        disk_bytes_written = r.diskBytesWritten
        blocks_dropped = r.blocksDropped
    }

    public var line: String {
        String(
            format:
                "%@: TTFT p50 %.1f ms from arrival %.1f ms (turns 2+: %.1f, p99 %.1f), hit rate %.1f%% "
                + "(hbm %.1f, dram %.1f, disk %.1f), GPU %.1f s",
            policy, ttft_ms.p50, ttft_from_arrival_ms.p50, ttft_from_arrival_ms_turn2plus.p50,
            ttft_from_arrival_ms_turn2plus.p99, 100 * hit_rate, 100 * (hit_rate_by_tier["hbm"] ?? 0),
            100 * (hit_rate_by_tier["dram"] ?? 0), 100 * (hit_rate_by_tier["disk"] ?? 0), gpu_seconds)
    }

    /// A Markdown table of `runs`, each relative to the recompute baseline where it is there.
    public static func markdown(_ runs: [SimulationSummary]) -> String {
        let base = runs.first { $0.policy == "recompute" }
        var s =
            "| policy | TTFT p50 (ms) | from arrival p50 / p99 | turns 2+, from arrival p50 | vs recompute | "
            + "prefill tok/s | vs recompute | GPU busy (s) | prefill GPU (s) | vs recompute | memory hit rate | "
            + "hbm / dram / disk | reused | stall (ms) | save lag (ms) |\n"
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
        for p in runs {
            func rel(_ f: (SimulationSummary) -> Double, _ fmt: String, inverse: Bool = false) -> String {
                guard let b = base, f(b) > 0, f(p) > 0 else { return "-" }
                return String(format: fmt, inverse ? f(b) / f(p) : f(p) / f(b))
            }
            let ttftChange =
                base.map { b -> String in
                    let x = b.ttft_from_arrival_ms_turn2plus.p50
                    return x > 0 ? String(format: "%+.0f%%", 100 * (p.ttft_from_arrival_ms_turn2plus.p50 / x - 1)) : "-"
                } ?? "-"
            s += String(
                format:
                    "| %@ | %.1f | %.1f / %.1f | %.1f | %@ | %.0f | %@ | %.0f | %.1f | %@ | %.1f%% "
                    + "| %.1f / %.1f / %.1f | %.1f%% | %.1f | %.1f |\n",
                p.policy, p.ttft_ms.p50, p.ttft_from_arrival_ms.p50, p.ttft_from_arrival_ms.p99,
                p.ttft_from_arrival_ms_turn2plus.p50, ttftChange, p.prefill_throughput_tokens_per_s,
                rel(\.prefill_throughput_tokens_per_s, "%.2f×"), p.gpu_seconds, p.prefill_gpu_seconds,
                rel(\.prefill_gpu_seconds, "%.2f× less", inverse: true), 100 * p.hit_rate,
                100 * (p.hit_rate_by_tier["hbm"] ?? 0), 100 * (p.hit_rate_by_tier["dram"] ?? 0),
                100 * (p.hit_rate_by_tier["disk"] ?? 0), 100 * p.reuse_rate, p.load_stall_ms_mean, p.save_lag_ms_mean)
        }
        return s
    }
}
