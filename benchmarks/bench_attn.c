/*
 * bench_attn.c - decode-time attention on codes against its bandwidth bound, per ISA, for the
 * single-query and the grouped-query (GQA) path.
 *
 * One step is what lib/attn does per (layer, KV head) for the nq query heads of a group:
 * scores of every query against n encoded keys, a softmax per query, and the weighted sum of
 * the n encoded values per query (the kernels' scores / scores_multi, softmax, accum /
 * accum_multi entries, called directly).  The codes are read cold, as in a model whose
 * weights evict the cache between layers: the step cycles through copies of the K and V
 * codes spanning --pool MB.  "of bw" is (K + V code bytes / bandwidth) over the step's time,
 * the bound a step cannot beat when it streams its bytes from DRAM; the bytes do not grow
 * with nq, the work does.  Median over --rounds rounds, codecs and nq interleaved per round,
 * of the wall time ("us", "of bw") and of the thread's CPU time ("cpu us", "of bw cpu": what
 * a quiet machine would show when other processes share the cores).
 *
 * Links the library's objects (internal kernel tables):
 *   cmake -S benchmarks -B build-bench -DCMAKE_BUILD_TYPE=Release
 *   cmake --build build-bench -j2 --target bench_attn && ./build-bench/bench_attn
 * Options: --isa avx512,avx2,scalar  --codecs turbo_kv_4b,...  --ctx 4096,8192,32768
 *          --nq 1,3  --dims 64  --rounds 9  --pool 256  --bw 22.3
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "codec/codec.h"
#include "codec/kernels.h"

#include "bench_util.h"

static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ",")) {
        out[n++] = t;
    }
    return n;
}

/* One attention step of nq queries over n codes of the kernel table K. */
static void step(const tkv_codec_kernels *K, const tkv_code_layout *kl, const tkv_code_layout *vl,
                 float *const *qs, int nq, const uint8_t *kc, const uint8_t *vc, size_t n,
                 float *const *rows, float *const *accs, float scale) {
    if (nq > 1 && K->scores_multi[kl->format]) {
        K->scores_multi[kl->format](kl, (const float *const *)qs, nq, kc, n, rows);
    } else {
        for (int k = 0; k < nq; k++) {
            K->scores[kl->format](kl, qs[k], kc, n, rows[k]);
        }
    }
    for (int k = 0; k < nq; k++) {
        K->softmax(rows[k], n, scale);
        memset(accs[k], 0, vl->d * sizeof(float));
    }
    if (nq > 1 && K->accum_multi[vl->format]) {
        K->accum_multi[vl->format](vl, (const float *const *)rows, nq, 0.0f, vc, n, accs);
    } else {
        for (int k = 0; k < nq; k++) {
            K->accum[vl->format](vl, rows[k], 0.0f, vc, n, accs[k]);
        }
    }
}

