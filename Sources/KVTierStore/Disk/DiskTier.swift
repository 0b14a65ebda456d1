import Dispatch
import Foundation

/// The disk tier: KV blocks in RocksDB in a state directory, LZ4-compressed (after a byte-shuffle)
/// by us, with RocksDB's own compression off, and a capacity limit on the stored bytes.
///
/// **Threads.** The private serial queue "kvtier.disk" owns the database handle and all mutable
/// state (the in-memory index, byte accounting, counters); nothing touches them off that queue.
/// The one exception is the WAL fsync of `flush()`, which borrows the handle off the queue (so
/// that loads do not wait behind it) and which `close()` waits for.
/// The synchronous methods hop onto it with `queue.sync` (or run inline when called from the
/// queue itself, e.g. from a completion handler, so that re-entrant calls do not deadlock);
/// `putAsync` and `getAsync` run there and call back there. Compression (in `put`) and
/// decompression plus checksum verification (in `get`) run on the caller's thread, outside the
/// queue, so several callers can encode and decode in parallel while the queue does only I/O and
/// bookkeeping.
///
/// **Index.** The index (key → stored and raw size) is rebuilt at open by iterating the database's
/// own index records, which are written and deleted in the same atomic write batch as the block
/// records (see `DiskRecordFormat`), so the two cannot disagree, and the start-up scan reads a few
/// bytes per block instead of every value.
///
/// **Capacity.** `capacityBytes` limits the stored bytes (header + LZ4 data of every block). A put
/// that would exceed it throws `.full`; choosing victims is the store's policy, which then calls
/// `delete`. The tier drops data on its own only when a block is found corrupt.
///
/// **Durability.** The write-ahead log is always on, and RocksDB recovers it to the last intact
/// record (point-in-time recovery). A put returns after its records are in the WAL:
/// * `sync: true` fsyncs the WAL before returning: the block survives a process kill and a power
///   loss (or kernel crash).
/// * `sync: false` leaves the WAL write in the OS page cache: the block survives a process kill
///   (`kill -9`, crash of kvtierd), but a power loss may lose the puts since the last sync. What
///   is recovered is always a consistent prefix of the writes, and a torn tail is discarded, never
///   returned.
/// * `flush()` fsyncs the WAL, making every earlier put power-loss safe.
///
/// The store should acknowledge "saved to disk" when a `sync: false` put returns, and call
/// `flush()` from a timer (group commit; e.g. every 200 ms and at shutdown). The issue requires
/// that every acknowledged save survive a process kill, which an unsynced WAL write does (the
/// kill -9 test checks it). A `sync: true` put costs about 1 ms more per 1 MB block on the test
/// VM (about twice RocksDB's own write time) and, worse, holds the serial disk queue during the
/// fsync, so layer loads queued behind a save wait for the device; `flush()` syncs off the
/// queue. After a power loss, at most the saves since the last flush are gone, and a cache
/// recomputes them. Measured figures: `docs/operations.md`, "Disk tier durability".
///
/// **Health.** When RocksDB cannot be used the tier is *degraded* (`health`, `DiskTierHealth`)
/// instead of failing its callers: puts throw `.unavailable` (counted in `writeErrors`), gets
/// read what the open database still serves or miss, deletes take effect in the index at once
/// and are written when the database is back (`pendingDeletes`), so a block that was replaced or
/// dropped meanwhile can never come back. A write that fails at run time (no space, I/O error;
/// RocksDB, with `paranoid_checks`, then refuses every later write) degrades the tier with
/// reads still going; an open that fails (locked, read-only, damaged beyond quarantine) degrades
/// it without reads when `recovery.degradeOnOpenFailure`, and throws otherwise. A timer on the
/// queue retries every `recovery.retryIntervalSeconds`: it probes the directory with a small
/// write, then closes and reopens RocksDB (the 7.8 C API has no `Resume`), applies the pending
/// deletes and rebuilds the index. A database RocksDB calls corrupt at open is moved into
/// `<directory>/quarantine-<UTC time>/` when `recovery.quarantineDamaged`, and the tier starts
/// empty with a `notice` saying so.
public final class DiskTier: @unchecked Sendable {
    /// The state directory.
    public let directory: String
    /// Limit on stored (compressed) bytes.
    public let capacityBytes: Int
    /// Whether new blocks are byte-shuffled before LZ4 (every block records its own setting).
    public let shuffle: Bool
    /// What to do when RocksDB cannot be used.
    public let recovery: DiskTierRecovery

