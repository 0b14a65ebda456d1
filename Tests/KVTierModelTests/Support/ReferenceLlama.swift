import Foundation

@testable import KVTierTestSupport

/// A deliberately naive llama forward pass in Double, over weights decoded by the test's own
/// GGUF writer: an independent reference for the decoder (no shared code with KVTierModel).
struct ReferenceLlama {
    let m: TinyModel
    var w: [String: [Double]] = [:]

    init(_ m: TinyModel) {
        self.m = m
        for t in m.tensors() {
            let stored = GGUFWriter.decode(GGUFWriter.encode(t.values, type: t.type), type: t.type, count: t.values.count)
            w[t.name] = stored.map(Double.init)
        }
    }

    /// Logits at every position for `tokens` at `positions` (causal over the given order).
    func logits(tokens: [Int32], positions: [Int]) -> [[Double]] {
        let e = m.embd, hd = m.headDim, heads = m.heads, kvh = m.kvHeads, group = heads / kvh
        let n = tokens.count
        func matvec(_ name: String, _ x: [Double], rows: Int) -> [Double] {
            let W = w[name]!
            let cols = x.count
            return (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + W[r * cols + $1] * x[$1] } }
        }
        func rmsnorm(_ x: [Double], _ name: String) -> [Double] {
            let g = w[name]!
            let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
            let s = 1 / (ms + 1e-5).squareRoot()
            return x.indices.map { x[$0] * s * g[$0] }
        }
        func rope(_ v: [Double], _ pos: Int) -> [Double] {
            var out = v
            for h in 0..<(v.count / hd) {
                for i in 0..<(hd / 2) {
                    let theta = Double(pos) * pow(Double(m.ropeBase), -2.0 * Double(i) / Double(hd))
                    let a = v[h * hd + 2 * i], b = v[h * hd + 2 * i + 1]
                    out[h * hd + 2 * i] = a * cos(theta) - b * sin(theta)
                    out[h * hd + 2 * i + 1] = a * sin(theta) + b * cos(theta)
                }
            }
            return out
        }
        let emb = w["token_embd.weight"]!
        var x: [[Double]] = tokens.map { t in Array(emb[Int(t) * e..<(Int(t) + 1) * e]) }
        for l in 0..<m.layers {
            let p = "blk.\(l)."
            var ks: [[Double]] = [], vs: [[Double]] = [], qs: [[Double]] = []
            for i in 0..<n {
                let xn = rmsnorm(x[i], p + "attn_norm.weight")
                qs.append(rope(matvec(p + "attn_q.weight", xn, rows: heads * hd), positions[i]))
                ks.append(rope(matvec(p + "attn_k.weight", xn, rows: kvh * hd), positions[i]))
                vs.append(matvec(p + "attn_v.weight", xn, rows: kvh * hd))
            }
            for i in 0..<n {
                var att = [Double](repeating: 0, count: heads * hd)
                for h in 0..<heads {
                    let g = h / group
                    var scores = (0...i).map { j in
                        (0..<hd).reduce(0.0) { $0 + qs[i][h * hd + $1] * ks[j][g * hd + $1] } / Double(hd).squareRoot()
                    }
                    let mx = scores.max()!
                    scores = scores.map { exp($0 - mx) }
                    let sum = scores.reduce(0, +)
                    for j in 0...i {
                        for d in 0..<hd { att[h * hd + d] += scores[j] / sum * vs[j][g * hd + d] }
                    }
                }
                let o = matvec(p + "attn_output.weight", att, rows: e)
                x[i] = x[i].indices.map { x[i][$0] + o[$0] }
                let xn = rmsnorm(x[i], p + "ffn_norm.weight")
                let gt = matvec(p + "ffn_gate.weight", xn, rows: m.ff)
                let up = matvec(p + "ffn_up.weight", xn, rows: m.ff)
                let hdn = gt.indices.map { gt[$0] / (1 + exp(-gt[$0])) * up[$0] }
                let d = matvec(p + "ffn_down.weight", hdn, rows: e)
                x[i] = x[i].indices.map { x[i][$0] + d[$0] }
            }
        }
        return x.map { h in matvec("token_embd.weight", rmsnorm(h, "output_norm.weight"), rows: m.vocabSize) }
    }
}
