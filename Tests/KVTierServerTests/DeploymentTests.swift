import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The shipped systemd units, and the daemon's systemd notifications.
final class DeploymentTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private func run(_ tool: String, _ args: [String], cwd: String) throws -> (Int32, String) {
        try runProcess(tool, args, cwd: cwd)
    }

    /// `systemd-analyze verify` exits 0 even on unknown keys, so the test checks that it prints nothing.
    func testUnitsVerifyCleanly() throws {
        let tool = "/usr/bin/systemd-analyze"
        guard FileManager.default.isExecutableFile(atPath: tool) else { throw XCTSkip("systemd-analyze not installed") }
        let dir = try temporaryDirectory(self)
        for unit in ["kvtierd.service", "kvtierd.socket"] {
            var text = try String(contentsOfFile: DeploymentTests.root.appendingPathComponent("deploy/" + unit).path, encoding: .utf8)
            // verify checks that ExecStart exists: point it at a binary that does.
            text = text.replacingOccurrences(of: "/usr/local/bin/kvtierd", with: "/bin/true")
            try text.write(toFile: dir + "/" + unit, atomically: true, encoding: .utf8)
        }
        let (_, out) = try run(tool, ["verify", "./kvtierd.socket", "./kvtierd.service"], cwd: dir)
        XCTAssertEqual(out.trimmingCharacters(in: .whitespacesAndNewlines), "", out)
        let (_, security) = try run(tool, ["security", "--offline=true", "./kvtierd.service"], cwd: dir)
        if let line = security.split(separator: "\n").last(where: { $0.contains("Overall exposure level") }),
            let score = Double(line.split(separator: ":").last?.split(separator: " ").first ?? "")
        {
            print("systemd-analyze security: \(line)")
            XCTAssertLessThanOrEqual(score, 2.5)
            ReliabilityScale.report("systemd-security", ["exposure": score, "verify_output_empty": out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty])
        } else {
            XCTFail("no exposure level in: \(security)")
        }
    }

    /// With NOTIFY_SOCKET set, kvtierd says READY=1 once it listens, WATCHDOG=1 while its event
    /// loop runs (WATCHDOG_USEC set), and STOPPING=1 on SIGTERM.
    func testReadinessAndStoppingAreNotified() throws {
        let model = daemonTestModel
        guard FileManager.default.fileExists(atPath: model) else { throw XCTSkip("model not found") }
        let binary = try daemonBinary()
        let tmp = try temporaryDirectory(self)
        // The datagram socket systemd would listen on.
        let notifyPath = tmp + "/notify"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in for (i, b) in notifyPath.utf8.enumerated() { dst[i] = b } }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(bound, 0)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func receive() -> String {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["--socket", tmp + "/k.sock", "--state-dir", tmp + "/state", "--model", model, "--threads", "2"]
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notifyPath
        env["WATCHDOG_USEC"] = "400000"  // as WatchdogSec=0.4s: a ping every 0.2 s
        p.environment = env
        FileManager.default.createFile(atPath: tmp + "/log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp + "/log"))
        p.standardOutput = log
        p.standardError = log
        try p.run()
        defer { terminate(p, grace: 5) }
        let ready = receive()
        XCTAssertTrue(ready.contains("READY=1"), "got '\(ready)'; daemon log: \((try? String(contentsOfFile: tmp + "/log", encoding: .utf8)) ?? "")")
        XCTAssertTrue(FileManager.default.fileExists(atPath: tmp + "/k.sock"), "READY=1 comes after the socket listens")
        let ping = receive()
        XCTAssertTrue(ping.contains("WATCHDOG=1"), "the watchdog pings after READY=1: got '\(ping)'")
        kill(p.processIdentifier, SIGTERM)
        var stopping = ""
        for _ in 0..<100 where !stopping.contains("STOPPING=1") {
            let m = receive()
            if m.isEmpty { break }
            stopping = m
        }
        XCTAssertTrue(stopping.contains("STOPPING=1"), stopping)
    }
}
