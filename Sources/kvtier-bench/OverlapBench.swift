import ArgumentParser
import Dispatch
import Foundation
import KVTierEngine
import KVTierModel
import KVTierStore

/// CachedAttention's layer-wise loading, measured: a chat's next turn whose history is in DRAM or
/// on disk, with the DRAM-to-HBM link modelled at several bandwidths. For each: the load alone
/// (every layer moved to HBM, nothing computed), the compute alone (the same turn on that
/// resident KV), and the turn's time to first token with layer-wise loading on and off. With
/// overlap the turn should take about the larger of load and compute; without, their sum.
struct OverlapBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overlap",
        abstract: "Layer-wise loading: a turn's TTFT against its load and compute alone, overlap on and off.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Tokens of history (about).") var historyTokens = 2000
    @Option(name: .customLong("link-gbs"), help: "Link bandwidths to model, GB/s, comma-separated.")
    var linkGBs = "0.25,0.5,1,25"
    @Option(
        name: .customLong("disk-read-ms"),
        help: "A modelled disk: milliseconds each block read from disk takes at least (0: this machine's disk).")
    var diskReadMs = 0.0
    @Option(help: "Rounds (overlap on and off alternate within each).") var rounds = 3
    @Option(help: "Threads.") var threads = 2
    @Flag(help: "Print one JSON object.") var json = false

    struct Row: Codable {
        var linkGBs: Double
        var tier: String
        var tokensReused: Int
        var tokensComputed: Int
        var loadMs: Double
        var computeMs: Double
        var overlapTTFTMs: Double
        var sequentialTTFTMs: Double
        var overlapStallMs: Double
        var sequentialStallMs: Double
        /// Layers computed before the load's last layer arrived (median of the overlap runs).
        var layersComputedDuringLoad: Double
    }

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }
        let links = linkGBs.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !links.isEmpty, links.allSatisfy({ $0 > 0 }) else {
            throw ValidationError("--link-gbs: positive numbers, e.g. 0.5,1,25")
        }
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-overlap-\(UUID().uuidString)")
            .path
        defer { try? FileManager.default.removeItem(atPath: base) }
        // Turn 1 once, on a fast link; every measurement starts from a copy of its state.
        var words: [String] = []
        let vocabulary = ["cache", "tier", "layer", "block", "queue", "disk", "link", "reply", "token", "policy"]
        while m.tokenizer.encode(words.joined(separator: " "), addSpecial: false, parseSpecial: false).count
            < historyTokens
        {
            words.append(vocabulary[words.count % vocabulary.count])
        }
        var messages = [ChatMessage(role: "user", content: "Summarize: " + words.joined(separator: " "))]
        do {
            let first = try engine(m, base + "/seed", link: .unthrottled, overlap: true)
            let r1 = try first.runTurn(session: "s", messages: messages, options: options)
            first.quiesce()
            try first.store.flush()
            try first.store.close()
            messages += [
                ChatMessage(role: "assistant", content: r1.text),
                ChatMessage(role: "user", content: "Now list the three words that came up most often, and why."),
            ]
        }
        var rows: [Row] = []
        for gbs in links {
            let link = CopyEngine.Configuration(bandwidthBytesPerSecond: gbs * 1e9, latencySeconds: 10e-6)
            for tier in [Tier.dram, .disk] {
                var load: [Double] = []
                var compute: [Double] = []
                var on: [TurnReport] = []
                var off: [TurnReport] = []
                for _ in 0..<rounds {
                    let alone = try loadThenCompute(m, base, messages, link: link, from: tier)
                    load.append(alone.load)
                    compute.append(alone.compute)
                    on.append(try secondTurn(m, base, messages, link: link, overlap: true, from: tier))
                    off.append(try secondTurn(m, base, messages, link: link, overlap: false, from: tier))
                    FileHandle.standardError.write(Data("\rlink \(gbs) GB/s, \(tier): round \(load.count)".utf8))
                }
                rows.append(
                    Row(
                        linkGBs: gbs, tier: "\(tier)", tokensReused: on[0].tokensReused,
                        tokensComputed: on[0].tokensRecomputed, loadMs: median(load), computeMs: median(compute),
                        overlapTTFTMs: median(on.map(\.ttftMs)), sequentialTTFTMs: median(off.map(\.ttftMs)),
                        overlapStallMs: median(on.map(\.loadStallMs)),
                        sequentialStallMs: median(off.map(\.loadStallMs)),
                        layersComputedDuringLoad: median(on.map { Double($0.layersComputedDuringLoad) })
                    ))
            }
        }
        FileHandle.standardError.write(Data("\n".utf8))
        if json {
            print(String(decoding: try JSONEncoder().encode(rows), as: UTF8.self))
            return
        }
        print(
            "link GB/s  from  reused  computed  load ms  compute ms  sum ms  TTFT overlap  TTFT sequential  stalls"
                + "  layers during load")
        for r in rows {
            print(
                String(format: "%9.2f  ", r.linkGBs) + r.tier.padding(toLength: 4, withPad: " ", startingAt: 0)
                    + String(
                        format: "  %6d  %8d  %7.1f  %10.1f  %6.1f  %12.1f  %15.1f  %5.1f/%.1f  %4.0f", r.tokensReused,
                        r.tokensComputed, r.loadMs, r.computeMs, r.loadMs + r.computeMs, r.overlapTTFTMs,
                        r.sequentialTTFTMs, r.overlapStallMs, r.sequentialStallMs, r.layersComputedDuringLoad))
        }
    }

    private var options: GenerationOptions {
        GenerationOptions(maxTokens: 1, sampling: .greedy, stopAtEndOfGeneration: false)
    }

    private func engine(_ m: LlamaModel, _ dir: String, link: CopyEngine.Configuration, overlap: Bool) throws
        -> ChatEngine
    {
        var c = StoreConfiguration(stateDirectory: dir)
        c.hbmCapacityBytes = 512 << 20
        c.dramCapacityBytes = 2 << 30
        c.link = link
        c.diskReadModel = .init(bandwidthBytesPerSecond: diskReadMs > 0 ? 1e15 : 0, latencySeconds: diskReadMs / 1000)
        let store = try TieredStore(configuration: c, model: ModelFingerprint(model: m), layout: m.kvLayout)
        var e = EngineConfiguration()
        e.threads = threads
        e.layerwiseLoading = overlap
        return ChatEngine(model: m, store: store, configuration: e)
    }

    /// A copy of turn 1's state, opened with `link`, the history in `tier`.
    private func prepared(_ m: LlamaModel, _ base: String, link: CopyEngine.Configuration, overlap: Bool, tier: Tier)
        throws -> (ChatEngine, String)
    {
        let dir = base + "/run-\(UUID().uuidString)"
        try FileManager.default.copyItem(atPath: base + "/seed", toPath: dir)
        let e = try engine(m, dir, link: link, overlap: overlap)
        if tier == .dram {
            let done = DispatchSemaphore(value: 0)
            e.store.prefetch(session: "s") { done.signal() }
            done.wait()
        }
        return (e, dir)
    }

    private func secondTurn(
        _ m: LlamaModel, _ base: String, _ messages: [ChatMessage], link: CopyEngine.Configuration, overlap: Bool,
        from tier: Tier
    ) throws -> TurnReport {
        let (e, dir) = try prepared(m, base, link: link, overlap: overlap, tier: tier)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try e.runTurn(session: "s", messages: messages, options: options)
        e.quiesce()
        try e.store.close()
        return r
    }

    /// Every layer of the session moved to HBM, nothing computed; then the turn on that
    /// resident KV, nothing moved (milliseconds: the load alone, the compute alone).
    private func loadThenCompute(
        _ m: LlamaModel, _ base: String, _ messages: [ChatMessage], link: CopyEngine.Configuration, from tier: Tier
    ) throws -> (load: Double, compute: Double) {
        let (e, dir) = try prepared(m, base, link: link, overlap: true, tier: tier)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let start = DispatchTime.now().uptimeNanoseconds
        let handle = e.store.load(session: "s")
        for l in handle.layers { _ = handle.wait(layer: l) }
        let load = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        handle.release()  // the pages stay cached in HBM
        let r = try e.runTurn(session: "s", messages: messages, options: options)
        e.quiesce()
        try e.store.close()
        guard r.hitsHBM == r.tokensReused else {
            throw ValidationError("the KV left HBM before the turn (hits \(r.hitsHBM) of \(r.tokensReused))")
        }
        return (load, r.ttftMs)
    }
}
