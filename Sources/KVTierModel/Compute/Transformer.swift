import CKVTierKernels
import COpenBLAS

/// The llama forward pass over one or more sequences at once, each with its own KV cache and
/// explicit positions.
///
/// Per layer: RMSNorm -> Q, K, V projections -> K (before RoPE) and V go to each sequence's
/// `KVCache` -> RoPE on Q and, at attention time, on each cached key by its slot's position ->
/// grouped-query attention over the sequence's own cache -> output projection -> residual ->
/// RMSNorm -> SwiGLU FFN -> residual.
///
/// A step (`step(_:)`) carries the rows of several sequences: the decode rows of many chats and
/// the prefill chunks of others (continuous batching). Every row goes through the kernel its own
/// sequence would get alone, so a sequence's logits and KV do not depend on what else is in the
/// step (batch invariance; `Transformer+Linear.swift` says how). On CPUs with AVX-512 VNNI
/// (`batchInvariant`) this holds bit for bit, and a sequence's logits do not depend on how it
/// was split into steps either (reuse of cached KV gives recomputation's bits):
/// - every linear layer quantizes its input rows per block of 32 (16 bits by default,
///   `activationBits`) and multiplies them by weights interleaved by 16 rows with integer dot
///   products, one pass over the weights for all rows of the step, each row on its own;
/// - attention runs each query row as decoding runs it (`kvt_attend_rows_group` for prompts).
/// Elsewhere, a sequence with fewer than `gemmThreshold` rows in the step (decoding) goes
/// through the F32-activation matrix-vector kernels, which compute each row on its own, and a
/// sequence with more (a prefill chunk) through matrix-matrix products (weights dequantized
/// per layer, OpenBLAS sgemm; sgemm attention): equal up to float rounding.
///
/// Owns its scratch buffers: one `Transformer` serves one step at a time (not Sendable).
public final class Transformer {
    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let threads: Int
    /// A sequence with this many rows or more in a step uses sgemm (attention, and the linear
    /// layers unless `linearGemmThreshold` says otherwise).
    public var gemmThreshold = 12
    /// Rows from which a sequence's linear layers use dequantize-and-sgemm rather than the batched
    /// matrix-vector kernel (nil: `gemmThreshold`). Which is faster depends on the CPU:
    /// `calibrateLinearGemmThreshold()` measures it.
    public var linearGemmThreshold: Int?
    var linearThreshold: Int { linearGemmThreshold ?? gemmThreshold }
    /// The quantized-activation path's precision (where the weights are on it).
    public var activationBits = ActivationBits.sixteen
    /// Whether every row's result is the same bits whatever else is in the step (a prompt's rows
    /// as decoding them one by one, a chat alone as in a batch): where the linear layers are on
    /// the quantized-activation path, whose kernel computes each row on its own, and prompt
    /// attention then runs each row as decoding does (`kvt_attend_rows_group`) instead of sgemm.
    /// All of them must be: a model whose output matrix is F16, say, keeps batch-dependent logits.
    public let batchInvariant: Bool
    /// Rows per sequence in one step at most (bounds scratch memory); `forward` splits longer inputs.
    public let microBatch = 512
    var rope: RopeTable

    private let x = FloatBuffer(), xb = FloatBuffer(), q = FloatBuffer(), k = FloatBuffer(), v = FloatBuffer()
    private let att = FloatBuffer(), gate = FloatBuffer(), up = FloatBuffer(), hidden = FloatBuffer()
    let weightScratch = FloatBuffer(), logitsBuffer = FloatBuffer()
    let blockSums = FloatBuffer()
    /// The quantized-activation path's input (`kvt_q8_block`s, 20 floats' room each).
    let quantizedActivations = FloatBuffer()
    private let lastRows = FloatBuffer()
    let workers: [AttentionScratch]
    let pool: WorkerPool

    public init(config: LlamaConfig, weights: LlamaWeights, threads: Int) {
        self.config = config
        self.weights = weights
        self.batchInvariant = weights.allTakeQuantizedActivations
        self.pool = WorkerPool(threads: max(1, threads))
        self.threads = pool.threads
        self.rope = RopeTable(
            capacity: min(config.contextLength, 4096), headDim: config.headDim, base: config.ropeFreqBase)
        self.workers = (0..<pool.threads).map { _ in AttentionScratch() }
        openblas_set_num_threads(1)  // we split work across our own workers
    }

