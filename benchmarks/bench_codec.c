/*
 * bench_codec.c - codec throughput and decode-time attention, every codec side by side.
 *
 * For head_dim 64 and 128 and a context of 1K, 8K and 32K positions it prints, per codec:
 * bytes per vector, encode and decode throughput (vectors/s, over the whole context), and
 * the time of one decode-time attention step for one query (tkv_codec_attention: scores,
 * softmax, weighted sum of V) in microseconds, plus that time as a speedup over fp32 and
 * over fp16 measured in the same run.  Attention repetitions are interleaved across codecs
 * (round r times every codec once, in a rotated order) and the median over rounds is
 * reported, so slow drifts of the machine hit every codec alike.  Single thread.
 *
 * Build (no CMake needed), from the repository root after building the library in build/:
 *     cc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -Iinclude benchmarks/bench_codec.c \
 *        -Lbuild -lturbokv -Wl,-rpath,"$PWD/build" -lm -o build/bench_codec
 *     ./build/bench_codec            # TKV_ISA=scalar|avx2|avx512 picks the kernels
 * or: cmake -S benchmarks -B build-bench && cmake --build build-bench && ./build-bench/bench_codec
 * Options: --rounds N (default 15), --quick (1K and 8K only), --codecs a,b,c (names; default
 * all), --ctx 1024,4096 (positions), --dims 64,128, --bw G (the streaming bandwidth bound in
 * GB/s from benchmarks/bench_bw.c, default 22): the "GB/s" column is the K + V code bytes
 * one attention step reads divided by its time, "of bw" that figure over G.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "turbokv.h"

#define MAX_CODECS 64

static int32_t sel[MAX_CODECS], n_sel; /* codecs to run (ids) */
static double bw_bound = 22.0;         /* GB/s */

#include "bench_util.h"