    /// Owns `database`, `index`, `sessionBlocks`, `counters`, `nextGeneration` and the health
    /// state (`isClosed`, `healthState`, `pendingDeletes`, `pendingSessionDeletes`, `retryTimer`,
    /// `healthObserver`).
    private let queue = DispatchQueue(label: "kvtier.disk")
    private let queueKey = DispatchSpecificKey<UInt8>()
    /// `flush()` calls running off the queue; `close()` waits for them before closing RocksDB.
    private let offQueueWork = DispatchGroup()
    /// Serializes every RocksDB write (on the queue) with the WAL sync of `flush()` (off it), and
    /// guards `walFailed`. librocksdb 7.8 (Debian's build keeps assertions) aborts the process
    /// when the WAL is synced after a write to it failed (`WritableFileWriter::
    /// AssertFalseAndGetStatusForPrevError`), so a sync must never start after a failed write
    /// that the tier has not seen yet. Reads do not take it; a put waits at most for one sync.
    private let walGate = NSLock()
    /// A write or sync on the open handle failed: no more syncs on it (guarded by `walGate`;
    /// reset when the database is reopened).
    private var walFailed = false

    // State below: only on `queue` (or in `init`, before `self` is shared).
    private var database: RocksDatabase?
    private var index: [BlockKey: Entry] = [:]
    private var sessionBlocks: [SessionRef: Set<BlockKey>] = [:]
    private var counters: DiskTierStats
    private var nextGeneration: UInt64 = 0
    /// Set by `close()`; `database` is nil then, as it is while the tier is degraded unreadable.
    private var isClosed = false
    private var healthState = DiskTierHealth()
    /// Blocks deleted while RocksDB did not take writes: already gone from the index, written as
    /// deletions before the index is rebuilt at the next open, so they cannot come back.
    private var pendingDeletes: Set<BlockKey> = []
    private var pendingSessionDeletes: Set<SessionRef> = []
    /// Raw keys of other records (session metadata) deleted while degraded.
    private var pendingRecordDeletes: Set<[UInt8]> = []
    /// Runs `retryOnQueue` on `queue` while the tier is degraded.
    private var retryTimer: DispatchSourceTimer?
    /// Told (on `queue`) about every change of `healthState.state`.
    private var healthObserver: (@Sendable (DiskTierHealth) -> Void)?

    /// One indexed block: its sizes and a generation number that changes on every put, so that a
    /// block read, found corrupt off the queue, is deleted only if it was not replaced meanwhile.
    private struct Entry {
        var storedBytes: Int
        var rawBytes: Int
        var generation: UInt64
    }

    private struct SessionRef: Hashable {
        var model: ModelFingerprint
        var session: String
    }

    /// Opens (or creates) the disk tier in `directory` and rebuilds the index from the database.
    ///
    /// Blocks already stored beyond `capacityBytes` (after a restart with a smaller capacity) stay;
    /// puts fail with `.full` until the store has deleted enough.
    ///
    /// Throws only when the database cannot be opened and `recovery.degradeOnOpenFailure` is
    /// false; otherwise the tier starts degraded (see `health`).
    public init(directory: String, capacityBytes: Int, shuffle: Bool = true, recovery: DiskTierRecovery = .strict) throws(DiskTierError) {
        self.directory = directory
        self.capacityBytes = max(0, capacityBytes)
        self.shuffle = shuffle
        self.recovery = recovery
        counters = DiskTierStats(capacityBytes: max(0, capacityBytes))
        queue.setSpecific(key: queueKey, value: 1)
        do {
            try openOnQueue()
        } catch {
            guard recovery.degradeOnOpenFailure else { throw error }
            degradeOnQueue(error, readable: false)
        }
    }

    deinit {
        // Nothing else references the tier now, so its queue-owned timer may be touched here.
        retryTimer?.cancel()
    }

    // MARK: - Writing

    /// Stores `block`, replacing any block with the same key. With `sync`, the WAL is fsynced
    /// before this returns (power-loss safe); without, the block survives a process kill.
    /// Throws `.full` when the stored bytes would exceed the capacity, `.invalidBlock` for a
    /// malformed block.
    public func put(_ block: KVBlock, sync: Bool) throws(DiskTierError) {
        let record = try encode(block)
        try onQueue { () throws(DiskTierError) in try self.storeOnQueue(record, sync: sync) }
    }

