import ArgumentParser
import Dispatch
import Foundation
import KVTierModel
import KVTierStore

/// The tiered store on real SmolLM2 KV: DRAM -> HBM throughput against memcpy, disk save and
/// load against a raw file with fsync, LZ4 ratio with and without the byte shuffle, and
/// per-layer load latency from DRAM and from disk.
struct StoreBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store", abstract: "Tier movement throughput and latency.")

    @Option(name: .long, help: "GGUF model file (default: $KVTIER_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?
    @Option(help: "Token ids (JSON {\"ids\": [...]}) whose KV is stored; random ids if the file is missing.")
    var idsFile = "Tests/KVTierModelTests/Golden/teacher-forcing-ids.json"
    @Option(help: "Tokens of KV per session.") var tokens = 2048
    @Option(help: "Tokens per block.") var blockTokens = 256
    @Option(help: "Repetitions for throughput; latency samples = layers x repetitions.") var repetitions = 5
    @Option(help: "Scratch directory for the disk tier (default: a new temporary directory).") var dir: String?
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let path = ModelLocator.resolve(flag: model)
        let m: LlamaModel
        do { m = try LlamaModel(path: path) } catch { throw ValidationError("\(error)") }
        let layout = m.kvLayout
        let ids = loadIDs(count: tokens, vocab: m.config.vocabularySize)
        // Real KV: prefill the text and cut the cache into blocks.
        let cache = InMemoryKVCache(layout: layout, capacity: ids.count)
        try m.makeTransformer(threads: 2).forward(tokens: ids, positions: (0..<ids.count).map { Int32($0) }, cache: cache, logits: .none)
        let fingerprint = ModelFingerprint(model: m)
        let w = layout.rowWidth
        var blocks: [KVBlock] = []
        for l in 0..<layout.layers {
            cache.withLayer(l) { view in
                for start in stride(from: 0, to: ids.count, by: blockTokens) {
                    let n = min(blockTokens, ids.count - start)
                    var payload = [UInt8](repeating: 0, count: 2 * n * w * 2)
                    payload.withUnsafeMutableBytes { dst in
                        dst.baseAddress!.copyMemory(from: view.runs[0].keys + start * w * 2, byteCount: n * w * 2)
                        (dst.baseAddress! + n * w * 2).copyMemory(from: view.runs[0].values + start * w * 2, byteCount: n * w * 2)
                    }
                    let key = BlockKey(model: fingerprint, session: "bench", layer: l, start: start, count: n)
                    blocks.append(KVBlock(key: key, elementType: .f16, rowWidth: w, payload: payload))
                }
            }
        }
        let totalBytes = blocks.reduce(0) { $0 + $1.payload.count }
        let ratio = DiskTier.measureCompression(payloads: blocks.map(\.payload))
        let codec = measureCodec(blocks.map(\.payload))

        let base = dir ?? FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-store-bench-\(getpid())").path
        try? FileManager.default.removeItem(atPath: base)
        defer { if dir == nil { try? FileManager.default.removeItem(atPath: base) } }

        func makeStore(_ name: String, link: CopyEngine.Configuration) throws -> TieredStore {
            var c = StoreConfiguration(stateDirectory: base + "/" + name)
            c.blockTokens = blockTokens
            c.link = link
            c.hbmCapacityBytes = max(512 << 20, 2 * totalBytes)
            do { return try TieredStore(configuration: c, model: fingerprint, layout: layout) } catch { throw ValidationError("\(error)") }
        }

        // DRAM -> HBM: whole-session loads against plain memcpy of the same blocks.
        func dramToHBM(link: CopyEngine.Configuration) throws -> (rate: Double, layerMs: [Double]) {
            let store = try makeStore("dram-\(link.bandwidthBytesPerSecond)", link: link)
            for b in blocks { try store.admit(b) }
            for b in blocks { _ = store.save(b.key) }
            store.waitForSaves()
            var rates: [Double] = []
            var layerMs: [Double] = []
            for _ in 0..<repetitions {
                try store.demote(session: "bench", to: .dram)
                let (seconds, perLayer) = timedLoad(store)
                rates.append(Double(totalBytes) / seconds)
                layerMs += perLayer
            }
            return (median(rates), layerMs)
        }
        let memcpyRate = measureMemcpy(blocks: blocks)
        let unthrottled = try dramToHBM(link: .init(bandwidthBytesPerSecond: 0, latencySeconds: 0))
        let pcie = try dramToHBM(link: CopyEngine.Configuration())

        // Disk: save and load against raw bytes in a file with fsync.
        let disk = try makeStore("disk", link: .init(bandwidthBytesPerSecond: 0, latencySeconds: 0))
        var saveRates: [Double] = [], loadRates: [Double] = [], diskLayerMs: [Double] = []
        for _ in 0..<repetitions {
            let session = "bench"
            try disk.delete(session: session)
            for b in blocks { try disk.admit(b) }
            let t0 = now()
            for b in blocks { _ = disk.save(b.key, placement: .writeThrough) }
            disk.waitForSaves()
            try disk.flush()
            saveRates.append(Double(totalBytes) / (now() - t0))
            try disk.demote(session: session, to: .disk)  // out of HBM and DRAM
            let (seconds, perLayer) = timedLoad(disk)
            loadRates.append(Double(totalBytes) / seconds)
            diskLayerMs += perLayer
            // Next round starts from disk only.
            try disk.demote(session: session, to: .disk)
        }
        // Per-layer latency from disk, one layer at a time (page cache warm).
        var singleLayerDiskMs: [Double] = []
        for _ in 0..<repetitions {
            for l in 0..<layout.layers {
                try disk.demote(session: "bench", to: .disk)
                let t = now()
                let h = disk.load(session: "bench", layers: l..<(l + 1))
                _ = h.wait(layer: l)
                singleLayerDiskMs.append((now() - t) * 1000)
                h.release()
            }
        }
        let raw = measureRawFile(blocks: blocks, path: base + "/raw.bin")

        struct Out: Encodable {
            let benchmark: String; let tokens: Int; let block_tokens: Int; let blocks: Int; let bytes: Int
            let compression_ratio_shuffled: Double; let compression_ratio_plain: Double
            let memcpy_bytes_per_second: Double
            let dram_to_hbm_unthrottled_bytes_per_second: Double; let dram_to_hbm_fraction_of_memcpy: Double
            let dram_to_hbm_25gbps_link_bytes_per_second: Double
            let layer_load_ms_dram_p50: Double; let layer_load_ms_dram_p99: Double
            let disk_save_bytes_per_second: Double; let raw_file_write_fsync_bytes_per_second: Double
            let disk_load_bytes_per_second: Double; let raw_file_read_bytes_per_second: Double
            let layer_load_ms_disk_pipelined_p50: Double; let layer_load_ms_disk_pipelined_p99: Double
            let layer_load_ms_disk_single_p50: Double; let layer_load_ms_disk_single_p99: Double
            /// One thread, every block once: byte shuffle + LZ4 compress, LZ4 decompress + unshuffle,
            /// CRC32C, and a plain copy (bytes of raw KV per second).
            let codec_compress_bytes_per_second: Double; let codec_decompress_bytes_per_second: Double
            let crc32c_bytes_per_second: Double; let copy_bytes_per_second: Double
        }
        let out = Out(
            benchmark: "store", tokens: ids.count, block_tokens: blockTokens, blocks: blocks.count, bytes: totalBytes,
            compression_ratio_shuffled: ratio.shuffled, compression_ratio_plain: ratio.plain,
            memcpy_bytes_per_second: memcpyRate,
            dram_to_hbm_unthrottled_bytes_per_second: unthrottled.rate, dram_to_hbm_fraction_of_memcpy: unthrottled.rate / memcpyRate,
            dram_to_hbm_25gbps_link_bytes_per_second: pcie.rate,
            layer_load_ms_dram_p50: percentile(unthrottled.layerMs, 50), layer_load_ms_dram_p99: percentile(unthrottled.layerMs, 99),
            disk_save_bytes_per_second: median(saveRates), raw_file_write_fsync_bytes_per_second: raw.write,
            disk_load_bytes_per_second: median(loadRates), raw_file_read_bytes_per_second: raw.read,
            layer_load_ms_disk_pipelined_p50: percentile(diskLayerMs, 50), layer_load_ms_disk_pipelined_p99: percentile(diskLayerMs, 99),
            layer_load_ms_disk_single_p50: percentile(singleLayerDiskMs, 50), layer_load_ms_disk_single_p99: percentile(singleLayerDiskMs, 99),
            codec_compress_bytes_per_second: codec.compress, codec_decompress_bytes_per_second: codec.decompress,
            crc32c_bytes_per_second: codec.crc, copy_bytes_per_second: codec.copy)
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            print(String(decoding: try enc.encode(out), as: UTF8.self))
        } else {
            func gb(_ x: Double) -> String { String(format: "%.2f GB/s", x / 1e9) }
            print("KV: \(ids.count) tokens x \(layout.layers) layers = \(blocks.count) blocks, \(totalBytes / 1_000_000) MB")
            print(String(format: "LZ4 ratio: %.3f with byte shuffle, %.3f without", ratio.shuffled, ratio.plain))
            print("codec, one thread: shuffle+LZ4 \(gb(codec.compress)), LZ4+unshuffle \(gb(codec.decompress)), "
                + "CRC32C \(gb(codec.crc)), copy \(gb(codec.copy))")
            print("DRAM -> HBM: \(gb(unthrottled.rate)) unthrottled (memcpy \(gb(memcpyRate)), \(String(format: "%.0f%%", 100 * unthrottled.rate / memcpyRate))), \(gb(pcie.rate)) over the modelled 25 GB/s link")
            print(String(format: "layer load from DRAM: p50 %.3f ms, p99 %.3f ms", out.layer_load_ms_dram_p50, out.layer_load_ms_dram_p99))
            print("disk save: \(gb(out.disk_save_bytes_per_second)) (raw file + fsync \(gb(raw.write))); load \(gb(out.disk_load_bytes_per_second)) (raw read \(gb(raw.read)))")
            print(String(format: "layer load from disk: pipelined p50 %.3f ms p99 %.3f ms; one layer alone p50 %.3f ms p99 %.3f ms",
                         out.layer_load_ms_disk_pipelined_p50, out.layer_load_ms_disk_pipelined_p99, out.layer_load_ms_disk_single_p50, out.layer_load_ms_disk_single_p99))
        }
    }

    /// Loads the whole "bench" session into HBM; returns the seconds it took and the time
    /// between consecutive layers' arrivals, in milliseconds.
    private func timedLoad(_ store: TieredStore) -> (Double, [Double]) {
        let t0 = now()
        let h = store.load(session: "bench")
        var prev = t0
        var layerMs: [Double] = []
        for l in h.layers {
            _ = h.wait(layer: l)
            let t = now()
            layerMs.append((t - prev) * 1000)
            prev = t
        }
        let seconds = now() - t0
        h.release()
        return (seconds, layerMs)
    }

    private func loadIDs(count: Int, vocab: Int) -> [Int32] {
        struct File: Decodable { let ids: [Int32] }
        var ids: [Int32] = []
        if let data = FileManager.default.contents(atPath: idsFile), let f = try? JSONDecoder().decode(File.self, from: data) {
            ids = f.ids
        }
        var rng = SplitMix64(seed: 99)
        while ids.count < count { ids.append(Int32(rng.next() % UInt64(vocab))) }
        return Array(ids.prefix(count))
    }

    private func measureMemcpy(blocks: [KVBlock]) -> Double {
        let n = blocks.map(\.payload.count).max() ?? 0
        let dst = UnsafeMutableRawPointer.allocate(byteCount: n * blocks.count, alignment: 64)
        defer { dst.deallocate() }
        memset(dst, 0, n * blocks.count)
        var rates: [Double] = []
        for _ in 0..<repetitions {
            let t = now()
            for (i, b) in blocks.enumerated() {
                b.payload.withUnsafeBytes { (dst + i * n).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            rates.append(Double(blocks.reduce(0) { $0 + $1.payload.count }) / (now() - t))
        }
        return median(rates)
    }

    private func measureRawFile(blocks: [KVBlock], path: String) -> (write: Double, read: Double) {
        let total = blocks.reduce(0) { $0 + $1.payload.count }
        var writes: [Double] = [], reads: [Double] = []
        for _ in 0..<repetitions {
            let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o644)
            guard fd >= 0 else { return (0, 0) }
            let t = now()
            for b in blocks { b.payload.withUnsafeBytes { _ = write(fd, $0.baseAddress, $0.count) } }
            fsync(fd)
            writes.append(Double(total) / (now() - t))
            close(fd)
            let rfd = open(path, O_RDONLY)
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            let t2 = now()
            while buf.withUnsafeMutableBytes({ read(rfd, $0.baseAddress, $0.count) }) > 0 {}
            reads.append(Double(total) / (now() - t2))
            close(rfd)
        }
        return (median(writes), median(reads))
    }

    /// The disk codec's cost per byte of raw KV, one thread, the median of `repetitions` passes.
    private func measureCodec(_ payloads: [[UInt8]]) -> (compress: Double, decompress: Double, crc: Double, copy: Double) {
        let bytes = Double(payloads.reduce(0) { $0 + $1.count })
        func rate(_ body: () -> Void) -> Double {
            var rates: [Double] = []
            for _ in 0..<max(1, repetitions) {
                let t = DispatchTime.now().uptimeNanoseconds
                body()
                rates.append(bytes / (Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9))
            }
            return median(rates)
        }
        let packed = payloads.map { ShuffledLZ4Codec.compress($0, shuffle: true) }
        var sink = 0
        let compress = rate { for p in payloads { sink &+= ShuffledLZ4Codec.compress(p, shuffle: true).count } }
        let decompress = rate {
            for (p, c) in zip(payloads, packed) {
                sink &+= (try? ShuffledLZ4Codec.decompress(c, originalCount: p.count, shuffle: true))?.count ?? 0
            }
        }
        let crc = rate { for p in payloads { sink &+= Int(Checksum.crc32c(p)) } }
        let copy = rate {
            for p in payloads {
                let c = [UInt8](unsafeUninitializedCapacity: p.count) { dst, n in
                    p.withUnsafeBytes { dst.baseAddress!.initialize(from: $0.bindMemory(to: UInt8.self).baseAddress!, count: p.count) }
                    n = p.count
                }
                sink &+= Int(c[c.count / 2])
            }
        }
        if sink == 42 { print("") }  // keeps the work from being optimized away
        return (compress, decompress, crc, copy)
    }
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return 0 }
    let i = min(s.count - 1, max(0, Int((p / 100 * Double(s.count)).rounded(.up)) - 1))
    return s[i]


}
