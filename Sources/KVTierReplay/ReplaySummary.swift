import Foundation
import KVTierStore

/// What `kvtier-bench replay` reports: per policy, TTFT percentiles (all turns and turns 2+),
/// prefill tokens computed and reused, prompt-prefill throughput, hit rates overall and per tier,
/// load stall and save lag, compute seconds and bytes moved per tier; the DRAM sweep; the
/// per-turn records. Written as JSON, CSV (one row per turn) and a Markdown table.
public struct ReplaySummary: Encodable {
    public struct Workload: Encodable {
        public let sessions: Int
        public let turns: Int
        public let arrival_rate_per_s: Double
        public let think_mean_s: Double
        public let message_tokens: Int
        public let max_turns: Int
        public let hbm_bytes: Int
        public let dram_bytes: Int
        public let block_tokens: Int
        /// "teacher-forced" (the recorded replies, the same trace for every policy) or "generated".
        public let replies: String
        /// "named" (each chat sends its session id) or "none" (the prefix cache finds the chat).
        public let session_ids: String

        public init(
            sessions: Int, turns: Int, arrival_rate_per_s: Double, think_mean_s: Double, message_tokens: Int,
            max_turns: Int, hbm_bytes: Int, dram_bytes: Int, block_tokens: Int, replies: String, session_ids: String
        ) {
            self.sessions = sessions
            self.turns = turns
            self.arrival_rate_per_s = arrival_rate_per_s
            self.think_mean_s = think_mean_s
            self.message_tokens = message_tokens
            self.max_turns = max_turns
            self.hbm_bytes = hbm_bytes
            self.dram_bytes = dram_bytes
            self.block_tokens = block_tokens
            self.replies = replies
            self.session_ids = session_ids
        }
    }

    public struct Percentiles: Codable, Sendable {
        public let p50: Double, p90: Double, p99: Double, mean: Double
        public init(_ values: [Double]) {
            let s = values.sorted()
            func q(_ x: Double) -> Double {
                s.isEmpty ? 0 : s[min(s.count - 1, Int((x * Double(s.count - 1)).rounded()))]
            }
            p50 = q(0.5)
            p90 = q(0.9)
            p99 = q(0.99)
            mean = s.isEmpty ? 0 : s.reduce(0, +) / Double(s.count)
        }
    }

    public struct Moved: Encodable { let bytes_in: Int, bytes_out: Int }

    public struct Policy: Encodable {
        public let policy: String
        public let hbm_bytes: Int, dram_bytes: Int, disk_bytes: Int
        public let ttft_ms: Percentiles
        public let ttft_ms_turn2plus: Percentiles
        /// TTFT including the wait in the queue, turns 2+.
        public let ttft_with_queue_ms_turn2plus: Percentiles
        public let prefill_tokens_computed: Int
        public let prefill_tokens_reused: Int
        /// Prompt tokens served per second of time to first token (all turns).
        public let prefill_throughput_tokens_per_s: Double
        /// Share of the reusable tokens of turns 2+ (what the previous turn left in the session)
        /// that were in memory, HBM or DRAM, when their turn ran: a disk hit waits on the disk
        /// in the turn's critical path (CachedAttention's point against LRU: it cannot prefetch).
        public let hit_rate: Double
        /// Share of the reusable tokens served from each tier (hbm + dram = hit_rate).
        public let hit_rate_by_tier: [String: Double]
        /// Share of the reusable tokens reused at all, from any tier including disk.
        public let reuse_rate: Double
        public let load_stall_ms_mean: Double
        /// KV bytes the turns' own loads read from disk (on their critical paths), all turns.
        public let critical_path_disk_bytes: Int
        /// Load stall as a share of TTFT, turns 2+.
        public let load_stall_fraction_of_ttft: Double
        public let save_lag_ms_mean: Double
        /// Wall seconds of all turns (the GPU-time stand-in).
        public let compute_seconds: Double
        public let bytes_moved: [String: Moved]
        public let turns: [ReplayRun.TurnRecord]

