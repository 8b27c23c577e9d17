/*
 * bench_util.h - what the C benchmarks share: their clocks, their own random generator
 * (xorshift64* + Box-Muller, a fixed seed, so every run times the same data) and medians.
 * Included once by each benchmark; everything is static inline.
 */
#ifndef TKV_BENCH_UTIL_H
#define TKV_BENCH_UTIL_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* Wall time. */
static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of the calling thread: on a shared machine it leaves out the time the thread
 * waits for a core, which its wall time would count. */
static inline double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The generator's state (a benchmark may seed it before its first draw). */
static inline uint64_t *bench_rng(void) {
    static uint64_t state = 0x9E3779B97F4A7C15ULL;
    return &state;
}
/* Uniform in (0, 1]. */
static inline double urand(void) {
    uint64_t *s = bench_rng();
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return ((*s * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0) + 1e-300;
}
/* Standard normal. */
static inline float grand(void) {
    return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()));
}

static inline int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
/* Sorts v. */
static inline double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
#endif
