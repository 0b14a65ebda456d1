import CKVTierKernels

/// CRC-32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2.
public enum Checksum {
    public static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { crc32c($0) }
    }

    public static func crc32c(_ buffer: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = buffer.baseAddress else { return kvt_crc32c(nil, 0) }
        return kvt_crc32c(base, buffer.count)
    }
}
