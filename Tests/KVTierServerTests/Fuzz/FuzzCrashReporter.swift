import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Names the input that crashed a fuzz run: a crash kills the test process, so a signal handler
/// writes "fuzz <target>: crashed on input #N (seed S)" to stderr, then passes the signal on to
/// the handler that was there before (Swift's backtracer, or the default action).
/// Replay it with `KVTIER_FUZZ_SEED=S KVTIER_FUZZ_ONLY=N`. Only async-signal-safe calls in the
/// handler: no allocation, `write(2)` of bytes prepared when the run began.
enum FuzzCrashReporter {
    /// The input running now, or -1.
    static let index = Atomic<Int>(-1)
    /// "fuzz <target>: crashed on input #", NUL-terminated, made before the run.
    nonisolated(unsafe) static var prefix: UnsafeMutablePointer<CChar>?
    nonisolated(unsafe) static var suffix: UnsafeMutablePointer<CChar>?

    static let signals = [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE]
    /// The handlers in place before `begin` (Swift's backtracer, say), put back by `end` and by
    /// the handler itself before the signal goes on to them.
    nonisolated(unsafe) static let previous: UnsafeMutablePointer<sigaction> = {
        let p = UnsafeMutablePointer<sigaction>.allocate(capacity: 6)
        p.initialize(repeating: sigaction(), count: 6)
        return p
    }()

    static func begin(target: String, seed: UInt64) {
        free(prefix)
        free(suffix)
        prefix = strdup("\nfuzz \(target): crashed on input #")
        suffix = strdup(" (replay: KVTIER_FUZZ_SEED=0x\(String(seed, radix: 16)) KVTIER_FUZZ_ONLY=<that number>)\n")
        var action = sigaction()
        action.__sigaction_handler.sa_handler = fuzzCrashSignal
        sigemptyset(&action.sa_mask)
        for (i, sig) in signals.enumerated() { sigaction(sig, &action, previous + i) }
    }

    static func end() {
        index.store(-1, ordering: .relaxed)
        for (i, sig) in signals.enumerated() { sigaction(sig, previous + i, nil) }
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
    // Hand the signal on to whoever handled it before (it is blocked until this handler returns).
    if let i = FuzzCrashReporter.signals.firstIndex(of: sig) {
        sigaction(sig, FuzzCrashReporter.previous + i, nil)
    } else {
        signal(sig, SIG_DFL)
    }
    raise(sig)
}
