/// Deterministic synthetic KV blocks for tests, debug tools and benchmarks: block `index` is
/// always the same bytes (its generator is seeded with `index`), so a process that reopens a disk
/// tier can regenerate what another process wrote and compare byte for byte.
///
/// The values imitate the structure of KV loosely: each channel keeps its sign, its exponent
/// (one step higher for one element in eight) and its two top mantissa bits, while the low eight
/// mantissa bits are random. So the high bytes repeat from token to token and compress once they
/// are shuffled into their own plane, and the low bytes do not compress at all. Real SmolLM2 KV
/// should be measured with `DiskTier.measureCompression`.
public enum SyntheticKVBlocks {
    /// The model fingerprint of every synthetic block.
    public static let model = ModelFingerprint(value: 0x4b56_5469_6572_4442)  // "KVTierDB"
    /// Session of the blocks made by `block(index:)`.
    public static let session = "debug-writer"
    /// SmolLM2-135M: 3 KV heads x 64 dimensions.
    public static let rowWidth = 192
    /// Layers the blocks cycle through.
    public static let layers = 30

    /// Block `index`: layer `index % 30`, tokens starting at `(index / 30) * 512`, and `tokens`
    /// tokens (by default 1...300, drawn from the seed).
    public static func block(index: Int, tokens: Int? = nil, elementType: KVElementType = .f16) -> KVBlock {
        var rng = BlockGenerator(seed: UInt64(truncatingIfNeeded: index) &+ 0x9e37_79b9)
        let count = tokens ?? 1 + Int(rng.next() % 300)
        let key = BlockKey(
            model: model, session: session, layer: index % layers, start: (index / layers) * 512, count: count)
        return KVBlock(
            key: key, elementType: elementType, rowWidth: rowWidth,
            payload: payload(tokens: count, rowWidth: rowWidth, elementType: elementType, rng: &rng))
    }

    /// `2 * tokens * rowWidth` little-endian elements (keys then values) from `rng`.
    public static func payload(
        tokens: Int, rowWidth: Int, elementType: KVElementType, rng: inout some RandomNumberGenerator
    ) -> [UInt8] {
        let elements = 2 * tokens * rowWidth
        var out = [UInt8](repeating: 0, count: elements * elementType.byteWidth)
        var o = 0
        for e in 0..<elements {
            let channel = UInt64(e % rowWidth)
            let r = rng.next()
            let sign = (channel * 5 % 3 == 0) ? UInt64(1) : 0
            let exponent = 11 + (channel * 7) % 5 + (r & 7 == 0 ? 1 : 0)
            let mantissa = (channel % 4) << 8 | (r >> 3) & 0xff
            switch elementType {
            case .f16:
                let bits = UInt16(truncatingIfNeeded: sign << 15 | exponent << 10 | mantissa)
                out[o] = UInt8(truncatingIfNeeded: bits)
                out[o + 1] = UInt8(truncatingIfNeeded: bits >> 8)
                o += 2
            case .f32:
                // The same numbers widened: exponent rebased from 15 to 127, mantissa shifted up,
                // with 13 more random low bits.
                let bits = UInt32(
                    truncatingIfNeeded: sign << 31 | (exponent + 112) << 23 | mantissa << 13 | (r >> 16) & 0x1fff)
                for b in 0..<4 { out[o + b] = UInt8(truncatingIfNeeded: bits >> (8 * UInt32(b))) }
                o += 4
            }
        }
        return out
    }
}

/// xorshift64* (Vigna): the seeded generator behind `SyntheticKVBlocks.block(index:)`, so that a
/// block's bytes depend only on its index.
struct BlockGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9e37_79b9_7f4a_7c15 : seed }

    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_f491_4f6c_dd1d
    }
}
