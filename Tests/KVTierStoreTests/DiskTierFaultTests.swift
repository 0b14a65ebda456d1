import Foundation
import KVTierModel
import XCTest

@testable import KVTierStore

#if canImport(Glibc)
import Glibc
#endif

/// The disk tier when RocksDB or the file system under it fails: a locked, read-only or damaged
/// state directory at open, and a disk that fills up while writing. The tier degrades instead
/// of failing (puts throw `.unavailable`, gets miss or read what is still there, never a wrong
/// block), says why, and comes back by itself once the cause is gone.
///
/// The file-system cases mount a small tmpfs (root only, as in CI); tearDown unmounts it.
final class DiskTierFaultTests: XCTestCase {
    private var mounts: [String] = []
    private var directories: [String] = []
    /// Short retry interval, so that recovery is seen within the test's time.
    private let fastRetry = DiskTierRecovery(degradeOnOpenFailure: true, quarantineDamaged: true, retryIntervalSeconds: 0.2)

    override func tearDown() {
        for m in mounts.reversed() { _ = try? run("/bin/umount", ["-l", m]) }
        mounts = []
        for d in directories { try? FileManager.default.removeItem(atPath: d) }
        directories = []
        super.tearDown()
    }

    // MARK: - Open failures

    func testOpen_whenAnotherTierHoldsTheLock_degradesAndRecoversWhenReleased() throws {
        let dir = try temporaryDirectory()
        let first = try DiskTier(directory: dir, capacityBytes: 1 << 30)
        let kept = SyntheticKVBlocks.block(index: 0, tokens: 40)
        let replaced = SyntheticKVBlocks.block(index: 1, tokens: 40)
        try first.put(kept, sync: false)
        try first.put(replaced, sync: false)
        try first.putMetadata(model: SyntheticKVBlocks.model, name: "session/gone", value: [1, 2, 3])

        let second = try DiskTier(directory: dir, capacityBytes: 1 << 30, recovery: fastRetry)
        let health = second.health
        XCTAssertEqual(health.state, .degraded)
        XCTAssertFalse(health.readable)
        XCTAssertTrue(health.reason?.contains("another kvtierd is using \(dir)") == true, health.reason ?? "")
        XCTAssertTrue(health.action?.contains("retries the disk every") == true, health.action ?? "")
        XCTAssertNotNil(health.since)
        XCTAssertThrowsError(try second.put(SyntheticKVBlocks.block(index: 2, tokens: 40), sync: false)) { error in
            guard case DiskTierError.unavailable(let d, let cause) = error else { return XCTFail("not .unavailable: \(error)") }
            XCTAssertEqual(d, dir)
            XCTAssertTrue(cause.contains("another kvtierd is using"), cause)
        }
        XCTAssertNil(second.get(kept.key).block, "a tier that never opened misses")
        XCTAssertEqual(second.health.writeErrors, 1)
        // The store replaces a block while the tier is down: the old copy must not come back.
        XCTAssertNoThrow(try second.delete(replaced.key))
        XCTAssertNoThrow(try second.deleteMetadata(model: SyntheticKVBlocks.model, name: "session/gone"))

        try first.close()
        let recovered = try waitUntilHealthy(second, timeout: 5)
        XCTAssertLessThan(recovered, 2, "reopened within a few retry intervals")
        XCTAssertTrue(second.get(kept.key).block?.payload == kept.payload, "what the other process wrote is served after the reopen")
        XCTAssertNil(second.get(replaced.key).block, "a block deleted while degraded stays deleted")
        XCTAssertNil(second.metadata(model: SyntheticKVBlocks.model, name: "session/gone"), "so does a session record")
        try second.put(SyntheticKVBlocks.block(index: 2, tokens: 40), sync: false)
        XCTAssertEqual(second.health.writeErrors, 1)
        try second.close()
    }

