/*
 * threads.c - a fixed-size pthread pool: workers sleep on a condition variable and
 * wake for each run (generation counter), the caller takes part as thread 0 and then
 * waits until every worker has reported back.
 */
#include "base/threads.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/status.h"

struct tkv_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t done;
    uint64_t generation;
    int pending;
    int stop;
    tkv_task_fn fn;
    void *ctx;
};

typedef struct {
    tkv_pool *pool;
    int ith;
} tkv_worker_arg;

static void *tkv_worker(void *p) {
    tkv_worker_arg *arg = p;
    tkv_pool *pool = arg->pool;
    const int ith = arg->ith;
    free(arg);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool->mu);
        while (!pool->stop && pool->generation == seen) {
            pthread_cond_wait(&pool->wake, &pool->mu);
        }
        if (pool->stop) {
            pthread_mutex_unlock(&pool->mu);
            return NULL;
        }
        seen = pool->generation;
        tkv_task_fn fn = pool->fn;
        void *ctx = pool->ctx;
        pthread_mutex_unlock(&pool->mu);
        fn(ctx, ith, pool->n);
        pthread_mutex_lock(&pool->mu);
        if (--pool->pending == 0) {
            pthread_cond_signal(&pool->done);
        }
        pthread_mutex_unlock(&pool->mu);
    }
}

tkv_status tkv_pool_create(int n_threads, tkv_pool **out) {
    *out = NULL;
    tkv_pool *pool = calloc(1, sizeof *pool);
    TKV_REQUIRE(pool, TKV_ERR_OUT_OF_MEMORY, "thread pool: out of memory");
    pool->n = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    if (pool->n > 1) {
        pool->threads = calloc((size_t)pool->n - 1, sizeof *pool->threads);
        if (!pool->threads) {
            tkv_pool_free(pool);
            return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "thread pool: out of memory");
        }
        for (int i = 1; i < pool->n; i++) {
            tkv_worker_arg *arg = malloc(sizeof *arg);
            if (!arg) {
                pool->n = i;
                tkv_pool_free(pool);
                return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "thread pool: out of memory");
            }
            arg->pool = pool;
            arg->ith = i;
            if (pthread_create(&pool->threads[i - 1], NULL, tkv_worker, arg) != 0) {
                free(arg);
                pool->n = i; /* join only the threads that started */
                tkv_pool_free(pool);
                return tkv_fail(TKV_ERR_INTERNAL, "thread pool: pthread_create failed for thread %d", i);
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
    pool->stop = 1;
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
    pthread_cond_destroy(&pool->done);
    free(pool);
}

int tkv_pool_size(const tkv_pool *pool) { return pool->n; }

void tkv_pool_run(tkv_pool *pool, tkv_task_fn fn, void *ctx) {
    if (pool->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->pending = pool->n - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    fn(ctx, 0, pool->n);
    pthread_mutex_lock(&pool->mu);
    while (pool->pending > 0) {
        pthread_cond_wait(&pool->done, &pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
}

int tkv_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}
