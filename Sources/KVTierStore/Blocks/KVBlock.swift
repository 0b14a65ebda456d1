/// Element type of stored keys and values.
public enum KVElementType: UInt8, Sendable {
    case f16 = 1
    case f32 = 2

    public var byteWidth: Int { self == .f16 ? 2 : 4 }
}

/// One block's data: keys (pre-RoPE) then values, `count` tokens x `rowWidth` elements each,
/// plus a checksum over both that every tier verifies when it reads the block from a form
/// that could have been damaged (compressed DRAM, disk).
public struct KVBlock: Sendable {
    public let key: BlockKey
    public let elementType: KVElementType
    /// Elements per token for keys (and for values): kvHeads * headDim.
    public let rowWidth: Int
    /// Keys then values, raw little-endian elements.
    public let payload: [UInt8]
    public let checksum: UInt32

    public init(key: BlockKey, elementType: KVElementType, rowWidth: Int, payload: [UInt8]) {
        self.key = key
        self.elementType = elementType
        self.rowWidth = rowWidth
        self.payload = payload
        self.checksum = Checksum.crc32c(payload)
    }

    /// Rebuilds a block read back from storage; nil if the checksum does not match.
    public init?(key: BlockKey, elementType: KVElementType, rowWidth: Int, payload: [UInt8], checksum: UInt32) {
        guard Checksum.crc32c(payload) == checksum else { return nil }
        self.key = key
        self.elementType = elementType
        self.rowWidth = rowWidth
        self.payload = payload
        self.checksum = checksum
    }

    /// Bytes of keys (= bytes of values).
    public var halfBytes: Int { payload.count / 2 }
    public var isWellFormed: Bool { payload.count == 2 * key.count * rowWidth * elementType.byteWidth }
}
