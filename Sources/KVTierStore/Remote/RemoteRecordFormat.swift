/// Keys and values of the remote tier.
///
/// Keys: `<prefix>{<model>:<namespace>}b:<layer>:<start>:<count>` for a block and
/// `<prefix>{<model>:<name>}m` for a record (a session's state). The model fingerprint and the
/// store namespace (which begins with the owner's uid, "1000:chat-7") are in every key, and the
/// braces make them the hash tag, so a session's blocks share one slot (one node, one pipeline).
///
/// Values: the stored key again (2-byte length, then the disk tier's encoded key), then the
/// disk tier's record (header with its own CRC, LZ4 data, CRC-32C of the payload). A value is
/// served only if the key it carries is the key asked for and every check of the disk format
/// passes, so a value written under the wrong key, by another model or damaged is never used.
/// Records carry their name and a CRC-32C of their bytes the same way.
enum RemoteRecordFormat {
    static let metadataPrefix: UInt8 = 0x4D  // "M"

    static func blockKey(_ key: BlockKey, prefix: String) -> [UInt8] {
        Array("\(prefix){\(key.model):\(key.session)}b:\(key.layer):\(key.start):\(key.count)".utf8)
    }

    static func metadataKey(model: ModelFingerprint, name: String, prefix: String) -> [UInt8] {
        Array("\(prefix){\(model):\(name)}m".utf8)
    }

    static func encodeBlock(_ block: KVBlock) -> [UInt8] {
        let echo = DiskRecordFormat.encodeKey(block.key, prefix: DiskRecordFormat.blockPrefix)
        var out: [UInt8] = []
        DiskRecordFormat.appendLE(&out, UInt64(echo.count), bytes: 2)
        out += echo
        out += DiskRecordFormat.encodeValue(block, shuffle: true)
        return out
    }

    static func decodeBlock(_ value: [UInt8], for key: BlockKey) -> Result<KVBlock, DiskRecordFormat.DecodeFailure> {
        let echo = DiskRecordFormat.encodeKey(key, prefix: DiskRecordFormat.blockPrefix)
        guard value.count >= 2 + echo.count, Int(DiskRecordFormat.readLE(value, 0, 2)) == echo.count,
            value[2..<(2 + echo.count)].elementsEqual(echo)
        else { return .failure(.init("the value was stored for another key")) }
        return DiskRecordFormat.decodeValue(Array(value[(2 + echo.count)...]), for: key)
    }

    static func encodeMetadata(model: ModelFingerprint, name: String, value: [UInt8]) -> [UInt8] {
        var echo: [UInt8] = [metadataPrefix]
        DiskRecordFormat.appendBE(&echo, model.value, bytes: 8)
        echo += Array(name.utf8)
        var out: [UInt8] = []
        DiskRecordFormat.appendLE(&out, UInt64(echo.count), bytes: 4)
        out += echo
        DiskRecordFormat.appendLE(&out, UInt64(Checksum.crc32c(echo + value)), bytes: 4)
        out += value
        return out
    }

    static func decodeMetadata(_ stored: [UInt8], model: ModelFingerprint, name: String) -> [UInt8]? {
        guard stored.count >= 8 else { return nil }
        let n = Int(DiskRecordFormat.readLE(stored, 0, 4))
        guard n <= stored.count - 8 else { return nil }
        let echo = Array(stored[4..<(4 + n)])
        var expected: [UInt8] = [metadataPrefix]
        DiskRecordFormat.appendBE(&expected, model.value, bytes: 8)
        expected += Array(name.utf8)
        guard echo == expected else { return nil }
        let value = Array(stored[(8 + n)...])
        guard UInt32(DiskRecordFormat.readLE(stored, 4 + n, 4)) == Checksum.crc32c(echo + value) else { return nil }
        return value
    }
}
