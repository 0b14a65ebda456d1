import Foundation

/// Runs one of the matplotlib scripts under deploy/bench/ on a benchmark's output; a missing
/// script or matplotlib is reported on stderr, never an error of the benchmark.
enum PlotScript {
    /// `script` (a path from the repository root) with `arguments`; its output goes to stderr
    /// when stdout carries JSON.
    static func run(_ script: String, _ arguments: [String], json: Bool) {
        func log(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
        guard FileManager.default.fileExists(atPath: script) else {
            log("plots: \(script) not found (run from the repository root)")
            return
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script] + arguments
        p.standardOutput = json ? FileHandle.standardError : FileHandle.standardOutput
        do {
            try p.run()
            p.waitUntilExit()
            if p.terminationStatus != 0 {
                log("plots: \(script) failed; `python3 -m pip install matplotlib`, then run it by hand")
            }
        } catch {
            log("plots: cannot run python3: \(error)")
        }
    }
}
