/*
 * bench_bw.c - streaming read bandwidth of this machine: the bound every decode-time
 * speed claim is measured against (a decoded token reads every weight once plus the
 * whole KV cache, so its time is at least bytes / bandwidth).
 *
 * For 1 and 2 threads (each pinned to nothing, each reading its own buffer) and buffer
 * sizes from "cache" (8-32 MB per thread: L3 / L2 resident) to "DRAM" (512 MB per thread,
 * far beyond the last-level cache), it prints the aggregate read bandwidth in GB/s
 * (10^9 bytes/s).  Each buffer is read front to back with 64-bit loads summed into eight
 * independent lanes (the compiler vectorizes the loop), as a kernel that streams codes or
 * weights does.  Configurations are interleaved: round r measures every (threads, size)
 * once, in a rotated order, and the median over rounds is reported.
 *
 * Build, from the repository root:
 *     cc -O3 -std=c11 -D_POSIX_C_SOURCE=200809L benchmarks/bench_bw.c -lpthread \
 *        -o build/bench_bw && ./build/bench_bw
 * or: cmake -S benchmarks -B build-bench && cmake --build build-bench && ./build-bench/bench_bw
 * Options: --rounds N (default 9), --quick (16 MB and 512 MB only).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sum of the buffer's 64-bit words; the result is kept so the reads cannot be dropped. */
static uint64_t read_sum(const uint64_t *p, size_t words) {
    uint64_t s[8] = {0};
    for (size_t i = 0; i + 8 <= words; i += 8) {
        for (int k = 0; k < 8; k++) {
            s[k] += p[i + k];
        }
    }
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

typedef struct {
    const uint64_t *buf;
    size_t words;
    int passes;
    pthread_barrier_t *start;
    uint64_t sink;
} bw_job;

static void *bw_thread(void *p) {
    bw_job *j = p;
    pthread_barrier_wait(j->start);
    for (int r = 0; r < j->passes; r++) {
        j->sink += read_sum(j->buf, j->words);
    }
    return NULL;
}

/* Aggregate GB/s of nt threads each reading `passes` times its own buffer. */
static double measure(uint64_t *const *bufs, int nt, size_t bytes, int passes) {
    pthread_t th[2];
    bw_job jobs[2];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)nt + 1);
    for (int t = 0; t < nt; t++) {
        jobs[t] = (bw_job){bufs[t], bytes / 8, passes, &start, 0};
        pthread_create(&th[t], NULL, bw_thread, &jobs[t]);
    }
    pthread_barrier_wait(&start);
    const double t0 = now_s();
    uint64_t sink = 0;
    for (int t = 0; t < nt; t++) {
        pthread_join(th[t], NULL);
        sink += jobs[t].sink;
    }
    const double dt = now_s() - t0;
    pthread_barrier_destroy(&start);
    if (sink == 42) { /* never: keeps the sums alive */
        fprintf(stderr, "!");
    }
    return (double)nt * (double)bytes * passes / dt * 1e-9;
}

int main(int argc, char **argv) {
    int rounds = 9, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else {
            fprintf(stderr, "usage: %s [--rounds N] [--quick]\n", argv[0]);
            return 2;
        }
    }
    rounds = rounds < 1 ? 1 : rounds > 64 ? 64 : rounds;
    const size_t MB = 1u << 20;
    const size_t all_sizes[] = {8 * MB, 16 * MB, 32 * MB, 512 * MB};
    const size_t quick_sizes[] = {16 * MB, 512 * MB};
    const size_t *sizes = quick ? quick_sizes : all_sizes;
    const int ns = quick ? 2 : 4;
    uint64_t *bufs[2];
    for (int t = 0; t < 2; t++) {
        bufs[t] = aligned_alloc(64, sizes[ns - 1]);
        if (!bufs[t]) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < sizes[ns - 1] / 8; i++) { /* touch every page, non-zero data */
            bufs[t][i] = i * 0x9E3779B97F4A7C15ull;
        }
    }
    enum { NCFG = 8 };
    double gbs[NCFG][64];
    const int ncfg = 2 * ns;
    for (int r = -1; r < rounds; r++) { /* round -1 warms up */
        for (int k = 0; k < ncfg; k++) {
            const int c = (k + (r < 0 ? 0 : r)) % ncfg;
            const int nt = 1 + c / ns;
            const size_t bytes = sizes[c % ns];
            /* about 0.5 GB read per thread per sample */
            const int passes = (int)((512 * MB + bytes - 1) / bytes);
            const double g = measure(bufs, nt, bytes, passes);
            if (r >= 0) {
                gbs[c][r] = g;
            }
        }
    }
    printf("streaming read bandwidth, GB/s (1e9 B/s) aggregate over the threads, median of %d "
           "interleaved rounds [min-max]\n",
           rounds);
    printf("%-10s %-8s %10s %18s %12s\n", "threads", "MB/thr", "GB/s", "[min - max]",
           "GB/s/thread");
    for (int c = 0; c < ncfg; c++) {
        const int nt = 1 + c / ns;
        qsort(gbs[c], (size_t)rounds, sizeof(double), cmp_double);
        const double med =
            rounds % 2 ? gbs[c][rounds / 2] : 0.5 * (gbs[c][rounds / 2 - 1] + gbs[c][rounds / 2]);
        printf("%-10d %-8zu %10.1f   [%5.1f - %5.1f] %12.1f %s\n", nt, sizes[c % ns] / MB, med,
               gbs[c][0], gbs[c][rounds - 1], med / nt,
               sizes[c % ns] >= 256 * MB ? "(DRAM)" : "(cache)");
    }
    free(bufs[0]);
    free(bufs[1]);
    return 0;
}
