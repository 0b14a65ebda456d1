/// SplitMix64 (Steele, Lea and Flood 2014): a tiny deterministic generator for the fuzz tests, so
/// that a seed and an input number reproduce an input exactly on any machine.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    /// The generator for input number `index` of a run with `seed`: each input is reproducible on
    /// its own (`KVTIER_FUZZ_SEED` plus `KVTIER_FUZZ_ONLY`).
    init(seed: UInt64, index: Int) {
        var mixer = SplitMix64(seed: seed ^ (UInt64(truncatingIfNeeded: index) &* 0xD6E8_FEB8_6659_FD93))
        state = mixer.next()
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0..<n`; 0 when `n` is 0.
    mutating func below(_ n: Int) -> Int {
        n <= 0 ? 0 : Int(next() % UInt64(n))
    }

    /// True one time in `n`.
    mutating func oneIn(_ n: Int) -> Bool { below(n) == 0 }

    /// A size that is usually small and sometimes large: a power-of-two range picked first.
    mutating func size(upTo limit: Int) -> Int {
        let bits = below(Int.bitWidth - (limit.leadingZeroBitCount) + 1)
        return min(limit, below(1 << bits) + 1)
    }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}
