/*
 * bench_matmul.c - speed of the matmul kernels.  Not a test.  Build by hand from the
 * repository root after a Release build of the library objects (cmake --build build):
 *
 *   cc -std=c11 -O3 -D_POSIX_C_SOURCE=200809L -DTKV_HAVE_X86_KERNELS=1 -Iinclude -Ilib \
 *      benchmarks/bench_matmul.c \
 *      $(find build/CMakeFiles/turbokv_objs.dir -name '*.o') -lm -lpthread -o build/bench_matmul
 *
 *   ./build/bench_matmul [quick]   kernels in cache, SmolLM2-135M shapes, every ISA side by
 *                                  side: best-of-9 us per call, weight GB/s, GFLOP/s
 *   ./build/bench_matmul stream    decode from DRAM: one matrix-vector product over a weight
 *                                  matrix of ~192 MB (6x the last-level cache here) per format,
 *                                  1 and 2 threads (split by rows, as forward.c does; 1 thread
 *                                  timed in thread CPU time, 2 in wall time), against
 *                                  a streaming read of the same bytes with the same threads
 *                                  measured interleaved with it (the bandwidth bound)
 *   ./build/bench_matmul error     rounding of every ISA's kernels, unpacked and packed, against
 *                                  the scalar reference: rms and max over 512 rows (x 1536,
 *                                  one token) of |y - y_ref| / sum_i |w_i x_i| (the quantity
 *                                  the kernel tests bound by 1e-5), Gaussian weights quantized
 *                                  by the reference quantizers
 *   ./build/bench_matmul gemm      prefill: X (n_tok, 1536) W^T for W (576, 1536) and
 *                                  X (n_tok, 576) W^T for W (1536, 576), n_tok 64 and 512,
 *                                  1 and 2 threads, GFLOP/s (2 * rows * cols * tokens)
 *                                  against the machine's measured int8 dot-product peak
 * The chosen ISA (or TKV_ISA) runs in the stream and gemm modes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "base/alloc.h"
#include "base/rng.h"
#include "base/threads.h"
#include "tensor/formats.h"
#include "tensor/matmul.h"

#include "bench_util.h"

/* Only the formats named in TKV_BENCH_TYPES (comma-separated, e.g. "q4_1,q6_k") if set. */
static int type_selected(int32_t type) {
    const char *sel = getenv("TKV_BENCH_TYPES");
    if (sel == NULL || *sel == 0) {
        return 1;
    }
    const char *name = tkv_type_get(type)->name;
    const size_t n = strlen(name);
    for (const char *p = sel; (p = strstr(p, name)) != NULL; p += n) {
        if ((p == sel || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) {
            return 1;
        }
    }
    return 0;
}

static void bench(int32_t type, int64_t rows, int64_t cols, int64_t n_tok) {
    tkv_rng rng;
    tkv_rng_init(&rng, 1);
    size_t rb = 0;
    if (tkv_type_row_bytes(type, cols, &rb) != TKV_OK) {
        return;
    }
    float *wf = malloc((size_t)cols * sizeof(float));
    uint8_t *W = tkv_calloc_aligned((size_t)rows, rb);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++) {
            wf[i] = 0.05f * (float)tkv_rng_gaussian(&rng);
        }
        tkv_quantize_row(type, wf, W + (size_t)r * rb, cols);
    }
    float *X = tkv_calloc_aligned((size_t)(n_tok * cols), sizeof(float));
    float *Y = tkv_calloc_aligned((size_t)(n_tok * rows), sizeof(float));
    for (int64_t i = 0; i < n_tok * cols; i++) {
        X[i] = (float)tkv_rng_gaussian(&rng);
    }
    void *scratch = tkv_calloc_aligned(tkv_matmul_scratch_bytes(type, cols, n_tok) + 1, 1);
    if (!type_selected(type)) {
        return;
    }
    for (int k = 0; tkv_matmul_isa_names[k]; k++) {
        const tkv_matmul_kernels *kern = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[k]);
        if (!kern) {
            continue;
        }
        /* calibrate to ~20 ms per trial, report the best of 9 trials: this machine class
         * (shared VMs) shows +-50% noise between single runs */
        int iters = 1;
        for (;;) {
            const double t0 = cpu_s();
            for (int i = 0; i < iters; i++) {
                tkv_matmul(kern, type, W, rb, rows, cols, X, n_tok, Y, 0, rows, scratch);
            }
            if (cpu_s() - t0 > 0.02) {
                break;
            }
            iters *= 2;
        }
        double t = 1e30;
        for (int trial = 0; trial < 9; trial++) {
            const double t0 = cpu_s();
            for (int i = 0; i < iters; i++) {
                tkv_matmul(kern, type, W, rb, rows, cols, X, n_tok, Y, 0, rows, scratch);
            }
            const double dt = cpu_s() - t0;
            t = dt < t ? dt : t;
        }
        const double per = t / iters;
        printf("%-5s %5lld x %5lld tok %3lld %-11s %10.1f us %7.2f GB/s %7.2f GFLOP/s\n",
               tkv_type_get(type)->name, (long long)rows, (long long)cols, (long long)n_tok,
               kern->isa, per * 1e6, (double)rows * (double)rb / per * 1e-9,
               2.0 * (double)rows * (double)cols * (double)n_tok / per * 1e-9);
    }
    free(wf);
    tkv_free_aligned(W);
    tkv_free_aligned(X);
    tkv_free_aligned(Y);
    tkv_free_aligned(scratch);
}

