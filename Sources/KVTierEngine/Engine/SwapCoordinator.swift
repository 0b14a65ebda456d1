import Foundation

/// Swaps running turns out of HBM when another running turn finds no page for the KV it
/// computes: HBM bounds the batch, and a session that must make room is swapped out to DRAM
/// through the tiers (never dropped, never recomputed) and swapped back layer by layer.
///
/// Every running turn holds a `Ticket`. A turn that found no free page asks `makeRoom`, which
/// picks, among the other running turns not swapped out nor already asked, the one that
/// started last (it has the least of its reply done: vLLM preempts the same way), and waits a
/// bounded time until that turn has let its pages go. The victim notices at its next step
/// (`TurnStepper.lane()`), puts below whatever of its KV is only in HBM, releases its pages and
/// calls `swappedOut`, which waits until the turn that asked has ended or is itself swapped
/// out; then the victim loads its KV back, layer by layer, and rejoins the batch.
///
/// Threads: `cond` guards the registry and every ticket's fields.
final class SwapCoordinator: @unchecked Sendable {
    /// A running turn's place in the registry (fields guarded by the coordinator's `cond`).
    final class Ticket: @unchecked Sendable {
        let session: String
        fileprivate let order: UInt64
        fileprivate var requestedBy: Ticket?
        fileprivate var swappedOut = false
        fileprivate var ended = false

        fileprivate init(session: String, order: UInt64) {
            self.session = session
            self.order = order
        }
    }

    private let cond = NSCondition()
    private var running: [Ticket] = []
    private var nextOrder: UInt64 = 0
    private var swapCount = 0

    /// Swaps done so far (tests, metrics).
    var swaps: Int { cond.withLock { swapCount } }

    func register(session: String) -> Ticket {
        cond.withLock {
            nextOrder += 1
            let t = Ticket(session: session, order: nextOrder)
            running.append(t)
            return t
        }
    }

    /// The turn has ended: turns it swapped out may come back.
    func unregister(_ t: Ticket) {
        cond.withLock {
            t.ended = true
            running.removeAll { $0 === t }
            cond.broadcast()
        }
    }

    /// Asks another running turn to swap out for `t`, and waits at most `timeout` seconds until
    /// it has. Returns whether one did (its pages may then be evicted).
    func makeRoom(for t: Ticket, timeout: Double) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        let candidates = running.filter { $0 !== t && !$0.swappedOut && $0.requestedBy == nil && !$0.ended }
        guard let victim = candidates.max(by: { $0.order < $1.order }) else { return false }
        victim.requestedBy = t
        cond.broadcast()
        let deadline = Date().addingTimeInterval(timeout)
        while !victim.swappedOut && !victim.ended && victim.requestedBy === t {
            if !cond.wait(until: deadline) { break }
        }
        if !victim.swappedOut && victim.requestedBy === t { victim.requestedBy = nil }  // too late: withdrawn
        return victim.swappedOut
    }

    /// Whether `t` has been asked to swap out (its stepper asks before every step).
    func isRequested(_ t: Ticket) -> Bool { cond.withLock { t.requestedBy != nil && !t.swappedOut } }

    /// `t` declines a request it cannot serve now (its KV is not all in a form it can put below).
    func decline(_ t: Ticket) {
        cond.withLock {
            t.requestedBy = nil
            cond.broadcast()
        }
    }

    /// `t` has let its pages go: wakes the turn that asked, then waits until that turn has ended
    /// or is itself swapped out.
    func swappedOut(_ t: Ticket) {
        cond.lock()
        defer { cond.unlock() }
        t.swappedOut = true
        swapCount += 1
        cond.broadcast()
        while let r = t.requestedBy, !r.ended, !r.swappedOut { cond.wait() }
        t.swappedOut = false
        t.requestedBy = nil
    }
}
