import Foundation
import KVTierModel
import KVTierTokenizer

/// The log probability of one generated token under the model (the log-softmax of its logits,
/// before temperature and top-p), and the most likely alternatives at that position: what
/// OpenAI's `logprobs` and `top_logprobs` report.
public struct TokenLogprob: Sendable, Codable, Equatable {
    public struct Alternative: Sendable, Codable, Equatable {
        public var token: Int32
        /// The token's bytes (a token may hold part of a UTF-8 character).
        public var bytes: [UInt8]
        public var logprob: Float
    }

    public var token: Int32
    public var bytes: [UInt8]
    public var logprob: Float
    /// The `top` most likely tokens, most likely first (empty when none were asked for).
    public var top: [Alternative]

    /// `token`'s entry from the logits it was sampled from, with the `top` best alternatives.
    static func measure(
        token: Int32, logits: UnsafeBufferPointer<Float>, top: Int, tokenizer: BPETokenizer
    ) -> TokenLogprob {
        // log-sum-exp, shifted by the maximum for range.
        var maxLogit = -Float.infinity
        for v in logits where v > maxLogit { maxLogit = v }
        var sum: Double = 0
        for v in logits { sum += Double(expf(v - maxLogit)) }
        let logZ = maxLogit + Float(log(sum))
        var best: [(Int32, Float)] = []
        if top > 0 {
            // The k largest, kept sorted in a small array (k <= 20).
            for (i, v) in logits.enumerated() where best.count < top || v > best[best.count - 1].1 {
                let at = best.firstIndex { $0.1 < v } ?? best.count
                best.insert((Int32(i), v), at: at)
                if best.count > top { best.removeLast() }
            }
        }
        return TokenLogprob(
            token: token, bytes: tokenizer.pieceBytes(token), logprob: logits[Int(token)] - logZ,
            top: best.map { Alternative(token: $0.0, bytes: tokenizer.pieceBytes($0.0), logprob: $0.1 - logZ) })
    }
}