    func testOpen_whenFileSystemIsReadOnly_degradesAndRecoversAfterRemountReadWrite() throws {
        let dir = try tmpfs(size: "8m")
        let stored = SyntheticKVBlocks.block(index: 3, tokens: 64)
        do {
            let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30)
            try tier.put(stored, sync: true)
            try tier.close()
        }
        try run("/bin/mount", ["-o", "remount,ro", dir])
        XCTAssertThrowsError(try DiskTier(directory: dir, capacityBytes: 1 << 30), "strict: the open failure is thrown") { error in
            guard case DiskTierError.directoryNotWritable = error else { return XCTFail("not .directoryNotWritable: \(error)") }
        }
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30, recovery: fastRetry)
        XCTAssertEqual(tier.health.state, .degraded)
        XCTAssertTrue(tier.health.reason?.contains("read-only") == true, tier.health.reason ?? "")
        XCTAssertThrowsError(try tier.put(SyntheticKVBlocks.block(index: 4, tokens: 64), sync: false))
        XCTAssertNil(tier.get(stored.key).block)

        try run("/bin/mount", ["-o", "remount,rw", dir])
        _ = try waitUntilHealthy(tier, timeout: 5)
        XCTAssertTrue(tier.get(stored.key).block?.payload == stored.payload)
        try tier.put(SyntheticKVBlocks.block(index: 4, tokens: 64), sync: false)
        try tier.close()
    }

    func testOpen_whenCurrentFileIsGarbage_movesTheDatabaseAsideAndStartsEmpty() throws {
        let dir = try temporaryDirectory()
        try fill(dir, blocks: 8)
        try Data("garbage without a newline".utf8).write(to: URL(fileURLWithPath: dir + "/CURRENT"))
        try assertQuarantines(dir)
    }

    func testOpen_whenAnSSTFileIsDeleted_movesTheDatabaseAsideAndStartsEmpty() throws {
        let dir = try temporaryDirectory()
        try fill(dir, blocks: 8)
        let ssts = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".sst") }
        XCTAssertFalse(ssts.isEmpty, "close flushes the memtable into an SST")
        for f in ssts { try FileManager.default.removeItem(atPath: dir + "/" + f) }
        try assertQuarantines(dir)
    }

    /// A flipped byte in an SST's first data block: RocksDB opens the database, and the damage
    /// shows only when the index is rebuilt from it. The tier is quarantined like damage found at
    /// open, not left degraded (retrying the same damage forever).
    func testOpen_whenAnSSTBlockIsCorrupt_movesTheDatabaseAsideAndStartsEmpty() throws {
        let dir = try temporaryDirectory()
        try fill(dir, blocks: 8)
        let ssts = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".sst") }
        XCTAssertEqual(ssts.count, 1, "close flushes the memtable into one SST")
        let path = dir + "/" + (ssts.first ?? "?")
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertGreaterThan(bytes.count, 200)
        bytes[100] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: path))
        try assertQuarantines(dir)
    }

    func testOpen_whenABlobFileIsDeleted_neverReturnsAWrongBlock() throws {
        let dir = try temporaryDirectory()
        let blocks = try fill(dir, blocks: 8)
        let blobs = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".blob") }
        XCTAssertFalse(blobs.isEmpty, "values of 4 KiB and more live in blob files")
        for f in blobs { try FileManager.default.removeItem(atPath: dir + "/" + f) }
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30, recovery: fastRetry)
        defer { try? tier.close() }
        if tier.health.notice == nil {
            // RocksDB opened it: every read of a lost value is a miss, counted, never a block.
            for b in blocks { XCTAssertNil(tier.get(b.key).block, "block \(b.key) returned without its value") }
            XCTAssertEqual(tier.stats.corruptBlocks + tier.stats.readErrors, blocks.count)
        } else {
            XCTAssertEqual(tier.stats.blockCount, 0)
        }
        XCTAssertTrue(tier.isHealthy)
        try tier.put(blocks[0], sync: false)
        XCTAssertTrue(tier.get(blocks[0].key).block?.payload == blocks[0].payload)
    }

    // MARK: - Disk full at run time

    func testPut_whenFileSystemFills_degradesKeepsReadsAndRecoversAfterSpaceReturns() throws {
        let dir = try tmpfs(size: "6m")
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30, recovery: fastRetry)
        let observed = StateLog()
        tier.onHealthChange { h in observed.append(h.state) }
        var acked: [KVBlock] = []
        var failure: DiskTierError?
        for i in 0..<200 {
            let block = SyntheticKVBlocks.block(index: i, tokens: 256)
            do {
                try tier.put(block, sync: false)
                acked.append(block)
            } catch {
                failure = error
                break
            }
        }
        let error = try XCTUnwrap(failure, "6 MB of tmpfs never filled")
        guard case .noSpace(let d, _) = error else { return XCTFail("not .noSpace: \(error)") }
        XCTAssertEqual(d, dir)
        XCTAssertTrue(error.description.contains("no space left"), error.description)
        let health = tier.health
        XCTAssertEqual(health.state, .degraded)
        XCTAssertTrue(health.readable)
        XCTAssertTrue(health.reason?.contains("no space left") == true, health.reason ?? "")
        XCTAssertThrowsError(try tier.put(SyntheticKVBlocks.block(index: 500, tokens: 16), sync: false)) { e in
            guard case DiskTierError.unavailable = e else { return XCTFail("not .unavailable: \(e)") }
        }
        XCTAssertEqual(tier.health.writeErrors, 2)
        // The group commit's WAL sync after a failed write is refused, not passed to RocksDB
        // (librocksdb 7.8 aborts on a sync after a failed append).
        XCTAssertThrowsError(try tier.flush())
        for b in acked {
            switch tier.get(b.key) {
            case .hit(let read): XCTAssertTrue(read.payload == b.payload, "block \(b.key) differs")
            case .miss: break
            case .corrupt(let why): XCTFail("acknowledged block \(b.key) corrupt while degraded: \(why)")
            }
        }
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertFalse(tier.isHealthy, "no recovery while the disk is still full")

        let start = Date()
        try run("/bin/mount", ["-o", "remount,size=64m", dir])
        let seconds = try waitUntilHealthy(tier, timeout: 30)
        print("disk tier writable again \(String(format: "%.2f", seconds)) s after space returned (retry every 0.2 s)")
        XCTAssertLessThan(Date().timeIntervalSince(start), 30, "goal D10")
        try tier.put(SyntheticKVBlocks.block(index: 500, tokens: 16), sync: false)
        for b in acked { XCTAssertTrue(tier.get(b.key).block?.payload == b.payload, "acknowledged block \(b.key) lost") }
        XCTAssertEqual(observed.states, [.degraded, .healthy], "one notification per change")
        try tier.close()
    }

    // MARK: - Helpers

    /// Waits until `tier` is healthy; returns the seconds it took.
    @discardableResult
    private func waitUntilHealthy(_ tier: DiskTier, timeout: Double) throws -> Double {
        let start = Date()
        while !tier.isHealthy {
            guard Date().timeIntervalSince(start) < timeout else {
                throw NSError(domain: "DiskTierFaultTests", code: 1, userInfo: [
                    NSLocalizedDescriptionKey: "still degraded after \(timeout) s: \(tier.health.summary)"])
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return Date().timeIntervalSince(start)
    }

    /// Writes `blocks` blocks into a new tier in `dir` and closes it (RocksDB flushes to SST and
    /// blob files).
    @discardableResult
    private func fill(_ dir: String, blocks n: Int) throws -> [KVBlock] {
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30)
        let blocks = (0..<n).map { SyntheticKVBlocks.block(index: $0, tokens: 64) }
        for b in blocks { try tier.put(b, sync: false) }
        try tier.withDatabase { db throws(DiskTierError) in try db.flushMemtables() }
        try tier.close()
        return blocks
    }

    /// A strict open throws `.damaged`; a serving one moves the files aside, starts empty and
    /// healthy, and says so.
    private func assertQuarantines(_ dir: String, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertThrowsError(try DiskTier(directory: dir, capacityBytes: 1 << 30), file: file, line: line) { error in
            guard case DiskTierError.damaged = error else { return XCTFail("not .damaged: \(error)", file: file, line: line) }
        }
        let tier = try DiskTier(directory: dir, capacityBytes: 1 << 30, recovery: fastRetry)
        defer { try? tier.close() }
        XCTAssertTrue(tier.isHealthy, file: file, line: line)
        XCTAssertEqual(tier.stats.blockCount, 0, file: file, line: line)
        let notice = try XCTUnwrap(tier.health.notice, "no notice of the quarantine", file: file, line: line)
        let moved = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("quarantine-") }
        XCTAssertEqual(moved.count, 1, file: file, line: line)
        XCTAssertTrue(notice.contains(dir + "/" + (moved.first ?? "?")), notice, file: file, line: line)
        XCTAssertTrue(notice.contains("started empty"), notice, file: file, line: line)
        let kept = try FileManager.default.contentsOfDirectory(atPath: dir + "/" + (moved.first ?? "?"))
        XCTAssertTrue(kept.contains { $0.hasPrefix("MANIFEST") }, "\(kept)", file: file, line: line)
        let block = SyntheticKVBlocks.block(index: 9, tokens: 32)
        try tier.put(block, sync: false)
        XCTAssertTrue(tier.get(block.key).block?.payload == block.payload, file: file, line: line)
        // The quarantine survives a restart and is not moved again.
        try tier.close()
        let again = try DiskTier(directory: dir, capacityBytes: 1 << 30)
        XCTAssertTrue(again.get(block.key).block?.payload == block.payload, file: file, line: line)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("quarantine-") }.count, 1)
        try again.close()
    }

    private func temporaryDirectory() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvtier-fault-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        directories.append(dir)
        return dir
    }

    /// A tmpfs of `size` on a new directory (skips when mounting is not allowed).
    private func tmpfs(size: String) throws -> String {
        let dir = try temporaryDirectory()
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root") }
        do {
            try run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", dir])
        } catch {
            throw XCTSkip("cannot mount a tmpfs here: \(error)")
        }
        mounts.append(dir)
        return dir
    }

    @discardableResult
    private func run(_ tool: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw NSError(domain: "DiskTierFaultTests", code: Int(p.terminationStatus),
                          userInfo: [NSLocalizedDescriptionKey: "\(tool) \(args.joined(separator: " ")): \(out)"])
        }
        return out
    }
}

/// Health changes as the disk tier reports them (on its queue), read by the test.
private final class StateLog: @unchecked Sendable {
    private let lock = NSLock()
    private var log: [DiskTierHealth.State] = []
    func append(_ s: DiskTierHealth.State) { lock.withLock { log.append(s) } }
    var states: [DiskTierHealth.State] { lock.withLock { log } }
}