/* ---- stream / gemm modes: the chosen ISA over the thread pool ------------------------ */

typedef struct {
    const tkv_matmul_kernels *k;
    int32_t type;
    const uint8_t *W;
    size_t rb;
    int64_t rows, cols, n_tok;
    const void *scratch;
    float *Y;
    uint64_t sink[2];
    const void *Wp; /* packed copy, or NULL */
} mm_job;

static void mm_task(void *p, int ith, int nth) {
    mm_job *j = p;
    int64_t b, e;
    tkv_split_range(j->rows, ith, nth, &b, &e);
    if (j->Wp) {
        tkv_matmul_rows_packed(j->k, j->type, j->Wp, j->rows, j->cols, j->n_tok, j->scratch, j->Y,
                               b, e);
    } else {
        tkv_matmul_rows(j->k, j->type, j->W, j->rb, j->rows, j->cols, NULL, j->n_tok, j->scratch,
                        j->Y, b, e);
    }
}

/* The bandwidth bound: each part sums its share of the weight bytes as 64-bit words in eight
 * lanes (vectorized by the compiler), as benchmarks/bench_bw.c does. */
static void read_task(void *p, int ith, int nth) {
    mm_job *j = p;
    const size_t words = (size_t)j->rows * j->rb / 8;
    int64_t b, e;
    tkv_split_range((int64_t)(words / 8), ith, nth, &b, &e);
    const uint64_t *w = (const uint64_t *)j->W;
    uint64_t s[8] = {0};
    for (size_t i = (size_t)b * 8; i < (size_t)e * 8; i += 8) {
        for (int k = 0; k < 8; k++) {
            s[k] += w[i + k];
        }
    }
    j->sink[ith & 1] += s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}


/* A (rows, cols) matrix of `type` made of 64 distinct random rows repeated: the speed of a
 * kernel does not depend on the values, and quantizing 192 MB with the reference
 * quantizers would take longer than the measurement. */
static uint8_t *random_matrix(int32_t type, int64_t rows, int64_t cols, size_t *rb) {
    tkv_rng rng;
    tkv_rng_init(&rng, 7);
    if (tkv_type_row_bytes(type, cols, rb) != TKV_OK) {
        return NULL;
    }
    uint8_t *W = tkv_calloc_aligned((size_t)rows, *rb);
    float *wf = malloc((size_t)cols * sizeof(float));
    if (!W || !wf) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t r = 0; r < rows; r++) {
        if (r < 64) {
            for (int64_t i = 0; i < cols; i++) {
                wf[i] = 0.05f * (float)tkv_rng_gaussian(&rng);
            }
            tkv_quantize_row(type, wf, W + (size_t)r * *rb, cols);
        } else {
            memcpy(W + (size_t)r * *rb, W + (size_t)(r % 64) * *rb, *rb);
        }
    }
    free(wf);
    return W;
}

