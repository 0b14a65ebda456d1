import Foundation
import KVTierTOML

/// What serving costs on one deployment: the model's size and KV per token, the accelerator's
/// compute and memory, the host's DRAM, link and disk. Read from a TOML file under
/// deploy/simulate/, each figure with its source in a comment there.
///
/// The step time of a batch is a roofline: the larger of its arithmetic (2 FLOPs per parameter
/// per token, plus attention's 4 x layers x hidden per token and context position) at
/// `peak_tflops x mfu`, and its memory traffic (the weights once, plus each row's KV) at the
/// HBM bandwidth, plus a fixed per-step overhead. A tensor-parallel group of `count` devices
/// adds their compute, bandwidth and links.
public struct CostProfile: Sendable, Equatable {
    public struct Model: Sendable, Equatable {
        public var name = ""
        public var parameters = 0.0
        public var weightBytes = 0.0
        public var layers = 1
        /// Width of attention's Q·K and A·V products (heads x head size).
        public var hidden = 1
        /// K and V of every layer for one token, as stored.
        public var kvBytesPerToken = 0
        public var contextWindow = 4096
    }

    public struct Accelerator: Sendable, Equatable {
        public var name = ""
        public var count = 1
        public var peakTFLOPs = 0.0
        /// The share of the peak a prefill step reaches (model FLOPs utilisation).
        public var mfu = 0.5
        public var hbmGBs = 0.0
        /// HBM left for KV after weights and activations, all devices together.
        public var kvBytes = 0.0
        public var stepOverheadMs = 0.0
        public var maxBatch = 256
        public var prefillChunkTokens = 2048
    }

    public struct Host: Sendable, Equatable {
        public var dramBytes = 0.0
        /// Host to device, per device (each device loads its shard of the KV).
        public var linkGBs = 0.0
        public var linkLatencyUs = 0.0
        public var diskBytes = 0.0
        public var diskReadGBs = 0.0
        /// Part of the hardware's description; the model does not time writes (they run behind
        /// every turn on the write-back queue), it counts their bytes.
        public var diskWriteGBs = 0.0
        public var diskLatencyUs = 0.0
        public var blockTokens = 256
    }

    public var name = ""
    public var description = ""
    public var model = Model()
    public var accelerator = Accelerator()
    public var host = Host()

    public init() {}

    // MARK: Costs

    /// Seconds of one batched step: `decodeContexts` are the context lengths of the rows that
    /// decode one token; `prefill` the chunks of prompt tokens (count, context before the chunk).
    public func stepSeconds(decodeContexts: [Int], prefill: [(tokens: Int, context: Int)]) -> Double {
        let l = Double(model.layers)
        let h = Double(model.hidden)
        let kv = Double(model.kvBytesPerToken)
        var flops = 0.0
        var bytes = model.weightBytes
        for c in decodeContexts {
            flops += 2 * model.parameters + 4 * l * h * Double(c)
            bytes += Double(c) * kv
        }
        for chunk in prefill {
            let n = Double(chunk.tokens)
            let c = Double(chunk.context)
            flops += 2 * model.parameters * n + 4 * l * h * n * (c + n / 2)
            bytes += (c + n) * kv
        }
        let devices = Double(max(1, accelerator.count))
        let compute = flops / (accelerator.peakTFLOPs * 1e12 * accelerator.mfu * devices)
        let memory = bytes / (accelerator.hbmGBs * 1e9 * devices)
        return max(compute, memory) + accelerator.stepOverheadMs / 1000
    }

    /// Seconds of arithmetic of prompt chunks alone (their share of a step's compute): the GPU
    /// time prefill costs.
    public func prefillComputeSeconds(_ prefill: [(tokens: Int, context: Int)]) -> Double {
        let l = Double(model.layers)
        let h = Double(model.hidden)
        let flops = prefill.reduce(0.0) { sum, chunk in
            let n = Double(chunk.tokens)
            let c = Double(chunk.context)
            return sum + 2 * model.parameters * n + 4 * l * h * n * (c + n / 2)
        }
        return flops / (accelerator.peakTFLOPs * 1e12 * accelerator.mfu * Double(max(1, accelerator.count)))
    }

    /// Seconds to move `bytes` of KV from host DRAM to the devices.
    public func linkSeconds(_ bytes: Int) -> Double {
        guard bytes > 0 else { return 0 }
        return host.linkLatencyUs / 1e6 + Double(bytes) / (host.linkGBs * 1e9 * Double(max(1, accelerator.count)))
    }

    public func diskReadSeconds(_ bytes: Int) -> Double {
        guard bytes > 0 else { return 0 }
        return host.diskLatencyUs / 1e6 + Double(bytes) / (host.diskReadGBs * 1e9)
    }

    // MARK: Reading

