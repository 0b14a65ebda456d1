import Foundation

/// The host-memory tier: a capacity-bounded pool of `KVBlock`s keyed by `BlockKey`.
///
/// The tier never exceeds its capacity and never evicts on its own: when a block does not fit,
/// `insert` reports `.needsRoom(bytes:)` and stores nothing. The store then asks its
/// `EvictionPolicy` for victim sessions (sizing them with `bytes(session:)`), demotes their
/// blocks to disk (`get(_:recordLookup: false)`, write, then `remove(_:departure: .demoted)`)
/// and retries the insert. Another thread may take the freed room first, so the caller loops.
///
/// Blocks are stored as given or, with `compress`, byte-shuffled and LZ4-compressed (kept
/// only where that saves space); a compressed block's CRC-32C is verified on every read, and
/// a block that fails is counted, dropped and reported as a miss, never returned.
/// Capacity is accounted in stored bytes (compressed size where compressed).
///
/// Thread-safety: all state is guarded by `lock` (an `NSLock`); every method may be called
/// from any thread. Compression and decompression run outside the lock.
public final class DRAMTier: @unchecked Sendable {
    // @unchecked: the mutable state below is only touched while holding `lock`.

    /// Default capacity: 4 GiB.
    public static let defaultCapacityBytes = 4 << 30

    public struct Configuration: Sendable, Equatable {
        /// Most stored bytes the tier holds.
        public var capacityBytes: Int
        /// Keep blocks byte-shuffled and LZ4-compressed (verified on every read).
        public var compress: Bool

        public init(capacityBytes: Int = DRAMTier.defaultCapacityBytes, compress: Bool = false) {
            self.capacityBytes = max(capacityBytes, 0)
            self.compress = compress
        }
    }

    /// Outcome of `insert`.
    public enum InsertResult: Sendable, Equatable, CustomStringConvertible {
        /// The block is in the tier (replacing any block with the same key).
        case stored
        /// Nothing was stored: at least `bytes` more stored bytes must be freed first.
        case needsRoom(bytes: Int)
        /// Nothing was stored and nothing can be freed to make room: the block alone
        /// (`bytes` stored bytes) exceeds the whole capacity.
        case tooLarge(bytes: Int, capacity: Int)

        public var description: String {
            switch self {
            case .stored:
                return "stored"
            case .needsRoom(let bytes):
                return "DRAM tier is full: free \(bytes) bytes (demote sessions to disk) and retry"
            case .tooLarge(let bytes, let capacity):
                return "block of \(bytes) bytes exceeds the DRAM tier's whole capacity of \(capacity) bytes"
            }
        }
    }

    /// Where an inserted block came from (for the statistics).
    public enum Arrival: Sendable, Equatable {
        /// Saved from HBM or by a client.
        case saved
        /// Brought up from disk.
        case promoted
    }

    /// Why a block leaves (for the statistics).
    public enum Departure: Sendable, Equatable {
        /// Evicted after being written to disk.
        case demoted
        /// Evicted without a copy below (its disk copy already exists, e.g. written through).
        case dropped
        /// Deleted on request (session ended, replaced by the caller); not an eviction.
        case deleted
    }

    public let configuration: Configuration
    public var capacityBytes: Int { configuration.capacityBytes }

    /// A block as held.
    private enum Stored {
        case plain(KVBlock)
        /// Shuffled+LZ4 payload with what is needed to rebuild and verify the block.
        case compressed(
            key: BlockKey, elementType: KVElementType, rowWidth: Int, data: [UInt8], payloadBytes: Int,
            checksum: UInt32)

        var storedBytes: Int {
            switch self {
            case .plain(let b): return b.payload.count
            case .compressed(_, _, _, let data, _, _): return data.count
            }
        }

        var payloadBytes: Int {
            switch self {
            case .plain(let b): return b.payload.count
            case .compressed(_, _, _, _, let n, _): return n
            }
        }
    }

    private struct Entry {
        var stored: Stored
        /// Distinguishes this entry from a later one under the same key.
        var generation: UInt64
    }

