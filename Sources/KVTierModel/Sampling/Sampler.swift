/// Picks tokens from logits: repetition penalty, then greedy or temperature with top-k and
/// top-p (nucleus) filtering, drawn from a seeded generator so runs are reproducible.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var rng: SplitMix64

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        self.rng = SplitMix64(seed: parameters.seed)
    }

    /// Returns the chosen token id. `recent` are the tokens seen so far (for the penalty).
    public mutating func sample(logits: UnsafeBufferPointer<Float>, recent: ArraySlice<Int32> = []) -> Int32 {
        var l = Array(logits)
        let p = parameters
        if p.repetitionPenalty != 1, p.repetitionWindow > 0 {
            var seen = Set<Int32>()
            for t in recent.suffix(p.repetitionWindow) where t >= 0 && Int(t) < l.count && seen.insert(t).inserted {
                // As in CTRL / llama.cpp: shrink positive logits, push negative ones further down.
                l[Int(t)] = l[Int(t)] > 0 ? l[Int(t)] / p.repetitionPenalty : l[Int(t)] * p.repetitionPenalty
            }
        }
        if p.temperature == 0 { return Sampler.argmax(l) }

        // Candidates sorted by logit, cut by top-k.
        var idx = Array(0..<l.count)
        let k = p.topK > 0 ? min(p.topK, l.count) : l.count
        if k < l.count {
            idx = Array(idx.sorted { l[$0] > l[$1] }.prefix(k))
        } else {
            idx.sort { l[$0] > l[$1] }
        }
        let maxLogit = l[idx[0]]
        var probs = idx.map { expDouble(Double((l[$0] - maxLogit) / p.temperature)) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        // Nucleus: the smallest prefix whose mass reaches top_p.
        var keep = probs.count
        if p.topP < 1 {
            var acc = 0.0
            for (i, pr) in probs.enumerated() {
                acc += pr
                if acc >= Double(p.topP) {
                    keep = i + 1
                    break
                }
            }
        }
        let mass = probs.prefix(keep).reduce(0, +)
        var r = rng.nextUnitDouble() * mass
        for i in 0..<keep {
            r -= probs[i]
            if r <= 0 { return Int32(idx[i]) }
        }
        return Int32(idx[keep - 1])
    }

    /// Index of the largest logit (the first one on ties).
    public static func argmax(_ l: UnsafeBufferPointer<Float>) -> Int32 {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<l.count where l[i] > bestValue {
            bestValue = l[i]
            best = i
        }
        return Int32(best)
    }

    public static func argmax(_ l: [Float]) -> Int32 {
        l.withUnsafeBufferPointer { argmax($0) }
    }
}

private func expDouble(_ x: Double) -> Double {
    // exp via the standard library's Foundation-free path.
    x < -700 ? 0 : _exp(x)
}

@inline(__always) private func _exp(_ x: Double) -> Double {
    #if canImport(Glibc)
    return Glibc.exp(x)
    #else
    return Darwin.exp(x)
    #endif
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A small, fast, seedable PRNG (SplitMix64), so a seed gives the same tokens everywhere.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func nextUnitDouble() -> Double { Double(next() >> 11) * (1.0 / Double(1 << 53)) }
}
