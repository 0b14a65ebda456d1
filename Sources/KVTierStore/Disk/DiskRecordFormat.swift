/// The disk tier's on-disk format: RocksDB keys and values for one block.
///
/// Each block is two records, always written and deleted together in one atomic write batch:
///
/// * the **block record**, key `"B"` + suffix, value = 36-byte header + data;
/// * the **index record**, key `"I"` + the same suffix, value = 13 bytes (stored size, raw size),
///   so that the in-memory index is rebuilt at start-up by iterating the small index records
///   of the database itself instead of reading every megabyte-sized value.
///
/// Key suffix (big-endian, so RocksDB's byte order sorts blocks by model, session, layer, start):
/// model fingerprint (8 bytes), session length (UInt16) and UTF-8 bytes, layer (UInt16),
/// start (UInt32), count (UInt32).
///
/// Block header (little-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | format version (1) |
/// | 1 | 1 | element type (`KVElementType` raw value) |
/// | 2 | 1 | flags: bit 0 = LZ4-compressed, bit 1 = byte-shuffled before LZ4 |
/// | 3 | 1 | reserved, 0 |
/// | 4 | 4 | row width (elements per token) |
/// | 8 | 4 | token count |
/// | 12 | 4 | raw payload length |
/// | 16 | 4 | CRC-32C of the raw payload (the block's checksum) |
/// | 20 | 8 | model fingerprint |
/// | 28 | 4 | length of the data that follows |
/// | 32 | 4 | CRC-32C of bytes 0..<32 (so a flipped header byte is caught before it is trusted) |
enum DiskRecordFormat {
    static let blockPrefix: UInt8 = 0x42  // "B"
    static let indexPrefix: UInt8 = 0x49  // "I"
    static let version: UInt8 = 1
    static let headerSize = 36
    static let indexValueSize = 13
    static let flagCompressed: UInt8 = 1
    static let flagShuffled: UInt8 = 2
    static let maxSessionBytes = Int(UInt16.max)

    /// What the header says about a stored block.
    struct Header: Equatable {
        var elementType: KVElementType
        var compressed: Bool
        var shuffled: Bool
        var rowWidth: Int
        var tokenCount: Int
        var rawLength: Int
        var payloadChecksum: UInt32
        var model: UInt64
        var dataLength: Int
    }

    /// Sizes kept by the index record.
    struct IndexEntry: Equatable {
        var storedBytes: Int
        var rawBytes: Int
    }

    // MARK: Keys

    /// Why a key cannot be represented on disk, or nil if it can.
    static func unrepresentable(_ key: BlockKey) -> String? {
        if key.session.utf8.count > maxSessionBytes {
            return "session id is \(key.session.utf8.count) bytes (at most \(maxSessionBytes))"
        }
        if !(0...Int(UInt16.max)).contains(key.layer) { return "layer \(key.layer) is outside 0...65535" }
        if !(0...Int(UInt32.max)).contains(key.start) { return "start \(key.start) is outside 0...\(UInt32.max)" }
        if !(1...Int(UInt32.max)).contains(key.count) { return "token count \(key.count) is outside 1...\(UInt32.max)" }
        return nil
    }

    /// Key of a prefix scan: everything of `model`, or of one session of it.
    static func prefix(_ recordPrefix: UInt8, model: ModelFingerprint, session: String? = nil) -> [UInt8] {
        var out: [UInt8] = [recordPrefix]
        appendBE(&out, model.value, bytes: 8)
        if let session {
            let s = Array(session.utf8)
            appendBE(&out, UInt64(s.count), bytes: 2)
            out += s
        }
        return out
    }

    /// The full key of `key`'s block record (`blockPrefix`) or index record (`indexPrefix`).
    /// Callers check `unrepresentable` first; out-of-range fields are truncated here.
    static func encodeKey(_ key: BlockKey, prefix recordPrefix: UInt8) -> [UInt8] {
        var out = prefix(recordPrefix, model: key.model, session: key.session)
        appendBE(&out, UInt64(truncatingIfNeeded: key.layer), bytes: 2)
        appendBE(&out, UInt64(truncatingIfNeeded: key.start), bytes: 4)
        appendBE(&out, UInt64(truncatingIfNeeded: key.count), bytes: 4)
        return out
    }

