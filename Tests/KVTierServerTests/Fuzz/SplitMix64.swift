import KVTierModel

/// The fuzz tests' generator is KVTierModel's SplitMix64 (Steele, Lea and Flood 2014), so that a
/// seed and an input number reproduce an input exactly on any machine; these are its helpers.
extension SplitMix64 {
    /// The generator for input number `index` of a run with `seed`: each input is reproducible on
    /// its own (`KVTIER_FUZZ_SEED` plus `KVTIER_FUZZ_ONLY`).
    init(seed: UInt64, index: Int) {
        var mixer = SplitMix64(seed: seed ^ (UInt64(truncatingIfNeeded: index) &* 0xD6E8_FEB8_6659_FD93))
        self.init(seed: mixer.next())
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