    /// Reads a profile file.
    public static func load(path: String) throws(SimulatorError) -> CostProfile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .profile(path, "cannot read it: \(error.localizedDescription)")
        }
        return try CostProfile(toml: text, source: path)
    }

    /// Parses a profile; `source` names it in errors. Every key is required except `description`,
    /// `accelerator.step_overhead_ms`, `accelerator.max_batch`, `accelerator.prefill_chunk_tokens`,
    /// the latencies and `host.block_tokens`; unknown keys are refused (a typo must not leave a
    /// figure at its default).
    public init(toml text: String, source: String) throws(SimulatorError) {
        let entries: [TOMLConfigFile.Entry]
        do {
            entries = try TOMLConfigFile.parse(text)
        } catch {
            throw .profile(source, "\(error)")
        }
        var seen = Set<String>()
        func where_(_ e: TOMLConfigFile.Entry) -> String { e.line.map { "line \($0): " } ?? "" }
        func number(_ e: TOMLConfigFile.Entry) throws(SimulatorError) -> Double {
            switch e.value {
            case .integer(let i): return Double(i)
            case .float(let f) where f.isFinite: return f
            default: throw .profile(source, "\(where_(e))\(e.key) must be a number")
            }
        }
        func positive(_ e: TOMLConfigFile.Entry, allowZero: Bool = false) throws(SimulatorError) -> Double {
            let v = try number(e)
            guard v > 0 || (allowZero && v == 0) else {
                throw .profile(source, "\(where_(e))\(e.key) must be \(allowZero ? "at least 0" : "above 0")")
            }
            return v
        }
        func count(_ e: TOMLConfigFile.Entry) throws(SimulatorError) -> Int {
            guard case .integer(let i) = e.value, i > 0 else {
                throw .profile(source, "\(where_(e))\(e.key) must be a whole number above 0")
            }
            return i
        }
        func string(_ e: TOMLConfigFile.Entry) throws(SimulatorError) -> String {
            guard case .string(let s) = e.value else { throw .profile(source, "\(where_(e))\(e.key) must be a string") }
            return s
        }
        for e in entries {
            seen.insert(e.key)
            switch e.key {
            case "name": name = try string(e)
            case "description": description = try string(e)
            case "model.name": model.name = try string(e)
            case "model.parameters": model.parameters = try positive(e)
            case "model.weight_bytes": model.weightBytes = try positive(e)
            case "model.layers": model.layers = try count(e)
            case "model.hidden": model.hidden = try count(e)
            case "model.kv_bytes_per_token": model.kvBytesPerToken = try count(e)
            case "model.context_window": model.contextWindow = try count(e)
            case "accelerator.name": accelerator.name = try string(e)
            case "accelerator.count": accelerator.count = try count(e)
            case "accelerator.peak_tflops": accelerator.peakTFLOPs = try positive(e)
            case "accelerator.mfu":
                accelerator.mfu = try positive(e)
                guard accelerator.mfu <= 1 else { throw .profile(source, "\(where_(e))accelerator.mfu is at most 1") }
            case "accelerator.hbm_gbs": accelerator.hbmGBs = try positive(e)
            case "accelerator.kv_bytes": accelerator.kvBytes = try positive(e)
            case "accelerator.step_overhead_ms": accelerator.stepOverheadMs = try positive(e, allowZero: true)
            case "accelerator.max_batch": accelerator.maxBatch = try count(e)
            case "accelerator.prefill_chunk_tokens": accelerator.prefillChunkTokens = try count(e)
            case "host.dram_bytes": host.dramBytes = try positive(e, allowZero: true)
            case "host.link_gbs": host.linkGBs = try positive(e)
            case "host.link_latency_us": host.linkLatencyUs = try positive(e, allowZero: true)
            case "host.disk_bytes": host.diskBytes = try positive(e, allowZero: true)
            case "host.disk_read_gbs": host.diskReadGBs = try positive(e)
            case "host.disk_write_gbs": host.diskWriteGBs = try positive(e)
            case "host.disk_latency_us": host.diskLatencyUs = try positive(e, allowZero: true)
            case "host.block_tokens": host.blockTokens = try count(e)
            default:
                throw .profile(source, "\(where_(e))unknown key \(e.key)")
            }
        }
        let required = [
            "name", "model.name", "model.parameters", "model.weight_bytes", "model.layers", "model.hidden",
            "model.kv_bytes_per_token", "model.context_window", "accelerator.name", "accelerator.count",
            "accelerator.peak_tflops", "accelerator.mfu", "accelerator.hbm_gbs", "accelerator.kv_bytes",
            "host.dram_bytes", "host.link_gbs", "host.disk_bytes", "host.disk_read_gbs", "host.disk_write_gbs",
        ]
        if let missing = required.first(where: { !seen.contains($0) }) {
            throw .profile(source, "\(missing) is missing")
        }
    }
}
