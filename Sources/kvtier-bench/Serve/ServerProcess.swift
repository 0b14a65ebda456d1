import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A server the serving benchmark starts, waits for, measures (peak RSS) and stops.
final class ServerProcess {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private let process = Process()
    private let name: String
    private let log: String
    private let cleanup: String?

    /// Starts `binary` with `arguments`, its output to `log`; `cleanup` is removed after `stop`.
    init(binary: String, arguments: [String], log: String, cleanup: String? = nil) throws {
        name = URL(fileURLWithPath: binary).lastPathComponent
        self.log = log
        self.cleanup = cleanup
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw Failure(description: "cannot create \(log)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    /// Polls `ready` until it holds (120 s at most).
    func waitUntilReady(_ ready: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            guard process.isRunning else {
                throw Failure(description: "\(name) exited during start-up: \(tail())")
            }
            if ready() { return }
            usleep(100_000)
        }
        stop()
        throw Failure(description: "\(name) did not become ready within 120 s: \(tail())")
    }

    /// Peak resident memory so far (VmHWM), MiB.
    var peakRSSMiB: Double? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
            let kb = Double(line.split(separator: " ").dropFirst().first ?? "")
        else { return nil }
        return kb / 1024
    }

    /// SIGTERM, then SIGKILL after 20 s.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(20)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        if let cleanup { try? FileManager.default.removeItem(atPath: cleanup) }
    }

    private func tail() -> String {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return String(text.suffix(800))
    }
}
