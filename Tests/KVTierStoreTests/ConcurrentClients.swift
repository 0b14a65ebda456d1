import Foundation

/// Runs `body(client)` for `count` clients on `count` real threads at once and waits for all.
///
/// Not `DispatchQueue.concurrentPerform`: on a 2-core machine it runs only as many iterations at
/// once as there are cores, often on one thread, so races (and ThreadSanitizer) go unseen.
/// The body is released on the caller's thread, so what it captured (a store, say) is not
/// deinitialised by a finishing worker thread, perhaps while the process exits.
func onConcurrentThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Work: @unchecked Sendable {
        // Set before the threads start, cleared after they have all left `run`.
        var body: (@Sendable (Int) -> Void)?
        init(_ body: @escaping @Sendable (Int) -> Void) { self.body = body }
        func run(_ client: Int) { body?(client) }
    }
    let work = Work(body)
    let done = DispatchGroup()
    for client in 0..<count {
        done.enter()
        Thread {
            work.run(client)
            done.leave()
        }.start()
    }
    done.wait()
    work.body = nil
}