    /// `put` on the disk queue (encoding included); `completion` runs on the disk queue and may
    /// call this tier's synchronous methods.
    public func putAsync(_ block: KVBlock, sync: Bool, completion: @escaping @Sendable (Result<Void, DiskTierError>) -> Void) {
        queue.async {
            completion(Result { () throws(DiskTierError) in
                try self.storeOnQueue(try self.encode(block), sync: sync)
            })
        }
    }

    /// Deletes the block under `key`; returns whether there was one.
    @discardableResult
    public func delete(_ key: BlockKey, sync: Bool = false) throws(DiskTierError) -> Bool {
        try onQueue { () throws(DiskTierError) -> Bool in
            guard !self.isClosed else { throw .closed }
            let indexed = self.index[key] != nil
            if self.healthState.isHealthy, let db = self.database {
                guard indexed else { return false }
                do throws(DiskTierError) {
                    try self.gatedWrite { () throws(DiskTierError) in try db.write(Self.deletions(key), sync: sync) }
                    self.forget(key)
                    return true
                } catch {
                    try self.writeFailedOnQueue(error)
                }
            }
            self.forget(key)
            self.pendingDeletes.insert(key)
            return indexed
        }
    }

    /// Deletes every block of one session of `model`; returns how many there were.
    @discardableResult
    public func deleteSession(model: ModelFingerprint, session: String, sync: Bool = false) throws(DiskTierError) -> Int {
        try onQueue { () throws(DiskTierError) -> Int in
            guard !self.isClosed else { throw .closed }
            let ref = SessionRef(model: model, session: session)
            let keys = self.sessionBlocks[ref] ?? []
            if self.healthState.isHealthy, let db = self.database {
                guard !keys.isEmpty else { return 0 }
                do throws(DiskTierError) {
                    try self.gatedWrite { () throws(DiskTierError) in try db.write(keys.flatMap(Self.deletions), sync: sync) }
                    for key in keys { self.forget(key) }
                    return keys.count
                } catch {
                    try self.writeFailedOnQueue(error)
                }
            }
            for key in keys { self.forget(key) }
            self.pendingSessionDeletes.insert(ref)
            return keys.count
        }
    }

    /// Fsyncs the WAL: every put that returned before this call survives a power loss.
    ///
    /// The fsync runs on the caller's thread, not on the disk queue, so puts and gets go on while
    /// it waits for the device (RocksDB allows a WAL sync concurrent with writes); the store calls
    /// this from its own timer for group commit.
    public func flush() throws(DiskTierError) {
        let db: Result<RocksDatabase, DiskTierError> = onQueueRead {
            if self.isClosed { return .failure(.closed) }
            guard let db = self.database else {
                return .failure(.unavailable(directory: self.directory, cause: self.healthState.reason ?? "not open"))
            }
            self.offQueueWork.enter()
            return .success(db)
        }
        let open = try db.get()
        defer { offQueueWork.leave() }
        do throws(DiskTierError) {
            try syncWAL(open)
        } catch {
            if Self.degrades(error) { onQueueRead { self.degradeOnQueue(error, readable: true) } }
            throw error
        }
    }

    /// Fsyncs the WAL and closes the database (RocksDB flushes its memtables on close), after
    /// any `flush()` in progress has finished. Later calls throw `.closed` (reads miss). The
    /// database is closed even when the final sync fails; the error then says so.
    public func close() throws(DiskTierError) {
        let db: RocksDatabase? = onQueueRead {
            defer { self.database = nil }
            self.isClosed = true
            self.retryTimer?.cancel()
            self.retryTimer = nil
            return self.database
        }
        guard let db else { return }
        offQueueWork.wait()
        defer { db.close() }
        try syncWAL(db)
    }

    // MARK: - Reading

    /// Reads the block under `key`: `.hit` with a verified block, `.miss`, or `.corrupt` (the
    /// damaged block has been deleted and counted). Blocks are keyed by model fingerprint, so a
    /// block of another model is never found; the header's fingerprint is checked as well.
    public func get(_ key: BlockKey) -> DiskReadResult {
        guard let read = onQueueRead({ self.readOnQueue(key) }) else { return .miss }
        switch DiskRecordFormat.decodeValue(read.bytes, for: key) {
        case .success(let block):
            onQueueRead {
                self.counters.hits += 1
                self.counters.rawBytesRead += block.payload.count
            }
            return .hit(block)
        case .failure(let why):
            onQueueRead { self.dropCorruptOnQueue(key, generation: read.generation, reason: why.description) }
            return .corrupt(reason: why.description)
        }
    }

