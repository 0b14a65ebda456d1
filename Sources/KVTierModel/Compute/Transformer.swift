import CKVTierKernels
import COpenBLAS

/// The llama forward pass over a batch of tokens with explicit positions.
///
/// Per layer: RMSNorm -> Q, K, V projections -> K (before RoPE) and V go to the caller's
/// `KVCache` -> RoPE on Q and, at attention time, on each cached key by its slot's position ->
/// grouped-query attention -> output projection -> residual -> RMSNorm -> SwiGLU FFN -> residual.
///
/// Batches of at least `gemmThreshold` tokens run as matrix-matrix products (weights
/// dequantized per layer into scratch, OpenBLAS sgemm, one slice of output rows per worker);
/// smaller batches, i.e. decoding, run matrix-vector products that expand the quantized weights
/// block by block against the same F32 activations. Both paths compute every weight as its
/// dequantized value times an F32 activation, so the logits (and the KV written to the cache)
/// do not depend on how a sequence was split into batches, up to float rounding.
///
/// Owns its scratch buffers: one `Transformer` serves one forward pass at a time (not Sendable).
public final class Transformer {
    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let threads: Int
    /// Batches of this many tokens or more use sgemm.
    public var gemmThreshold = 12
    /// Tokens per internal micro-batch (bounds scratch memory).
    public let microBatch = 512
    private var rope: RopeTable

    private let x = FloatBuffer(), xb = FloatBuffer(), q = FloatBuffer(), k = FloatBuffer(), v = FloatBuffer()
    private let att = FloatBuffer(), gate = FloatBuffer(), up = FloatBuffer(), hidden = FloatBuffer()
    private let weightScratch = FloatBuffer(), logitsBuffer = FloatBuffer()
    private let blockSums = FloatBuffer()
    private let workers: [AttentionScratch]
    private let pool: WorkerPool

    public init(config: LlamaConfig, weights: LlamaWeights, threads: Int) {
        self.config = config
        self.weights = weights
        self.pool = WorkerPool(threads: max(1, threads))
        self.threads = pool.threads
        self.rope = RopeTable(capacity: min(config.contextLength, 4096), headDim: config.headDim, base: config.ropeFreqBase)
        self.workers = (0..<pool.threads).map { _ in AttentionScratch() }
        openblas_set_num_threads(1)  // we split work across our own workers
    }

    /// Which rows of logits a pass produces.
    public enum Logits: Sendable {
        case none
        case last
        case all
    }

    /// Runs `tokens` at `positions` on top of what `cache` holds, appending their KV to it.
    /// `visit(i, logits)` is called for each requested row i (index into `tokens`).
    public func forward(
        tokens: [Int32], positions: [Int32], cache: KVCache, logits: Logits,
        visit: (Int, UnsafeBufferPointer<Float>) -> Void = { _, _ in }
    ) throws(DecoderError) {
        guard tokens.count == positions.count else { throw DecoderError.badInput("tokens and positions differ in length") }
        guard !tokens.isEmpty else { return }
        guard cache.layout == KVLayout(layers: config.layerCount, kvHeads: config.kvHeadCount, headDim: config.headDim) else {
            throw DecoderError.badInput("the KV cache's layout does not match the model")
        }
        for t in tokens where t < 0 || Int(t) >= config.vocabularySize {
            throw DecoderError.badInput("token id \(t) is outside the vocabulary (0..<\(config.vocabularySize))")
        }
        guard let maxPos = positions.max(), let minPos = positions.min(), minPos >= 0 else {
            throw DecoderError.badInput("positions must be >= 0")
        }
        guard Int(maxPos) < 1 << 22 else { throw DecoderError.badInput("position \(maxPos) is too large") }
        if Int(maxPos) >= rope.capacity {
            rope = RopeTable(capacity: max(Int(maxPos) + 1, rope.capacity * 2), headDim: config.headDim, base: config.ropeFreqBase)
        }
        var start = 0
        while start < tokens.count {
            let end = min(start + microBatch, tokens.count)
            let wantLogits: Logits
            switch logits {
            case .none: wantLogits = .none
            case .all: wantLogits = .all
            case .last: wantLogits = end == tokens.count ? .last : .none
            }
            let slot0: Int
            do {
                slot0 = try cache.append(positions: Array(positions[start..<end]))
            } catch {
                throw DecoderError.cache(error)
            }
            try runMicroBatch(
                tokens: tokens[start..<end], slot0: slot0, cache: cache, logits: wantLogits,
                visit: { i, row in visit(start + i, row) })
            start = end
        }
    }

