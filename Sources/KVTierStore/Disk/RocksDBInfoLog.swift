import Foundation

/// Where RocksDB's info LOG goes, kept private to this user and from piling up.
///
/// The LOG lives outside the state directory (see `RocksDatabase.init`: a full state directory
/// must not abort the process through a failed log write), in a directory only this user can
/// use: `$XDG_RUNTIME_DIR/kvtier-rocksdb-log`, else `${TMPDIR:-/tmp}/kvtier-rocksdb-log-<euid>`,
/// created 0700. A path that is not a directory of this user's with no group or other access
/// (another user got there first, or left a file or a link) is never used: a fresh directory
/// from `mkdtemp` is taken instead. Only errors are logged, each file is capped
/// (`maxFileBytes`, then RocksDB rolls it over), one old file is kept, and a database closed
/// with a LOG that holds nothing but RocksDB's header (the options it opened with, which its
/// size-capped logger writes into every file whatever the level) leaves no file behind.
enum RocksDBInfoLog {
    /// A LOG file's size before RocksDB starts the next one.
    static let maxFileBytes = 1 << 20

    /// Computed once per process.
    static let directory: String = makeDirectory()

    private static func makeDirectory() -> String {
        let env = ProcessInfo.processInfo.environment
        let uid = geteuid()
        var candidates: [String] = []
        if let runtime = env["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") {
            candidates.append(runtime + "/kvtier-rocksdb-log")
        }
        let tmp = env["TMPDIR"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "/tmp"
        candidates.append(tmp + "/kvtier-rocksdb-log-\(uid)")
        for path in candidates {
            _ = mkdir(path, 0o700)
            if isPrivateDirectory(path, uid: uid) { return path }
        }
        var template = Array((tmp + "/kvtier-rocksdb-log-XXXXXX").utf8CString)
        if let made = mkdtemp(&template) { return String(cString: made) }
        return candidates[candidates.count - 1]  // RocksDB then fails to log, which it tolerates
    }

    /// A real directory (not a link) owned by `uid` with no group or other permissions.
    static func isPrivateDirectory(_ path: String, uid: uid_t) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        return (st.st_mode & S_IFMT) == S_IFDIR && st.st_uid == uid && st.st_mode & 0o077 == 0
    }

    /// The LOG's file name for the database at `path`, as RocksDB derives it when a log
    /// directory is set: the absolute path with every character outside [A-Za-z0-9._-] made `_`
    /// (a leading one dropped), at most 251 characters, then `_LOG`.
    static func fileName(forDatabaseAt path: String) -> String {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var out: [UInt8] = []
        for (i, c) in absolute.utf8.enumerated() where out.count < 251 {
            let kept =
                (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "-")
                || c == UInt8(ascii: ".")
                || c == UInt8(ascii: "_")
            if kept {
                out.append(c)
            } else if i > 0 {
                out.append(UInt8(ascii: "_"))
            }
        }
        return String(decoding: out, as: UTF8.self) + "_LOG"
    }

    /// After the database at `path` was closed: removes its LOG if nothing was logged but the
    /// header, that is, no line at warning level or above (RocksDB marks them `[WARN]`,
    /// `[ERROR]`, `[FATAL]`).
    static func removeIfOnlyHeader(databaseAt path: String) {
        let file = directory + "/" + fileName(forDatabaseAt: path)
        var st = stat()
        guard lstat(file, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= maxFileBytes + (64 << 10),
            let data = FileManager.default.contents(atPath: file)
        else { return }
        if !holdsEvents(data) { unlink(file) }
    }

    /// True when a LOG's text has a line at warning level or above.
    static func holdsEvents(_ data: Data) -> Bool {
        let text = String(decoding: data, as: UTF8.self)
        return ["[WARN]", "[ERROR]", "[FATAL]"].contains { text.contains($0) }
    }
}
