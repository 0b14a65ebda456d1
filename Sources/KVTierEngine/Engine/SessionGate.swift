import Foundation

/// Lets one thread at a time work on a session: turns of different sessions run at once, two
/// turns (or a turn and a delete) of the same session one after the other, in arrival order of
/// the lock (no fairness beyond the condition's).
///
/// Threads: `cond` guards `busy`.
final class SessionGate: @unchecked Sendable {
    private let cond = NSCondition()
    private var busy: Set<String> = []

    /// Runs `body` while holding `session`, waiting first until no other thread holds it.
    func withSession<R>(_ session: String, _ body: () throws -> R) rethrows -> R {
        cond.withLock {
            while busy.contains(session) { cond.wait() }
            busy.insert(session)
        }
        defer {
            cond.withLock {
                busy.remove(session)
                cond.broadcast()
            }
        }
        return try body()
    }

    /// Runs `body` while holding `session` if no other thread holds it now; nil (without
    /// running `body`) if one does.
    func withSessionIfFree<R>(_ session: String, _ body: () throws -> R) rethrows -> R? {
        let free = cond.withLock { busy.insert(session).inserted }
        guard free else { return nil }
        defer {
            cond.withLock {
                busy.remove(session)
                cond.broadcast()
            }
        }
        return try body()
    }

    /// Sessions held now.
    var held: Set<String> { cond.withLock { busy } }
}