    private func runMicroBatch(
        tokens: ArraySlice<Int32>, slot0: Int, cache: KVCache, logits: Logits,
        visit: (Int, UnsafeBufferPointer<Float>) -> Void
    ) throws(DecoderError) {
        let c = config
        let n = tokens.count
        let e = c.embeddingLength, f = c.feedForwardLength
        let qw = c.headCount * c.headDim, kvw = c.kvWidth
        let x = self.x.reserve(n * e), xb = self.xb.reserve(n * max(e, qw))
        let q = self.q.reserve(n * qw), k = self.k.reserve(n * kvw), v = self.v.reserve(n * kvw)
        let att = self.att.reserve(n * qw)
        let gate = self.gate.reserve(n * f), up = self.up.reserve(n * f), hidden = self.hidden.reserve(n * f)

        // Token embeddings.
        for (i, t) in tokens.enumerated() {
            weights.tokenEmbedding.dequantize(rows: Int(t), Int(t) + 1, into: x + i * e)
        }

        for (l, layer) in weights.layers.enumerated() {
            // Attention block.
            layer.attnNorm.values.withUnsafeBufferPointer { w in
                for i in 0..<n { kvt_rmsnorm(x + i * e, w.baseAddress, xb + i * e, Int32(e), c.rmsNormEpsilon) }
            }
            linear(layer.wq, xb, n, q)
            linear(layer.wk, xb, n, k)
            linear(layer.wv, xb, n, v)
            cache.write(layer: l, start: slot0, count: n, keys: k, values: v)
            cache.waitUntilResident(layer: l)
            cache.withLayer(l) { view in
                // Rotate the new queries by their slots' positions.
                for i in 0..<n {
                    let p = Int(view.positions[slot0 + i])
                    rope.cos.withUnsafeBufferPointer { cs in
                        rope.sin.withUnsafeBufferPointer { sn in
                            kvt_rope_row(
                                q + i * qw, Int32(c.headCount), Int32(c.headDim),
                                cs.baseAddress! + p * rope.half, sn.baseAddress! + p * rope.half)
                        }
                    }
                }
                attention(view: view, slot0: slot0, n: n, q: q, out: att)
            }
            linear(layer.wo, att, n, xb)
            for i in 0..<(n * e) { x[i] += xb[i] }

            // Feed-forward block.
            layer.ffnNorm.values.withUnsafeBufferPointer { w in
                for i in 0..<n { kvt_rmsnorm(x + i * e, w.baseAddress, xb + i * e, Int32(e), c.rmsNormEpsilon) }
            }
            linear(layer.gate, xb, n, gate)
            linear(layer.up, xb, n, up)
            kvt_swiglu(gate, up, hidden, n * f)
            linear(layer.down, hidden, n, xb)
            for i in 0..<(n * e) { x[i] += xb[i] }
            cache.didFinish(layer: l)
        }

        switch logits {
        case .none:
            return
        case .last:
            outputLogits(x + (n - 1) * e, rows: 1, firstIndex: n - 1, visit: visit)
        case .all:
            outputLogits(x, rows: n, firstIndex: 0, visit: visit)
        }
    }

    /// Final norm and output projection for `rows` hidden states starting at `h`.
    private func outputLogits(
        _ h: UnsafeMutablePointer<Float>, rows: Int, firstIndex: Int, visit: (Int, UnsafeBufferPointer<Float>) -> Void
    ) {
        let e = config.embeddingLength, vocab = config.vocabularySize
        weights.outputNorm.values.withUnsafeBufferPointer { w in
            for i in 0..<rows { kvt_rmsnorm(h + i * e, w.baseAddress, h + i * e, Int32(e), config.rmsNormEpsilon) }
        }
        let chunk = 64
        var r = 0
        while r < rows {
            let m = min(chunk, rows - r)
            let out = logitsBuffer.reserve(m * vocab)
            linear(weights.output, h + r * e, m, out)
            for i in 0..<m {
                visit(firstIndex + r + i, UnsafeBufferPointer(start: out + i * vocab, count: vocab))
            }
            r += m
        }
    }

    // MARK: Linear layers