static void stream_mode(int rounds) {
    static const int32_t types[] = {TKV_TYPE_Q4_0, TKV_TYPE_Q4_1, TKV_TYPE_Q8_0, TKV_TYPE_Q2_K,
                                    TKV_TYPE_Q3_K, TKV_TYPE_Q4_K, TKV_TYPE_Q5_K, TKV_TYPE_Q6_K};
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    tkv_pool *pools[2];
    tkv_pool_create(1, &pools[0]);
    tkv_pool_create(2, &pools[1]);
    const int64_t cols = 1536;
    const char *mb_env = getenv("TKV_BENCH_MB");
    printf("decode from DRAM: one matvec over a (rows, %lld) matrix of ~%.0f MB, isa %s; median "
           "of %d interleaved rounds; p = packed layout\n",
           (long long)cols, mb_env ? atof(mb_env) : 192.0, k->isa, rounds);
    printf("%-5s %3s %10s %10s %10s %8s\n", "type", "thr", "kernel", "read", "GB/s", "of bound");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int32_t type = types[ti];
        if (!type_selected(type)) {
            continue;
        }
        size_t rb;
        tkv_type_row_bytes(type, cols, &rb);
        /* TKV_BENCH_MB overrides the size (e.g. 1 for an L2-resident matrix) */
        const char *mb = getenv("TKV_BENCH_MB");
        const double bytes_want = (mb ? atof(mb) : 192.0) * 1048576.0;
        const int64_t rows =
            (int64_t)(bytes_want / (double)rb) < 64 ? 64 : (int64_t)(bytes_want / (double)rb);
        uint8_t *W = random_matrix(type, rows, cols, &rb);
        float *x = tkv_calloc_aligned((size_t)cols, sizeof(float));
        float *Y = tkv_calloc_aligned((size_t)rows, sizeof(float));
        void *scratch = tkv_calloc_aligned(tkv_matmul_scratch_bytes(type, cols, 1) + 1, 1);
        tkv_rng rng;
        tkv_rng_init(&rng, 3);
        for (int64_t i = 0; i < cols; i++) {
            x[i] = (float)tkv_rng_gaussian(&rng);
        }
        tkv_matmul_prepare(k, type, cols, x, 1, scratch);
        /* the packed layout (matmul.h) when the kernels have one: rows rounded down to 16 */
        const int64_t prows = rows / TKV_MM_PACK_ROWS * TKV_MM_PACK_ROWS;
        const size_t pbytes = tkv_matmul_packed_bytes(k, type, prows, cols);
        void *Wp = pbytes ? tkv_calloc_aligned(pbytes, 1) : NULL;
        if (Wp) {
            tkv_matmul_pack(type, W, rb, prows, cols, Wp);
        }
        mm_job job = {k, type, W, rb, rows, cols, 1, scratch, Y, {0, 0}, NULL};
        /* the packed copy's own bytes (the K-quants': 4 more per super-block) */
        mm_job pjob = {k, type, Wp, pbytes / (prows ? prows : 1), prows, cols, 1, scratch, Y, {0, 0}, Wp};
        double t_mm[2][64], t_rd[2][64], t_pk[2][64], t_prd[2][64];
        for (int r = 0; r < rounds; r++) {
            for (int nt = 0; nt < 2; nt++) {
                double (*clock)(void) = nt == 0 ? cpu_s : now_s;
                double t0 = clock();
                tkv_pool_run(pools[nt], read_task, &job);
                t_rd[nt][r] = clock() - t0;
                t0 = clock();
                tkv_pool_run(pools[nt], mm_task, &job);
                t_mm[nt][r] = clock() - t0;
                if (Wp) {
                    t0 = clock();
                    tkv_pool_run(pools[nt], read_task, &pjob);
                    t_prd[nt][r] = clock() - t0;
                    t0 = clock();
                    tkv_pool_run(pools[nt], mm_task, &pjob);
                    t_pk[nt][r] = clock() - t0;
                }
            }
        }
        for (int pass = 0; pass < (Wp ? 2 : 1); pass++) {
            const double bytes = pass ? (double)pbytes : (double)rows * (double)rb;
            for (int nt = 0; nt < 2; nt++) {
                double *tmv = pass ? t_pk[nt] : t_mm[nt], *trv = pass ? t_prd[nt] : t_rd[nt];
                qsort(tmv, (size_t)rounds, sizeof(double), cmp_double);
                qsort(trv, (size_t)rounds, sizeof(double), cmp_double);
                const double tm = tmv[rounds / 2], tr = trv[rounds / 2];
                printf("%-5s%s %3d %8.2f ms %7.2f ms %10.2f %7.0f%%\n", tkv_type_get(type)->name,
                       pass ? "p" : " ", nt + 1, tm * 1e3, tr * 1e3, bytes / tm * 1e-9,
                       100.0 * tr / tm);
            }
        }
        tkv_free_aligned(Wp);
        if (job.sink[0] == 42) {
            fprintf(stderr, "!");
        }
        tkv_free_aligned(W);
        tkv_free_aligned(x);
        tkv_free_aligned(Y);
        tkv_free_aligned(scratch);
    }
    tkv_pool_free(pools[0]);
    tkv_pool_free(pools[1]);
}