        public init(policy: String, store: StoreConfiguration, turns: [ReplayRun.TurnRecord], stats: StoreStats) {
            self.policy = policy
            hbm_bytes = store.hbmCapacityBytes
            dram_bytes = store.dramCapacityBytes
            disk_bytes = store.diskCapacityBytes
            let later = turns.filter { $0.turn > 0 }
            ttft_ms = Percentiles(turns.map(\.ttft_ms))
            ttft_ms_turn2plus = Percentiles(later.map(\.ttft_ms))
            ttft_with_queue_ms_turn2plus = Percentiles(later.map { $0.ttft_ms + $0.queue_ms })
            prefill_tokens_computed = turns.reduce(0) { $0 + $1.recomputed }
            prefill_tokens_reused = turns.reduce(0) { $0 + $1.reused }
            let ttftSeconds = turns.reduce(0) { $0 + $1.ttft_ms } / 1000
            prefill_throughput_tokens_per_s =
                ttftSeconds > 0 ? Double(turns.reduce(0) { $0 + $1.prompt_tokens }) / ttftSeconds : 0
            let tally = ReuseTally(later.map { ($0.reusable, $0.reused, $0.hits_hbm, $0.hits_dram, $0.hits_disk) })
            reuse_rate = tally.reuseRate
            hit_rate = tally.hitRate
            hit_rate_by_tier = tally.hitRateByTier
            load_stall_ms_mean = turns.isEmpty ? 0 : turns.reduce(0) { $0 + $1.stall_ms } / Double(turns.count)
            critical_path_disk_bytes = turns.reduce(0) { $0 + $1.disk_bytes }
            let laterTTFT = later.reduce(0) { $0 + $1.ttft_ms }
            load_stall_fraction_of_ttft = laterTTFT > 0 ? later.reduce(0) { $0 + $1.stall_ms } / laterTTFT : 0
            save_lag_ms_mean = turns.isEmpty ? 0 : turns.reduce(0) { $0 + $1.save_lag_ms } / Double(turns.count)
            compute_seconds = turns.reduce(0) { $0 + $1.total_ms } / 1000
            bytes_moved = Dictionary(
                uniqueKeysWithValues: stats.tiers.map { ($0.tier, Moved(bytes_in: $0.bytesIn, bytes_out: $0.bytesOut)) }
            )
            self.turns = turns
        }

        public var line: String {
            String(
                format:
                    "%@: TTFT p50 %.1f ms (turns 2+ %.1f ms, p99 %.1f), memory hit rate %.1f%% "
                    + "(hbm %.1f, dram %.1f; disk %.1f), prefill %.0f tok/s, stall %.1f%% of TTFT, %.1f s compute",
                policy, ttft_ms.p50, ttft_ms_turn2plus.p50, ttft_ms_turn2plus.p99, 100 * hit_rate,
                100 * (hit_rate_by_tier["hbm"] ?? 0),
                100 * (hit_rate_by_tier["dram"] ?? 0), 100 * (hit_rate_by_tier["disk"] ?? 0),
                prefill_throughput_tokens_per_s,
                100 * load_stall_fraction_of_ttft, compute_seconds)
        }
    }

    public struct SweepPoint: Encodable {
        public let policy: String
        public let dram_bytes: Int
        public let hit_rate: Double
        public let hit_rate_by_tier: [String: Double]

        public init(policy: String, dram_bytes: Int, hit_rate: Double, hit_rate_by_tier: [String: Double]) {
            self.policy = policy
            self.dram_bytes = dram_bytes
            self.hit_rate = hit_rate
            self.hit_rate_by_tier = hit_rate_by_tier
        }
    }

    public let preset: String
    public let seed: UInt64
    public let conversations: [String]
    public let workload: Workload
    public let policies: [Policy]
    public let sweep: [SweepPoint]
    public let seconds: Double