    /// y[n x w.rows] = x[n x w.cols] * W^T.
    func linear(_ w: WeightMatrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>) {
        let workers = threads
        if n >= gemmThreshold {
            // Dequantize a slice of W's rows per worker, then sgemm into that slice of y's columns.
            // Large matrices (the vocabulary projection) go through in slices of rows.
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
            return
        }
        // Matrix-vector products on F32 activations; quantized kernels take the per-block
        // sums of each activation vector (for Q4_1's offsets), computed once here.
        let blocks = w.cols / 32
        let sums = blockSums.reserve(max(1, n * blocks))
        if w.isQuantized {
            for i in 0..<n { kvt_block_sums(x + i * w.cols, sums + i * blocks, Int32(w.cols)) }
        }
        pool.run(workers) { t in
            let (r0, r1) = Parallel.share(w.rows, t, workers)
            guard r1 > r0 else { return }
            for i in 0..<n {
                kvt_matvec(
                    Int32(w.type.rawValue), w.base, w.rowBytes, Int32(r0), Int32(r1), Int32(w.cols),
                    x + i * w.cols, sums + i * blocks, y + i * w.rows + r0)
            }
        }
    }

    // MARK: Attention

    /// Grouped-query attention of the n new queries (slots slot0..<slot0+n) over all slots
    /// [0, slot0 + n) of `view`, causal by slot order. Queries are already rotated.
    private func attention(view: KVLayerView, slot0: Int, n: Int, q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        let c = config
        let d = c.headDim, heads = c.headCount, group = c.headCount / c.kvHeadCount
        let qw = heads * d, kvw = c.kvWidth
        let scale = 1 / Float(d).squareRoot()
        let eb = view.precision.bytes  // bytes per cached element
        let total = slot0 + n
        let workers = min(threads, heads)
        let scratch = self.workers
        rope.cos.withUnsafeBufferPointer { cs in
            rope.sin.withUnsafeBufferPointer { sn in
                let cosT = cs.baseAddress!, sinT = sn.baseAddress!
                pool.run(workers) { t in
                    let (h0, h1) = Parallel.share(heads, t, workers)
                    let s = scratch[t]
                    if n < self.gemmThreshold {
                        let scores = s.scores.reserve(total)
                        for h in h0..<h1 {
                            let kvh = h / group
                            for i in 0..<n {
                                kvt_attend_one(
                                    q + i * qw + h * d, view.keys + kvh * d * eb, view.values + kvh * d * eb, Int32(eb), kvw, kvw,
                                    view.positions, Int32(slot0 + i + 1), Int32(d), scale, cosT, sinT, scores,
                                    out + i * qw + h * d)
                            }
                        }
                        return
                    }
                    let krot = s.keys.reserve(total * d), vf = s.values.reserve(total * d)
                    let chunk = 256
                    let scores = s.scores.reserve(chunk * total)
                    var loadedKV = -1
                    for h in h0..<h1 {
                        let kvh = h / group
                        if kvh != loadedKV {
                            kvt_rope_keys(view.keys + kvh * d * eb, Int32(eb), kvw, view.positions, Int32(total), Int32(d), cosT, sinT, krot)
                            for tt in 0..<total { kvt_kv_to_f32(view.values + (tt * kvw + kvh * d) * eb, Int32(eb), vf + tt * d, d) }
                            loadedKV = kvh
                        }
                        var i0 = 0
                        while i0 < n {
                            let m = min(chunk, n - i0)
                            let visible = slot0 + i0 + m  // columns any row of this chunk may see
                            cblas_sgemm(
                                CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(visible), Int32(d),
                                1, q + i0 * qw + h * d, Int32(qw), krot, Int32(d), 0, scores, Int32(visible))
                            kvt_softmax_causal(scores, Int32(m), Int32(visible), Int32(slot0 + i0), scale)
                            cblas_sgemm(
                                CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(d), Int32(visible),
                                1, scores, Int32(visible), vf, Int32(d), 0, out + i0 * qw + h * d, Int32(qw))
                            i0 += m
                        }
                    }
                }
            }
        }
    }
}

/// Per-worker attention scratch.
final class AttentionScratch: @unchecked Sendable {
    // @unchecked: worker t of a fork-join region is the only user of scratch[t].
    let scores = FloatBuffer(), keys = FloatBuffer(), values = FloatBuffer()
}

/// Errors from the forward pass.
public enum DecoderError: Error, Equatable, Sendable, CustomStringConvertible {
    case badInput(String)
    case cache(KVCacheError)

    public var description: String {
        switch self {
        case .badInput(let s): return "invalid decoder input: \(s)"
        case .cache(let e): return e.description
        }
    }
}
