/// Identity of the model whose KV a block holds: architecture, KV shape and a hash of every
/// tensor's bytes. Blocks stored under another fingerprint are never returned.
public struct ModelFingerprint: Hashable, Sendable, CustomStringConvertible {
    /// 64-bit digest.
    public let value: UInt64

    public init(value: UInt64) { self.value = value }

    public var description: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// FNV-1a over 64-bit words: fast enough to hash the 94 MB model at start-up (~0.1 s) and
/// sensitive to any changed byte. The engine fingerprints a loaded model with it
/// (`ModelFingerprint(model:)` in KVTierEngine).
public struct Hasher64: Sendable {
    public init() {}

    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    private static let prime: UInt64 = 0x0000_0100_0000_01b3

    public mutating func combine(_ v: UInt64) {
        value = (value ^ v) &* Hasher64.prime
    }

    public mutating func combine(bytes: [UInt8]) {
        for b in bytes { combine(UInt64(b)) }
        combine(UInt64(bytes.count))
    }

    public mutating func combine(words buffer: UnsafeRawBufferPointer) {
        let n = buffer.count / 8
        var v = value
        for i in 0..<n {
            v = (v ^ buffer.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* Hasher64.prime
        }
        value = v
        for i in (n * 8)..<buffer.count { combine(UInt64(buffer[i])) }
        combine(UInt64(buffer.count))
    }
}