    /// Which rows of logits a pass produces.
    public enum Logits: Sendable {
        case none
        case last
        case all
    }

    /// One sequence's share of a step: `tokens` at `positions` on top of what `cache` holds.
    /// `visit(i, logits)` is called for each requested row i (index into `tokens`).
    public struct StepItem {
        public var tokens: [Int32]
        public var positions: [Int32]
        public var cache: KVCache
        public var logits: Logits
        public var visit: (Int, UnsafeBufferPointer<Float>) -> Void

        public init(
            tokens: [Int32], positions: [Int32], cache: KVCache, logits: Logits,
            visit: @escaping (Int, UnsafeBufferPointer<Float>) -> Void = { _, _ in }
        ) {
            self.tokens = tokens
            self.positions = positions
            self.cache = cache
            self.logits = logits
            self.visit = visit
        }
    }

    /// Runs `tokens` at `positions` on top of what `cache` holds, appending their KV to it.
    /// `visit(i, logits)` is called for each requested row i (index into `tokens`).
    public func forward(
        tokens: [Int32], positions: [Int32], cache: KVCache, logits: Logits,
        visit: (Int, UnsafeBufferPointer<Float>) -> Void = { _, _ in }
    ) throws(DecoderError) {
        try validate(tokens: tokens, positions: positions, cache: cache)
        guard !tokens.isEmpty else { return }
        try withoutActuallyEscaping(visit) { (visit) throws(DecoderError) in
            var start = 0
            while start < tokens.count {
                let end = min(start + microBatch, tokens.count)
                let wantLogits: Logits
                switch logits {
                case .none: wantLogits = .none
                case .all: wantLogits = .all
                case .last: wantLogits = end == tokens.count ? .last : .none
                }
                let offset = start
                let item = StepItem(
                    tokens: Array(tokens[start..<end]), positions: Array(positions[start..<end]), cache: cache,
                    logits: wantLogits,
                    visit: { i, row in visit(offset + i, row) })
                if let error = step([item])[0] { throw error }
                start = end
            }
        }
    }

    /// Checks one sequence's input against the model and its cache (and grows the rope table
    /// for its positions). `step` does this for every item; callers may check earlier.
    public func validate(tokens: [Int32], positions: [Int32], cache: KVCache) throws(DecoderError) {
        guard tokens.count == positions.count else {
            throw DecoderError.badInput("tokens and positions differ in length")
        }
        guard cache.layout == KVLayout(layers: config.layerCount, kvHeads: config.kvHeadCount, headDim: config.headDim)
        else {
            throw DecoderError.badInput("the KV cache's layout does not match the model")
        }
        for t in tokens where t < 0 || Int(t) >= config.vocabularySize {
            throw DecoderError.badInput("token id \(t) is outside the vocabulary (0..<\(config.vocabularySize))")
        }
        guard let maxPos = positions.max(), let minPos = positions.min() else { return }
        guard minPos >= 0 else { throw DecoderError.badInput("positions must be >= 0") }
        guard Int(maxPos) < 1 << 22 else { throw DecoderError.badInput("position \(maxPos) is too large") }
        if Int(maxPos) >= rope.capacity {
            rope = RopeTable(
                capacity: max(Int(maxPos) + 1, rope.capacity * 2), headDim: config.headDim, base: config.ropeFreqBase)
        }
    }

    /// A sequence admitted to a step: its item, first new slot, and first row in the step.
    struct Run {
        let item: Int
        let slot0: Int
        let n: Int
        var row = 0
    }

    /// Runs every item's tokens (at most `microBatch` each, at least one) through the decoder in
    /// one pass, appending each item's KV to its own cache. Returns, per item, the error that
    /// kept it out of the pass (nil: it ran); one item's bad input never affects another.
    public func step(_ items: [StepItem]) -> [DecoderError?] {
        var errors = [DecoderError?](repeating: nil, count: items.count)
        var runs: [Run] = []
        for (i, item) in items.enumerated() {
            do throws(DecoderError) {
                try validate(tokens: item.tokens, positions: item.positions, cache: item.cache)
                guard !item.tokens.isEmpty, item.tokens.count <= microBatch else {
                    throw DecoderError.badInput(
                        "a step takes 1 to \(microBatch) tokens per sequence, got \(item.tokens.count)")
                }
                let slot0: Int
                do {
                    slot0 = try item.cache.append(positions: item.positions)
                } catch {
                    throw DecoderError.cache(error)
                }
                runs.append(Run(item: i, slot0: slot0, n: item.tokens.count))
            } catch {
                errors[i] = error
            }
        }
        guard !runs.isEmpty else { return errors }
        // Matrix-vector rows first, as one block; then each sgemm sequence's rows.
        let threshold = linearThreshold
        runs.sort { ($0.n >= threshold ? 1 : 0, $0.item) < ($1.n >= threshold ? 1 : 0, $1.item) }
        var row = 0
        for r in runs.indices {
            runs[r].row = row
            row += runs[r].n
        }
        runPass(items, runs)
        return errors
    }