    /// `get` on the disk queue (decoding included); `completion` runs on the disk queue and may
    /// call this tier's synchronous methods.
    public func getAsync(_ key: BlockKey, completion: @escaping @Sendable (DiskReadResult) -> Void) {
        queue.async {
            guard let read = self.readOnQueue(key) else { return completion(.miss) }
            switch DiskRecordFormat.decodeValue(read.bytes, for: key) {
            case .success(let block):
                self.counters.hits += 1
                self.counters.rawBytesRead += block.payload.count
                completion(.hit(block))
            case .failure(let why):
                self.dropCorruptOnQueue(key, generation: read.generation, reason: why.description)
                completion(.corrupt(reason: why.description))
            }
        }
    }

    /// Whether a block is stored under `key` (by the index; reading it may still find it corrupt).
    public func contains(_ key: BlockKey) -> Bool {
        onQueueRead { self.index[key] != nil }
    }

    /// The stored blocks of one session, ordered by layer, then start, then count.
    public func keys(model: ModelFingerprint, session: String) -> [BlockKey] {
        onQueueRead { Array(self.sessionBlocks[SessionRef(model: model, session: session)] ?? []) }
            .sorted { ($0.layer, $0.start, $0.count) < ($1.layer, $1.start, $1.count) }
    }

    /// Sessions of `model` with at least one stored block, sorted.
    public func sessions(model: ModelFingerprint) -> [String] {
        onQueueRead { self.sessionBlocks.keys.filter { $0.model == model }.map(\.session) }.sorted()
    }

    /// Every stored block's key (all models), sorted.
    public func allKeys() -> [BlockKey] {
        onQueueRead { Array(self.index.keys) }.sorted()
    }

    /// Stored (compressed) bytes of the block under `key`, if there is one.
    public func storedBytes(of key: BlockKey) -> Int? {
        onQueueRead { self.index[key]?.storedBytes }
    }

    /// A snapshot of the counters, with the health state.
    public var stats: DiskTierStats {
        onQueueRead {
            var c = self.counters
            c.health = self.healthState
            return c
        }
    }

    /// Whether the tier is healthy or degraded, why, and what to do.
    public var health: DiskTierHealth {
        onQueueRead { self.healthState }
    }

    /// Whether RocksDB is open and takes writes.
    public var isHealthy: Bool {
        onQueueRead { self.healthState.isHealthy }
    }

    /// `body` is called on the disk queue with the new health whenever the tier becomes degraded
    /// or healthy again (once per change, not once per failed write). It must not block; it may
    /// read this tier's properties.
    public func onHealthChange(_ body: @escaping @Sendable (DiskTierHealth) -> Void) {
        onQueueRead { self.healthObserver = body }
    }

    // MARK: - Compression measurement

    /// Compression ratios (raw bytes / compressed bytes, over all payloads together) of
    /// byte-shuffled LZ4 and of plain LZ4, for choosing the `shuffle` setting on real KV data.
    public static func measureCompression(payloads: [[UInt8]]) -> (shuffled: Double, plain: Double) {
        var raw = 0
        var shuffled = 0
        var plain = 0
        for p in payloads where !p.isEmpty {
            raw += p.count
            shuffled += p.count % 2 == 0 ? ShuffledLZ4Codec.compress(p, shuffle: true).count : p.count
            plain += ShuffledLZ4Codec.compress(p, shuffle: false).count
        }
        guard raw > 0 else { return (1, 1) }
        return (Double(raw) / Double(max(shuffled, 1)), Double(raw) / Double(max(plain, 1)))
    }

    // MARK: - On the queue

    /// An encoded block, ready to be written.
    private struct Record {
        var key: BlockKey
        var blockKey: [UInt8]
        var value: [UInt8]
        var rawBytes: Int
    }

