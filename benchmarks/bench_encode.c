/*
 * bench_encode.c - encode throughput per core of turbo_kv_4b and the trellis codecs: the
 * best of 7 runs of 4000 vectors (uniform in [-0.5, 0.5)), timed by the thread's CPU time
 * (on a shared machine wall time counts waits for a core).  Not a test.  Build by hand from
 * the repository root after a Release build (cmake --build build):
 *
 *   cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -DTKV_HAVE_X86_KERNELS=1 -Iinclude -Ilib \
 *      benchmarks/bench_encode.c $(find build/CMakeFiles/turbokv_objs.dir -name '*.o') \
 *      -lm -lpthread -o build/bench_encode && ./build/bench_encode 64
 *
 * Argument: head_dim.  TKV_ISA picks the encoder step's kernels.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "codec/codec.h"

#include "bench_util.h"

int main(int argc, char **argv) {
    const uint32_t d = argc > 1 ? (uint32_t)atoi(argv[1]) : 64;
    const int n = 4000;
    static const char *const names[] = {"turbo_kv_4b", "turbo_kv_2b_tcq", "turbo_kv_3b_tcq",
                                        "turbo_kv_4b_tcq"};
    static float scratch[TKV_CODEC_SCRATCH_FLOATS(1024)];
    static uint8_t out[2048];
    float *x = malloc(sizeof(float) * d * (size_t)n);
    if (!x || d > 1024) {
        fprintf(stderr, "usage: %s [head_dim <= 1024]\n", argv[0]);
        return 2;
    }
    srand(1);
    for (size_t i = 0; i < (size_t)d * n; i++) {
        x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    }
    for (int c = 0; c < 4; c++) {
        struct tkv_codec C;
        if (tkv_codec_init(&C, tkv_codec_desc_find(names[c])->id, d, 42) != TKV_OK) {
            fprintf(stderr, "%s: head_dim %u not supported\n", names[c], d);
            return 1;
        }
        double best = 1e9;
        for (int r = 0; r < 7; r++) {
            const double t0 = cpu_s();
            for (int i = 0; i < n; i++) {
                tkv_codec_encode_one(&C, x + (size_t)i * d, out, scratch);
            }
            const double t = cpu_s() - t0;
            best = t < best ? t : best;
        }
        printf("%-16s d=%-4u %8.0f vectors/s per core\n", names[c], d, n / best);
        tkv_codec_release(&C);
    }
    free(x);
    return 0;
}
