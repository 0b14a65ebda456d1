import Foundation
import KVTierModel
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Runs one fuzz target: `inputs` generated inputs (`KVTIER_FUZZ_INPUTS`, or
/// `KVTIER_FUZZ_INPUTS_<TARGET>` for one target, e.g. `KVTIER_FUZZ_INPUTS_HTTP_REQUEST`; seeded by
/// `KVTIER_FUZZ_SEED`), each timed against a hang budget (`KVTIER_FUZZ_HANG_SECONDS`, default 2)
/// and checked by the target. Prints one greppable line per target and, when
/// `KVTIER_RELIABILITY_OUT` names a directory, writes the same figures there as
/// `fuzz-<target>.json`. `KVTIER_FUZZ_ONLY=N` replays input N alone.
///
/// A crash kills the test process, so a finished run means 0 crashes. An input slower than the
/// budget counts as a hang and fails the test; one still running after 20 budgets is taken for an
/// endless loop: the watchdog prints its seed and number and aborts the process, so CI fails
/// instead of stalling.
struct FuzzRunner {
    /// The inputs' outcome that broke an invariant (or hung), to replay and to keep as a regression case.
    struct Finding: CustomStringConvertible {
        let index: Int
        let input: [UInt8]
        let problem: String
        var description: String {
            "input #\(index) (\(input.count) bytes): \(problem)\n  base64: \(Data(input.prefix(4096)).base64EncodedString())"
        }
    }

    /// An invariant the target checks, broken.
    struct Violation: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    let target: String
    let inputs: Int
    let seed: UInt64
    /// Only this input number (`KVTIER_FUZZ_ONLY`), to replay a finding.
    let only: Int?
    let hangBudgetSeconds: Double
    let outDirectory: String?

    static let defaultSeed: UInt64 = 0x4B56_5469_6572_2026

    init(target: String, quickInputs: Int = 20_000, hangBudgetSeconds: Double = 2) {
        let env = ProcessInfo.processInfo.environment
        self.target = target
        // KVTIER_FUZZ_INPUTS_HTTP_REQUEST (say) for one target, else KVTIER_FUZZ_INPUTS for all.
        let own = "KVTIER_FUZZ_INPUTS_" + target.uppercased().replacingOccurrences(of: "-", with: "_")
        self.inputs = (env[own] ?? env["KVTIER_FUZZ_INPUTS"]).flatMap { Int($0.replacingOccurrences(of: "_", with: "")) }.map { max(1, $0) } ?? quickInputs
        self.seed = env["KVTIER_FUZZ_SEED"].flatMap { s in s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s) } ?? Self.defaultSeed
        self.only = env["KVTIER_FUZZ_ONLY"].flatMap { Int($0) }
        self.hangBudgetSeconds = env["KVTIER_FUZZ_HANG_SECONDS"].flatMap { Double($0) }.map { max(0.01, $0) } ?? hangBudgetSeconds
        self.outDirectory = env["KVTIER_RELIABILITY_OUT"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The figures of a finished run.
    struct Report {
        var inputs = 0
        var hangs: [Finding] = []
        var violations: [Finding] = []
        var violationCount = 0
        var maxSeconds = 0.0
        var distinct = Set<String>()
        var seconds = 0.0
    }

    /// Runs the target. `generate` makes input number i from its own generator; `check` runs it,
    /// throws `Violation` for a broken invariant, and returns a short outcome label (counted as
    /// "distinct responses"). Fails the test on any hang or violation.
    @discardableResult
    func run(
        generate: (inout SplitMix64) -> [UInt8], check: ([UInt8], inout SplitMix64) throws -> String,
        file: StaticString = #filePath, line: UInt = #line
    ) -> Report {
        var report = Report()
        let watchdog = FuzzWatchdog(target: target, seed: seed, limitSeconds: 20 * hangBudgetSeconds)
        watchdog.start()
        FuzzCrashReporter.begin(target: target, seed: seed)
        defer {
            watchdog.stop()
            FuzzCrashReporter.end()
        }
        let clock = ContinuousClock()
        let runStart = clock.now
        let indices = only.map { $0..<($0 + 1) } ?? 0..<inputs
        for i in indices {
            var rng = SplitMix64(seed: seed, index: i)
            let input = generate(&rng)
            if only != nil {
                // Replaying one input: show it first, in case it crashes.
                FileHandle.standardError.write(Data("fuzz \(target): input #\(i) (\(input.count) bytes), base64: \(Data(input).base64EncodedString())\n".utf8))
            }
            watchdog.begin(i)
            FuzzCrashReporter.index.store(i, ordering: .relaxed)
            let start = clock.now
            let outcome: String
            do {
                outcome = try check(input, &rng)
            } catch {
                outcome = "violation"
                report.violationCount += 1
                if report.violations.count < 10 { report.violations.append(Finding(index: i, input: input, problem: "\(error)")) }
            }
            let elapsed = (clock.now - start) / .seconds(1)
            watchdog.end()
            report.inputs += 1
            report.maxSeconds = max(report.maxSeconds, elapsed)
            if elapsed > hangBudgetSeconds, report.hangs.count < 10 {
                report.hangs.append(Finding(index: i, input: input, problem: String(format: "took %.2f s (budget %.1f s)", elapsed, hangBudgetSeconds)))
            }
            if report.distinct.count < 100_000 { report.distinct.insert(outcome) }
        }
        report.seconds = (clock.now - runStart) / .seconds(1)
        publish(report)
        for f in report.hangs { XCTFail("fuzz \(target): hang, seed \(hex(seed)), \(f)", file: file, line: line) }
        for f in report.violations { XCTFail("fuzz \(target): seed \(hex(seed)), \(f)", file: file, line: line) }
        return report
    }

    private func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    private func publish(_ r: Report) {
        let line = String(
            format: "fuzz %@: %d inputs, 0 crashes, %d hangs, %d violations, max %.1f ms/input, %d distinct responses, %.1f s, seed %@",
            target, r.inputs, r.hangs.count, r.violationCount, r.maxSeconds * 1000, r.distinct.count, r.seconds, hex(seed))
        print(line)
        if ProcessInfo.processInfo.environment["KVTIER_FUZZ_VERBOSE"] != nil {
            for outcome in r.distinct.sorted().prefix(200) { print("  outcome: \(outcome.prefix(160))") }
        }
        guard let outDirectory else { return }
        #if DEBUG
        let build = "debug"
        #else
        let build = "release"
        #endif
        let figures: [String: Any] = [
            "target": target, "inputs": r.inputs, "crashes": 0, "hangs": r.hangs.count, "violations": r.violationCount,
            "max_ms_per_input": (r.maxSeconds * 1e6).rounded() / 1000, "distinct_responses": r.distinct.count,
            "seconds": (r.seconds * 10).rounded() / 10, "seed": hex(seed), "hang_budget_seconds": hangBudgetSeconds, "build": build,
            "line": line,
        ]
        do {
            try FileManager.default.createDirectory(atPath: outDirectory, withIntermediateDirectories: true)
            let data = try JSONSerialization.data(withJSONObject: figures, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: outDirectory).appendingPathComponent("fuzz-\(target).json"))
        } catch {
            XCTFail("cannot write the fuzz figures to \(outDirectory): \(error)")
        }
    }
}