    /// Checks and encodes a block (pure; runs on any thread).
    private func encode(_ block: KVBlock) throws(DiskTierError) -> Record {
        if let why = DiskRecordFormat.unrepresentable(block.key) { throw .invalidBlock(why) }
        guard block.rowWidth > 0, block.isWellFormed else {
            throw .invalidBlock("payload is \(block.payload.count) bytes, expected 2 x \(block.key.count) tokens x \(block.rowWidth) x \(block.elementType.byteWidth)")
        }
        guard block.payload.count < 1 << 30 else { throw .invalidBlock("payload of \(block.payload.count) bytes exceeds 1 GiB") }
        guard Checksum.crc32c(block.payload) == block.checksum else {
            throw .invalidBlock("checksum does not match the payload (damaged in memory before the save)")
        }
        return Record(key: block.key, blockKey: DiskRecordFormat.encodeKey(block.key, prefix: DiskRecordFormat.blockPrefix),
                      value: DiskRecordFormat.encodeValue(block, shuffle: shuffle), rawBytes: block.payload.count)
    }

    private func storeOnQueue(_ record: Record, sync: Bool) throws(DiskTierError) {
        guard !isClosed else { throw .closed }
        guard let db = database, healthState.isHealthy else {
            healthState.writeErrors += 1
            throw .unavailable(directory: directory, cause: healthState.reason ?? "not open")
        }
        let previous = index[record.key]?.storedBytes ?? 0
        let after = counters.storedBytes - previous + record.value.count
        guard after <= capacityBytes else {
            throw .full(requestedBytes: record.value.count, storedBytes: counters.storedBytes, capacityBytes: capacityBytes)
        }
        let entry = DiskRecordFormat.IndexEntry(storedBytes: record.value.count, rawBytes: record.rawBytes)
        do {
            try gatedWrite { () throws(DiskTierError) in
                try db.write([
                    .put(key: record.blockKey, value: record.value),
                    .put(key: DiskRecordFormat.encodeKey(record.key, prefix: DiskRecordFormat.indexPrefix),
                         value: DiskRecordFormat.encodeIndexValue(entry)),
                ], sync: sync)
            }
        } catch {
            try writeFailedOnQueue(error)
        }
        forget(record.key)
        remember(record.key, entry)
        counters.bytesWritten += record.value.count
        counters.rawBytesWritten += record.rawBytes
    }

    /// A block record's value as read, with the generation of the index entry it belongs to.
    private struct StoredValue {
        var bytes: [UInt8]
        var generation: UInt64
    }

    /// The stored value and its generation, or nil (counted as a miss) when there is none or it
    /// cannot be read.
    private func readOnQueue(_ key: BlockKey) -> StoredValue? {
        guard let db = database, let entry = index[key] else {
            counters.misses += 1
            return nil
        }
        let value: [UInt8]?
        do {
            value = try db.get(key: DiskRecordFormat.encodeKey(key, prefix: DiskRecordFormat.blockPrefix))
        } catch {
            if case .damaged = error {
                dropCorruptOnQueue(key, generation: entry.generation, reason: error.description)
            } else {
                counters.readErrors += 1
                counters.misses += 1
            }
            return nil
        }
        guard let value else {
            // Indexed but absent: the index record outlived its block (cannot happen with atomic
            // batches); treat it as a damaged block.
            dropCorruptOnQueue(key, generation: entry.generation, reason: "block record missing")
            return nil
        }
        counters.bytesRead += value.count
        return StoredValue(bytes: value, generation: entry.generation)
    }

    /// Deletes a block found corrupt (unless it was replaced since it was read) and counts it.
    private func dropCorruptOnQueue(_ key: BlockKey, generation: UInt64, reason: String) {
        counters.misses += 1
        counters.corruptBlocks += 1
        guard let entry = index[key], entry.generation == generation else { return }
        // A delete that cannot be written now is written at the next open.
        let deleted: Bool
        if healthState.isHealthy, let db = database {
            deleted = (try? gatedWrite { () throws(DiskTierError) in try db.write(Self.deletions(key), sync: false) }) != nil
        } else {
            deleted = false
        }
        if !deleted {
            pendingDeletes.insert(key)
        }
        forget(key)
    }

    private func remember(_ key: BlockKey, _ entry: DiskRecordFormat.IndexEntry) {
        nextGeneration += 1
        index[key] = Entry(storedBytes: entry.storedBytes, rawBytes: entry.rawBytes, generation: nextGeneration)
        sessionBlocks[SessionRef(model: key.model, session: key.session), default: []].insert(key)
        counters.storedBytes += entry.storedBytes
        counters.rawBytes += entry.rawBytes
        counters.blockCount += 1
    }