    private let lock = NSLock()
    // All of the following are guarded by `lock`.
    private var entries: [BlockKey: Entry] = [:]
    private var keysBySession: [String: Set<BlockKey>] = [:]
    /// Recency tick of each session's last insert, read or touch.
    private var lastUse: [String: UInt64] = [:]
    private var clock: UInt64 = 0
    private var used = 0
    private var payloadTotal = 0
    private var counters = TierStats(tier: "dram")

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    // MARK: - Writing

    /// Stores `block` if it fits (replacing a block with the same key), else stores nothing and
    /// says how many bytes must be freed. Never exceeds the capacity, never evicts.
    public func insert(_ block: KVBlock, arrival: Arrival = .saved) -> InsertResult {
        let stored = prepare(block)
        let size = stored.storedBytes
        return lock.withLock {
            let replaced = entries[block.key]?.stored
            let newUsed = used - (replaced?.storedBytes ?? 0) + size
            if size > configuration.capacityBytes {
                return .tooLarge(bytes: size, capacity: configuration.capacityBytes)
            }
            if newUsed > configuration.capacityBytes {
                return .needsRoom(bytes: newUsed - configuration.capacityBytes)
            }
            clock += 1
            entries[block.key] = Entry(stored: stored, generation: clock)
            keysBySession[block.key.session, default: []].insert(block.key)
            lastUse[block.key.session] = clock
            used = newUsed
            payloadTotal += stored.payloadBytes - (replaced?.payloadBytes ?? 0)
            counters.bytesIn += block.payload.count
            if arrival == .promoted { counters.promotions += 1 }
            return .stored
        }
    }

    /// Removes a block; returns whether it was there.
    @discardableResult
    public func remove(_ key: BlockKey, departure: Departure = .deleted) -> Bool {
        lock.withLock { removeLocked(key, departure: departure) }
    }

    /// Removes every block of `session` (all models); returns how many there were.
    @discardableResult
    public func removeAll(session: String, departure: Departure = .deleted) -> Int {
        lock.withLock {
            let keys = keysBySession[session] ?? []
            for key in keys { removeLocked(key, departure: departure) }
            return keys.count
        }
    }

    // MARK: - Reading

    /// The block under `key`, or nil. With `recordLookup` (the default) the read counts as a
    /// hit or miss and makes the session recently used; the store passes false when it reads a
    /// victim to demote it. A compressed block is verified; one that fails its checksum is
    /// counted in `checksumFailures`, removed, and reported as a miss.
    public func get(_ key: BlockKey, recordLookup: Bool = true) -> KVBlock? {
        let found: Entry? = lock.withLock {
            guard let entry = entries[key] else {
                if recordLookup { counters.misses += 1 }
                return nil
            }
            if recordLookup {
                clock += 1
                lastUse[key.session] = clock
            }
            return entry
        }
        guard let entry = found else { return nil }
        let block = DRAMTier.materialize(entry.stored)
        lock.withLock {
            if let block {
                if recordLookup { counters.hits += 1 }
                counters.bytesOut += block.payload.count
            } else {
                counters.checksumFailures += 1
                if recordLookup { counters.misses += 1 }
                if entries[key]?.generation == entry.generation {
                    removeLocked(key, departure: .deleted)
                }
            }
        }
        return block
    }

    /// Whether a block is held under `key` (no statistics, no recency).
    public func contains(_ key: BlockKey) -> Bool {
        lock.withLock { entries[key] != nil }
    }

    /// Keys of `session`'s blocks (optionally only those of `model`), ordered by layer then start.
    public func keys(session: String, model: ModelFingerprint? = nil) -> [BlockKey] {
        let keys = lock.withLock { keysBySession[session] ?? [] }
        return keys.filter { model == nil || $0.model == model }.sorted()
    }

    /// Sessions with at least one block here, sorted by name.
    public var sessions: [String] {
        lock.withLock { Array(keysBySession.keys) }.sorted()
    }

    /// Sessions with blocks here, least recently used (inserted, read or touched) first.
    public var sessionsByRecency: [String] {
        lock.withLock { keysBySession.keys.map { ($0, lastUse[$0] ?? 0) } }
            .sorted { ($0.1, $0.0) < ($1.1, $1.0) }
            .map(\.0)
    }

