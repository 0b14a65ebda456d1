/// What went wrong in the disk tier, with what to do about it in `description`.
///
/// RocksDB reports failures as a message string (`char *err`); `RocksDatabase` sorts them into
/// these cases by the message's content so that callers can react (a locked directory at
/// start-up is fatal, a full tier means "evict first") and operators get advice, not just a
/// status code.
public enum DiskTierError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The state directory's RocksDB `LOCK` is held: another process (or another `DiskTier`
    /// in this process) has the database open.
    case locked(directory: String, detail: String)
    /// The state directory cannot be created or written: read-only file system, missing
    /// permissions, or a path component that is a file.
    case directoryNotWritable(directory: String, detail: String)
    /// RocksDB found damage in its own files (SST, MANIFEST, WAL beyond the recoverable tail),
    /// or one of them is missing.
    case damaged(directory: String, detail: String)
    /// The file system under the state directory is full (ENOSPC) or refuses a larger file
    /// (EFBIG, a size limit). RocksDB then refuses every later write until it is reopened.
    case noSpace(directory: String, detail: String)
    /// The tier is degraded (`DiskTier.health`): it was not opened, or a write failed and RocksDB
    /// went read-only. Puts fail with this until the tier's retry timer reopens the database.
    case unavailable(directory: String, cause: String)
    /// Storing `requestedBytes` more would take the stored (compressed) bytes over capacity.
    /// The store's eviction policy should delete victims and retry; the tier never drops
    /// data on its own.
    case full(requestedBytes: Int, storedBytes: Int, capacityBytes: Int)
    /// The block cannot be stored as given (malformed payload, checksum that does not match
    /// its payload, key fields out of the on-disk format's range).
    case invalidBlock(String)
    /// Any other RocksDB or file-system failure during `operation`.
    case io(operation: String, detail: String)
    /// The tier was closed; open a new `DiskTier` on the directory.
    case closed

    public var description: String {
        switch self {
        case .locked(let dir, let detail):
            return "state directory \(dir) is locked: another kvtierd is using \(dir) (RocksDB: \(detail)); stop the other process or give this one a different state directory"
        case .directoryNotWritable(let dir, let detail):
            return "state directory \(dir) is read-only or cannot be created (\(detail)); make it a writable directory or choose another state directory"
        case .damaged(let dir, let detail):
            return "database is damaged: \(detail) (state directory \(dir)); the disk tier is only a cache: stop kvtierd, delete the directory and start again to rebuild it empty"
        case .noSpace(let dir, let detail):
            return "no space left for the disk tier in \(dir) (\(detail)); free space on that file system or enlarge it; writes resume by themselves once there is room"
        case .unavailable(let dir, let cause):
            return "disk tier in \(dir) is degraded, nothing is written to disk: \(cause)"
        case .full(let requested, let stored, let capacity):
            return "disk tier is full: storing \(requested) more bytes would exceed the capacity (\(stored) of \(capacity) bytes used); evict blocks first or raise the disk capacity"
        case .invalidBlock(let why):
            return "block cannot be stored on disk: \(why); this is a bug in the caller"
        case .io(let operation, let detail):
            return "disk tier I/O error during \(operation): \(detail); check the disk (space, health) and the kernel log"
        case .closed:
            return "disk tier is closed; open it again before using it"
        }
    }
}
