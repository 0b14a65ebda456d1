import Foundation
import XCTest

@testable import KVTierStore

#if canImport(Glibc)
    import Glibc
#endif

/// kvtierd when its state directory fails under it: the disk fills up, another kvtierd holds the
/// directory, stored values have flipped bytes. In each case chats keep answering (from memory,
/// recomputing what is lost) with the same greedy reply, `/healthz` and `kvtierctl tiers` say
/// what is wrong, the journal has one line for it, and the process keeps running.
final class DaemonStorageFaultTests: XCTestCase {
    func testDiskFull_chatsKeepAnsweringTiersShowDegradedAndWritesResumeWhenSpaceReturns() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let state = dir + "/state"
        let log = dir + "/kvtierd.log"
        try mountTmpfs(state, size: "3m")
        // Small HBM and DRAM, so that sessions are demoted to disk after a few chats.
        let daemon = try startDaemon(
            socket: socket, state: state,
            config: "[store]\nhbm_bytes = \"16MiB\"\ndram_bytes = \"2MiB\"\ndisk_retry_seconds = 0.5\n", log: log)
        defer { stop(daemon) }
        let question = [("user", "Name three colours of the rainbow.")]
        let reference = try reply(try chat(socket, question, session: "reference"))

        var degradedAfter: Int?
        for i in 0..<24 {
            let r = try chat(
                socket, [("user", "Write one sentence about the number \(i), please, in plain words.")],
                session: "s\(i)", maxTokens: 16)
            XCTAssertEqual(r.status, 200, "chat \(i) while the disk fills: \(r.json)")
            if try health(socket)["status"] as? String == "degraded" {
                degradedAfter = i
                break
            }
        }
        let tiersNow = (try? rawRequest(socket, "GET", "/v1/tiers").1) ?? ""
        let after = try XCTUnwrap(degradedAfter, "3 MB of tmpfs never filled: \(tiersNow)")
        // Degraded: chats go on, the same question gets the same greedy reply (recomputed).
        XCTAssertEqual(
            try chat(socket, [("user", "One more sentence about 100.")], session: "more", maxTokens: 8).status, 200)
        XCTAssertEqual(
            try reply(try chat(socket, question, session: "again")), reference, "same greedy reply while degraded")
        XCTAssertEqual(
            try reply(try chat(socket, question, session: "reference")), reference, "the first session still answers")

        let h = try health(socket)
        let disk = try XCTUnwrap(h["disk"] as? [String: Any])
        XCTAssertEqual(disk["state"] as? String, "degraded")
        XCTAssertTrue((disk["reason"] as? String ?? "").contains("no space left"), "\(disk)")
        XCTAssertGreaterThan(disk["write_errors"] as? Int ?? 0, 0)
        let (tiersStatus, tiers) = try kvtierctl(["tiers", "--socket", socket])
        XCTAssertEqual(tiersStatus, 0, tiers)
        XCTAssertTrue(tiers.contains("disk: DEGRADED since"), tiers)
        XCTAssertTrue(tiers.contains("no space left"), tiers)
        let (_, status) = try kvtierctl(["status", "--socket", socket])
        XCTAssertTrue(status.contains("degraded"), status)
        let (_, metrics) = try rawRequest(socket, "GET", "/metrics")
        XCTAssertTrue(metrics.contains("kvtier_tier_degraded{tier=\"disk\"} 1"), "no degraded gauge")
        XCTAssertTrue(metrics.contains("kvtier_tier_write_errors_total{tier=\"disk\"}"), "no write error counter")
        XCTAssertTrue(daemon.isRunning, "kvtierd crashed")
        let journal = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertEqual(
            journal.components(separatedBy: "disk tier degraded").count - 1, 1,
            "one line per change, not per write:\n\(journal)")
        print("disk full after \(after + 2) chats")

