import ArgumentParser
import Dispatch
import Foundation
import KVTierModel

/// Prefill and decode throughput of the in-process decoder, in the shape of llama-bench's
/// pp/tg tests: prefill of N prompt tokens into an empty cache (or, with `--depth D`, into a cache
/// already holding D tokens, as llama-bench's `-d`: a later turn of a chat); decode of N tokens
/// one at a time.
struct DecoderBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "decoder", abstract: "Prefill and decode tokens/s.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Threads.") var threads = 2
    @Option(help: "Prompt lengths to prefill (comma-separated).") var prefill = "128,512,2048"
    @Option(
        help: ArgumentHelp(
            "Tokens already in the cache before each prefill (not timed), as llama-bench's -d: "
                + "the shape of a later turn, its history reused.")
    )
    var depth = 0
    @Option(help: "Tokens to decode.") var decode = 128
    @Option(
        help: ArgumentHelp(
            "Batch widths for batched decode (tgN xB: B sequences decoding in one step each), comma-separated; "
                + "\"\" for none.")
    )
    var batch = "1,4,8,16,32"
    @Option(
        help: ArgumentHelp(
            "Rows from which the linear layers take dequantize-and-sgemm instead of the batched matrix-vector kernel "
                + "(default: measured, as kvtierd does).")
    )
    var gemmThreshold: Int?
    @Option(
        help: "Bits per activation on the quantized-activation path (AVX-512 VNNI): 16 or 8 (engine.activation_bits).")
    var activationBits = 16
    @Option(help: "Repetitions; the median is reported.") var repetitions = 3
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }
        let lengths = prefill.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let transformer = m.makeTransformer(threads: threads)
        guard let bits = ActivationBits(rawValue: activationBits) else {
            throw ValidationError("--activation-bits must be 8 or 16, got \(activationBits)")
        }
        transformer.activationBits = bits
        var kernels = "linear layers: sgemm from \(gemmThreshold ?? 0) rows (--gemm-threshold)"
        transformer.linearGemmThreshold = gemmThreshold ?? transformer.calibrateLinearGemmThreshold { kernels = $0 }
        var rng = SplitMix64(seed: 1234)
        func randomTokens(_ n: Int) -> [Int32] {
            (0..<n).map { _ in Int32(rng.next() % UInt64(m.config.vocabularySize)) }
        }

        struct Row: Encodable {
            let test: String
            let tokens: Int
            let tokens_per_second: Double
            let runs: [Double]
        }
        var rows: [Row] = []
        // Warm-up: touches the weights once.
        let warm = InMemoryKVCache(layout: m.kvLayout, capacity: 64)
        try transformer.forward(
            tokens: randomTokens(32), positions: (0..<32).map { Int32($0) }, cache: warm, logits: .last)

        guard depth >= 0 else { throw ValidationError("--depth must be 0 or more, got \(depth)") }
        for n in lengths {
            var rates: [Double] = []
            for _ in 0..<repetitions {
                let cache = InMemoryKVCache(layout: m.kvLayout, capacity: depth + n)
                if depth > 0 {
                    try transformer.forward(
                        tokens: randomTokens(depth), positions: (0..<depth).map { Int32($0) }, cache: cache,
                        logits: .last)
                }
                let toks = randomTokens(n)
                let positions = (depth..<(depth + n)).map { Int32($0) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                try transformer.forward(tokens: toks, positions: positions, cache: cache, logits: .last)
                let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                rates.append(Double(n) / dt)
            }
            let name = depth > 0 ? "pp\(n) @ d\(depth)" : "pp\(n)"
            rows.append(Row(test: name, tokens: n, tokens_per_second: median(rates), runs: rates))
        }
        if decode > 0 {
            var rates: [Double] = []
            for _ in 0..<repetitions {
                let cache = InMemoryKVCache(layout: m.kvLayout, capacity: decode + 1)
                var token = randomTokens(1)[0]
                let t0 = DispatchTime.now().uptimeNanoseconds
                for i in 0..<decode {
                    try transformer.forward(tokens: [token], positions: [Int32(i)], cache: cache, logits: .last) {
                        _, logits in
                        token = Sampler.argmax(logits)
                    }
                }
                let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                rates.append(Double(decode) / dt)
            }
            rows.append(Row(test: "tg\(decode)", tokens: decode, tokens_per_second: median(rates), runs: rates))
        }
        // Sampling alone on a real logits vector: what each generated token costs its turn's thread
        // besides the forward pass, at the server's default temperature 0.7, and with top_p 0.9.
        var last: [Float] = []
        try transformer.forward(
            tokens: randomTokens(16), positions: (0..<16).map { Int32($0) },
            cache: InMemoryKVCache(layout: m.kvLayout, capacity: 16), logits: .last
        ) { _, l in last = Array(l) }
        let samplings = [
            ("sample t0.7", SamplingParameters(temperature: 0.7, seed: 1)),
            ("sample t0.7 p0.9", SamplingParameters(temperature: 0.7, topP: 0.9, seed: 1)),
        ]
        for (name, parameters) in samplings {
            var rates: [Double] = []
            let n = 200
            for _ in 0..<repetitions {
                var sampler = Sampler(parameters)
                let t0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<n { _ = last.withUnsafeBufferPointer { sampler.sample(logits: $0) } }
                rates.append(Double(n) / (Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9))
            }
            rows.append(Row(test: name, tokens: n, tokens_per_second: median(rates), runs: rates))
        }
        // Batched decode: B sequences, each a few tokens in, decode `decode / 4` tokens each, one
        // step per token for all of them (what the daemon's batch executor runs).
        for b in batch.split(separator: ",").compactMap({ Int($0.trimmingCharacters(in: .whitespaces)) })
        where b > 0 && decode > 0 {
            let steps = max(8, decode / 4)
            var rates: [Double] = []
            for _ in 0..<repetitions {
                let caches = (0..<b).map { _ in InMemoryKVCache(layout: m.kvLayout, capacity: steps + 8) }
                var tokens = (0..<b).map { _ in randomTokens(1)[0] }
                let t0 = DispatchTime.now().uptimeNanoseconds
                for i in 0..<steps {
                    let items = (0..<b).map { j in
                        Transformer.StepItem(
                            tokens: [tokens[j]], positions: [Int32(i)], cache: caches[j], logits: .last
                        ) { _, logits in
                            tokens[j] = Sampler.argmax(logits)
                        }
                    }
                    if let error = transformer.step(items).compactMap({ $0 }).first { throw error }
                }
                let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                rates.append(Double(steps * b) / dt)
            }
            rows.append(Row(test: "tg\(steps) x\(b)", tokens: steps * b, tokens_per_second: median(rates), runs: rates))
        }
        let peak = ProcessStats.peakResidentBytes()
        if json {
            struct Out: Encodable {
                let benchmark: String
                let model: String
                let threads: Int
                let simd: String
                let repetitions: Int
                let results: [Row]
                let peak_rss_bytes: Int
                let kernels: String
            }
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let out = Out(
                benchmark: "decoder", model: path, threads: threads, simd: LlamaModel.simdLevel,
                repetitions: repetitions,
                results: rows, peak_rss_bytes: peak, kernels: kernels)
            print(String(decoding: try enc.encode(out), as: UTF8.self))
        } else {
            print("| test | t/s (median of \(repetitions)) | runs |")
            print("|---|---:|---|")
            for r in rows {
                let runs = r.runs.map { String(format: "%.1f", $0) }.joined(separator: ", ")
                print("| \(r.test) | \(String(format: "%.1f", r.tokens_per_second)) | \(runs) |")
            }
            print(
                "threads \(threads), simd \(LlamaModel.simdLevel), OpenBLAS \(OpenBLASCore.name), "
                    + "peak RSS \(peak / 1_000_000) MB")
            print(kernels)
        }
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
