import Foundation
import XCTest

/// kvtierd driven by the official `openai` Python package, as an app developer would: the test
/// makes a venv (in `.build/openai-venv`, once), installs the pinned SDK from PyPI into it, and
/// runs `Scripts/openai_checks.py` over the daemon's Unix socket (httpx's `uds` transport).
final class OpenAIClientTests: XCTestCase {
    static let sdk = "openai==3.63.0"

    /// The venv's python, made and filled on first use; nil (skip) when PyPI cannot be reached
    /// outside CI.
    private func python() throws -> String {
        let venv = daemonPackageRoot.appendingPathComponent(".build/openai-venv").path
        let python = venv + "/bin/python"
        let marker = venv + "/installed-" + Self.sdk
        if FileManager.default.fileExists(atPath: marker) { return python }
        var (rc, out) = try runProcess("/usr/bin/env", ["python3", "-m", "venv", "--clear", venv])
        if rc == 0 {
            (rc, out) = try runProcess(
                python, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", Self.sdk])
        }
        guard rc == 0 else {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("could not install \(Self.sdk): \(out)") }
            throw XCTSkip("could not install \(Self.sdk) into a venv: \(out.suffix(300))")
        }
        FileManager.default.createFile(atPath: marker, contents: nil)
        return python
    }

    func testTheOfficialClient() throws {
        let python = try python()
        let dir = try temporaryDirectory(self)
        let socket = dir + "/k.sock"
        let daemon = try startDaemon(socket: socket, state: dir + "/state")
        defer { stop(daemon) }
        let script = daemonPackageRoot.appendingPathComponent("Tests/KVTierServerTests/Scripts/openai_checks.py").path
        let (rc, out) = try runProcess(python, [script, socket])
        guard let start = out.firstIndex(of: "{"),
            let results = try? JSONSerialization.jsonObject(with: Data(out[start...].utf8)) as? [String: [String: Any]]
        else {
            return XCTFail("no results from the script (exit \(rc)): \(out)")
        }
        XCTAssertEqual(results.count, 16, out)
        for (name, r) in results.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(r["ok"] as? Bool, true, "\(name): \(r["detail"] ?? "")")
        }
        XCTAssertEqual(rc, 0, out)
    }
}
