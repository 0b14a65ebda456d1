import CKVTierKernels
import COpenBLAS

// Unsafe-pointer fence: attention over one sequence's cached keys and values.

extension Transformer {
    /// One sequence's queries for `attentionRows`.
    struct AttentionJob {
        let view: KVLayerView
        let slot0: Int
        let n: Int
        let q: UnsafeMutablePointer<Float>
        let out: UnsafeMutablePointer<Float>
    }

    /// Attention of several sequences' few queries each (decoding), one query at a time per head
    /// as `attention` does for fewer than `gemmThreshold` queries, in one fork-join: the (sequence,
    /// head) pairs are shared out by their cost (queries times visible slots), and a worker's
    /// heads that share a KV head go through one grouped call. The kernel gives each head the
    /// same bits whichever heads it is grouped with, so the results are a lone sequence's.
    func attentionRows(_ jobs: [AttentionJob]) {
        guard !jobs.isEmpty else { return }
        let c = config
        let d = c.headDim
        let heads = c.headCount
        let group = c.headCount / c.kvHeadCount
        let qw = heads * d
        let kvw = c.kvWidth
        let scale = 1 / Float(d).squareRoot()
        let items = jobs.count * heads
        let workers = min(threads, items)
        let scratch = self.workers
        let maxTotal = jobs.map { $0.slot0 + $0.n }.max() ?? 0
        // Cumulative cost, so that each worker gets about the same number of key visits.
        var prefix = [Int](repeating: 0, count: items + 1)
        for item in 0..<items {
            let job = jobs[item / heads]
            prefix[item + 1] = prefix[item] + job.n * (job.slot0 + job.n)
        }
        let totalCost = prefix[items]
        let runs = jobs.map(\.view.cRuns)
        rope.cos.withUnsafeBufferPointer { cs in
            rope.sin.withUnsafeBufferPointer { sn in
                let cosT = cs.baseAddress!
                let sinT = sn.baseAddress!
                pool.run(workers) { t in
                    let lo = totalCost * t / workers
                    let hi = totalCost * (t + 1) / workers
                    let first = prefix.partitionPoint(lo)
                    let last = t == workers - 1 ? items : prefix.partitionPoint(hi)
                    guard last > first else { return }
                    let scores = scratch[t].scores.reserve(maxTotal * group)
                    // The worker's items in runs of query heads that share a KV head: one kernel
                    // call per run reads each cached row once for all of them.
                    var item = first
                    while item < last {
                        let job = jobs[item / heads]
                        let h = item % heads
                        let kvh = h / group
                        let nq = min(last - item, (kvh + 1) * group - h)
                        let eb = Int32(job.view.precision.bytes)
                        runs[item / heads].withUnsafeBufferPointer { r in
                            for i in 0..<job.n {
                                kvt_attend_runs_group(
                                    job.q + i * qw + h * d, d, Int32(nq), r.baseAddress, kvh * d, eb, kvw,
                                    job.view.positions, Int32(job.slot0 + i + 1), Int32(d), scale, cosT, sinT, scores,
                                    job.out + i * qw + h * d, d)
                            }
                        }
                        item += nq
                    }
                }
            }
        }
    }

