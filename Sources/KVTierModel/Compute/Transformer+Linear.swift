import CKVTierKernels
import COpenBLAS
import Dispatch

// Unsafe-pointer fence: the linear layers, y = x * W^T, on quantized or float weights.

extension Transformer {
    /// y[n x w.rows] = x[n x w.cols] * W^T for the rows of one step: rows [0, vectorRows) through
    /// the matrix-vector kernels in one pass over W, then each of `gemmRuns` (rows [row, row + n))
    /// through its own matrix-matrix product.
    func linear(
        _ w: WeightMatrix, _ x: UnsafePointer<Float>, vectorRows: Int, gemmRuns: [(row: Int, n: Int)],
        _ y: UnsafeMutablePointer<Float>
    ) {
        if w.takesQuantizedActivations {
            // Rows are contiguous: the vector rows, then each run's.
            quantizedActivationRows([w], x, gemmRuns.reduce(vectorRows) { $0 + $1.n }, [y])
            return
        }
        if vectorRows > 0 { matvecRows(w, x, vectorRows, y) }
        for run in gemmRuns { gemm(w, x + run.row * w.cols, run.n, y + run.row * w.rows) }
    }

    /// y[n x w.rows] = x[n x w.cols] * W^T, sgemm from `linearThreshold` rows on.
    func linear(_ w: WeightMatrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>) {
        if w.takesQuantizedActivations {
            quantizedActivationRows([w], x, n, [y])
        } else if n >= linearThreshold {
            gemm(w, x, n, y)
        } else {
            matvecRows(w, x, n, y)
        }
    }

    /// Measures, on the widest feed-forward matrix, from how many rows dequantize-and-sgemm beats
    /// the batched matrix-vector kernel on this CPU, and returns that row count (candidates 16,
    /// 32, 64, 128, 256, 512; `microBatch + 1` when sgemm never wins, so every linear layer takes
    /// the matrix-vector kernel; sgemm must be 10% faster to be chosen). Takes a few hundred
    /// milliseconds; the numbers go to `log`.
    public func calibrateLinearGemmThreshold(log: (String) -> Void = { _ in }) -> Int {
        guard let w = weights.layers.first?.up, w.isQuantized else { return gemmThreshold }
        if w.takesQuantizedActivations {
            log(
                "linear layers: integer dot products on \(activationBits.rawValue)-bit activations (AVX-512 VNNI) "
                    + "at every size")
            return microBatch + 1
        }
        let maxRows = 512
        let input = FloatBuffer(maxRows * w.cols)
        let y = FloatBuffer(maxRows * w.rows)
        let x = input.pointer
        defer { withExtendedLifetime((input, y)) {} }
        var seed: UInt32 = 1
        for i in 0..<(maxRows * w.cols) {
            seed = seed &* 1_664_525 &+ 1_013_904_223
            x[i] = Float(seed >> 8) / Float(1 << 24) - 0.5
        }
        // Both paths for 100 ms first: the weights' pages and scratch are touched, the workers
        // awake, and the cores out of idle (measured here: the first ~50 ms after start run up
        // to 10x slower). Then per size three interleaved tries of each, a try repeating its path
        // for at least 4 ms, and the best try counts.
        let warm = DispatchTime.now().uptimeNanoseconds
        while DispatchTime.now().uptimeNanoseconds - warm < 100_000_000 {
            matvecRows(w, x, 16, y.pointer)
            gemm(w, x, 16, y.pointer)
        }
        func perCall(_ body: () -> Void) -> Double {
            let t0 = DispatchTime.now().uptimeNanoseconds
            var calls = 0
            var elapsed: UInt64 = 0
            repeat {
                body()
                calls += 1
                elapsed = DispatchTime.now().uptimeNanoseconds - t0
            } while elapsed < 4_000_000
            return Double(elapsed) / 1e9 / Double(calls)
        }
        var report: [String] = []
        for m in [16, 32, 64, 128, 256, 512] {
            var vector = Double.infinity
            var matrix = Double.infinity
            for _ in 0..<3 {
                vector = min(vector, perCall { matvecRows(w, x, m, y.pointer) })
                matrix = min(matrix, perCall { gemm(w, x, m, y.pointer) })
            }
            report.append(
                "\(m) rows: \(String(format: "%.2f", vector * 1000)) vs \(String(format: "%.2f", matrix * 1000)) ms")
            // sgemm must win clearly: a close call keeps the batched kernel (one code path for decode and prompts).
            if matrix < 0.9 * vector {
                let measured = report.joined(separator: ", ")
                log("linear layers: sgemm from \(m) rows (matrix-vector vs sgemm on \(w.name): \(measured))")
                return m
            }
        }
        let measured = report.joined(separator: ", ")
        log(
            "linear layers: the batched matrix-vector kernel at every size "
                + "(matrix-vector vs sgemm on \(w.name): \(measured))")
        return microBatch + 1
    }