    private func runPass(_ items: [StepItem], _ runs: [Run]) {
        let c = config
        let n = runs.reduce(0) { $0 + $1.n }
        let vectorRows = runs.filter { $0.n < linearThreshold }.reduce(0) { $0 + $1.n }
        let gemmRuns = runs.filter { $0.n >= linearThreshold }.map { (row: $0.row, n: $0.n) }
        let e = c.embeddingLength
        let f = c.feedForwardLength
        let qw = c.headCount * c.headDim
        let kvw = c.kvWidth
        let x = self.x.reserve(n * e)
        let xb = self.xb.reserve(n * max(e, qw))
        let q = self.q.reserve(n * qw)
        let k = self.k.reserve(n * kvw)
        let v = self.v.reserve(n * kvw)
        let att = self.att.reserve(n * qw)
        let gate = self.gate.reserve(n * f)
        let up = self.up.reserve(n * f)
        let hidden = self.hidden.reserve(n * f)
        /// The matrices `ws`, which read the same input, each into its output.
        func project(_ ws: [WeightMatrix], _ input: UnsafePointer<Float>, _ outputs: [UnsafeMutablePointer<Float>]) {
            linear(ws, input, vectorRows: vectorRows, gemmRuns: gemmRuns, outputs)
        }

        // Token embeddings.
        for run in runs {
            for (i, t) in items[run.item].tokens.enumerated() {
                weights.tokenEmbedding.dequantize(rows: Int(t), Int(t) + 1, into: x + (run.row + i) * e)
            }
        }

        for (l, layer) in weights.layers.enumerated() {
            // Attention block.
            normalize(x, layer.attnNorm, xb, rows: n)
            project([layer.wq, layer.wk, layer.wv], xb, [q, k, v])
            for run in runs {
                let cache = items[run.item].cache
                cache.write(
                    layer: l, start: run.slot0, count: run.n, keys: k + run.row * kvw, values: v + run.row * kvw)
            }
            for run in runs { items[run.item].cache.waitUntilResident(layer: l) }
            withViews(runs.map { items[$0.item].cache }, layer: l) { views in
                // Rotate the new queries by their slots' positions.
                for (run, view) in zip(runs, views) {
                    for i in 0..<run.n {
                        let p = Int(view.positions[run.slot0 + i])
                        rope.cos.withUnsafeBufferPointer { cs in
                            rope.sin.withUnsafeBufferPointer { sn in
                                kvt_rope_row(
                                    q + (run.row + i) * qw, Int32(c.headCount), Int32(c.headDim),
                                    cs.baseAddress! + p * rope.half, sn.baseAddress! + p * rope.half)
                            }
                        }
                    }
                }
                // The sequences with few queries in one fork-join; each longer one on its own.
                let few = zip(runs, views).filter { $0.0.n < gemmThreshold }.map { run, view in
                    AttentionJob(view: view, slot0: run.slot0, n: run.n, q: q + run.row * qw, out: att + run.row * qw)
                }
                attentionRows(few)
                for (run, view) in zip(runs, views) where run.n >= gemmThreshold {
                    attention(view: view, slot0: run.slot0, n: run.n, q: q + run.row * qw, out: att + run.row * qw)
                }
            }
            project([layer.wo], att, [xb])
            for i in 0..<(n * e) { x[i] += xb[i] }

            // Feed-forward block.
            normalize(x, layer.ffnNorm, xb, rows: n)
            project([layer.gate, layer.up], xb, [gate, up])
            forEachShare(ofRows: n) { r in
                let i0 = r.lowerBound * f
                kvt_swiglu(gate + i0, up + i0, hidden + i0, r.count * f)
            }
            project([layer.down], hidden, [xb])
            for i in 0..<(n * e) { x[i] += xb[i] }
            for run in runs { items[run.item].cache.didFinish(layer: l) }
        }

        // Logits. The last rows of every `.last` sequence share one pass over the output matrix,
        // each row computed on its own (as it would be alone).
        let lastRuns = runs.filter { if case .last = items[$0.item].logits { return true } else { return false } }
        if !lastRuns.isEmpty {
            let h = lastRows.reserve(lastRuns.count * e)
            for (j, run) in lastRuns.enumerated() { (h + j * e).update(from: x + (run.row + run.n - 1) * e, count: e) }
            outputLogits(h, rows: lastRuns.count, vectorOnly: true) { j, logits in
                items[lastRuns[j].item].visit(lastRuns[j].n - 1, logits)
            }
        }
        for run in runs {
            guard case .all = items[run.item].logits else { continue }
            outputLogits(x + run.row * e, rows: run.n, vectorOnly: false) { i, logits in
                items[run.item].visit(i, logits)
            }
        }
    }

