import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Aborts the process when one input runs far past its budget (an endless loop would otherwise
/// stall the test run with no word of which input did it).
final class FuzzWatchdog: Sendable {
    private struct State {
        var index: Int?
        var since = ContinuousClock.now
        var stopped = false
    }
    private let state = Mutex(State())
    private let target: String
    private let seed: UInt64
    private let limitSeconds: Double

    init(target: String, seed: UInt64, limitSeconds: Double) {
        self.target = target
        self.seed = seed
        self.limitSeconds = limitSeconds
    }

    func start() {
        let thread = Thread { [self] in
            while true {
                usleep(200_000)
                let (stopped, index, since) = state.withLock { ($0.stopped, $0.index, $0.since) }
                if stopped { return }
                if let index, (ContinuousClock.now - since) / .seconds(1) > limitSeconds {
                    let message = "fuzz \(target): input #\(index) still running after \(limitSeconds) s; replay with KVTIER_FUZZ_SEED=0x\(String(seed, radix: 16)) KVTIER_FUZZ_ONLY=\(index)\n"
                    FileHandle.standardError.write(Data(message.utf8))
                    abort()
                }
            }
        }
        thread.start()
    }

    func begin(_ index: Int) { state.withLock { $0.index = index; $0.since = .now } }
    func end() { state.withLock { $0.index = nil } }
    func stop() { state.withLock { $0.stopped = true } }
}