#if defined(__x86_64__)
/* int8 dot-product peak of one core: 16 independent vpdpbusd chains (enough to cover the
 * latency; unrolled so they stay in registers) of 64 u8 x s8 products each, counted as 2
 * ops per product. */
__attribute__((target("avx512f,avx512vnni"))) static double int8_peak_gops(void) {
    __m512i acc[16];
    for (int i = 0; i < 16; i++) {
        acc[i] = _mm512_set1_epi32(i);
    }
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    __asm__ volatile("" : "+v"(a), "+v"(b)); /* opaque operands: nothing to fold */
    const long iters = 20000000;
    const double t0 = cpu_s();
    for (long it = 0; it < iters; it++) {
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) {
            acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
        }
    }
    const double dt = cpu_s() - t0;
    int sink = 0;
    for (int i = 0; i < 16; i++) {
        sink += _mm_cvtsi128_si32(_mm512_castsi512_si128(acc[i]));
    }
    if (sink == 42) {
        fprintf(stderr, "!");
    }
    return (double)iters * 16 * 64 * 2 / dt * 1e-9;
}
#endif

static void gemm_mode(int rounds) {
    static const int32_t types[] = {TKV_TYPE_Q4_0, TKV_TYPE_Q4_1, TKV_TYPE_Q8_0, TKV_TYPE_Q2_K,
                                    TKV_TYPE_Q3_K, TKV_TYPE_Q4_K, TKV_TYPE_Q5_K, TKV_TYPE_Q6_K};
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    double peak = 0.0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni")) {
        peak = int8_peak_gops();
    }
