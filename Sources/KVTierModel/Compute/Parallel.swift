import CKVTierKernels

// Unsafe-pointer fence: hands a Swift closure to the C fork-join pool.

/// Fork-join workers for the forward pass (see kvtier_pool.h): `threads - 1` pthreads that spin
/// briefly between jobs and then sleep, plus the calling thread.
///
/// A pool belongs to one `Transformer`; `run` is not reentrant.
final class WorkerPool {
    private let pool: OpaquePointer?
    let threads: Int

    init(threads: Int) {
        pool = kvt_pool_create(Int32(threads))
        self.threads = pool.map { Int(kvt_pool_threads($0)) } ?? 1
    }

    deinit {
        if let pool { kvt_pool_destroy(pool) }
    }

    /// Runs `body(i)` for i in 0..<count (count <= threads) and returns when all are done.
    /// Each `body(i)` must write only memory no other index writes.
    func run(_ count: Int, _ body: (Int) -> Void) {
        guard let pool, count > 1 else {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { body in
            var work = body
            withUnsafeMutablePointer(to: &work) { ptr in
                kvt_pool_run(
                    pool,
                    { context, index in
                        context?.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(index))
                    }, ptr, Int32(min(count, threads)))
            }
        }
    }
}

enum Parallel {
    /// The half-open share [lo, hi) of `total` items for worker `index` of `count`.
    static func share(_ total: Int, _ index: Int, _ count: Int) -> (Int, Int) {
        let lo = total * index / count
        let hi = total * (index + 1) / count
        return (lo, hi)
    }
}