    /// Dequantizes a slice of W's rows per worker, then sgemm into that slice of y's columns.
    /// Large matrices (the vocabulary projection) go through in slices of rows.
    private func gemm(_ w: WeightMatrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>) {
        let workers = threads
        let sliceRows = max(workers, min(w.rows, (1 << 22) / w.cols))
        let scratch = weightScratch.reserve(sliceRows * w.cols)
        var s0 = 0
        while s0 < w.rows {
            let s1 = min(s0 + sliceRows, w.rows)
            pool.run(workers) { t in
                let (a, b) = Parallel.share(s1 - s0, t, workers)
                guard b > a else { return }
                let dst = scratch + a * w.cols
                w.dequantize(rows: s0 + a, s0 + b, into: dst)
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(b - a), Int32(w.cols),
                    1, x, Int32(w.cols), dst, Int32(w.cols), 0, y + s0 + a, Int32(w.rows))
            }
            s0 = s1
        }
    }

    /// ys[i][n x ws[i].rows] = x[n x cols] * ws[i]^T for matrices that read the same input (a
    /// layer's query, key and value projections; its gate and up projections). On the
    /// quantized-activation path x is quantized once for all of them and their rows go through
    /// one fork-join; elsewhere each matrix as `linear` computes it alone.
    func linear(
        _ ws: [WeightMatrix], _ x: UnsafePointer<Float>, vectorRows: Int, gemmRuns: [(row: Int, n: Int)],
        _ ys: [UnsafeMutablePointer<Float>]
    ) {
        if let cols = ws.first?.cols, ws.allSatisfy({ $0.takesQuantizedActivations && $0.cols == cols }) {
            quantizedActivationRows(ws, x, gemmRuns.reduce(vectorRows) { $0 + $1.n }, ys)
            return
        }
        for (w, y) in zip(ws, ys) { linear(w, x, vectorRows: vectorRows, gemmRuns: gemmRuns, y) }
    }

    /// The quantized-activation path: the n activation vectors quantized to `activationBits` per
    /// block of 32 (once, here, a prompt's rows shared out among the workers), then each worker's
    /// share of the matrices' rows (whole groups of 16, the matrices one after the other) against all
    /// of them. Every row of every y is the same bits whatever n is and however the rows are
    /// shared (`kvt_quantize_q8` and `kvt_matvec_q8` compute each row and each group of 16 on
    /// its own).
    private func quantizedActivationRows(
        _ ws: [WeightMatrix], _ x: UnsafePointer<Float>, _ n: Int, _ ys: [UnsafeMutablePointer<Float>]
    ) {
        guard let cols = ws.first?.cols else { return }
        let workers = threads
        let blocks = cols / 32
        let stride = MemoryLayout<kvt_q8_block>.stride
        let room = quantizedActivations.reserve(max(1, n * blocks * stride / MemoryLayout<Float>.stride))
        let xq = UnsafeMutableRawPointer(room).bindMemory(to: kvt_q8_block.self, capacity: n * blocks)
        let bits = Int32(activationBits.rawValue)
        forEachShare(ofRows: n) { r in
            let a = r.lowerBound
            kvt_quantize_q8(bits, x + a * cols, cols, Int32(r.count), Int32(cols), xq + a * blocks)
        }
        let groups = ws.map { ($0.rows + 15) / 16 }
        let total = groups.reduce(0, +)
        pool.run(workers) { t in
            let (g0, g1) = Parallel.share(total, t, workers)
            var first = 0  // the first group of matrix i in the concatenation
            for (i, w) in ws.enumerated() {
                defer { first += groups[i] }
                let lo = max(g0, first) - first
                let hi = min(g1, first + groups[i]) - first
                guard hi > lo else { continue }
                kvt_matvec_q8(
                    bits, w.kernelType, w.base, w.rowBytes, Int32(16 * lo), Int32(min(16 * hi, w.rows)),
                    Int32(cols), xq, blocks, Int32(n), ys[i] + 16 * lo, w.rows)
            }
        }
    }

    /// Matrix-vector products on F32 activations, every activation row computed on its own by the
    /// same kernel as a lone row (so a row's result does not depend on the others). With several
    /// rows, `kvt_matvec_rows` decodes each block of W once for up to four rows and reuses tiles
    /// of W from cache for all of them: W is read from memory once per call, not once per row.
    /// Quantized kernels take the per-block sums of each activation vector (for Q4_1's offsets),
    /// computed once here.
    private func matvecRows(_ w: WeightMatrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>) {
        let workers = threads
        let blocks = w.cols / 32
        let sums = blockSums.reserve(max(1, n * blocks))
        if w.isQuantized {
            for i in 0..<n { kvt_block_sums(x + i * w.cols, sums + i * blocks, Int32(w.cols)) }
        }
        pool.run(workers) { t in
            let (r0, r1) = Parallel.share(w.rows, t, workers)
            guard r1 > r0 else { return }
            if n == 1 {
                kvt_matvec(
                    w.kernelType, w.base, w.rowBytes, Int32(r0), Int32(r1), Int32(w.cols), x, sums, y + r0)
            } else {
                kvt_matvec_rows(
                    w.kernelType, w.base, w.rowBytes, Int32(r0), Int32(r1), Int32(w.cols), x, w.cols, sums,
                    blocks,
                    Int32(n), y + r0, w.rows)
            }
        }
    }
}
