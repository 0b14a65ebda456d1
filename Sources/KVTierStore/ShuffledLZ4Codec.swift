import CLZ4

/// Compression of KV blocks for the disk tier: the F16 data is byte-shuffled (all low bytes,
/// then all high bytes, so the slowly varying exponent bytes sit together) and then LZ4-compressed.
public enum ShuffledLZ4Codec {
    /// Compresses `input` (whose length must be even when `shuffle` is on).
    public static func compress(_ input: [UInt8], shuffle: Bool = true) -> [UInt8] {
        guard !input.isEmpty else { return [] }
        let src = shuffle ? byteShuffle(input) : input
        let bound = Int(LZ4_compressBound(Int32(src.count)))
        var out = [UInt8](repeating: 0, count: max(bound, 1))
        let written = src.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { d in
                LZ4_compress_default(
                    UnsafeRawPointer(s.baseAddress!).assumingMemoryBound(to: CChar.self),
                    UnsafeMutableRawPointer(d.baseAddress!).assumingMemoryBound(to: CChar.self),
                    Int32(s.count), Int32(d.count))
            }
        }
        out.removeLast(out.count - Int(max(written, 0)))
        return out
    }

    /// Decompresses to exactly `originalCount` bytes, or throws if the data is damaged.
    public static func decompress(_ input: [UInt8], originalCount: Int, shuffle: Bool = true) throws(CodecError) -> [UInt8] {
        guard originalCount >= 0, originalCount < 1 << 30 else { throw CodecError.damaged("implausible size \(originalCount)") }
        if originalCount == 0 { return [] }
        guard !input.isEmpty else { throw CodecError.damaged("no compressed data") }
        var out = [UInt8](repeating: 0, count: max(originalCount, 1))
        let n = input.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { d in
                LZ4_decompress_safe(
                    UnsafeRawPointer(s.baseAddress!).assumingMemoryBound(to: CChar.self),
                    UnsafeMutableRawPointer(d.baseAddress!).assumingMemoryBound(to: CChar.self),
                    Int32(s.count), Int32(originalCount))
            }
        }
        guard n == originalCount else { throw CodecError.damaged("LZ4 returned \(n), expected \(originalCount) bytes") }
        out.removeLast(out.count - originalCount)
        return shuffle ? byteUnshuffle(out) : out
    }

    static func byteShuffle(_ b: [UInt8]) -> [UInt8] {
        let half = b.count / 2
        var out = [UInt8](repeating: 0, count: b.count)
        for i in 0..<half {
            out[i] = b[2 * i]
            out[half + i] = b[2 * i + 1]
        }
        if b.count % 2 == 1 { out[b.count - 1] = b[b.count - 1] }
        return out
    }

    static func byteUnshuffle(_ b: [UInt8]) -> [UInt8] {
        let half = b.count / 2
        var out = [UInt8](repeating: 0, count: b.count)
        for i in 0..<half {
            out[2 * i] = b[i]
            out[2 * i + 1] = b[half + i]
        }
        if b.count % 2 == 1 { out[b.count - 1] = b[b.count - 1] }
        return out
    }
}

/// A stored block could not be decoded.
public enum CodecError: Error, Equatable, Sendable, CustomStringConvertible {
    case damaged(String)
    public var description: String {
        switch self {
        case .damaged(let why): return "stored KV block is damaged (\(why)); it will be discarded and recomputed"
        }
    }
}
