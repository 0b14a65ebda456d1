/// Small named records kept in the disk tier's database next to the blocks, with the same
/// durability (WAL; group-committed by the store). The engine keeps each session's token
/// history here, so a restart finds sessions and their blocks in one place.
extension DiskTier {
    /// Record key: "M", the model fingerprint (8 bytes, big-endian), then the name's UTF-8.
    private func metadataKey(model: ModelFingerprint, name: String) -> [UInt8] {
        var key: [UInt8] = [0x4D]
        DiskRecordFormat.appendBE(&key, model.value, bytes: 8)
        key += Array(name.utf8)
        return key
    }

    /// Stores (replaces) a record. The value carries a CRC-32C that `metadata(model:name:)` checks.
    public func putMetadata(model: ModelFingerprint, name: String, value: [UInt8], sync: Bool = false) throws(DiskTierError) {
        var stored: [UInt8] = []
        DiskRecordFormat.appendLE(&stored, UInt64(Checksum.crc32c(value)), bytes: 4)
        stored += value
        let key = metadataKey(model: model, name: name)
        try withDatabase(writing: true) { db throws(DiskTierError) in try db.put(key: key, value: stored, sync: sync) }
    }

    /// The record, or nil when absent or damaged (a damaged record is deleted).
    public func metadata(model: ModelFingerprint, name: String) -> [UInt8]? {
        let key = metadataKey(model: model, name: name)
        let raw: [UInt8]?? = try? withDatabase { db throws(DiskTierError) in try db.get(key: key) }
        guard let stored = raw ?? nil, stored.count >= 4 else { return nil }
        let value = Array(stored[4...])
        guard UInt32(DiskRecordFormat.readLE(stored, 0, 4)) == Checksum.crc32c(value) else {
            try? deleteMetadata(model: model, name: name)
            return nil
        }
        return value
    }

    public func deleteMetadata(model: ModelFingerprint, name: String) throws(DiskTierError) {
        let key = metadataKey(model: model, name: name)
        try deleteRecord(key: key)
    }

    /// Names of every record of `model` starting with `prefix`.
    public func metadataNames(model: ModelFingerprint, prefix: String = "") -> [String] {
        let start = metadataKey(model: model, name: prefix)
        let skip = metadataKey(model: model, name: "").count
        var names: [String] = []
        try? withDatabase { db throws(DiskTierError) in
            try db.forEach(prefix: start) { key, _ in
                names.append(String(decoding: key[skip...], as: UTF8.self))
                return true
            }
        }
        return names
    }
}
