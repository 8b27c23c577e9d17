/*
 * bench_matmul.c - single-thread speed of the matmul kernels on SmolLM2-135M shapes, every
 * ISA side by side.  Not a test.  Build by hand from the repository root after a Release
 * build of the library objects (cmake --build build):
 *
 *   cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -DTKV_HAVE_X86_KERNELS=1 -Iinclude -Ilib \
 *      benchmarks/bench_matmul.c \
 *      $(find build/CMakeFiles/turbokv_objs.dir -name '*.o') -lm -lpthread -o build/bench_matmul && ./build/bench_matmul
 *
 * Prints, per (type, shape, n_tok, ISA): best-of-9 microseconds per call, weight GB/s and GFLOP/s
 * (2 * rows * cols * tokens).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/rng.h"
#include "tensor/formats.h"
#include "tensor/matmul.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
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
    for (int k = 0; tkv_matmul_isa_names[k]; k++) {
        const tkv_matmul_kernels *kern = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[k]);
        if (!kern) {
            continue;
        }
        /* calibrate to ~20 ms per trial, report the best of 9 trials: this machine class
         * (shared VMs) shows +-50% noise between single runs */
        int iters = 1;
        for (;;) {
            const double t0 = now_s();
            for (int i = 0; i < iters; i++) {
                tkv_matmul(kern, type, W, rb, rows, cols, X, n_tok, Y, 0, rows, scratch);
            }
            if (now_s() - t0 > 0.02) {
                break;
            }
            iters *= 2;
        }
        double t = 1e30;
        for (int trial = 0; trial < 9; trial++) {
            const double t0 = now_s();
            for (int i = 0; i < iters; i++) {
                tkv_matmul(kern, type, W, rb, rows, cols, X, n_tok, Y, 0, rows, scratch);
            }
            const double dt = now_s() - t0;
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

int main(int argc, char **argv) {
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
