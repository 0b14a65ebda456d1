import CRocksDB
import Foundation

/// A minimal wrapper over RocksDB's C API (`rocksdb/c.h`), and the unsafe fence of the disk
/// tier: this is the only file that makes raw RocksDB calls or touches their pointers. Everything
/// crossing the fence is copied into Swift arrays (`[UInt8]`), and every `char *err` is turned into
/// a `DiskTierError` and freed.
///
/// Ownership: a `RocksDatabase` belongs to one `DiskTier` and is used on that tier's serial I/O
/// queue ("kvtier.disk"), except `flushWAL`, which the tier also runs off the queue while the
/// queue goes on with reads and writes (RocksDB is thread-safe; the tier's `close()` waits for
/// such flushes before calling `close()` here). Tests open one directly while no tier has the
/// directory open. The `@unchecked Sendable` rests on that: the handles are destroyed exactly
/// once (in `close()` or `deinit`), never while another thread is inside a call.
final class RocksDatabase: @unchecked Sendable {
    /// One operation of an atomic write batch.
    enum BatchOperation {
        case put(key: [UInt8], value: [UInt8])
        case delete(key: [UInt8])
    }

    /// The state directory (for error messages).
    let path: String

    private var db: OpaquePointer?
    private let readOptions: OpaquePointer
    private let asyncWrite: OpaquePointer
    private let syncWrite: OpaquePointer

    /// Opens (creating if missing) the database in `path`.
    ///
    /// Settings: WAL on (never disabled on writes), point-in-time WAL recovery (a torn record at
    /// the WAL's tail after a crash is dropped, everything before it is replayed), RocksDB's own
    /// compression off (values arrive LZ4-compressed already), large values in blob files so that
    /// compaction moves only small keys and pointers instead of rewriting megabyte values.
    init(path: String) throws(DiskTierError) {
        self.path = path
        guard let options = rocksdb_options_create() else {
            throw .io(operation: "open", detail: "rocksdb_options_create failed")
        }
        defer { rocksdb_options_destroy(options) }
        rocksdb_options_set_create_if_missing(options, 1)
        rocksdb_options_set_compression(options, Int32(rocksdb_no_compression))
        rocksdb_options_set_bottommost_compression(options, Int32(rocksdb_no_compression))
        rocksdb_options_set_wal_recovery_mode(options, 2)  // kPointInTimeRecovery
        rocksdb_options_set_paranoid_checks(options, 1)
        rocksdb_options_set_enable_blob_files(options, 1)
        rocksdb_options_set_min_blob_size(options, 4096)
        rocksdb_options_set_blob_compression_type(options, Int32(rocksdb_no_compression))
        rocksdb_options_set_enable_blob_gc(options, 1)
        // The info LOG lives outside the state directory, and only errors go there: librocksdb
        // 7.8 as packaged by Debian is built with assertions, and a log line written after an
        // earlier one failed aborts the process (WritableFileWriter::
        // AssertFalseAndGetStatusForPrevError). On a full state directory that happens at once:
        // RocksDB's background recovery logs right after a write hits ENOSPC. Its errors reach us
        // as statuses anyway; the LOG is for post-mortems.
        rocksdb_options_set_db_log_dir(options, RocksDBInfoLog.directory)
        rocksdb_options_set_info_log_level(options, 3)  // ERROR
        // Capped at 1 MiB a file and rolled over, one old file kept. The size-capped logger
        // writes its options header (17 KB) into every file whatever the level, so a LOG is
        // removed at close when it holds nothing else (`RocksDBInfoLog.removeIfOnlyHeader`).
        rocksdb_options_set_max_log_file_size(options, RocksDBInfoLog.maxFileBytes)
        rocksdb_options_set_keep_log_file_num(options, 2)

        guard let ro = rocksdb_readoptions_create() else {
            throw .io(operation: "open", detail: "rocksdb_readoptions_create failed")
        }
        rocksdb_readoptions_set_verify_checksums(ro, 1)
        guard let wa = rocksdb_writeoptions_create() else {
            rocksdb_readoptions_destroy(ro)
            throw .io(operation: "open", detail: "rocksdb_writeoptions_create failed")
        }
        guard let ws = rocksdb_writeoptions_create() else {
            rocksdb_readoptions_destroy(ro)
            rocksdb_writeoptions_destroy(wa)
            throw .io(operation: "open", detail: "rocksdb_writeoptions_create failed")
        }
        rocksdb_writeoptions_set_sync(wa, 0)
        rocksdb_writeoptions_set_sync(ws, 1)
        readOptions = ro
        asyncWrite = wa
        syncWrite = ws

        var err: UnsafeMutablePointer<CChar>?
        let handle = rocksdb_open(options, path, &err)
        if let message = Self.take(&err) {
            if let handle { rocksdb_close(handle) }
            throw Self.classify(message, operation: "open", path: path)
        }
        guard let handle else {
            throw .io(operation: "open", detail: "rocksdb_open returned no handle and no error for \(path)")
        }
        db = handle
    }