    /// Parses a record key; nil if it is not a well-formed key with `recordPrefix`.
    static func decodeKey(_ bytes: [UInt8], prefix recordPrefix: UInt8) -> BlockKey? {
        guard bytes.count >= 1 + 8 + 2 + 10, bytes[0] == recordPrefix else { return nil }
        let model = readBE(bytes, 1, 8)
        let sessionLength = Int(readBE(bytes, 9, 2))
        guard bytes.count == 11 + sessionLength + 10 else { return nil }
        guard let session = String(validating: bytes[11..<(11 + sessionLength)], as: UTF8.self) else { return nil }
        let p = 11 + sessionLength
        let count = Int(readBE(bytes, p + 6, 4))
        guard count >= 1 else { return nil }
        return BlockKey(
            model: ModelFingerprint(value: model), session: session,
            layer: Int(readBE(bytes, p, 2)), start: Int(readBE(bytes, p + 2, 4)), count: count)
    }

    // MARK: Values

    /// LZ4 is kept only for a block it shrinks by at least this share. Real F16 KV shrinks by
    /// under 2% (its mantissa bytes are noise), and reading a compressed block costs an LZ4
    /// decompression and an unshuffle on the turn's critical path: half of a disk load's time
    /// (docs/benchmarks.md, "Tiered store").
    static let minimumSaving = 0.10

    /// The block record's value: header, then the LZ4 data, or the raw payload when LZ4 would
    /// not save `minimumSaving` of it (F16 KV, random bytes).
    static func encodeValue(_ block: KVBlock, shuffle: Bool) -> [UInt8] {
        let packed = ShuffledLZ4Codec.compress(block.payload, shuffle: shuffle)
        let compressed =
            !packed.isEmpty && Double(packed.count) <= Double(block.payload.count) * (1 - minimumSaving)
        let data = compressed ? packed : block.payload
        var flags: UInt8 = 0
        if compressed { flags |= flagCompressed }
        if compressed && shuffle { flags |= flagShuffled }
        var out: [UInt8] = []
        out.reserveCapacity(headerSize + data.count)
        out += [version, block.elementType.rawValue, flags, 0]
        appendLE(&out, UInt64(block.rowWidth), bytes: 4)
        appendLE(&out, UInt64(block.key.count), bytes: 4)
        appendLE(&out, UInt64(block.payload.count), bytes: 4)
        appendLE(&out, UInt64(block.checksum), bytes: 4)
        appendLE(&out, block.key.model.value, bytes: 8)
        appendLE(&out, UInt64(data.count), bytes: 4)
        appendLE(&out, UInt64(Checksum.crc32c(out)), bytes: 4)
        out += data
        return out
    }

