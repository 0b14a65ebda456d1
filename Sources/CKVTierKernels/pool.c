// Fork-join pool: a generation counter announces each job; workers spin on it for a while,
// then park on a condition variable. The caller runs index 0 itself and spins for completion.
#include "include/kvtier_pool.h"

#include <pthread.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

enum { SPIN_ITERATIONS = 200000 };

struct kvt_pool {
    int threads;
    pthread_t *ids;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    // Job description, written by the caller before it bumps `generation`.
    kvt_pool_fn fn;
    void *context;
    int count;
    unsigned generation;  // atomic
    int pending;          // atomic: workers still running the current job
    int sleeping;         // guarded by mutex
    int stop;             // atomic
};

typedef struct {
    kvt_pool *pool;
    int index;
} worker_arg;

static void *worker_main(void *p) {
    worker_arg arg = *(worker_arg *)p;
    free(p);
    kvt_pool *pool = arg.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE)) == seen &&
               !__atomic_load_n(&pool->stop, __ATOMIC_ACQUIRE)) {
            if (++spins < SPIN_ITERATIONS) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&pool->mutex);
            pool->sleeping++;
            while (__atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) == seen &&
                   !__atomic_load_n(&pool->stop, __ATOMIC_ACQUIRE)) {
                pthread_cond_wait(&pool->wake, &pool->mutex);
            }
            pool->sleeping--;
            pthread_mutex_unlock(&pool->mutex);
            spins = 0;
        }
        if (__atomic_load_n(&pool->stop, __ATOMIC_ACQUIRE)) return NULL;
        seen = gen;
        if (arg.index < pool->count) pool->fn(pool->context, arg.index);
        __atomic_sub_fetch(&pool->pending, 1, __ATOMIC_ACQ_REL);
    }
}

kvt_pool *kvt_pool_create(int threads) {
    if (threads < 1) threads = 1;
    kvt_pool *pool = calloc(1, sizeof(kvt_pool));
    if (!pool) return NULL;
    pool->threads = threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->ids = calloc((size_t)threads, sizeof(pthread_t));
    if (!pool->ids) {
        free(pool);
        return NULL;
    }
    for (int i = 1; i < threads; i++) {
        worker_arg *arg = malloc(sizeof(worker_arg));
        if (!arg) { pool->threads = i; break; }
        arg->pool = pool;
        arg->index = i;
        if (pthread_create(&pool->ids[i], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->threads = i;
            break;
        }
    }
    return pool;
}

int kvt_pool_threads(const kvt_pool *pool) { return pool->threads; }

void kvt_pool_run(kvt_pool *pool, kvt_pool_fn fn, void *context, int count) {
    if (count > pool->threads) count = pool->threads;
    if (count <= 1 || pool->threads == 1) {
        for (int i = 0; i < count; i++) fn(context, i);
        return;
    }
    pool->fn = fn;
    pool->context = context;
    pool->count = count;
    __atomic_store_n(&pool->pending, pool->threads - 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&pool->generation, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&pool->mutex);
    if (pool->sleeping > 0) pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    fn(context, 0);
    while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) > 0) CPU_RELAX();
}

void kvt_pool_destroy(kvt_pool *pool) {
    if (!pool) return;
    __atomic_store_n(&pool->stop, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->threads; i++) pthread_join(pool->ids[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->ids);
    free(pool);
}