    deinit {
        close()
        rocksdb_readoptions_destroy(readOptions)
        rocksdb_writeoptions_destroy(asyncWrite)
        rocksdb_writeoptions_destroy(syncWrite)
    }

    var isOpen: Bool { db != nil }

    /// Closes the database (idempotent). RocksDB flushes its memtables on close.
    func close() {
        if let db {
            rocksdb_close(db)
            self.db = nil
            RocksDBInfoLog.removeIfOnlyHeader(databaseAt: path)
        }
    }

    /// Stores `value` under `key`. With `sync`, the WAL is fsynced before this returns.
    func put(key: [UInt8], value: [UInt8], sync: Bool) throws(DiskTierError) {
        let db = try handle()
        var err: UnsafeMutablePointer<CChar>?
        key.withUnsafeBytes { k in
            value.withUnsafeBytes { v in
                rocksdb_put(
                    db, sync ? syncWrite : asyncWrite,
                    k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count,
                    v.baseAddress?.assumingMemoryBound(to: CChar.self), v.count, &err)
            }
        }
        if let message = Self.take(&err) { throw Self.classify(message, operation: "put", path: path) }
    }

    /// The value stored under `key` (copied out of RocksDB's malloc()ed buffer, which is freed),
    /// or nil if there is none.
    func get(key: [UInt8]) throws(DiskTierError) -> [UInt8]? {
        let db = try handle()
        var err: UnsafeMutablePointer<CChar>?
        var length = 0
        let raw = key.withUnsafeBytes { k in
            rocksdb_get(db, readOptions, k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count, &length, &err)
        }
        if let message = Self.take(&err) {
            if let raw { rocksdb_free(raw) }
            throw Self.classify(message, operation: "get", path: path)
        }
        guard let raw else { return nil }
        defer { rocksdb_free(raw) }
        return Self.copy(UnsafeRawPointer(raw), length)
    }

    /// Deletes `key` (no error if it is absent).
    func delete(key: [UInt8], sync: Bool) throws(DiskTierError) {
        let db = try handle()
        var err: UnsafeMutablePointer<CChar>?
        key.withUnsafeBytes { k in
            rocksdb_delete(
                db, sync ? syncWrite : asyncWrite, k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count, &err)
        }
        if let message = Self.take(&err) { throw Self.classify(message, operation: "delete", path: path) }
    }

    /// Applies `operations` atomically: after a crash either all of them are there or none.
    func write(_ operations: [BatchOperation], sync: Bool) throws(DiskTierError) {
        let db = try handle()
        guard !operations.isEmpty else { return }
        guard let batch = rocksdb_writebatch_create() else {
            throw .io(operation: "write", detail: "rocksdb_writebatch_create failed")
        }
        defer { rocksdb_writebatch_destroy(batch) }
        for op in operations {
            switch op {
            case .put(let key, let value):
                key.withUnsafeBytes { k in
                    value.withUnsafeBytes { v in
                        rocksdb_writebatch_put(
                            batch, k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count,
                            v.baseAddress?.assumingMemoryBound(to: CChar.self), v.count)
                    }
                }
            case .delete(let key):
                key.withUnsafeBytes { k in
                    rocksdb_writebatch_delete(batch, k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count)
                }
            }
        }
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_write(db, sync ? syncWrite : asyncWrite, batch, &err)
        if let message = Self.take(&err) { throw Self.classify(message, operation: "write", path: path) }
    }