int main(int argc, char **argv) {
    *bench_rng() = 0x243F6A8885A308D3ULL; /* this benchmark's seed */
    char isas_s[256] = "avx512,avx2",
         codecs_s[512] = "turbo_kv_2b,turbo_kv_3b,turbo_kv_4b,turbo_kv_5b",
         ctx_s[256] = "4096,8192,32768", nq_s[64] = "1,3", dims_s[64] = "64";
    int rounds = 9;
    double pool_mb = 256.0, bw = 22.3;
    for (int i = 1; i + 1 < argc; i += 2) {
        char *dst = strcmp(argv[i], "--isa") == 0      ? isas_s
                    : strcmp(argv[i], "--codecs") == 0 ? codecs_s
                    : strcmp(argv[i], "--ctx") == 0    ? ctx_s
                    : strcmp(argv[i], "--nq") == 0     ? nq_s
                    : strcmp(argv[i], "--dims") == 0   ? dims_s
                                                       : NULL;
        if (dst) {
            snprintf(dst, 256, "%s", argv[i + 1]);
        } else if (strcmp(argv[i], "--rounds") == 0) {
            rounds = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--pool") == 0) {
            pool_mb = atof(argv[i + 1]);
        } else if (strcmp(argv[i], "--bw") == 0) {
            bw = atof(argv[i + 1]);
        } else {
            fprintf(stderr, "unknown option %s (see the comment at the top)\n", argv[i]);
            return 2;
        }
    }
    char *isas[8], *codecs[16], *ctxs[8], *nqs[8], *dims[8];
    const int n_isa = split_list(isas_s, isas, 8), n_codec = split_list(codecs_s, codecs, 16);
    const int n_ctx = split_list(ctx_s, ctxs, 8), n_nq = split_list(nq_s, nqs, 8);
    const int n_dim = split_list(dims_s, dims, 8);
    printf("attention step on codes (scores + softmax + value sum), 1 thread, cold codes "
           "(pool %.0f MB), bound %.1f GB/s, median of %d rounds\n",
           pool_mb, bw, rounds);
    printf("%-7s %4s %6s %-14s %3s %10s %8s %7s %10s %10s\n", "isa", "d", "ctx", "codec", "nq",
           "us", "GB/s", "of bw", "cpu us", "of bw cpu");
    for (int di = 0; di < n_dim; di++) {
        const uint32_t d = (uint32_t)atoi(dims[di]);
        for (int ci = 0; ci < n_ctx; ci++) {
            const size_t n = (size_t)atoll(ctxs[ci]);
            /* per (codec): codes, copies */
            struct tkv_codec cod[16];
            uint8_t *pool[16];
            size_t copies[16], bytes[16];
            for (int c = 0; c < n_codec; c++) {
                const tkv_codec_desc *desc = tkv_codec_desc_find(codecs[c]);
                if (!desc || tkv_codec_init(&cod[c], desc->id, d, 42) != TKV_OK) {
                    fprintf(stderr, "codec %s at d %u: not available\n", codecs[c], d);
                    return 1;
                }
                bytes[c] = (size_t)cod[c].layout.stride * n; /* K (and V) bytes */
                copies[c] = (size_t)(pool_mb * 1e6 / (2.0 * (double)bytes[c]));
                copies[c] = copies[c] < 1 ? 1 : copies[c];
                pool[c] = tkv_calloc_aligned(2 * bytes[c] * copies[c], 1);
                float *x = malloc(d * sizeof *x),
                      *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * 4);
                for (size_t i = 0; i < 2 * n; i++) {
                    for (uint32_t j = 0; j < d; j++) {
                        x[j] = (j % 16 == 3 && i < n ? 8.0f : 1.0f) * grand();
                    }
                    tkv_codec_encode_one(&cod[c], x, pool[c] + i * cod[c].layout.stride, scratch);
                }
                for (size_t r = 1; r < copies[c]; r++) {
                    memcpy(pool[c] + r * 2 * bytes[c], pool[c], 2 * bytes[c]);
                }
                free(x);
                free(scratch);
            }
            float *qbuf = tkv_calloc_aligned((size_t)TKV_MAX_QUERIES * 2 * d, sizeof(float));
            float *rowbuf = tkv_calloc_aligned((size_t)TKV_MAX_QUERIES * n, sizeof(float));
            float *accbuf = tkv_calloc_aligned((size_t)TKV_MAX_QUERIES * 2 * d, sizeof(float));
            float *qs[TKV_MAX_QUERIES], *rows[TKV_MAX_QUERIES], *accs[TKV_MAX_QUERIES];
            for (int k = 0; k < TKV_MAX_QUERIES; k++) {
                qs[k] = qbuf + (size_t)k * 2 * d;
                rows[k] = rowbuf + (size_t)k * n;
                accs[k] = accbuf + (size_t)k * 2 * d;
                for (uint32_t j = 0; j < 2 * d; j++) {
                    qs[k][j] = 0.5f * grand();
                }
            }
            const int n_cfg = n_isa * n_codec * n_nq;
            double *t = calloc((size_t)n_cfg * rounds, sizeof *t);
            double *tc = calloc((size_t)n_cfg * rounds, sizeof *tc);
            size_t *next = calloc((size_t)n_codec, sizeof *next);
            for (int r = -1; r < rounds; r++) {
                for (int s = 0; s < n_cfg; s++) {
                    const int cfg = (s + (r < 0 ? 0 : r)) % n_cfg;
                    const int ii = cfg / (n_codec * n_nq), c = cfg / n_nq % n_codec,
                              nq = atoi(nqs[cfg % n_nq]);
                    const tkv_codec_kernels *K = tkv_codec_kernels_for_isa(isas[ii]);
                    if (!K) {
                        continue;
                    }
                    /* enough steps for ~2 ms, each on the next cold copy */
                    const int reps = n >= 8192 ? 2 : (int)(16384 / n);
                    const double t0 = now_s(), c0 = cpu_s();
                    for (int k = 0; k < reps; k++) {
                        const uint8_t *kc = pool[c] + next[c] * 2 * bytes[c];
                        next[c] = (next[c] + 1) % copies[c];
                        step(K, &cod[c].layout, &cod[c].layout, qs, nq, kc, kc + bytes[c], n, rows,
                             accs, 0.125f);
                    }
                    if (r >= 0) {
                        t[(size_t)cfg * rounds + r] = (now_s() - t0) / reps;
                        tc[(size_t)cfg * rounds + r] = (cpu_s() - c0) / reps;
                    }
                }
            }
            for (int cfg = 0; cfg < n_cfg; cfg++) {
                const int ii = cfg / (n_codec * n_nq), c = cfg / n_nq % n_codec;
                if (!tkv_codec_kernels_for_isa(isas[ii])) {
                    continue;
                }
                double *v = t + (size_t)cfg * rounds, *vc = tc + (size_t)cfg * rounds;
                qsort(v, (size_t)rounds, sizeof *v, cmp_double);
                qsort(vc, (size_t)rounds, sizeof *vc, cmp_double);
                const double med = v[rounds / 2], gbs = 2.0 * (double)bytes[c] / med * 1e-9;
                const double medc = vc[rounds / 2], gbc = 2.0 * (double)bytes[c] / medc * 1e-9;
                printf("%-7s %4u %6zu %-14s %3s %10.1f %8.2f %6.0f%% %10.1f %9.0f%%\n", isas[ii], d,
                       n, codecs[c], nqs[cfg % n_nq], med * 1e6, gbs, 100.0 * gbs / bw, medc * 1e6,
                       100.0 * gbc / bw);
            }
            fflush(stdout);
            for (int c = 0; c < n_codec; c++) {
                tkv_codec_release(&cod[c]);
                tkv_free_aligned(pool[c]);
            }
            tkv_free_aligned(qbuf);
            tkv_free_aligned(rowbuf);
            tkv_free_aligned(accbuf);
            free(t);
            free(tc);
            free(next);
        }
    }
    return 0;
}
