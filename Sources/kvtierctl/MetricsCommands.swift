import ArgumentParser
import Foundation
import KVTierAPI

struct MetricsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "kvtierd's Prometheus metrics (the text GET /metrics serves; --json: samples as JSON).")
    @OptionGroup var options: DaemonOptions

    /// One sample of `--json`.
    struct Sample: Encodable {
        let name: String
        let labels: [String: String]
        let value: Double
    }

    func run() async throws {
        try await runAdmin {
            let text = try await options.client.text("/metrics")
            guard options.json else {
                print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
                return
            }
            try options.output(
                PrometheusText(text).samples.map { Sample(name: $0.name, labels: $0.labels, value: $0.value) }
            ) {}
        }
    }
}

struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "A live view of the tiers, the queue and turn latencies, refreshed every --interval seconds.")
    @OptionGroup var options: DaemonOptions
    @Option(help: "Seconds between refreshes.") var interval = 1.0
    @Option(help: "Stop after this many refreshes (0: until interrupted).") var iterations = 0

    func validate() throws {
        guard interval >= 0.1 else { throw ValidationError("--interval must be at least 0.1 s.") }
        guard iterations >= 0 else { throw ValidationError("--iterations must be 0 or more.") }
    }

    func run() async throws {
        let clear = isatty(STDOUT_FILENO) != 0 && !options.json
        var n = 0
        var previous: (at: Date, metrics: PrometheusText)?
        try await runAdmin {
            while iterations == 0 || n < iterations {
                n += 1
                let health = try await options.client.call(.GET, "/healthz", as: Health.self)
                let metrics = PrometheusText(try await options.client.text("/metrics"))
                let now = Date()
                if options.json {
                    // JSON Lines: one compact object per refresh, for `jq` and log shippers.
                    let line = try JSONSerialization.data(
                        withJSONObject: snapshot(health: health, metrics: metrics), options: [.sortedKeys])
                    print(String(decoding: line, as: UTF8.self))
                } else {
                    if clear { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                    render(health: health, metrics: metrics, previous: previous, now: now)
                }
                fflush(nil)
                previous = (now, metrics)
                if iterations == 0 || n < iterations { try await Task.sleep(for: .seconds(interval)) }
            }
        }
    }

    private func snapshot(health: Health, metrics m: PrometheusText) -> [String: Any] {
        var tiers: [[String: Any]] = []
        for t in ["hbm", "dram", "disk"] {
            let l = ["tier": t]
            tiers.append([
                "tier": t, "used_bytes": m.value("kvtier_tier_used_bytes", l) ?? 0,
                "capacity_bytes": m.value("kvtier_tier_capacity_bytes", l) ?? 0,
                "blocks": m.value("kvtier_tier_blocks", l) ?? 0, "hits": m.value("kvtier_tier_hits_total", l) ?? 0,
                "misses": m.value("kvtier_tier_misses_total", l) ?? 0,
                "evictions": m.value("kvtier_tier_evictions_total", l) ?? 0,
            ])
        }
        return [
            "status": health.status, "queue_depth": health.queueDepth, "sessions": health.sessions,
            "turns": m.value("kvtier_ttft_seconds_count") ?? 0,
            "ttft_p50_s": m.quantile(0.5, histogram: "kvtier_ttft_seconds") ?? NSNull(),
            "ttft_p90_s": m.quantile(0.9, histogram: "kvtier_ttft_seconds") ?? NSNull(), "tiers": tiers,
        ]
    }

    private func render(
        health: Health, metrics m: PrometheusText, previous: (at: Date, metrics: PrometheusText)?, now: Date
    ) {
        func ms(_ s: Double?) -> String { s.map { String(format: "%.1f ms", $0 * 1000) } ?? "-" }
        let turns = m.value("kvtier_ttft_seconds_count") ?? 0
        print(
            "kvtierd on \(options.client.socketPath): \(health.status), \(health.sessions) sessions, queue \(health.queueDepth)"
        )
        var rate = ""
        if let p = previous, let before = p.metrics.value("kvtier_ttft_seconds_count") {
            rate = String(format: ", %.2f turns/s", (turns - before) / max(now.timeIntervalSince(p.at), 1e-3))
        }
        print(
            "turns \(Int(turns))\(rate); TTFT p50 \(ms(m.quantile(0.5, histogram: "kvtier_ttft_seconds"))), p90 \(ms(m.quantile(0.9, histogram: "kvtier_ttft_seconds"))); load stall p90 \(ms(m.quantile(0.9, histogram: "kvtier_load_stall_seconds")))"
        )
        let reused = m.value("kvtier_tokens_reused_total") ?? 0
        let recomputed = m.value("kvtier_tokens_recomputed_total") ?? 0
        print(
            String(
                format: "prompt tokens reused %.0f, recomputed %.0f (%.1f%% reused)", reused, recomputed,
                reused + recomputed > 0 ? 100 * reused / (reused + recomputed) : 0))
        print("")
        var rows = [["tier", "used", "capacity", "use", "blocks", "hits", "misses", "hit rate", "evictions"]]
        for t in ["hbm", "dram", "disk"] {
            let l = ["tier": t]
            let used = m.value("kvtier_tier_used_bytes", l) ?? 0
            let cap = m.value("kvtier_tier_capacity_bytes", l) ?? 0
            let hits = m.value("kvtier_tier_hits_total", l) ?? 0
            let misses = m.value("kvtier_tier_misses_total", l) ?? 0
            rows.append([
                t, bytes(Int(used)), bytes(Int(cap)), cap > 0 ? String(format: "%.1f%%", 100 * used / cap) : "-",
                "\(Int(m.value("kvtier_tier_blocks", l) ?? 0))", "\(Int(hits))", "\(Int(misses))",
                hits + misses > 0 ? String(format: "%.1f%%", 100 * hits / (hits + misses)) : "-",
                "\(Int(m.value("kvtier_tier_evictions_total", l) ?? 0))",
            ])
        }
        printTable(rows)
    }
}
