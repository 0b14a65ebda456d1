import Foundation
import XCTest

@testable import KVTierStore

#if canImport(Glibc)
    import Glibc
#endif

/// RocksDB's info LOG: in a directory private to this user, named as RocksDB names it, and gone
/// when a database closes with nothing logged (so LOG files do not pile up).
final class RocksDBInfoLogTests: XCTestCase {
    private func scratch() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-infolog-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testLogDirectoryIsPrivateToThisUser() {
        let dir = RocksDBInfoLog.directory
        XCTAssertTrue(RocksDBInfoLog.isPrivateDirectory(dir, uid: geteuid()), "\(dir) is a 0700 directory of this user")
        XCTAssertFalse(dir.hasSuffix("/kvtier-rocksdb-log"), "not the old fixed path any user could take")
    }

    /// What another user could leave at the path is never taken for the log directory.
    func testOnlyAPrivateDirectoryOfThisUserIsAccepted() throws {
        let base = try scratch()
        let uid = geteuid()
        let open = base + "/open"
        try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: false)
        XCTAssertEqual(chmod(open, 0o755), 0)
        XCTAssertFalse(RocksDBInfoLog.isPrivateDirectory(open, uid: uid), "group and others may enter")
        XCTAssertEqual(chmod(open, 0o700), 0)
        XCTAssertTrue(RocksDBInfoLog.isPrivateDirectory(open, uid: uid))
        XCTAssertFalse(RocksDBInfoLog.isPrivateDirectory(open, uid: uid &+ 1), "another user's directory")
        let link = base + "/link"
        XCTAssertEqual(symlink(open, link), 0)
        XCTAssertFalse(RocksDBInfoLog.isPrivateDirectory(link, uid: uid), "a link, even to a private directory")
        let file = base + "/file"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data()))
        XCTAssertEqual(chmod(file, 0o700), 0)
        XCTAssertFalse(RocksDBInfoLog.isPrivateDirectory(file, uid: uid), "a regular file")
    }

    /// The name we compute is the one RocksDB writes (checked on a real database), and a clean
    /// close with nothing logged but RocksDB's header removes it; a LOG with an error stays.
    func testLogWithOnlyTheHeaderIsRemovedAtClose() throws {
        let state = try scratch() + "/state.d-1"
        let tier = try DiskTier(directory: state, capacityBytes: 1 << 20)
        let log = RocksDBInfoLog.directory + "/" + RocksDBInfoLog.fileName(forDatabaseAt: state)
        XCTAssertTrue(FileManager.default.fileExists(atPath: log), "RocksDB writes \(log) while the database is open")
        try tier.close()
        XCTAssertFalse(FileManager.default.fileExists(atPath: log), "a LOG of header only is gone after close")
        // A LOG that recorded something is kept for the post-mortem.
        let other = try scratch() + "/state.d-2"
        let kept = RocksDBInfoLog.directory + "/" + RocksDBInfoLog.fileName(forDatabaseAt: other)
        let header = "2026/12/05-18:39:10.752173 5207 RocksDB version: 7.8.3\n"
        try Data((header + "2026/12/05-18:40:00.000000 5207 [ERROR] [db/db_impl.cc:1] write failed\n").utf8)
            .write(to: URL(fileURLWithPath: kept))
        defer { unlink(kept) }
        RocksDBInfoLog.removeIfOnlyHeader(databaseAt: other)
        XCTAssertTrue(FileManager.default.fileExists(atPath: kept), "a LOG with an error line stays")
        try Data(header.utf8).write(to: URL(fileURLWithPath: kept))
        RocksDBInfoLog.removeIfOnlyHeader(databaseAt: other)
        XCTAssertFalse(FileManager.default.fileExists(atPath: kept))
        XCTAssertEqual(RocksDBInfoLog.fileName(forDatabaseAt: "/var/lib/kvtier"), "var_lib_kvtier_LOG")
        XCTAssertEqual(RocksDBInfoLog.fileName(forDatabaseAt: "/a b/c.d-e_f"), "a_b_c.d-e_f_LOG")
    }

    /// The state directory is private: created 0700, and an existing one of this user's is
    /// tightened when the tier opens it.
    func testStateDirectoryIsPrivate() throws {
        let base = try scratch()
        let fresh = base + "/fresh"
        try DiskTier(directory: fresh, capacityBytes: 1 << 20).close()
        var st = stat()
        XCTAssertEqual(stat(fresh, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        let loose = base + "/loose"
        try FileManager.default.createDirectory(atPath: loose, withIntermediateDirectories: false)
        XCTAssertEqual(chmod(loose, 0o755), 0)
        try DiskTier(directory: loose, capacityBytes: 1 << 20).close()
        XCTAssertEqual(stat(loose, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700, "tightened at open")
    }
}