#define CHECK_TKV(expr)                                                                            \
    do {                                                                                           \
        tkv_status st_ = (expr);                                                                   \
        if (st_ != TKV_OK) {                                                                       \
            fprintf(stderr, "%s failed: %s: %s\n", #expr, tkv_status_name(st_), tkv_last_error()); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

typedef struct bench_codec {
    tkv_codec *codec;
    size_t bytes;            /* per vector */
    void *k, *v;             /* n encoded keys / values */
    double enc_vps, dec_vps; /* vectors per second */
    double *attn_us;         /* per round */
} bench_codec;

static void run_config(uint32_t d, int64_t n, int rounds) {
    const int32_t nc = n_sel;
    float *xk = malloc((size_t)n * d * sizeof *xk);
    float *xv = malloc((size_t)n * d * sizeof *xv);
    float *dec = malloc((size_t)n * d * sizeof *dec);
    float q[1024], out[1024];
    if (!xk || !xv || !dec) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    /* keys: gaussian with a per-channel scale (a few outlier channels, as in real K) */
    for (int64_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < d; j++) {
            const float ch = j % 16 == 3 ? 8.0f : 1.0f;
            xk[(size_t)i * d + j] = ch * grand();
            xv[(size_t)i * d + j] = grand();
        }
    }
    for (uint32_t j = 0; j < d; j++) {
        q[j] = grand();
    }
    bench_codec bc[MAX_CODECS];
    for (int32_t c = 0; c < nc; c++) {
        tkv_codec_params p = tkv_codec_default_params();
        p.codec = sel[c];
        p.head_dim = d;
        p.seed = 42;
        CHECK_TKV(tkv_codec_create(&p, &bc[c].codec));
        bc[c].bytes = tkv_codec_vector_bytes(bc[c].codec);
        const size_t sz = tkv_codec_encoded_size(bc[c].codec, n);
        bc[c].k = malloc(sz);
        bc[c].v = malloc(sz);
        bc[c].attn_us = malloc((size_t)rounds * sizeof(double));
        if (!bc[c].k || !bc[c].v || !bc[c].attn_us) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        double t0 = now_s();
        CHECK_TKV(tkv_codec_encode(bc[c].codec, xk, n, bc[c].k, sz));
        double t1 = now_s();
        CHECK_TKV(tkv_codec_encode(bc[c].codec, xv, n, bc[c].v, sz));
        bc[c].enc_vps = (double)n / (t1 - t0);
        t0 = now_s();
        CHECK_TKV(tkv_codec_decode(bc[c].codec, bc[c].k, sz, n, dec));
        t1 = now_s();
        bc[c].dec_vps = (double)n / (t1 - t0);
    }
    /* attention: several calls per sample for short contexts (timer resolution) */
    const int reps = n >= 8192 ? 1 : (int)(8192 / n);
    for (int r = -1; r < rounds; r++) { /* round -1 warms up */
        for (int32_t k = 0; k < nc; k++) {
            const int32_t c = (k + (r < 0 ? 0 : r)) % nc;
            const size_t sz = tkv_codec_encoded_size(bc[c].codec, n);
            double t0 = now_s();
            for (int i = 0; i < reps; i++) {
                CHECK_TKV(tkv_codec_attention(bc[c].codec, bc[c].codec, q, bc[c].k, sz, bc[c].v, sz,
                                              n, 0.0f, 0.0f, out));
            }
            double t1 = now_s();
            if (r >= 0) {
                bc[c].attn_us[r] = 1e6 * (t1 - t0) / reps;
            }
        }
    }
    double med[MAX_CODECS];
    for (int32_t c = 0; c < nc; c++) {
        med[c] = median(bc[c].attn_us, rounds);
    }
    double t32 = 0.0, t16 = 0.0;
    for (int32_t c = 0; c < nc; c++) {
        t32 = sel[c] == TKV_CODEC_FP32 ? med[c] : t32;
        t16 = sel[c] == TKV_CODEC_FP16 ? med[c] : t16;
    }
    printf("\nhead_dim %u, context %lld (%d rounds, median)\n", d, (long long)n, rounds);
    printf("%-18s %6s %12s %12s %11s %9s %9s %7s %6s\n", "codec", "B/vec", "encode v/s",
           "decode v/s", "attn us", "x fp32", "x fp16", "GB/s", "of bw");
    for (int32_t c = 0; c < nc; c++) {
        const double gbs = 2.0 * (double)bc[c].bytes * (double)n / (med[c] * 1e-6) * 1e-9;
        printf("%-18s %6zu %12.3g %12.3g %11.1f %8.2fx %8.2fx %7.2f %5.0f%%\n",
               tkv_codec_name(sel[c]), bc[c].bytes, bc[c].enc_vps, bc[c].dec_vps, med[c],
               t32 > 0 ? t32 / med[c] : 0.0, t16 > 0 ? t16 / med[c] : 0.0, gbs,
               100.0 * gbs / bw_bound);
    }
    fflush(stdout);
    for (int32_t c = 0; c < nc; c++) {
        tkv_codec_free(bc[c].codec);
        free(bc[c].k);
        free(bc[c].v);
        free(bc[c].attn_us);
    }
    free(xk);
    free(xv);
    free(dec);
}

int main(int argc, char **argv) {
    int rounds = 15, quick = 0;
    const char *codecs = NULL;
    int64_t ctx[8] = {1024, 8192, 32768};
    int n_ctx = 3;
    uint32_t dims[8] = {64, 128};
    int n_dims = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--codecs") == 0 && i + 1 < argc) {
            codecs = argv[++i];
        } else if (strcmp(argv[i], "--bw") == 0 && i + 1 < argc) {
            bw_bound = atof(argv[++i]);
        } else if ((strcmp(argv[i], "--ctx") == 0 || strcmp(argv[i], "--dims") == 0) &&
                   i + 1 < argc) {
            const int is_ctx = argv[i][2] == 'c';
            int cnt = 0;
            for (char *tok = strtok(argv[++i], ","); tok && cnt < 8; tok = strtok(NULL, ",")) {
                if (is_ctx) {
                    ctx[cnt++] = atoll(tok);
                } else {
                    dims[cnt++] = (uint32_t)atoi(tok);
                }
            }
            *(is_ctx ? &n_ctx : &n_dims) = cnt;
        } else {
            fprintf(stderr,
                    "usage: %s [--rounds N] [--quick] [--codecs a,b] [--ctx n,m] "
                    "[--dims d,e] [--bw GBs]\n",
                    argv[0]);
            return 2;
        }
    }
    if (quick) {
        n_ctx = 2;
        ctx[1] = 8192;
    }
    n_sel = 0;
    for (int32_t c = 0; c < tkv_codec_count() && n_sel < MAX_CODECS; c++) {
        const char *name = tkv_codec_name(c);
        int want = !codecs;
        if (codecs) { /* exact match of one comma-separated name */
            const size_t len = strlen(name);
            for (const char *p = codecs; (p = strstr(p, name)) != NULL; p += len) {
                if ((p == codecs || p[-1] == ',') && (p[len] == ',' || p[len] == 0)) {
                    want = 1;
                }
            }
        }
        if (want) {
            sel[n_sel++] = c;
        }
    }
    if (rounds < 1) {
        rounds = 1;
    }
    const uint32_t f = tkv_cpu_features();
    printf("turbokv %s, kernels: %s (cpu:%s%s%s%s), 1 thread\n", tkv_version_string(),
           tkv_kernel_isa(), f & TKV_CPU_AVX2 ? " avx2" : "", f & TKV_CPU_AVX512 ? " avx512" : "",
           f & TKV_CPU_AVX512VNNI ? " vnni" : "", f & TKV_CPU_AVX512VBMI ? " vbmi" : "");
    printf("attn = tkv_codec_attention (scores + softmax + V sum) for one query; "
           "x fp32 / x fp16 = speedup (time of fp32 or fp16 / time of codec)\n");
    printf("GB/s = K + V code bytes read per step / time; of bw = GB/s over %.1f GB/s "
           "(--bw, bench_bw's streaming read)\n",
           bw_bound);
    for (int di = 0; di < n_dims; di++) {
        for (int ci = 0; ci < n_ctx; ci++) {
            run_config(dims[di], ctx[ci], rounds);
        }
    }
    return 0;
}