    /// Stored bytes of `session`'s blocks: what demoting the session frees.
    public func bytes(session: String) -> Int {
        lock.withLock {
            (keysBySession[session] ?? []).reduce(0) { $0 + (entries[$1]?.stored.storedBytes ?? 0) }
        }
    }

    /// Stored bytes of the blocks among `keys` that DRAM holds: what evicting them frees.
    public func bytes(of keys: [BlockKey]) -> Int {
        lock.withLock { keys.reduce(0) { $0 + (entries[$1]?.stored.storedBytes ?? 0) } }
    }

    /// Marks the session of `key` as just used.
    public func touch(_ key: BlockKey) {
        touch(session: key.session)
    }

    /// Marks `session` as just used (if it has blocks here).
    public func touch(session: String) {
        lock.withLock {
            guard keysBySession[session] != nil else { return }
            clock += 1
            lastUse[session] = clock
        }
    }

    // MARK: - Size and statistics

    /// Stored bytes held now; never above `capacityBytes`.
    public var usedBytes: Int { lock.withLock { used } }
    /// Blocks held now.
    public var blockCount: Int { lock.withLock { entries.count } }

    /// A snapshot of this tier's statistics.
    public var stats: TierStats {
        lock.withLock {
            var s = counters
            s.capacityBytes = configuration.capacityBytes
            s.usedBytes = used
            s.blocks = entries.count
            if configuration.compress {
                s.compressionRatio = used == 0 ? 1 : Double(payloadTotal) / Double(used)
            }
            return s
        }
    }

    // MARK: - Test support

    /// Flips one bit of a compressed block's stored bytes, as memory corruption would; a
    /// negative `offset` counts from the end. Returns false if the block is absent or stored
    /// uncompressed. For tests only.
    func damageStoredBytes(of key: BlockKey, at offset: Int) -> Bool {
        lock.withLock {
            guard var entry = entries[key],
                  case .compressed(let k, let type, let width, var data, let n, let crc) = entry.stored,
                  !data.isEmpty
            else { return false }
            data[offset >= 0 ? offset % data.count : data.count - 1 - (-offset - 1) % data.count] ^= 0x10
            entry.stored = .compressed(
                key: k, elementType: type, rowWidth: width, data: data, payloadBytes: n, checksum: crc)
            entries[key] = entry
            return true
        }
    }

    // MARK: - Private

    /// Caller holds `lock`.
    @discardableResult
    private func removeLocked(_ key: BlockKey, departure: Departure) -> Bool {
        guard let entry = entries.removeValue(forKey: key) else { return false }
        used -= entry.stored.storedBytes
        payloadTotal -= entry.stored.payloadBytes
        keysBySession[key.session]?.remove(key)
        if keysBySession[key.session]?.isEmpty == true {
            keysBySession[key.session] = nil
            lastUse[key.session] = nil
        }
        switch departure {
        case .demoted:
            counters.evictions += 1
            counters.demotions += 1
        case .dropped:
            counters.evictions += 1
        case .deleted:
            break
        }
        return true
    }

    /// The form in which `block` will be held (compressing runs on the caller's thread).
    private func prepare(_ block: KVBlock) -> Stored {
        guard configuration.compress, !block.payload.isEmpty else { return .plain(block) }
        let data = ShuffledLZ4Codec.compress(block.payload, shuffle: block.elementType == .f16)
        guard !data.isEmpty, data.count < block.payload.count else { return .plain(block) }
        return .compressed(
            key: block.key, elementType: block.elementType, rowWidth: block.rowWidth,
            data: data, payloadBytes: block.payload.count, checksum: block.checksum)
    }

    /// The block held as `stored`, or nil if its compressed form no longer matches its checksum.
    private static func materialize(_ stored: Stored) -> KVBlock? {
        switch stored {
        case .plain(let block):
            return block
        case .compressed(let key, let type, let width, let data, let n, let crc):
            guard let payload = try? ShuffledLZ4Codec.decompress(data, originalCount: n, shuffle: type == .f16) else {
                return nil
            }
            return KVBlock(key: key, elementType: type, rowWidth: width, payload: payload, checksum: crc)
        }
    }
}