    public init(
        preset: String, seed: UInt64, conversations: [String], workload: Workload, policies: [Policy],
        sweep: [SweepPoint], seconds: Double
    ) {
        self.preset = preset
        self.seed = seed
        self.conversations = conversations
        self.workload = workload
        self.policies = policies
        self.sweep = sweep
        self.seconds = seconds
    }

    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return try enc.encode(self)
    }

    /// The summary table, with each policy's TTFT and throughput relative to recompute.
    public var markdown: String {
        let base = policies.first { $0.policy == "recompute" }
        var s =
            "| policy | TTFT p50 (ms) | TTFT p50, turns 2+ | p90, turns 2+ | p99, turns 2+ | vs recompute "
            + "(p50, 2+) | prefill tok/s | vs recompute | memory hit rate | hbm / dram / disk | reused | "
            + "stall / TTFT | save lag (ms) | compute (s) |\n"
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n"
        for p in policies {
            let rel =
                base.map {
                    String(format: "%.1f%%", 100 * p.ttft_ms_turn2plus.p50 / max($0.ttft_ms_turn2plus.p50, 1e-9))
                } ?? "-"
            let thr =
                base.map {
                    String(
                        format: "%.2f×",
                        p.prefill_throughput_tokens_per_s / max($0.prefill_throughput_tokens_per_s, 1e-9))
                } ?? "-"
            s += String(
                format:
                    "| %@ | %.1f | %.1f | %.1f | %.1f | %@ | %.0f | %@ | %.1f%% | %.1f / %.1f / %.1f | %.1f%% |"
                    + " %.1f%% | %.1f | %.1f |\n",
                p.policy, p.ttft_ms.p50, p.ttft_ms_turn2plus.p50, p.ttft_ms_turn2plus.p90, p.ttft_ms_turn2plus.p99, rel,
                p.prefill_throughput_tokens_per_s, thr, 100 * p.hit_rate, 100 * (p.hit_rate_by_tier["hbm"] ?? 0),
                100 * (p.hit_rate_by_tier["dram"] ?? 0), 100 * (p.hit_rate_by_tier["disk"] ?? 0), 100 * p.reuse_rate,
                100 * p.load_stall_fraction_of_ttft,
                p.save_lag_ms_mean, p.compute_seconds)
        }
        if !sweep.isEmpty {
            s += "\n| DRAM (MiB) | policy | memory hit rate | hbm / dram / disk |\n|---:|---|---:|---|\n"
            for r in sweep {
                s += String(
                    format: "| %d | %@ | %.1f%% | %.1f / %.1f / %.1f |\n", r.dram_bytes >> 20, r.policy,
                    100 * r.hit_rate,
                    100 * (r.hit_rate_by_tier["hbm"] ?? 0), 100 * (r.hit_rate_by_tier["dram"] ?? 0),
                    100 * (r.hit_rate_by_tier["disk"] ?? 0))
            }
        }
        return s
    }

    public var csv: String {
        var s =
            "policy,session,turn,arrival_s,start_s,ttft_ms,queue_ms,total_ms,prompt_tokens,reusable,reused,"
            + "recomputed,hits_hbm,hits_dram,hits_disk,stall_ms,save_lag_ms\n"
        for p in policies {
            for t in p.turns {
                s +=
                    "\(p.policy),\(t.session),\(t.turn),\(t.arrival_s),\(t.start_s),\(t.ttft_ms),\(t.queue_ms),"
                    + "\(t.total_ms),\(t.prompt_tokens),"
                    + "\(t.reusable),\(t.reused),\(t.recomputed),\(t.hits_hbm),\(t.hits_dram),\(t.hits_disk),"
                    + "\(t.stall_ms),\(t.save_lag_ms)\n"
            }
        }
        return s
    }

    public func write(to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try jsonData().write(to: URL(fileURLWithPath: dir + "/replay.json"))
        try Data(csv.utf8).write(to: URL(fileURLWithPath: dir + "/replay.csv"))
        try Data(markdown.utf8).write(to: URL(fileURLWithPath: dir + "/replay.md"))
    }
}
