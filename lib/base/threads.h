/*
 * threads.h - the library's own thread pool (pthreads only, no OpenMP).
 *
 * tkv_pool_run(pool, fn, ctx) calls fn(ctx, i, n) once for every part i in 0..n-1 where
 * n is the pool's thread count, and returns when all have finished.  Parts are claimed
 * by whichever thread is free (the caller included), so a part index says which share
 * of the work and which per-part scratch to use, not which thread runs it; no two
 * calls with the same i overlap.  One run at a time per pool (a pool belongs to a
 * session).
 */
#ifndef TKV_BASE_THREADS_H
#define TKV_BASE_THREADS_H

#include <stdint.h>

#include "turbokv.h"

typedef struct tkv_pool tkv_pool;
typedef void (*tkv_task_fn)(void *ctx, int ith, int nth);

/* n_threads >= 1; 1 creates no threads at all. */
tkv_status tkv_pool_create(int n_threads, tkv_pool **out);
void tkv_pool_free(tkv_pool *pool);
int tkv_pool_size(const tkv_pool *pool);
void tkv_pool_run(tkv_pool *pool, tkv_task_fn fn, void *ctx);

/* Split [0, n) into nth nearly equal parts: part ith is [*begin, *end). */
static inline void tkv_split_range(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = n / nth, rest = n % nth;
    *begin = ith * per + (ith < rest ? ith : rest);
    *end = *begin + per + (ith < rest ? 1 : 0);
}

/* Logical CPUs available to this process (at least 1). */
int tkv_cpu_count(void);

#endif