    /// out[i] = RMSNorm(x[i]) * weight for `rows` rows of the embedding's width, the rows shared
    /// out among the workers when there are several (each row computed on its own, the same bits
    /// either way).
    private func normalize(
        _ x: UnsafePointer<Float>, _ weight: NormWeight, _ out: UnsafeMutablePointer<Float>, rows: Int
    ) {
        let e = config.embeddingLength
        let eps = config.rmsNormEpsilon
        weight.values.withUnsafeBufferPointer { w in
            forEachShare(ofRows: rows) { r in
                for i in r { kvt_rmsnorm(x + i * e, w.baseAddress, out + i * e, Int32(e), eps) }
            }
        }
    }

    /// `body` over each worker's share of `rows` rows, for row-wise work between the matrix
    /// products (RMSNorm, SwiGLU, quantizing activations): all the workers for a prompt's rows,
    /// one for a few decode rows, where the work is smaller than a fork-join's cost and each join
    /// is one more place for a descheduled thread to hold up the step. Each row's result is the
    /// same bits either way.
    func forEachShare(ofRows rows: Int, _ body: (Range<Int>) -> Void) {
        let workers = rows >= 16 ? threads : 1
        pool.run(workers) { t in
            let (a, b) = Parallel.share(rows, t, workers)
            if b > a { body(a..<b) }
        }
    }

    /// Calls `body` with a view of `layer` of every cache, in order (each cache's `withLayer`,
    /// nested).
    private func withViews<R>(_ caches: [KVCache], layer: Int, _ body: ([KVLayerView]) -> R) -> R {
        func nest(_ i: Int, _ views: [KVLayerView]) -> R {
            guard i < caches.count else { return body(views) }
            return caches[i].withLayer(layer) { view in nest(i + 1, views + [view]) }
        }
        return nest(0, [])
    }

    /// Final norm and output projection for `rows` hidden states starting at `h` (normalized in
    /// place). `vectorOnly`: every row through the matrix-vector kernels, whatever their number.
    private func outputLogits(
        _ h: UnsafeMutablePointer<Float>, rows: Int, vectorOnly: Bool, visit: (Int, UnsafeBufferPointer<Float>) -> Void
    ) {
        let e = config.embeddingLength
        let vocab = config.vocabularySize
        weights.outputNorm.values.withUnsafeBufferPointer { w in
            for i in 0..<rows { kvt_rmsnorm(h + i * e, w.baseAddress, h + i * e, Int32(e), config.rmsNormEpsilon) }
        }
        let chunk = 64
        var r = 0
        while r < rows {
            let m = min(chunk, rows - r)
            let out = logitsBuffer.reserve(m * vocab)
            if vectorOnly {
                linear(weights.output, h + r * e, vectorRows: m, gemmRuns: [], out)
            } else {
                linear(weights.output, h + r * e, m, out)
            }
            for i in 0..<m {
                visit(r + i, UnsafeBufferPointer(start: out + i * vocab, count: vocab))
            }
            r += m
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
    /// The caller's cancellation check said stop before all the tokens were computed.
    case cancelled

    public var description: String {
        switch self {
        case .badInput(let s): return "invalid decoder input: \(s)"
        case .cache(let e): return e.description
        case .cancelled: return "the computation was cancelled (the client went away)"
        }
    }
}