    /// Grouped-query attention of the n new queries (slots slot0..<slot0+n, a prompt: n is at
    /// least `gemmThreshold`) over all slots [0, slot0 + n) of `view`, causal by slot order.
    /// Queries are already rotated. Where the kernels are batch-invariant, each row as decoding
    /// it alone gives it (`kvt_attend_rows_group`); else QK^T and PV through sgemm.
    func attention(
        view: KVLayerView, slot0: Int, n: Int, q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>
    ) {
        let c = config
        let d = c.headDim
        let heads = c.headCount
        let group = c.headCount / c.kvHeadCount
        let qw = heads * d
        let kvw = c.kvWidth
        let scale = 1 / Float(d).squareRoot()
        let eb = view.precision.bytes  // bytes per cached element
        let total = slot0 + n
        let scratch = self.workers
        let runs = view.cRuns
        if batchInvariant {
            // Each row as decoding it alone would give it (`kvt_attend_rows_group`), the rows
            // shared out by their cost (row i sees slot0 + i + 1 slots), every worker all heads:
            // a worker rotates the keys its rows see once per KV head.
            let workers = min(threads, n)
            let cost = { (i: Int) in i * (2 * slot0 + i + 1) / 2 }  // slots seen by rows [0, i)
            var bounds = [0]
            for t in 1..<max(1, workers) {
                let target = cost(n) * t / workers
                var i = bounds[t - 1]
                while i < n && cost(i) < target { i += 1 }
                bounds.append(i)
            }
            bounds.append(n)
            rope.cos.withUnsafeBufferPointer { cs in
                rope.sin.withUnsafeBufferPointer { sn in
                    let cosT = cs.baseAddress!
                    let sinT = sn.baseAddress!
                    pool.run(workers) { t in
                        let (a, b) = (bounds[t], bounds[t + 1])
                        guard b > a else { return }
                        let s = scratch[t]
                        let seen = slot0 + b
                        let keys = s.keys.reserve((seen + 15) / 16 * 16 * d)
                        let values = s.values.reserve(seen * d)
                        let scores = s.scores.reserve(seen * group)
                        runs.withUnsafeBufferPointer { r in
                            for kvh in 0..<c.kvHeadCount {
                                let h = kvh * group
                                kvt_attend_rows_group(
                                    q + a * qw + h * d, qw, d, Int32(group), Int32(b - a), r.baseAddress, kvh * d,
                                    Int32(eb), kvw, view.positions, Int32(slot0 + a + 1), Int32(d), scale, cosT, sinT,
                                    keys, values, scores, out + a * qw + h * d, qw, d)
                            }
                        }
                    }
                }
            }
            return
        }
        let workers = min(threads, heads)
        rope.cos.withUnsafeBufferPointer { cs in
            rope.sin.withUnsafeBufferPointer { sn in
                let cosT = cs.baseAddress!
                let sinT = sn.baseAddress!
                pool.run(workers) { t in
                    let (h0, h1) = Parallel.share(heads, t, workers)
                    let s = scratch[t]
                    let krot = s.keys.reserve(total * d)
                    let vf = s.values.reserve(total * d)
                    let chunk = 256
                    let scores = s.scores.reserve(chunk * total)
                    var loadedKV = -1
                    for h in h0..<h1 {
                        let kvh = h / group
                        if kvh != loadedKV {
                            // Rotated keys and F32 values of this KV head, gathered from the runs.
                            var t0 = 0
                            for run in view.runs where t0 < total {
                                let m = min(run.count, total - t0)
                                kvt_rope_keys(
                                    run.keys + kvh * d * eb, Int32(eb), kvw, view.positions + t0, Int32(m), Int32(d),
                                    cosT,
                                    sinT, krot + t0 * d)
                                for tt in 0..<m {
                                    kvt_kv_to_f32(
                                        run.values + (tt * kvw + kvh * d) * eb, Int32(eb), vf + (t0 + tt) * d, d)
                                }
                                t0 += m
                            }
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

extension KVLayerView {
    /// The runs as the attention kernel takes them.
    fileprivate var cRuns: [kvt_kv_run] {
        runs.map { kvt_kv_run(k: $0.keys, v: $0.values, count: Int64($0.count)) }
    }
}

extension Array where Element == Int {
    /// In an ascending array: the first index i with self[i] >= value (count if none), minus the
    /// leading zero of a prefix-sum array, so that item i starts at self[i].
    fileprivate func partitionPoint(_ value: Int) -> Int {
        var lo = 0
        var hi = count - 1  // items are 0..<count-1; item i covers [self[i], self[i+1])
        while lo < hi {
            let mid = (lo + hi) / 2
            if self[mid] < value { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}
