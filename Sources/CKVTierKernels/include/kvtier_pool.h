// A fork-join thread pool for the decoder's hot loops: workers spin briefly between jobs
// (a decode step forks ~150 times) and then sleep on a condition variable.
#ifndef KVTIER_POOL_H
#define KVTIER_POOL_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvt_pool kvt_pool;
typedef void (*kvt_pool_fn)(void *context, int index);

/// A pool of `threads` participants: the caller of kvt_pool_run plus threads-1 workers.
/// Returns NULL if threads could not be started.
kvt_pool *kvt_pool_create(int threads);
void kvt_pool_destroy(kvt_pool *pool);
int kvt_pool_threads(const kvt_pool *pool);

/// Runs fn(context, i) for i in [0, count) across the pool and returns when all are done.
/// count must be <= the pool's thread count. Not reentrant: one run at a time per pool.
void kvt_pool_run(kvt_pool *pool, kvt_pool_fn fn, void *context, int count);

#ifdef __cplusplus
}
#endif
#endif
