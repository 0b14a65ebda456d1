import ArgumentParser
import Foundation
import KVTierModel

/// The roofline: the machine's measured peaks next to what each compute kernel achieves on one
/// core, on the model's own matrices (issue 19; docs/benchmarks.md).
struct KernelsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels", abstract: "Each compute kernel's GFLOP/s and GB/s against the machine's measured peaks."
    )

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Threads for the memory-bandwidth peak (the kernels run on one core).") var threads = 2
    @Option(help: "Seconds per timed loop (best of three).") var seconds = 0.2
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }
        let roofline = KernelRoofline(seconds: seconds)
        let peaks = roofline.peaks(threads: threads)
        let kernels = roofline.kernels(model: m)
        if json {
            struct Out: Encodable {
                let benchmark: String
                let model: String
                let simd: String
                let peaks: [KernelRoofline.Figure]
                let kernels: [KernelRoofline.Figure]
            }
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            let out = Out(benchmark: "kernels", model: path, simd: LlamaModel.simdLevel, peaks: peaks, kernels: kernels)
            print(String(decoding: try enc.encode(out), as: UTF8.self))
            return
        }
        let fmaPeak = peaks.first?.gflops
        let memoryPeak = peaks.dropFirst().first?.gbps
        func cell(_ v: Double?) -> String { v.map { String(format: "%.1f", $0) } ?? "" }
        func share(_ v: Double?, _ peak: Double?) -> String {
            guard let v, let peak, peak > 0 else { return "" }
            return String(format: "%.0f%%", 100 * v / peak)
        }
        print("| figure | GFLOP/s | of the FMA peak | GB/s | of one thread's read bandwidth | note |")
        print("|---|---:|---:|---:|---:|---|")
        for f in peaks + kernels {
            print(
                "| \(f.name) | \(cell(f.gflops)) | \(f.name.hasPrefix("peak") ? "" : share(f.gflops, fmaPeak)) | "
                    + "\(cell(f.gbps)) | \(f.name.hasPrefix("peak") ? "" : share(f.gbps, memoryPeak)) | \(f.note) |")
        }
        print("simd \(LlamaModel.simdLevel); kernels on one core; best of three loops of \(seconds) s")
    }
}
