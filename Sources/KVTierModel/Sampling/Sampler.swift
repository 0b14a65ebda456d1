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
        return l.withUnsafeBufferPointer { draw($0) }
    }

    /// Temperature sampling with top-k and top-p over `l`. Candidates are taken in order of logit
    /// (the lower id first on ties) from a heap of the ids within 1e-6 of the top weight, only as
    /// far as the top-k cut, the nucleus and the draw need: one pass for the weights plus a few
    /// pops, instead of sorting the whole vocabulary for every token (6 ms for 49,152 logits on
    /// this machine, as long as a decode step).
    private mutating func draw(_ l: UnsafeBufferPointer<Float>) -> Int32 {
        let p = parameters
        let n = l.count
        guard n > 0 else { return 0 }
        var maxLogit = -Float.infinity
        for x in l where x > maxLogit { maxLogit = x }
        let scale = 1 / p.temperature
        // Single precision is plenty for one weight (the sums are in double), and 4x cheaper.
        func weight(_ i: Int) -> Double { Double(expf((l[i] - maxLogit) * scale)) }
        // Ids whose weight is at least 1e-6 of the largest go into the heap first; the rest (all
        // of lower logit, so the order stays exact) only if the draw gets past every one of them.
        let cut = maxLogit - 13.8 * p.temperature
        var near: [Int32] = []
        for i in 0..<n where l[i] >= cut { near.append(Int32(i)) }
        var order = CandidateHeap(l, ids: near)
        var far: CandidateHeap?
        func next() -> Int? {
            if let i = order.pop() { return i }
            if far == nil { far = CandidateHeap(l, ids: (0..<Int32(n)).filter { l[Int($0)] < cut }) }
            return far?.pop()
        }
        let k = p.topK > 0 ? min(p.topK, n) : n
        // Candidates taken so far, in order, with their weights.
        var head: [(id: Int, weight: Double)] = []
        func candidate(_ j: Int) -> (id: Int, weight: Double)? {
            while head.count <= j {
                guard head.count < k, let i = next() else { return nil }
                head.append((i, weight(i)))
            }
            return head[j]
        }
        // The candidates' total weight: the top k, or every token.
        var total = 0.0
        if k < n {
            var j = 0
            while let c = candidate(j) {
                total += c.weight
                j += 1
            }
        } else {
            for i in 0..<n { total += weight(i) }
        }
        // Nucleus: the shortest prefix whose share of the total reaches top_p.
        var keep = k
        var mass = total
        if p.topP < 1 {
            var acc = 0.0
            var j = 0
            while let c = candidate(j) {
                acc += c.weight
                j += 1
                if acc >= Double(p.topP) * total { break }
            }
            keep = j
            mass = acc
        }
        var r = rng.nextUnitDouble() * mass
        var j = 0
        while j < keep, let c = candidate(j) {
            r -= c.weight
            if r <= 0 { return Int32(c.id) }
            j += 1
        }
        return Int32(head[max(0, min(keep, head.count) - 1)].id)
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

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Token ids in order of their logits, highest first (lower id first on ties), popped one at a
/// time from a binary heap built in linear time.
struct CandidateHeap {
    private let l: UnsafeBufferPointer<Float>
    private var heap: [Int32]

    /// The candidates are `ids` (every id when nil).
    init(_ logits: UnsafeBufferPointer<Float>, ids: [Int32]? = nil) {
        l = logits
        heap = ids ?? (0..<Int32(logits.count)).map { $0 }
        var i = heap.count / 2 - 1
        while i >= 0 {
            siftDown(i)
            i -= 1
        }
    }

    /// Whether id a comes before id b.
    private func before(_ a: Int32, _ b: Int32) -> Bool {
        let x = l[Int(a)]
        let y = l[Int(b)]
        return x > y || (x == y && a < b)
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let n = heap.count
        while true {
            let left = 2 * i + 1
            guard left < n else { return }
            var best = left
            if left + 1 < n && before(heap[left + 1], heap[left]) { best = left + 1 }
            guard before(heap[best], heap[i]) else { return }
            heap.swapAt(i, best)
            i = best
        }
    }

    mutating func pop() -> Int? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
        return Int(top)
    }
}

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
