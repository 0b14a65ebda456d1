import KVTierModel

/// Identity of the model whose KV a block holds: architecture, KV shape and a hash of every
/// tensor's bytes. Blocks stored under another fingerprint are never returned.
public struct ModelFingerprint: Hashable, Sendable, CustomStringConvertible {
    /// 64-bit digest.
    public let value: UInt64

    public init(value: UInt64) { self.value = value }

    /// Fingerprint of a loaded model: hashes the architecture, the config and all tensor data.
    public init(model: LlamaModel) {
        var h = Hasher64()
        h.combine(bytes: Array("llama".utf8))
        let c = model.config
        for v in [c.layerCount, c.embeddingLength, c.feedForwardLength, c.headCount, c.kvHeadCount, c.headDim, c.vocabularySize] {
            h.combine(UInt64(v))
        }
        h.combine(UInt64(c.ropeFreqBase.bitPattern))
        for t in model.file.tensors {
            h.combine(bytes: Array(t.name.utf8))
            h.combine(UInt64(t.type.rawValue))
        }
        let data = model.file.bytes
        h.combine(words: UnsafeRawBufferPointer(rebasing: data[model.file.dataOffset...]))
        value = h.value
    }

    public var description: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// FNV-1a over 64-bit words: fast enough to hash the 94 MB model at start-up (~0.1 s) and
/// sensitive to any changed byte.
struct Hasher64 {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    private static let prime: UInt64 = 0x0000_0100_0000_01b3

    mutating func combine(_ v: UInt64) {
        value = (value ^ v) &* Hasher64.prime
    }

    mutating func combine(bytes: [UInt8]) {
        for b in bytes { combine(UInt64(b)) }
        combine(UInt64(bytes.count))
    }

    mutating func combine(words buffer: UnsafeRawBufferPointer) {
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
