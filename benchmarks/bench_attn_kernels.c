/*
 * bench_attn_kernels.c - decode-time attention through the codec kernel tables, without the
 * public API's code validation: scores + softmax + weighted value sum for one query
 * (scores / accum entries) and for a grouped-query head (scores_multi / accum_multi with
 * nq queries sharing the codes), per codec and ISA, side by side.  Not a test.
 *
 * Build by hand from the repository root after a Release build (cmake --build build):
 *
 *   cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -DTKV_HAVE_X86_KERNELS=1 -Iinclude -Ilib \
 *      benchmarks/bench_attn_kernels.c \
 *      $(find build/CMakeFiles/turbokv_objs.dir -name '*.o') -lm -lpthread \
 *      -o build/bench_attn_kernels && ./build/bench_attn_kernels
 *
 * Options: --rounds N (default 11), --isas avx512,avx2, --codecs a,b (names), --ctx 1024,8192,
 * --dims 64,128, --nq 1,3 (queries per KV head; 1 uses the single-query entries), --split
 * (also time scores and sums alone).
 * Prints the median over rounds of microseconds of thread CPU time per step (wall time on a
 * loaded machine counts waits for a core); rounds are interleaved over every
 * (codec, ISA) pair in a rotated order so that drifts of a loaded machine hit each alike.
 * The "x base" column divides the time of the codec's turbo_kv_Nb counterpart (same bits,
 * same ISA, same run) by the codec's time: >= 1 means at least as fast.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/codec.h"
#include "codec/kernels.h"

#define MAXC 16
#define MAXI 3

#include "bench_util.h"

static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ",")) {
        out[n++] = t;
    }
    return n;
}

typedef struct entry {
    struct tkv_codec c;
    uint8_t *k, *v;
    const tkv_codec_kernels *K;
    double *us, *us_s, *us_a; /* per round: step, scores alone, sums alone */
} entry;

/* One attention step of nq queries: scores, softmax, weighted sum (rotated domain). */
static void step(entry *e, int nq, float *const *qs, float *const *sc, float *const *acc, size_t n,
                 int part) {
    const tkv_code_layout *L = &e->c.layout;
    const tkv_code_format f = L->format;
    const uint32_t d = e->c.d;
    if (part != 2) {
        if (nq == 1) {
            e->K->scores[f](L, qs[0], e->k, n, sc[0]);
        } else {
            e->K->scores_multi[f](L, (const float *const *)qs, nq, e->k, n, sc);
        }
    }
    if (part == 0) {
        for (int q = 0; q < nq; q++) {
            e->K->softmax(sc[q], n, 1.0f / sqrtf((float)d));
        }
    }
    if (part != 1) {
        for (int q = 0; q < nq; q++) {
            memset(acc[q], 0, d * sizeof(float));
        }
        if (nq == 1) {
            e->K->accum[f](L, sc[0], 0.0f, e->v, n, acc[0]);
        } else {
            e->K->accum_multi[f](L, (const float *const *)sc, nq, 0.0f, e->v, n, acc);
        }
    }
}

