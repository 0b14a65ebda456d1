import CoreMetrics
import KVTierBuildInfo
import KVTierEngine
import KVTierModel
import KVTierStore
import NIOConcurrencyHelpers
import Prometheus

/// The daemon's metrics, recorded through swift-metrics' API onto a swift-prometheus registry
/// and served by `GET /metrics` in Prometheus' text format.
///
/// Per-turn figures (TTFT, load stall, save lag, tokens) are recorded as turns finish; tier
/// figures are read from the store when scraped: gauges are set, and the store's cumulative
/// counters are turned into counter increments (guarded by `lastTotals`).
public final class ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let ttft: CoreMetrics.Timer
    private let loadStall: CoreMetrics.Timer
    private let saveLag: CoreMetrics.Timer
    private let saveWait: CoreMetrics.Timer
    private let turnDuration: CoreMetrics.Timer
    private let remoteLayerRead: CoreMetrics.Timer
    private let queueDepth: CoreMetrics.Meter
    private let tokensReused: CoreMetrics.Counter
    private let tokensRecomputed: CoreMetrics.Counter
    private let tokensGenerated: CoreMetrics.Counter
    private let truncatedTokens: CoreMetrics.Counter
    private let tokensAdopted: CoreMetrics.Counter
    private let blocksShared: CoreMetrics.Counter
    /// Store counters as of the last scrape: "metric/tier" -> value.
    private let lastTotals = NIOLockedValueBox<[String: Int]>([:])

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        let latency: [Duration] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000].map {
            .milliseconds($0)
        }
        for name in [
            "kvtier_ttft_seconds", "kvtier_load_stall_seconds", "kvtier_save_lag_seconds", "kvtier_turn_seconds",
            "kvtier_save_wait_seconds",
        ] {
            factory.durationHistogramBuckets[name] = latency
        }
        // A layer's pipelined read from the remote tier takes from a fraction of a millisecond
        // to tens of milliseconds: finer buckets, so that histogram_quantile reads its p50 and p99.
        factory.durationHistogramBuckets["kvtier_remote_layer_read_seconds"] = [
            100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 50000, 100_000, 250_000, 1_000_000,
        ].map { .microseconds($0) }
        self.factory = factory
        ttft = CoreMetrics.Timer(label: "kvtier_ttft_seconds", factory: factory)
        loadStall = CoreMetrics.Timer(label: "kvtier_load_stall_seconds", factory: factory)
        saveLag = CoreMetrics.Timer(label: "kvtier_save_lag_seconds", factory: factory)
        saveWait = CoreMetrics.Timer(label: "kvtier_save_wait_seconds", factory: factory)
        turnDuration = CoreMetrics.Timer(label: "kvtier_turn_seconds", factory: factory)
        remoteLayerRead = CoreMetrics.Timer(label: "kvtier_remote_layer_read_seconds", factory: factory)
        queueDepth = CoreMetrics.Meter(label: "kvtier_queue_depth", factory: factory)
        tokensReused = CoreMetrics.Counter(label: "kvtier_tokens_reused_total", factory: factory)
        tokensRecomputed = CoreMetrics.Counter(label: "kvtier_tokens_recomputed_total", factory: factory)
        tokensGenerated = CoreMetrics.Counter(label: "kvtier_tokens_generated_total", factory: factory)
        truncatedTokens = CoreMetrics.Counter(label: "kvtier_tokens_truncated_total", factory: factory)
        tokensAdopted = CoreMetrics.Counter(label: "kvtier_tokens_adopted_total", factory: factory)
        blocksShared = CoreMetrics.Counter(label: "kvtier_blocks_shared_on_save_total", factory: factory)
        // Which build is serving: constant 1, the version and commit as labels (Prometheus' convention).
        CoreMetrics.Gauge(
            label: "kvtier_build_info", dimensions: [("version", BuildInfo.version), ("git", BuildInfo.gitDescribe)],
            factory: factory
        ).record(1)
    }

    /// A finished turn.
    /// A turn that stopped because its client went away before it produced a reply (dropped
    /// from the queue, or stopped during its prompt): counted as a cancelled turn.
    public func recordCancelledBeforeReply() {
        CoreMetrics.Counter(label: "kvtier_turns_total", dimensions: [("finish_reason", "cancelled")], factory: factory)
            .increment()
    }

    public func record(_ r: TurnReport) {
        ttft.recordNanoseconds(Int64((r.queueMs + r.ttftMs) * 1e6))
        saveWait.recordNanoseconds(Int64(r.saveWaitMs * 1e6))
        loadStall.recordNanoseconds(Int64(r.loadStallMs * 1e6))
        saveLag.recordNanoseconds(Int64(r.saveLagMs * 1e6))
        turnDuration.recordNanoseconds(Int64(r.totalMs * 1e6))
        for ms in r.remoteLayerReadMs { remoteLayerRead.recordNanoseconds(Int64(ms * 1e6)) }
        tokensReused.increment(by: r.tokensReused)
        tokensRecomputed.increment(by: r.tokensRecomputed)
        tokensGenerated.increment(by: r.tokensGenerated)
        truncatedTokens.increment(by: r.truncatedTokens)
        tokensAdopted.increment(by: r.tokensAdopted)
        blocksShared.increment(by: r.blocksShared)
        CoreMetrics.Counter(
            label: "kvtier_turns_total", dimensions: [("finish_reason", r.stopReason)], factory: factory
        ).increment()
        for (tier, n) in [
            ("hbm", r.hitsHBM), ("dram", r.hitsDRAM), ("disk", r.hitsDisk), ("remote", r.hitsRemote),
        ] where n > 0 {
            CoreMetrics.Counter(label: "kvtier_tokens_served_total", dimensions: [("tier", tier)], factory: factory)
                .increment(by: n)
        }
    }

    /// A response sent, by status code.
    public func response(status: Int) {
        CoreMetrics.Counter(
            label: "kvtier_http_responses_total", dimensions: [("status", String(status))], factory: factory
        ).increment()
    }

    public func setQueueDepth(_ n: Int) { queueDepth.set(n) }

    /// Chats without a session id forgotten after being idle too long.
    public func recordExpiredSessions(_ n: Int) {
        CoreMetrics.Counter(label: "kvtier_sessions_expired_total", factory: factory).increment(by: n)
    }

    /// The Prometheus text exposition, after reading the tiers' current figures.
    /// `running`: turns in the batch now; `batch`: the batch executor's counters.
    public func exposition(
        tiers: [TierStats], queueDepth depth: Int, running: Int = 0, batch: BatchExecutor.Counters? = nil
    ) -> [UInt8] {
        setQueueDepth(depth)
        CoreMetrics.Meter(label: "kvtier_running_turns", factory: factory).set(running)
        lastTotals.withLockedValue { last in
            /// Advances counter `name` to a cumulative `value` read from the engine or the store.
            /// A counter only grows; a source that reset its figures starts a new baseline.
            func advance(_ name: String, dimensions: [(String, String)] = [], to value: Int) {
                let key = ([name] + dimensions.map(\.1)).joined(separator: "/")
                let delta = value - (last[key] ?? 0)
                CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory).increment(by: max(0, delta))
                last[key] = value
            }
            if let batch {
                advance("kvtier_batch_steps_total", to: batch.steps)
                advance("kvtier_batch_rows_total", to: batch.rows)
                // Milliseconds, so that the counter stays an integer.
                advance("kvtier_batch_compute_milliseconds_total", to: Int(batch.computeSeconds * 1000))
                CoreMetrics.Meter(label: "kvtier_batch_widest_step", factory: factory).set(batch.widestStep)
            }
            for t in tiers {
                let dims = [("tier", t.tier)]
                CoreMetrics.Meter(label: "kvtier_tier_used_bytes", dimensions: dims, factory: factory).set(t.usedBytes)
                CoreMetrics.Meter(label: "kvtier_tier_capacity_bytes", dimensions: dims, factory: factory).set(
                    t.capacityBytes)
                CoreMetrics.Meter(label: "kvtier_tier_blocks", dimensions: dims, factory: factory).set(t.blocks)
                var totals = [
                    ("kvtier_tier_hits_total", t.hits), ("kvtier_tier_misses_total", t.misses),
                    ("kvtier_tier_evictions_total", t.evictions), ("kvtier_tier_bytes_in_total", t.bytesIn),
                    ("kvtier_tier_bytes_out_total", t.bytesOut),
                    ("kvtier_tier_checksum_failures_total", t.checksumFailures),
                ]
                if let health = t.health {
                    // The disk and remote tiers report health: 1 while degraded (or full), and failed writes.
                    CoreMetrics.Meter(label: "kvtier_tier_degraded", dimensions: dims, factory: factory).set(
                        health.isHealthy ? 0 : 1)
                    totals.append(("kvtier_tier_write_errors_total", health.writeErrors))
                }
                for (name, value) in totals { advance(name, dimensions: dims, to: value) }
            }
        }
        return MetricsHelp.insert(into: registry.emitToBuffer())
    }
}
