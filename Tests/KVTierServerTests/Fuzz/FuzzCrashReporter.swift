import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Names the input that crashed a fuzz run: a crash kills the test process, so a signal handler
/// writes "fuzz <target>: crashed on input #N (seed S)" to stderr before the default action runs.
/// Replay it with `KVTIER_FUZZ_SEED=S KVTIER_FUZZ_ONLY=N`. Only async-signal-safe calls in the
/// handler: no allocation, `write(2)` of bytes prepared when the run began.
enum FuzzCrashReporter {
    /// The input running now, or -1.
    static let index = Atomic<Int>(-1)
    /// "fuzz <target>: crashed on input #", NUL-terminated, made before the run.
    nonisolated(unsafe) static var prefix: UnsafeMutablePointer<CChar>?
    nonisolated(unsafe) static var suffix: UnsafeMutablePointer<CChar>?

    static func begin(target: String, seed: UInt64) {
        free(prefix)
        free(suffix)
        prefix = strdup("\nfuzz \(target): crashed on input #")
        suffix = strdup(" (replay: KVTIER_FUZZ_SEED=0x\(String(seed, radix: 16)) KVTIER_FUZZ_ONLY=<that number>)\n")
        for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE] { signal(sig, fuzzCrashSignal) }
    }

    static func end() {
        index.store(-1, ordering: .relaxed)
        for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE] { signal(sig, SIG_DFL) }
    }
}

private func fuzzCrashSignal(_ sig: Int32) {
    let n = FuzzCrashReporter.index.load(ordering: .relaxed)
    if n >= 0, let prefix = FuzzCrashReporter.prefix, let suffix = FuzzCrashReporter.suffix {
        _ = write(2, prefix, strlen(prefix))
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { buffer in
            var v = n
            var i = buffer.count
            repeat {
                i -= 1
                buffer[i] = UInt8(48 + v % 10)
                v /= 10
            } while v > 0 && i > 0
            _ = write(2, buffer.baseAddress! + i, buffer.count - i)
        }
        _ = write(2, suffix, strlen(suffix))
    }
    signal(sig, SIG_DFL)
    raise(sig)
}