    /// Parses and checks a header against the key it was stored under; the reason on failure.
    static func decodeHeader(_ value: [UInt8], for key: BlockKey) -> Result<Header, DecodeFailure> {
        guard value.count >= headerSize else {
            return .failure(.init("value is \(value.count) bytes, shorter than the \(headerSize)-byte header"))
        }
        let stored = UInt32(truncatingIfNeeded: readLE(value, 32, 4))
        let computed = Checksum.crc32c(Array(value[0..<32]))
        guard stored == computed else { return .failure(.init("header checksum mismatch")) }
        guard value[0] == version else { return .failure(.init("unknown format version \(value[0])")) }
        guard let type = KVElementType(rawValue: value[1]) else {
            return .failure(.init("unknown element type \(value[1])"))
        }
        let flags = value[2]
        guard flags & ~(flagCompressed | flagShuffled) == 0, value[3] == 0 else {
            return .failure(.init("unknown flags"))
        }
        let h = Header(
            elementType: type, compressed: flags & flagCompressed != 0, shuffled: flags & flagShuffled != 0,
            rowWidth: Int(readLE(value, 4, 4)), tokenCount: Int(readLE(value, 8, 4)),
            rawLength: Int(readLE(value, 12, 4)),
            payloadChecksum: UInt32(truncatingIfNeeded: readLE(value, 16, 4)), model: readLE(value, 20, 8),
            dataLength: Int(readLE(value, 28, 4)))
        guard h.model == key.model.value else {
            return .failure(.init("header names model \(ModelFingerprint(value: h.model)), key names \(key.model)"))
        }
        guard h.tokenCount == key.count else {
            return .failure(.init("header says \(h.tokenCount) tokens, key says \(key.count)"))
        }
        let (elements, overflow) = h.tokenCount.multipliedReportingOverflow(by: h.rowWidth)
        guard h.rowWidth > 0, !overflow, elements <= Int(UInt32.max), h.rawLength == 2 * elements * type.byteWidth
        else {
            return .failure(
                .init(
                    "raw length \(h.rawLength) does not match \(h.tokenCount) tokens x \(h.rowWidth) x 2 x "
                        + "\(type.byteWidth) bytes"
                ))
        }
        guard h.dataLength == value.count - headerSize else {
            return .failure(.init("data is \(value.count - headerSize) bytes, header says \(h.dataLength)"))
        }
        guard h.compressed || h.dataLength == h.rawLength else {
            return .failure(.init("uncompressed data length differs from raw length"))
        }
        return .success(h)
    }

    /// Decodes a block record; the block only if every check passes (header, LZ4, checksum).
    static func decodeValue(_ value: [UInt8], for key: BlockKey) -> Result<KVBlock, DecodeFailure> {
        let header: Header
        switch decodeHeader(value, for: key) {
        case .success(let h): header = h
        case .failure(let f): return .failure(f)
        }
        let data = Array(value[headerSize...])
        let payload: [UInt8]
        if header.compressed {
            do {
                payload = try ShuffledLZ4Codec.decompress(
                    data, originalCount: header.rawLength, shuffle: header.shuffled)
            } catch {
                return .failure(.init("\(error)"))
            }
        } else {
            payload = data
        }
        guard
            let block = KVBlock(
                key: key, elementType: header.elementType, rowWidth: header.rowWidth,
                payload: payload, checksum: header.payloadChecksum)
        else {
            return .failure(.init("payload checksum mismatch"))
        }
        return .success(block)
    }

    static func encodeIndexValue(_ entry: IndexEntry) -> [UInt8] {
        var out: [UInt8] = [version]
        appendLE(&out, UInt64(entry.storedBytes), bytes: 4)
        appendLE(&out, UInt64(entry.rawBytes), bytes: 4)
        appendLE(&out, UInt64(Checksum.crc32c(out)), bytes: 4)
        return out
    }

    static func decodeIndexValue(_ bytes: [UInt8]) -> IndexEntry? {
        guard bytes.count == indexValueSize, bytes[0] == version,
            UInt32(truncatingIfNeeded: readLE(bytes, 9, 4)) == Checksum.crc32c(Array(bytes[0..<9]))
        else { return nil }
        return IndexEntry(storedBytes: Int(readLE(bytes, 1, 4)), rawBytes: Int(readLE(bytes, 5, 4)))
    }

    /// Why a stored value was rejected.
    struct DecodeFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    // MARK: Integers

    static func appendBE(_ out: inout [UInt8], _ v: UInt64, bytes: Int) {
        for i in stride(from: bytes - 1, through: 0, by: -1) {
            out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))))
        }
    }

    static func appendLE(_ out: inout [UInt8], _ v: UInt64, bytes: Int) {
        for i in 0..<bytes { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }

    static func readBE(_ b: [UInt8], _ offset: Int, _ bytes: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<bytes { v = v << 8 | UInt64(b[offset + i]) }
        return v
    }

    static func readLE(_ b: [UInt8], _ offset: Int, _ bytes: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in stride(from: bytes - 1, through: 0, by: -1) { v = v << 8 | UInt64(b[offset + i]) }
        return v
    }
}
