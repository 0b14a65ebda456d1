import CKVTierKernels
import COpenBLAS
import Dispatch

// Unsafe-pointer fence: the kernels run on scratch buffers and the model's own matrices.

/// The machine's measured peaks and what each compute kernel achieves on one core, on the loaded
/// model's own matrices in the layout the kernels read (`kvtier-bench kernels`, the roofline
/// table of docs/benchmarks.md). Every figure is the best of three timed loops of at least
/// `seconds` each.
public struct KernelRoofline: Sendable {
    public struct Figure: Sendable, Encodable {
        public let name: String
        /// Useful floating-point operations per second (multiply and add counted apart), or nil.
        public let gflops: Double?
        /// Bytes the kernel must read from memory per second (weights, or the KV cache), or nil.
        public let gbps: Double?
        public let note: String
    }

    public let seconds: Double

    public init(seconds: Double = 0.2) { self.seconds = seconds }

    /// Seconds per call of `body`: the best of three loops of at least `seconds` each.
    private func time(_ body: () -> Void) -> Double {
        body()
        var best = Double.infinity
        for _ in 0..<3 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            var calls = 0
            var elapsed = 0.0
            repeat {
                body()
                calls += 1
                elapsed = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            } while elapsed < seconds
            best = min(best, elapsed / Double(calls))
        }
        return best
    }

    /// FMA peak of one core, and memory read bandwidth with one and with `threads` threads
    /// (a buffer of `readBytes`, larger than the caches, streamed through independent vector adds).
    public func peaks(threads: Int, readBytes: Int = 512 << 20) -> [Figure] {
        var flopsPerRound: Int32 = 0
        var sink: Float = 0
        let rounds = 1 << 20
        let fma = time { sink += kvt_probe_fma(rounds, &flopsPerRound) }
        var out = [
            Figure(
                name: "peak: FMA, one core", gflops: Double(rounds) * Double(flopsPerRound) / fma / 1e9, gbps: nil,
                note: "12 independent FMA chains (\(String(cString: kvt_cpu_level_name(kvt_cpu_level()))))")
        ]
        let bytes = max(4096, readBytes / 4096 * 4096)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 1, count: bytes)
        let base = Int(bitPattern: buffer)
        for n in Set([1, max(1, threads)]).sorted() {
            // An address, not a pointer, crosses into the concurrent closure: each thread reads
            // only its own share of the buffer, which outlives the call.
            let t = time {
                DispatchQueue.concurrentPerform(iterations: n) { k in
                    let (a, b) = Parallel.share(bytes / 4096, k, n)
                    guard let p = UnsafeRawPointer(bitPattern: base) else { return }
                    _ = kvt_probe_read(p + a * 4096, (b - a) * 4096)
                }
            }
            out.append(
                Figure(
                    name: "peak: memory read, \(n) thread\(n == 1 ? "" : "s")", gflops: nil,
                    gbps: Double(bytes) / t / 1e9, note: "\(bytes >> 20) MiB streamed"))
        }
        withExtendedLifetime(sink) {}
        return out
    }

    /// Each kernel on one core.
    public func kernels(model: LlamaModel, activationBits: ActivationBits = .sixteen) -> [Figure] {
        let w = model.weights
        guard let up = w.layers.first?.up else { return [] }
        var figures: [Figure] = []
        let maxCols = max(up.cols, w.layers[0].down.cols)
        let x = FloatBuffer(16 * maxCols)
        let sums = FloatBuffer(16 * maxCols / 32)
        let y = FloatBuffer(16 * max(up.rows, w.output.rows))
        var seed: UInt32 = 7
        for i in 0..<(16 * maxCols) {
            seed = seed &* 1_664_525 &+ 1_013_904_223
            x.pointer[i] = Float(seed >> 8) / Float(1 << 24) - 0.5
        }
        for i in 0..<16 { kvt_block_sums(x.pointer + i * up.cols, sums.pointer + i * up.cols / 32, Int32(up.cols)) }

        let q8 = UnsafeMutablePointer<kvt_q8_block>.allocate(capacity: 16 * maxCols / 32)
        defer { q8.deallocate() }
        func matvec(_ m: WeightMatrix, vectors: Int) {
            if m.takesQuantizedActivations {  // the activations quantized inside the timed call, as the decoder does
                let bits = Int32(activationBits.rawValue)
                kvt_quantize_q8(bits, x.pointer, m.cols, Int32(vectors), Int32(m.cols), q8)
                kvt_matvec_q8(
                    bits, m.kernelType, m.base, m.rowBytes, 0, Int32(m.rows), Int32(m.cols), q8, m.cols / 32,
                    Int32(vectors), y.pointer, m.rows)
            } else if vectors == 1 {
                kvt_matvec(
                    m.kernelType, m.base, m.rowBytes, 0, Int32(m.rows), Int32(m.cols), x.pointer, sums.pointer,
                    y.pointer)
            } else {
                kvt_matvec_rows(
                    m.kernelType, m.base, m.rowBytes, 0, Int32(m.rows), Int32(m.cols), x.pointer, m.cols, sums.pointer,
                    m.cols / 32, Int32(vectors), y.pointer, m.rows)
            }
        }
        func linear(_ name: String, _ ms: [WeightMatrix], vectors: Int, note: String) {
            let t = time { for m in ms { matvec(m, vectors: vectors) } }
            let flops = ms.reduce(0.0) { $0 + 2 * Double($1.rows * $1.cols * vectors) }
            let bytes = ms.reduce(0.0) { $0 + Double($1.rows * $1.rowBytes) }
            figures.append(Figure(name: name, gflops: flops / t / 1e9, gbps: bytes / t / 1e9, note: note))
        }
        let layout = "\(up.type) as kernel type \(up.kernelType)"
        linear(
            "matvec, 1 vector, \(up.name) (\(up.cols)->\(up.rows))", [up], vectors: 1,
            note: "\(layout); \(up.rows * up.rowBytes / 1024) KiB: fits L2")
        let ups = w.layers.map(\.up)
        linear(
            "matvec, 1 vector, every layer's ffn_up in turn", ups, vectors: 1,
            note: "\(ups.count) x \(up.rows * up.rowBytes / 1024) KiB: more than L2 holds")
        linear(
            "matvec, 1 vector, \(w.output.name) (\(w.output.cols)->\(w.output.rows))", [w.output], vectors: 1,
            note:
                "\(w.output.type) as kernel type \(w.output.kernelType); "
                + "\((w.output.rows * w.output.rowBytes) >> 20) MiB"
        )
        for vectors in [8, 16] {
            linear(
                "matvec_rows, \(vectors) vectors, \(up.name)", [up], vectors: vectors,
                note: "weights read once for all vectors")
        }

        // Decode attention: the query heads of one KV head against `slots` F16 cached rows.
        let c = model.config
        let d = c.headDim
        let group = c.headCount / c.kvHeadCount
        let slots = 2048
        let kvw = c.kvWidth
        let rope = RopeTable(capacity: slots, headDim: d, base: c.ropeFreqBase)
        let keys = UnsafeMutablePointer<UInt16>.allocate(capacity: slots * kvw)
        let values = UnsafeMutablePointer<UInt16>.allocate(capacity: slots * kvw)
        defer {
            keys.deallocate()
            values.deallocate()
        }
        for i in stride(from: 0, to: slots * kvw, by: 16 * maxCols) {
            kvt_f32_to_f16(x.pointer, keys + i, min(16 * maxCols, slots * kvw - i))
            kvt_f32_to_f16(x.pointer, values + i, min(16 * maxCols, slots * kvw - i))
        }
        let positions = (0..<slots).map { Int32($0) }
        let scores = FloatBuffer(group * slots)
        let attended = FloatBuffer(group * d)
        var run = kvt_kv_run(k: UnsafeRawPointer(keys), v: UnsafeRawPointer(values), count: Int64(slots))
        let t = rope.cos.withUnsafeBufferPointer { cs in
            rope.sin.withUnsafeBufferPointer { sn in
                positions.withUnsafeBufferPointer { pos in
                    time {
                        kvt_attend_runs_group(
                            x.pointer, d, Int32(group), &run, 0, 2, kvw, pos.baseAddress, Int32(slots), Int32(d),
                            1 / Float(d).squareRoot(), cs.baseAddress, sn.baseAddress, scores.pointer,
                            attended.pointer, d)
                    }
                }
            }
        }
        figures.append(
            Figure(
                name: "attention, decode, \(group) query heads of one KV head, \(slots) F16 slots",
                gflops: Double(group * slots * 4 * d) / t / 1e9, gbps: Double(slots * 2 * d * 2) / t / 1e9,
                note: "q.k and p.v counted; the rotation and softmax are extra work"))

        // Prefill shapes: dequantize a matrix to F32, then sgemm with 512 activation rows.
        let deq = FloatBuffer(up.rows * up.cols)
        let tq = time { up.dequantize(rows: 0, up.rows, into: deq.pointer) }
        figures.append(
            Figure(
                name: "dequantize \(up.name) to F32", gflops: nil,
                gbps: Double(up.rows * up.rowBytes) / tq / 1e9,
                note: "writes \(up.rows * up.cols * 4 / 1024) KiB of F32"))
        let rows = 512
        let a = FloatBuffer(rows * up.cols)
        for i in 0..<(rows * up.cols) { a.pointer[i] = x.pointer[i % (16 * maxCols)] }
        let out = FloatBuffer(rows * up.rows)
        openblas_set_num_threads(1)
        let tg = time {
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(up.rows), Int32(up.cols), 1, a.pointer,
                Int32(up.cols), deq.pointer, Int32(up.cols), 0, out.pointer, Int32(up.rows))
        }
        figures.append(
            Figure(
                name: "sgemm (OpenBLAS), \(rows) x \(up.cols) times \(up.cols) x \(up.rows)",
                gflops: 2 * Double(rows * up.cols * up.rows) / tg / 1e9, gbps: nil,
                note: "the prefill path's linear layers where sgemm is chosen"))
        withExtendedLifetime((x, sums, y, scores, attended, deq, a, out)) {}
        return figures
    }
}
