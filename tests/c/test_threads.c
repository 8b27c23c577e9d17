/* test_threads.c - the thread pool runs every part exactly once, many times over. */
#include <stdatomic.h>

#include "base/threads.h"
#include "check.h"

typedef struct {
    atomic_int calls;
    atomic_long sum;
    int64_t n;
} job;

static void work(void *p, int ith, int nth) {
    job *j = p;
    int64_t b, e;
    tkv_split_range(j->n, ith, nth, &b, &e);
    long s = 0;
    for (int64_t i = b; i < e; i++) {
        s += (long)i;
    }
    atomic_fetch_add(&j->sum, s);
    atomic_fetch_add(&j->calls, 1);
}

int main(void) {
    for (int threads = 1; threads <= 8; threads++) { /* 8 oversubscribes a 2-core machine */
        tkv_pool *pool;
        CHECK_OK(tkv_pool_create(threads, &pool));
        CHECK_EQ_INT(tkv_pool_size(pool), threads);
        int ok = 1;
        for (int rep = 0; rep < 500; rep++) {
            job j = {0, 0, 1000 + rep};
            tkv_pool_run(pool, work, &j);
            ok &= atomic_load(&j.calls) == threads; /* every part exactly once */
            ok &= atomic_load(&j.sum) == (long)(j.n * (j.n - 1) / 2);
        }
        CHECK_MSG(ok, "pool of %d threads lost or repeated work", threads);
        tkv_pool_free(pool);
    }
    int64_t b, e, covered = 0;
    for (int i = 0; i < 7; i++) {
        tkv_split_range(100, i, 7, &b, &e);
        covered += e - b;
    }
    CHECK_EQ_INT(covered, 100);
    CHECK(tkv_cpu_count() >= 1);
    CHECK_MAIN_END();
}