#endif
    tkv_pool *pools[2];
    tkv_pool_create(1, &pools[0]);
    tkv_pool_create(2, &pools[1]);
    printf("prefill GEMM, isa %s; int8 vpdpbusd peak of one core %.0f GOP/s; median of %d "
           "interleaved rounds\n",
           k->isa, peak, rounds);
    printf("%-5s %11s %5s %3s %10s %9s %8s\n", "type", "W", "n_tok", "thr", "time", "GFLOP/s",
           "of peak");
    static const int64_t shapes[2][2] = {{576, 1536}, {1536, 576}};
    static const int64_t toks[] = {64, 512};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        for (int si = 0; si < 2; si++) {
            const int32_t type = types[ti];
            if (!type_selected(type)) {
                continue;
            }
            const int64_t rows = shapes[si][0], cols = shapes[si][1];
            if (cols % tkv_type_get(type)->block_elems) {
                continue;
            }
            size_t rb;
            uint8_t *W = random_matrix(type, rows, cols, &rb);
            for (size_t ni = 0; ni < sizeof toks / sizeof toks[0]; ni++) {
                const int64_t n_tok = toks[ni];
                float *X = tkv_calloc_aligned((size_t)(n_tok * cols), sizeof(float));
                float *Y = tkv_calloc_aligned((size_t)(n_tok * rows), sizeof(float));
                void *scratch =
                    tkv_calloc_aligned(tkv_matmul_scratch_bytes(type, cols, n_tok) + 1, 1);
                tkv_rng rng;
                tkv_rng_init(&rng, 3);
                for (int64_t i = 0; i < n_tok * cols; i++) {
                    X[i] = (float)tkv_rng_gaussian(&rng);
                }
                const size_t pbytes = tkv_matmul_packed_bytes(k, type, rows, cols);
                void *Wp = pbytes ? tkv_calloc_aligned(pbytes, 1) : NULL;
                if (Wp) {
                    tkv_matmul_pack(type, W, rb, rows, cols, Wp);
                }
                double t[2][2][64];
                for (int r = 0; r < rounds; r++) {
                    for (int pass = 0; pass < (Wp ? 2 : 1); pass++) {
                        mm_job job = {k,
                                      type,
                                      W,
                                      rb,
                                      rows,
                                      cols,
                                      n_tok,
                                      scratch,
                                      Y,
                                      {0, 0},
                                      pass ? Wp : NULL};
                        for (int nt = 0; nt < 2; nt++) {
                            double (*clock)(void) = nt == 0 ? cpu_s : now_s;
                            const double t0 = clock();
                            tkv_matmul_prepare(k, type, cols, X, n_tok, scratch);
                            tkv_pool_run(pools[nt], mm_task, &job);
                            t[pass][nt][r] = clock() - t0;
                        }
                    }
                }
                const double flop = 2.0 * (double)rows * (double)cols * (double)n_tok;
                for (int pass = 0; pass < (Wp ? 2 : 1); pass++) {
                    for (int nt = 0; nt < 2; nt++) {
                        qsort(t[pass][nt], (size_t)rounds, sizeof(double), cmp_double);
                        const double tm = t[pass][nt][rounds / 2];
                        printf("%-5s%s %5lldx%-5lld %5lld %3d %7.0f us %9.1f %7.0f%%\n",
                               tkv_type_get(type)->name, pass ? "p" : " ", (long long)rows,
                               (long long)cols, (long long)n_tok, nt + 1, tm * 1e6,
                               flop / tm * 1e-9,
                               peak > 0 ? 100.0 * flop / tm * 1e-9 / (peak * (nt + 1)) : 0.0);
                    }
                }
                tkv_free_aligned(Wp);
                tkv_free_aligned(X);
                tkv_free_aligned(Y);
                tkv_free_aligned(scratch);
            }
            tkv_free_aligned(W);
        }
    }
    tkv_pool_free(pools[0]);
    tkv_pool_free(pools[1]);
}

/* ---- error mode: rounding against the scalar reference ------------------------------- */