        // Space returns: writes resume by themselves (retry every 0.5 s here, 5 s by default;
        // goal D10: within 30 s).
        let start = Date()
        try runMount(["-o", "remount,size=64m", state])
        while try health(socket)["status"] as? String != "ok" {
            XCTAssertLessThan(Date().timeIntervalSince(start), 30, "still degraded 30 s after space returned")
            if Date().timeIntervalSince(start) > 30 { break }
            usleep(100_000)
        }
        print("kvtierd writing again \(String(format: "%.1f", Date().timeIntervalSince(start))) s after space returned")
        XCTAssertEqual(try reply(try chat(socket, question, session: "recovered")), reference)
        XCTAssertTrue(try String(contentsOfFile: log, encoding: .utf8).contains("disk tier healthy again"))
    }

    func testStateDirectoryLocked_secondDaemonServesDegradedAndTakesOverWhenTheFirstStops() throws {
        let dir = try temporaryDirectory(self)
        let state = dir + "/state"
        let log = dir + "/second.log"
        try FileManager.default.createDirectory(atPath: dir + "/a", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/b", withIntermediateDirectories: true)
        let first = try startDaemon(socket: dir + "/a/k.sock", state: state)
        defer { stop(first) }
        let question = [("user", "What is the capital of France?")]
        let reference = try reply(try chat(dir + "/a/k.sock", question, session: "one"))

        let socket = dir + "/b/k.sock"
        let second = try startDaemon(
            socket: socket, state: state, config: "[store]\ndisk_retry_seconds = 0.5\n", log: log)
        defer { stop(second) }
        XCTAssertTrue(second.isRunning)
        let disk = try XCTUnwrap(try health(socket)["disk"] as? [String: Any])
        XCTAssertEqual(disk["state"] as? String, "degraded")
        XCTAssertTrue((disk["reason"] as? String ?? "").contains("another kvtierd is using \(state)"), "\(disk)")
        XCTAssertEqual(try reply(try chat(socket, question, session: "two")), reference, "serves without its disk tier")
        let (_, tiers) = try kvtierctl(["tiers", "--socket", socket])
        XCTAssertTrue(tiers.contains("disk: DEGRADED since"), tiers)
        XCTAssertTrue(tiers.contains("another kvtierd is using"), tiers)
        let journal = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertEqual(journal.components(separatedBy: "disk tier degraded").count - 1, 1, journal)
        XCTAssertTrue(journal.contains("another kvtierd is using"), journal)

        // The first one stops: the second opens the directory within a retry interval or two.
        stop(first)
        let start = Date()
        while try health(socket)["status"] as? String != "ok", Date().timeIntervalSince(start) < 20 { usleep(100_000) }
        XCTAssertEqual(
            try health(socket)["status"] as? String, "ok", "the second kvtierd did not take the directory over")
        XCTAssertEqual(try reply(try chat(socket, question, session: "three")), reference)
        XCTAssertTrue(second.isRunning)
    }

    func testFlippedBytesInStoredValues_chatAnswersTheSameReplyAndCountsCorruptBlocks() throws {
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let state = dir + "/state"
        var daemon = try startDaemon(socket: socket, state: state)
        let question = [("user", "Describe a quiet morning by the sea in two sentences.")]
        let reference = try reply(try chat(socket, question, session: "f", maxTokens: 12))
        stop(daemon)

        // Move the values out of the WAL into blob files, then flip bytes across each blob file.
        do {
            let tier = try DiskTier(directory: state, capacityBytes: 1 << 34)
            XCTAssertGreaterThan(tier.stats.blockCount, 0)
            try tier.withDatabase { db throws(DiskTierError) in try db.flushMemtables() }
            try tier.close()
        }
        let blobs = try FileManager.default.contentsOfDirectory(atPath: state).filter { $0.hasSuffix(".blob") }
        XCTAssertFalse(blobs.isEmpty)
        var flipped = 0
        for name in blobs {
            let path = state + "/" + name
            var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            // Skip the blob file's header and footer; every 4 KiB in between, invert a byte.
            var offset = 128
            while offset < bytes.count - 128 {
                bytes[offset] ^= 0xFF
                flipped += 1
                offset += 4096
            }
            try bytes.write(to: URL(fileURLWithPath: path))
        }
        XCTAssertGreaterThan(flipped, 10)

        daemon = try startDaemon(socket: socket, state: state)
        defer { stop(daemon) }
        let again = try chat(socket, question, session: "f", maxTokens: 12)
        XCTAssertEqual(again.status, 200)
        XCTAssertEqual(try reply(again), reference, "a damaged block is recomputed, never used")
        let (_, raw) = try rawRequest(socket, "GET", "/v1/tiers")
        let list = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [[String: Any]])
        let disk = try XCTUnwrap(list.first { $0["tier"] as? String == "disk" })
        XCTAssertGreaterThan(disk["checksum_failures"] as? Int ?? 0, 0, "damaged blocks are counted: \(disk)")
        XCTAssertEqual(
            (disk["health"] as? [String: Any])?["state"] as? String, "healthy", "damaged values do not degrade the tier"
        )
        XCTAssertTrue(daemon.isRunning)
    }

    // MARK: - Helpers

    private func reply(_ r: (status: Int, json: [String: Any]), file: StaticString = #filePath, line: UInt = #line)
        throws -> String
    {
        XCTAssertEqual(r.status, 200, "\(r.json)", file: file, line: line)
        return try XCTUnwrap(
            ((r.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String,
            file: file, line: line)
    }

    private func health(_ socket: String) throws -> [String: Any] {
        let r = try request(socket, "GET", "/healthz")
        XCTAssertEqual(r.status, 200, "/healthz stays 200 while kvtierd serves")
        return r.json
    }

    private func mountTmpfs(_ path: String, size: String) throws {
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root") }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let (status, out) = try runProcess("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path])
        guard status == 0 else { throw XCTSkip("cannot mount a tmpfs here: \(out)") }
        // Runs before the temporary directory's removal (teardown blocks run last in, first out).
        addTeardownBlock { _ = try? runProcess("/bin/umount", ["-l", path]) }
    }

    private func runMount(_ args: [String]) throws {
        let (status, out) = try runProcess("/bin/mount", args)
        XCTAssertEqual(status, 0, out)
    }
}