    /// Calls `body` with each key starting with `prefix` (all keys for an empty prefix) and its
    /// value, in key order, until `body` returns false.
    func forEach(prefix: [UInt8], _ body: (_ key: [UInt8], _ value: [UInt8]) -> Bool) throws(DiskTierError) {
        let db = try handle()
        guard let iterator = rocksdb_create_iterator(db, readOptions) else {
            throw .io(operation: "iterate", detail: "rocksdb_create_iterator failed")
        }
        defer { rocksdb_iter_destroy(iterator) }
        if prefix.isEmpty {
            rocksdb_iter_seek_to_first(iterator)
        } else {
            prefix.withUnsafeBytes { p in
                rocksdb_iter_seek(iterator, p.baseAddress?.assumingMemoryBound(to: CChar.self), p.count)
            }
        }
        while rocksdb_iter_valid(iterator) != 0 {
            var keyLength = 0
            var valueLength = 0
            let key = Self.copy(UnsafeRawPointer(rocksdb_iter_key(iterator, &keyLength)), keyLength)
            guard key.starts(with: prefix) else { break }
            let value = Self.copy(UnsafeRawPointer(rocksdb_iter_value(iterator, &valueLength)), valueLength)
            guard body(key, value) else { break }
            rocksdb_iter_next(iterator)
        }
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_iter_get_error(iterator, &err)
        if let message = Self.take(&err) { throw Self.classify(message, operation: "iterate", path: path) }
    }

    /// Writes the memtables to SST (and blob) files; tests use it to have files to damage.
    func flushMemtables() throws(DiskTierError) {
        let db = try handle()
        guard let options = rocksdb_flushoptions_create() else {
            throw .io(operation: "flush", detail: "rocksdb_flushoptions_create failed")
        }
        defer { rocksdb_flushoptions_destroy(options) }
        rocksdb_flushoptions_set_wait(options, 1)
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_flush(db, options, &err)
        if let message = Self.take(&err) { throw Self.classify(message, operation: "flush", path: path) }
    }

    /// Writes the WAL's buffered records to its file and, with `sync`, fsyncs it.
    func flushWAL(sync: Bool) throws(DiskTierError) {
        let db = try handle()
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_flush_wal(db, sync ? 1 : 0, &err)
        if let message = Self.take(&err) { throw Self.classify(message, operation: "flush", path: path) }
    }

    // MARK: - Inside the fence

    private func handle() throws(DiskTierError) -> OpaquePointer {
        guard let db else { throw .closed }
        return db
    }

    /// Copies `count` bytes at `pointer` into an array (empty for a nil pointer).
    private static func copy(_ pointer: UnsafeRawPointer?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Turns RocksDB's malloc()ed error string into a Swift string and frees it.
    private static func take(_ err: inout UnsafeMutablePointer<CChar>?) -> String? {
        guard let e = err else { return nil }
        let message = String(cString: e)
        rocksdb_free(e)
        err = nil
        return message
    }

    /// Sorts a RocksDB status message into a typed error.
    static func classify(_ message: String, operation: String, path: String) -> DiskTierError {
        let m = message.lowercased()
        if m.contains("lock file") || m.contains("/lock:") || m.contains("lock hold") {
            return .locked(directory: path, detail: message)
        }
        if m.contains("no space left on device") || m.contains("file too large") || m.contains("disk quota exceeded") {
            return .noSpace(directory: path, detail: message)
        }
        if m.hasPrefix("corruption") || m.contains("corruption:") {
            return .damaged(directory: path, detail: message)
        }
        // One of RocksDB's own files is gone (a deleted SST, blob file or MANIFEST): damage, not
        // a permission problem.
        if m.contains("no such file or directory")
            && (m.contains(".sst") || m.contains(".blob") || m.contains("manifest") || m.contains("/current"))
        {
            return .damaged(directory: path, detail: message)
        }
        if m.contains("read-only file system") || m.contains("permission denied") || m.contains("not a directory")
            || m.contains("no such file or directory") && operation == "open"
        {
            return .directoryNotWritable(directory: path, detail: message)
        }
        return .io(operation: operation, detail: message)
    }
}