static void error_mode(void) {
    static const int32_t types[] = {TKV_TYPE_Q4_0, TKV_TYPE_Q4_1, TKV_TYPE_Q8_0, TKV_TYPE_Q2_K,
                                    TKV_TYPE_Q3_K, TKV_TYPE_Q4_K, TKV_TYPE_Q5_K, TKV_TYPE_Q6_K};
    const int64_t rows = 512, cols = 1536;
    printf("%-5s %-10s %-8s %10s %10s\n", "type", "isa", "layout", "rms", "max");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int32_t type = types[ti];
        if (!type_selected(type)) {
            continue;
        }
        tkv_rng rng;
        tkv_rng_init(&rng, 5);
        size_t rb;
        tkv_type_row_bytes(type, cols, &rb);
        uint8_t *W = tkv_calloc_aligned((size_t)rows, rb);
        float *wd = malloc((size_t)cols * sizeof(float)), *x = malloc((size_t)cols * sizeof(float));
        float *yref = malloc((size_t)rows * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
        double *terms = malloc((size_t)rows * sizeof(double));
        void *scratch = tkv_calloc_aligned(tkv_matmul_scratch_bytes(type, cols, 1), 1);
        for (int64_t i = 0; i < cols; i++) {
            x[i] = (float)tkv_rng_gaussian(&rng);
        }
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t i = 0; i < cols; i++) {
                wd[i] = 0.05f * (float)tkv_rng_gaussian(&rng);
            }
            tkv_quantize_row(type, wd, W + (size_t)r * rb, cols);
            tkv_dequantize_row(type, W + (size_t)r * rb, wd, cols);
            double a = 0.0;
            for (int64_t i = 0; i < cols; i++) {
                a += fabs((double)wd[i] * x[i]);
            }
            terms[r] = a;
        }
        tkv_matmul(&tkv_matmul_kernels_scalar, type, W, rb, rows, cols, x, 1, yref, 0, rows,
                   scratch);
        for (int k = 0; tkv_matmul_isa_names[k]; k++) {
            const tkv_matmul_kernels *kern = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[k]);
            for (int packed = 0; kern && packed < 2; packed++) {
                const size_t pb = tkv_matmul_packed_bytes(kern, type, rows, cols);
                if (packed && pb == 0) {
                    continue;
                }
                if (packed) {
                    void *Wp = tkv_calloc_aligned(pb, 1);
                    tkv_matmul_pack(type, W, rb, rows, cols, Wp);
                    tkv_matmul_prepare(kern, type, cols, x, 1, scratch);
                    tkv_matmul_rows_packed(kern, type, Wp, rows, cols, 1, scratch, y, 0, rows);
                    tkv_free_aligned(Wp);
                } else {
                    tkv_matmul(kern, type, W, rb, rows, cols, x, 1, y, 0, rows, scratch);
                }
                double s2 = 0.0, mx = 0.0;
                for (int64_t r = 0; r < rows; r++) {
                    const double e = fabs((double)y[r] - yref[r]) / terms[r];
                    s2 += e * e;
                    mx = e > mx ? e : mx;
                }
                printf("%-5s %-10s %-8s %10.2e %10.2e\n", tkv_type_get(type)->name, kern->isa,
                       packed ? "packed" : "unpacked", sqrt(s2 / (double)rows), mx);
            }
        }
        tkv_free_aligned(W);
        tkv_free_aligned(scratch);
        free(wd);
        free(x);
        free(yref);
        free(y);
        free(terms);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "stream") == 0) {
        stream_mode(argc > 2 ? atoi(argv[2]) : 9);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "gemm") == 0) {
        gemm_mode(argc > 2 ? atoi(argv[2]) : 9);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "error") == 0) {
        error_mode();
        return 0;
    }
    const int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    /* SmolLM2-135M: d_model 576, d_ff 1536; attention q/o 576x576, k/v 192x576 */
    static const int32_t types[] = {TKV_TYPE_Q4_1, TKV_TYPE_Q8_0, TKV_TYPE_F32, TKV_TYPE_F16,
                                    TKV_TYPE_Q4_0, TKV_TYPE_Q5_1, TKV_TYPE_Q4_K, TKV_TYPE_Q6_K};
    const int n_types = quick ? 2 : (int)(sizeof types / sizeof types[0]);
    for (int i = 0; i < n_types; i++) {
        const int kq = tkv_type_get(types[i])->block_elems == TKV_QK_K;
        bench(types[i], 1536, kq ? 512 : 576, 1);  /* ffn up/gate, decode */
        bench(types[i], 576, 1536, 1);             /* ffn down, decode */
        bench(types[i], 1536, kq ? 512 : 576, 64); /* prefill */
    }
    return 0;
}
