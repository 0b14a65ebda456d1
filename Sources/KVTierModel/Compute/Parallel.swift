import Dispatch

/// Fork-join over a fixed number of workers on Dispatch's global pool.
enum Parallel {
    /// Runs `body(i)` for i in 0..<count, concurrently when count > 1, and returns when all are done.
    static func run(_ count: Int, _ body: (Int) -> Void) {
        if count <= 1 {
            body(0)
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedBox(body)
            DispatchQueue.concurrentPerform(iterations: count) { i in box.value(i) }
        }
    }

    /// The half-open share [lo, hi) of `total` items for worker `index` of `count`.
    static func share(_ total: Int, _ index: Int, _ count: Int) -> (Int, Int) {
        let lo = total * index / count
        let hi = total * (index + 1) / count
        return (lo, hi)
    }
}

/// Carries a value into a concurrent fork-join region. Callers guarantee the workers touch
/// disjoint memory (each writes only its own share); the join orders every write before the caller goes on.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