    private func forget(_ key: BlockKey) {
        guard let old = index.removeValue(forKey: key) else { return }
        let ref = SessionRef(model: key.model, session: key.session)
        sessionBlocks[ref]?.remove(key)
        if sessionBlocks[ref]?.isEmpty == true { sessionBlocks[ref] = nil }
        counters.storedBytes -= old.storedBytes
        counters.rawBytes -= old.rawBytes
        counters.blockCount -= 1
    }

    private static func deletions(_ key: BlockKey) -> [RocksDatabase.BatchOperation] {
        [.delete(key: DiskRecordFormat.encodeKey(key, prefix: DiskRecordFormat.blockPrefix)),
         .delete(key: DiskRecordFormat.encodeKey(key, prefix: DiskRecordFormat.indexPrefix))]
    }

    /// Rebuilds the index from the index records; malformed ones are deleted with their blocks
    /// and counted as corrupt.
    private func rebuildIndex(_ db: RocksDatabase) throws(DiskTierError) {
        index = [:]
        sessionBlocks = [:]
        counters.storedBytes = 0
        counters.rawBytes = 0
        counters.blockCount = 0
        var damaged: [[UInt8]] = []
        var entries: [(BlockKey, DiskRecordFormat.IndexEntry)] = []
        try db.forEach(prefix: [DiskRecordFormat.indexPrefix]) { rawKey, rawValue in
            if let key = DiskRecordFormat.decodeKey(rawKey, prefix: DiskRecordFormat.indexPrefix),
               let entry = DiskRecordFormat.decodeIndexValue(rawValue) {
                entries.append((key, entry))
            } else {
                damaged.append(rawKey)
            }
            return true
        }
        for (key, entry) in entries { remember(key, entry) }
        if !damaged.isEmpty {
            let ops = damaged.flatMap { k -> [RocksDatabase.BatchOperation] in
                [.delete(key: k), .delete(key: [DiskRecordFormat.blockPrefix] + k.dropFirst())]
            }
            try db.write(ops, sync: false)
            counters.corruptBlocks += damaged.count
        }
    }

    // MARK: - Health (on the queue, or in `init` before `self` is shared)

    /// Opens RocksDB and rebuilds the index, moving a damaged database aside when `recovery` says
    /// so: damage RocksDB reports at open, or while the index is rebuilt (a corrupt SST block).
    /// Writes the deletions recorded while degraded. Leaves `database` set only on success.
    private func openOnQueue() throws(DiskTierError) {
        try Self.prepareDirectory(directory)
        do {
            try openAndIndex()
        } catch {
            guard case .damaged(_, let detail) = error, recovery.quarantineDamaged else { throw error }
            let moved = try quarantineOnQueue(detail: detail)
            // Whatever was pending referred to the database now moved aside.
            pendingDeletes = []
            pendingSessionDeletes = []
            pendingRecordDeletes = []
            healthState.notice = "RocksDB reported damage (\(detail)); its files were moved to \(moved) and the disk "
                + "tier started empty. Cached KV is recomputed as chats need it; delete it when you no longer need it for inspection"
            try openAndIndex()
        }
    }

    private func openAndIndex() throws(DiskTierError) {
        let db = try RocksDatabase(path: directory)
        do {
            if !pendingDeletes.isEmpty || !pendingRecordDeletes.isEmpty {
                try db.write(pendingDeletes.flatMap(Self.deletions) + pendingRecordDeletes.map { .delete(key: $0) }, sync: false)
            }
            try rebuildIndex(db)
            for ref in pendingSessionDeletes {
                let keys = sessionBlocks[ref] ?? []
                guard !keys.isEmpty else { continue }
                try db.write(keys.flatMap(Self.deletions), sync: false)
                for key in keys { forget(key) }
            }
        } catch {
            db.close()
            index = [:]
            sessionBlocks = [:]
            throw error
        }
        pendingDeletes = []
        pendingSessionDeletes = []
        pendingRecordDeletes = []
        walGate.lock()
        walFailed = false
        walGate.unlock()
        database = db
    }

    /// Runs a RocksDB write (on the queue) under `walGate`; refuses when an earlier write or sync
    /// on this handle failed, and records a failure.
    private func gatedWrite<T>(_ body: () throws(DiskTierError) -> T) throws(DiskTierError) -> T {
        walGate.lock()
        defer { walGate.unlock() }
        guard !walFailed else { throw .unavailable(directory: directory, cause: "an earlier write to the database failed") }
        do {
            return try body()
        } catch {
            if Self.degrades(error) { walFailed = true }
            throw error
        }
    }