int main(int argc, char **argv) {
    int rounds = 11, split = 0;
    char isas_s[128] = "avx512,avx2",
         codecs_s[512] =
             "turbo_kv_2b,turbo_kv_2b_tcq,turbo_kv_3b,turbo_kv_3b_tcq,turbo_kv_4b,turbo_kv_4b_tcq";
    char ctx_s[128] = "1024,8192,32768", dims_s[64] = "64,128", nq_s[32] = "1,3";
    for (int i = 1; i < argc; i++) {
        char *dst = NULL;
        size_t cap = 0;
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
            continue;
        } else if (strcmp(argv[i], "--split") == 0) {
            split = 1;
            continue;
        } else if (strcmp(argv[i], "--isas") == 0) {
            dst = isas_s, cap = sizeof isas_s;
        } else if (strcmp(argv[i], "--codecs") == 0) {
            dst = codecs_s, cap = sizeof codecs_s;
        } else if (strcmp(argv[i], "--ctx") == 0) {
            dst = ctx_s, cap = sizeof ctx_s;
        } else if (strcmp(argv[i], "--dims") == 0) {
            dst = dims_s, cap = sizeof dims_s;
        } else if (strcmp(argv[i], "--nq") == 0) {
            dst = nq_s, cap = sizeof nq_s;
        }
        if (!dst || i + 1 >= argc) {
            fprintf(stderr,
                    "usage: %s [--rounds N] [--isas a,b] [--codecs a,b] [--ctx n,m] "
                    "[--dims d,e] [--nq 1,3] [--split]\n",
                    argv[0]);
            return 2;
        }
        snprintf(dst, cap, "%s", argv[++i]);
    }
    rounds = rounds < 1 ? 1 : rounds;
    char *isas[MAXI], *codecs[MAXC], *ctxs[8], *dims[4], *nqs[4];
    const int ni = split_list(isas_s, isas, MAXI), nc = split_list(codecs_s, codecs, MAXC);
    const int nx = split_list(ctx_s, ctxs, 8), nd = split_list(dims_s, dims, 4);
    const int nn = split_list(nq_s, nqs, 4);
    printf("bench_attn_kernels: median CPU us per attention step over %d interleaved rounds, 1 "
           "thread; x base = time of turbo_kv_Nb (same ISA) / time\n",
           rounds);
    for (int di = 0; di < nd; di++) {
        const uint32_t d = (uint32_t)atoi(dims[di]);
        for (int xi = 0; xi < nx; xi++) {
            const size_t n = (size_t)atol(ctxs[xi]);
            float *xk = malloc(n * d * sizeof(float)), *xv = malloc(n * d * sizeof(float));
            for (size_t i = 0; i < n * d; i++) {
                xk[i] = ((i % d) % 16 == 3 ? 8.0f : 1.0f) * grand();
                xv[i] = grand();
            }
            static entry E[MAXC * MAXI];
            int ne = 0;
            float scratch[TKV_CODEC_SCRATCH_FLOATS(1024)];
            for (int ci = 0; ci < nc; ci++) {
                const tkv_codec_desc *desc = tkv_codec_desc_find(codecs[ci]);
                if (!desc) {
                    fprintf(stderr, "unknown codec %s\n", codecs[ci]);
                    return 2;
                }
                for (int ii = 0; ii < ni; ii++) {
                    const tkv_codec_kernels *K = tkv_codec_kernels_for_isa(isas[ii]);
                    if (!K) {
                        continue;
                    }
                    entry *e = &E[ne++];
                    if (tkv_codec_init(&e->c, desc->id, d, 42) != TKV_OK) {
                        fprintf(stderr, "codec init failed\n");
                        return 1;
                    }
                    e->K = K;
                    const size_t st = e->c.layout.stride;
                    e->k = malloc(n * st + 64);
                    e->v = malloc(n * st + 64);
                    for (size_t i = 0; i < n; i++) {
                        tkv_codec_encode_one(&e->c, xk + i * d, e->k + i * st, scratch);
                        tkv_codec_encode_one(&e->c, xv + i * d, e->v + i * st, scratch);
                    }
                    e->us = malloc(3 * (size_t)rounds * sizeof(double));
                    e->us_s = e->us + rounds;
                    e->us_a = e->us + 2 * rounds;
                }
            }
            for (int ni_ = 0; ni_ < nn; ni_++) {
                const int nq = atoi(nqs[ni_]);
                float *qs[TKV_MAX_QUERIES], *sc[TKV_MAX_QUERIES], *acc[TKV_MAX_QUERIES];
                for (int q = 0; q < nq; q++) {
                    /* 2d: a QJL codec's prepared query and accumulator carry the sketch */
                    qs[q] = calloc(2 * (size_t)d, sizeof(float));
                    sc[q] = malloc(n * sizeof(float));
                    acc[q] = calloc(2 * (size_t)d, sizeof(float));
                    for (uint32_t j = 0; j < d; j++) {
                        qs[q][j] = grand();
                    }
                }
                const int reps = n >= 8192 ? 1 : (int)(8192 / n);
                for (int r = -1; r < rounds; r++) {
                    for (int k = 0; k < ne; k++) {
                        entry *e = &E[(k + (r < 0 ? 0 : r)) % ne];
                        /* the sums alone (part 2) right after a whole step, on its softmax
                         * weights: after the scores alone they would weigh by raw scores,
                         * which are signed and take the kernels' slower signed path */
                        static const int order[3] = {0, 2, 1};
                        for (int pi = 0; pi < (split ? 3 : 1); pi++) {
                            const int part = order[pi];
                            const double t0 = cpu_s();
                            for (int i = 0; i < reps; i++) {
                                step(e, nq, qs, sc, acc, n, part);
                            }
                            const double us = 1e6 * (cpu_s() - t0) / reps;
                            if (r >= 0) {
                                (part == 0 ? e->us : part == 1 ? e->us_s : e->us_a)[r] = us;
                            }
                        }
                    }
                }
                printf("\nhead_dim %u, context %zu, %d quer%s per KV head\n", d, n, nq,
                       nq == 1 ? "y" : "ies");
                printf("%-18s %-7s %10s %7s%s\n", "codec", "isa", "attn us", "x base",
                       split ? "   scores us     sums us" : "");
                double med[MAXC * MAXI];
                for (int k = 0; k < ne; k++) {
                    med[k] = median(E[k].us, rounds);
                }
                for (int k = 0; k < ne; k++) {
                    double base = 0.0;
                    for (int b = 0; b < ne; b++) {
                        if (E[b].K == E[k].K && E[b].c.desc->format == TKV_FMT_TURBO &&
                            !E[b].c.layout.has_qjl && E[b].c.layout.bits == E[k].c.layout.bits) {
                            base = med[b];
                        }
                    }
                    printf("%-18s %-7s %10.1f %6.2fx", E[k].c.desc->name, E[k].K->isa, med[k],
                           base > 0 ? base / med[k] : 0.0);
                    if (split) {
                        printf(" %11.1f %11.1f", median(E[k].us_s, rounds),
                               median(E[k].us_a, rounds));
                    }
                    printf("\n");
                }
                fflush(stdout);
                for (int q = 0; q < nq; q++) {
                    free(qs[q]);
                    free(sc[q]);
                    free(acc[q]);
                }
            }
            for (int k = 0; k < ne; k++) {
                tkv_codec_release(&E[k].c);
                free(E[k].k);
                free(E[k].v);
                free(E[k].us);
            }
            free(xk);
            free(xv);
        }
    }
    return 0;
}
