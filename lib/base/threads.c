/*
 * threads.c - a fixed-size pthread pool built for many short parallel sections.
 *
 * A decode step runs a few hundred parallel sections of 20-200 us each, so waking
 * sleeping threads through a condition variable every time (tens of us per wake)
 * would cost as much as the work.  Workers therefore spin on an atomic generation
 * counter for a while after each section, and only then sleep on the condition
 * variable.  A run publishes its job under the mutex and broadcasts, so a worker
 * that went to sleep is always woken.
 *
 * The n parts of a section are claimed, not assigned: every thread, the caller
 * included, takes the next unclaimed part until none is left.  On a busy machine a
 * worker that is not scheduled simply claims nothing and the caller does its part,
 * instead of the caller waiting a whole time slice for it.  A claim is one atomic
 * compare-and-swap on (generation << 32 | next part), so a late worker can never take
 * a part of a newer section with an older job.
 */
#include "base/threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/status.h"

/* Spin iterations before sleeping (some tens of us): longer than the gaps between
 * the parallel sections of one forward pass, short enough not to steal much from
 * other processes when the machine is busy. */
#define TKV_POOL_SPIN 20000

struct tkv_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    _Atomic uint64_t generation;
    _Atomic uint64_t claim;  /* (generation << 32) | next unclaimed part */
    _Atomic int done;        /* parts finished in the current section */
    _Atomic int stop;
    /* atomic because a late worker may read them while the caller publishes the next
     * section's job; the claim check then keeps it from running that job */
    _Atomic(tkv_task_fn) fn;
    void *_Atomic ctx;
};

typedef struct {
    tkv_pool *pool;
} tkv_worker_arg;

static inline void tkv_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("pause");
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Run unclaimed parts of section `gen` until none is left. */
static void tkv_pool_work(tkv_pool *pool, uint64_t gen, tkv_task_fn fn, void *ctx) {
    uint64_t c = atomic_load_explicit(&pool->claim, memory_order_acquire);
    for (;;) {
        if ((c >> 32) != (gen & 0xffffffffu) || (int)(c & 0xffffffffu) >= pool->n) {
            return;
        }
        if (atomic_compare_exchange_weak_explicit(&pool->claim, &c, c + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, (int)(c & 0xffffffffu), pool->n);
            atomic_fetch_add_explicit(&pool->done, 1, memory_order_acq_rel);
            c = atomic_load_explicit(&pool->claim, memory_order_acquire);
        }
    }
}

static void *tkv_worker(void *p) {
    tkv_worker_arg *arg = p;
    tkv_pool *pool = arg->pool;
    free(arg);
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        for (int spin = 0; gen == seen && spin < TKV_POOL_SPIN; spin++) {
            if (atomic_load_explicit(&pool->stop, memory_order_relaxed)) {
                return NULL;
            }
            tkv_cpu_relax();
            gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->mu);
            while (!atomic_load(&pool->stop) && atomic_load(&pool->generation) == seen) {
                pthread_cond_wait(&pool->wake, &pool->mu);
            }
            pthread_mutex_unlock(&pool->mu);
            if (atomic_load(&pool->stop)) {
                return NULL;
            }
            gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        seen = gen;
        tkv_pool_work(pool, gen, atomic_load(&pool->fn), atomic_load(&pool->ctx));
    }
}

tkv_status tkv_pool_create(int n_threads, tkv_pool **out) {
    *out = NULL;
    tkv_pool *pool = calloc(1, sizeof *pool);
    TKV_REQUIRE(pool, TKV_ERR_OUT_OF_MEMORY, "thread pool: out of memory");
    pool->n = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->claim, 0);
    atomic_init(&pool->done, 0);
    atomic_init(&pool->stop, 0);
    if (pool->n > 1) {
        pool->threads = calloc((size_t)pool->n - 1, sizeof *pool->threads);
        if (!pool->threads) {
            pool->n = 1;
            tkv_pool_free(pool);
            return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "thread pool: out of memory");
        }
        for (int i = 1; i < pool->n; i++) {
            tkv_worker_arg *arg = malloc(sizeof *arg);
            int started = arg != NULL;
            if (arg) {
                arg->pool = pool;
                started = pthread_create(&pool->threads[i - 1], NULL, tkv_worker, arg) == 0;
                if (!started) {
                    free(arg);
                }
            }
            if (!started) {
                pool->n = i; /* join only the threads that started */
                tkv_pool_free(pool);
                return tkv_fail(TKV_ERR_INTERNAL, "thread pool: cannot start thread %d", i);
            }
        }
    }
    *out = pool;
    return TKV_OK;
}

void tkv_pool_free(tkv_pool *pool) {
    if (!pool) {
        return;
    }
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    if (pool->threads) {
        for (int i = 1; i < pool->n; i++) {
            pthread_join(pool->threads[i - 1], NULL);
        }
    }
    free(pool->threads);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->wake);
    free(pool);
}

int tkv_pool_size(const tkv_pool *pool) { return pool->n; }

void tkv_pool_run(tkv_pool *pool, tkv_task_fn fn, void *ctx) {
    if (pool->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->fn, fn);
    atomic_store(&pool->ctx, ctx);
    const uint64_t gen = atomic_load_explicit(&pool->generation, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->claim, (gen & 0xffffffffu) << 32, memory_order_release);
    atomic_store_explicit(&pool->generation, gen, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    tkv_pool_work(pool, gen, fn, ctx);
    /* spin until parts other threads claimed are finished; yield if one of them was
     * descheduled, so an oversubscribed machine still makes progress */
    for (long spin = 0; atomic_load_explicit(&pool->done, memory_order_acquire) < pool->n; spin++) {
        if (spin < TKV_POOL_SPIN) {
            tkv_cpu_relax();
        } else {
            sched_yield();
        }
    }
}

int tkv_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}