    /// Fsyncs the WAL under `walGate`, unless a write or sync on this handle failed before.
    private func syncWAL(_ db: RocksDatabase) throws(DiskTierError) {
        walGate.lock()
        defer { walGate.unlock() }
        guard !walFailed else {
            throw .unavailable(directory: directory, cause: "an earlier write to the database failed; nothing to sync until it is reopened")
        }
        do {
            try db.flushWAL(sync: true)
        } catch {
            walFailed = true
            throw error
        }
    }

    /// Moves every entry of the state directory except earlier quarantines into a new
    /// `quarantine-<UTC time>` subdirectory; returns its path. The subdirectory stays inside the
    /// state directory because that is the one place the daemon may write (systemd's
    /// `StateDirectory=` and `ReadWritePaths=`); RocksDB ignores unknown subdirectories.
    private func quarantineOnQueue(detail: String) throws(DiskTierError) -> String {
        let fm = FileManager.default
        let stamp = DiskTierHealth.timestamp().replacingOccurrences(of: ":", with: "")
        var target = directory + "/quarantine-" + stamp
        var n = 1
        while fm.fileExists(atPath: target) {
            n += 1
            target = directory + "/quarantine-" + stamp + "-\(n)"
        }
        do {
            let entries = try fm.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix("quarantine-") }
            try fm.createDirectory(atPath: target, withIntermediateDirectories: false)
            for name in entries {
                try fm.moveItem(atPath: directory + "/" + name, toPath: target + "/" + name)
            }
        } catch {
            throw .damaged(directory: directory, detail: "\(detail); moving it aside to \(target) failed: \(error.localizedDescription)")
        }
        return target
    }

    /// Errors that mean RocksDB or the file system under it does not take writes now (as opposed
    /// to a refusal of this one block).
    private static func degrades(_ error: DiskTierError) -> Bool {
        switch error {
        case .io, .noSpace, .damaged, .directoryNotWritable, .locked: return true
        case .full, .invalidBlock, .closed, .unavailable: return false
        }
    }

    /// A write failed: counts it, degrades the tier if the failure is the database's, and
    /// rethrows.
    private func writeFailedOnQueue(_ error: DiskTierError) throws(DiskTierError) -> Never {
        if Self.degrades(error) {
            healthState.writeErrors += 1
            degradeOnQueue(error, readable: database != nil)
        }
        throw error
    }

    /// Marks the tier degraded (once: later failures only refresh the reason) and starts the
    /// retry timer.
    private func degradeOnQueue(_ error: DiskTierError, readable: Bool) {
        let wasHealthy = healthState.isHealthy
        healthState.state = .degraded
        healthState.reason = error.description
        healthState.readable = readable && database != nil
        let retry = recovery.retryIntervalSeconds > 0
            ? "kvtierd keeps serving from HBM and DRAM, recomputes what is not there, and retries the disk every "
                + "\(Self.seconds(recovery.retryIntervalSeconds)); "
            : "kvtierd keeps serving from HBM and DRAM and recomputes what is not there; restart it once fixed; "
        healthState.action = retry + "fix the cause above (docs/operations.md, \"When the disk tier is degraded\")"
        if wasHealthy {
            healthState.since = DiskTierHealth.timestamp()
            healthObserver?(healthState)
        }
        startRetryTimerOnQueue()
    }

    private func startRetryTimerOnQueue() {
        guard retryTimer == nil, recovery.retryIntervalSeconds > 0, !isClosed else { return }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        let interval = DispatchTimeInterval.milliseconds(max(1, Int(recovery.retryIntervalSeconds * 1000)))
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { [weak self] in self?.retryOnQueue() }
        timer.resume()
        retryTimer = timer
    }

    /// One attempt to bring a degraded tier back: a database still open read-only is kept until
    /// a probe write in the directory succeeds (so reads go on while the disk is still full);
    /// then RocksDB is closed and reopened.
    private func retryOnQueue() {
        guard !isClosed, !healthState.isHealthy else {
            retryTimer?.cancel()
            retryTimer = nil
            return
        }
        if database != nil, Self.probeWrite(directory) != nil { return }
        if let db = database {
            database = nil
            offQueueWork.wait()  // a flush() running off the queue still holds the handle
            db.close()
        }
        do {
            try openOnQueue()
        } catch {
            healthState.reason = error.description
            healthState.readable = false
            return
        }
        retryTimer?.cancel()
        retryTimer = nil
        healthState.state = .healthy
        healthState.reason = nil
        healthState.action = nil
        healthState.since = nil
        healthState.readable = true
        healthObserver?(healthState)
    }

    /// Writes and removes a 256 KiB file in `directory`; nil when that worked, else why not.
    private static func probeWrite(_ directory: String) -> String? {
        let path = directory + "/.kvtier-write-probe"
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            try Data(count: 256 << 10).write(to: URL(fileURLWithPath: path))
            return nil
        } catch {
            return error.localizedDescription
        }
    }

    private static func seconds(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
    }

    // MARK: - Queue helpers

    private func onQueue<T>(_ body: () throws(DiskTierError) -> T) throws(DiskTierError) -> T {
        if DispatchQueue.getSpecific(key: queueKey) != nil { return try body() }
        let result: Result<T, DiskTierError> = queue.sync { Result { () throws(DiskTierError) -> T in try body() } }
        return try result.get()
    }

    /// Deletes a record other than a block (session metadata). While the tier is degraded the
    /// deletion is kept and written when the database is reopened, as for blocks.
    func deleteRecord(key: [UInt8]) throws(DiskTierError) {
        try onQueue { () throws(DiskTierError) in
            guard !self.isClosed else { throw .closed }
            if self.healthState.isHealthy, let db = self.database {
                do throws(DiskTierError) {
                    try self.gatedWrite { () throws(DiskTierError) in try db.delete(key: key, sync: false) }
                    return
                } catch {
                    try self.writeFailedOnQueue(error)
                }
            }
            self.pendingRecordDeletes.insert(key)
        }
    }

    /// Runs `body` with the open database on the disk queue (for records other than blocks).
    /// With `writing`, a degraded tier refuses at once and a failure degrades it, as for blocks.
    func withDatabase<T>(writing: Bool = false, _ body: (RocksDatabase) throws(DiskTierError) -> T) throws(DiskTierError) -> T {
        try onQueue { () throws(DiskTierError) -> T in
            guard !self.isClosed else { throw DiskTierError.closed }
            guard let db = self.database, !writing || self.healthState.isHealthy else {
                if writing { self.healthState.writeErrors += 1 }
                throw DiskTierError.unavailable(directory: self.directory, cause: self.healthState.reason ?? "not open")
            }
            guard writing else { return try body(db) }
            do throws(DiskTierError) {
                return try self.gatedWrite { () throws(DiskTierError) -> T in try body(db) }
            } catch {
                try self.writeFailedOnQueue(error)
            }
        }
    }

    private func onQueueRead<T>(_ body: () -> T) -> T {
        if DispatchQueue.getSpecific(key: queueKey) != nil { return body() }
        return queue.sync { body() }
    }

    /// Creates the state directory (with parents) and checks that it is a writable directory,
    /// so that the common mistakes get a precise message before RocksDB is involved. The
    /// directory is private: created 0700, and tightened to 0700 when it exists, is this user's
    /// and lets others in (it holds every conversation's tokens, in the WAL among others).
    private static func prepareDirectory(_ path: String) throws(DiskTierError) {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw .directoryNotWritable(directory: path, detail: "it is a file, not a directory") }
        } else {
            do {
                try fm.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw .directoryNotWritable(directory: path, detail: explainCreateFailure(path, error))
            }
        }
        var st = stat()
        if stat(path, &st) == 0, st.st_uid == geteuid(), st.st_mode & 0o077 != 0 {
            _ = chmod(path, st.st_mode & 0o700)
        }
        guard fm.isWritableFile(atPath: path) else {
            throw .directoryNotWritable(directory: path, detail: "this user may not write in it")
        }
    }

    /// Names the ancestor that prevents creating `path`.
    private static func explainCreateFailure(_ path: String, _ error: any Error) -> String {
        let fm = FileManager.default
        var ancestor = URL(fileURLWithPath: path).deletingLastPathComponent()
        while ancestor.path != "/" && !fm.fileExists(atPath: ancestor.path) {
            ancestor = ancestor.deletingLastPathComponent()
        }
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: ancestor.path, isDirectory: &isDirectory), !isDirectory.boolValue {
            return "\(ancestor.path) is a file, not a directory"
        }
        if !fm.isWritableFile(atPath: ancestor.path) {
            return "no permission to create directories in \(ancestor.path)"
        }
        return "cannot create it: \(error.localizedDescription)"
    }
}
