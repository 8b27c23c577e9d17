/*
 * bench_attn_model.c - the model's decode-time attention alone, on a filled cache, against
 * its bandwidth bound: what lib/model/forward.c does per token with one thread, timed apart
 * from the matmuls, next to the same bytes through the kernel tables alone.
 *
 * The cache has the default model's shape (30 layers, 3 KV heads of head_dim 64, 3 query
 * heads per KV head) and the library's default levers (1 sink position, keys centered and
 * smoothed per calibration block of 256) unless --plain; it is filled as prefill fills it
 * (batches of 512 positions, every layer per batch, calibrate then append), keys with
 * per-channel offsets that drift with the position.  One decode token is then, per layer:
 * --evict MB of another buffer read first (the matmuls stream 98 MB of weights per token
 * over 30 layers, so the codes come from DRAM as in the model; not timed), then the timed
 * attention of every KV head.  Rows:
 *   walk     what forward.c runs: tkv_attn_group_range per 1024-position chunk, then
 *            tkv_attn_merge of the chunks (one chunk: no merge);
 *   kernels  the kernel tables over each head's codes (query preparation, scores per run
 *            of contiguous rows -- a segment of the cache, 1024 positions --, one softmax,
 *            value sums per run, inverse rotation): no calibration blocks, no sink run, no
 *            chunks -- the floor the walk could reach with these kernels.
 * After filling, the line "huge pages" gives the process's AnonHugePages (Linux): the
 * cache's code segments sit in 2 MB pages unless TKV_HUGE_PAGES=0 or the system refuses.
 * Thread CPU time per token (the sum over layers), median of --rounds, the rows and
 * contexts interleaved per round; "of bound" = the code bytes read (K + V of every
 * position, sinks counted as codes) at --bw GB/s over it.
 *
 *   cmake -S benchmarks -B build-bench -DCMAKE_BUILD_TYPE=Release
 *   cmake --build build-bench -j2 --target bench_attn_model
 *   ./build-bench/bench_attn_model --ctx 4096,8192 [--codecs turbo_kv_4b] [--plain]
 *       [--evict 98] [--rounds 7] [--bw 22.3] [--path walk|kernels]
 * (TKV_ISA=avx2 or scalar for the other kernel tables).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "base/alloc.h"
#include "codec/codec.h"
#include "codec/kernels.h"
#include "kv/cache.h"

#include "bench_util.h"

#define NL 30
#define NKV 3
#define GROUP 3
#define D 64
#define CHUNK 1024 /* forward.c's TKV_ATTN_CHUNK */
#define BATCH 512
#define NOISE (1u << 20)

static float g_noise[NOISE];

/* n floats of noise starting at a position derived from key (cheap: a 32K-token cache
 * needs ~1e9 of them). */
static const float *noise(uint64_t key, size_t n) {
    const uint64_t h = (key + 1) * 0x9E3779B97F4A7C15ULL;
    return g_noise + (h >> 40) % (NOISE - n);
}

static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ",")) {
        out[n++] = t;
    }
    return n;
}

/* Fill ctx positions of every layer as prefill does. */
static int fill(tkv_kv_cache *c, uint32_t ctx) {
    static float q[BATCH * NKV * GROUP * D], k[BATCH * NKV * D], v[BATCH * NKV * D];
    static float off[NL][NKV * D];
    static float scratch[TKV_KV_SCRATCH_FLOATS(D)];
    for (uint32_t l = 0; l < NL; l++) {
        const float *o = noise(1000 + l, NKV * D);
        for (uint32_t j = 0; j < NKV * D; j++) {
            off[l][j] = 1.5f * o[j];
        }
    }
    for (uint32_t p0 = 0; p0 < ctx; p0 += BATCH) {
        const uint32_t n = ctx - p0 < BATCH ? ctx - p0 : BATCH;
        for (uint32_t l = 0; l < NL; l++) {
            for (uint32_t t = 0; t < n; t++) {
                const uint64_t key = ((uint64_t)l << 32) | (p0 + t);
                const float *a = noise(3 * key, NKV * D), *b = noise(3 * key + 1, NKV * D);
                const float *e = noise(3 * key + 2, NKV * GROUP * D);
                const float drift = 1.0f + (float)((p0 + t) % 4096) / 2048.0f;
                for (uint32_t j = 0; j < NKV * D; j++) {
                    k[t * NKV * D + j] = off[l][j] * drift + a[j];
                    v[t * NKV * D + j] = b[j];
                }
                memcpy(q + (size_t)t * NKV * GROUP * D, e, NKV * GROUP * D * sizeof *q);
            }
            if (tkv_kv_calibrate(c, l, p0, q, NKV * GROUP, k, n) != TKV_OK ||
                tkv_kv_append_batch(c, l, p0, n, k, v, NULL, scratch) != TKV_OK) {
                return 1;
            }
        }
    }
    return 0;
}

/* The attention of one layer, every KV head, at position pos (all positions), as
 * forward.c's one-thread decode runs it. */
static void walk_layer(const tkv_kv_cache *c, uint32_t l, uint32_t pos, const float *q, float *out,
                       float *part, float *scores, size_t stride, float *work) {
    const uint32_t nc = pos / CHUNK + 1;
    for (uint32_t h = 0; h < NKV; h++) {
        const float *qh = q + (size_t)h * GROUP * D;
        float *oh = out + (size_t)h * GROUP * D;
        if (nc == 1) {
            tkv_attn_group_range(c, l, h, qh, GROUP, pos, 0, pos + 1, 0.125f, 0.0f, oh, NULL,
                                 scores, stride, work);
            continue;
        }
        for (uint32_t ch = 0; ch < nc; ch++) {
            const uint32_t t0 = ch * CHUNK, t1 = ch + 1 < nc ? t0 + CHUNK : pos + 1;
            float *p = part + ch * TKV_ATTN_PART_FLOATS(D);
            tkv_attn_group_range(c, l, h, qh, GROUP, pos, t0, t1, 0.125f, 0.0f, p,
                                 p + (size_t)TKV_MAX_QUERIES * D, scores, stride, work);
        }
        tkv_attn_merge(part, nc, GROUP, D, oh);
    }
}

/* The kernel tables alone over each head's codes of one layer, positions 1..n-1 (the codes),
 * one softmax over all of them, the scores and value sums per run of contiguous rows (a
 * segment of the cache). */
static void kernels_layer(const tkv_kv_cache *c, uint32_t l, uint32_t n, const float *q, float *out,
                          float *scores, size_t stride, float *work) {
    const tkv_codec_kernels *K = tkv_codec_kernels_active();
    for (uint32_t h = 0; h < NKV; h++) {
        const tkv_kv_head *hd = &c->heads[(size_t)l * NKV + h];
        float *qp[TKV_MAX_QUERIES], *rows[TKV_MAX_QUERIES], *acc[TKV_MAX_QUERIES];
        for (int k = 0; k < GROUP; k++) {
            qp[k] = work + (size_t)k * 4 * D;
            acc[k] = qp[k] + 2 * D;
            rows[k] = scores + (size_t)k * stride;
            tkv_codec_prepare_query(&hd->k_codec, q + ((size_t)h * GROUP + k) * D, qp[k]);
        }
        const tkv_code_layout *kl = &hd->k_codec.layout, *vl = &hd->v_codec.layout;
        uint32_t run;
        for (uint32_t t = 1; t < n; t += run) {
            const uint8_t *kc = tkv_kv_code_run(c, l, h, 0, t, n, &run);
            float *at[TKV_MAX_QUERIES];
            for (int k = 0; k < GROUP; k++) {
                at[k] = rows[k] + (t - 1);
            }
            K->scores_multi[kl->format](kl, (const float *const *)qp, GROUP, kc, run, at);
        }
        for (int k = 0; k < GROUP; k++) {
            K->softmax(rows[k], n - 1, 0.125f);
            memset(acc[k], 0, 2 * D * sizeof(float));
        }
        for (uint32_t t = 1; t < n; t += run) {
            const uint8_t *vc = tkv_kv_code_run(c, l, h, 1, t, n, &run);
            const float *wt[TKV_MAX_QUERIES];
            for (int k = 0; k < GROUP; k++) {
                wt[k] = rows[k] + (t - 1);
            }
            K->accum_multi[vl->format](vl, wt, GROUP, 0.0f, vc, run, acc);
        }
        for (int k = 0; k < GROUP; k++) {
            tkv_codec_finish_accum(&hd->v_codec, acc[k], out + ((size_t)h * GROUP + k) * D);
        }
    }
}

int main(int argc, char **argv) {
    char ctx_s[256] = "4096,8192", codecs_s[256] = "turbo_kv_4b";
    int rounds = 7, plain = 0, paths = 3; /* bit 0: walk, bit 1: kernels */
    double evict_mb = 98.0, bw = 22.3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--plain") == 0) {
            plain = 1;
        } else if (i + 1 < argc && strcmp(argv[i], "--path") == 0) {
            i++;
            paths = strcmp(argv[i], "walk") == 0 ? 1 : strcmp(argv[i], "kernels") == 0 ? 2 : 3;
        } else if (i + 1 < argc && strcmp(argv[i], "--ctx") == 0) {
            snprintf(ctx_s, sizeof ctx_s, "%s", argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--codecs") == 0) {
            snprintf(codecs_s, sizeof codecs_s, "%s", argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--rounds") == 0) {
            rounds = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--evict") == 0) {
            evict_mb = atof(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--bw") == 0) {
            bw = atof(argv[++i]);
        } else {
            fprintf(stderr, "unknown option %s (see the comment at the top)\n", argv[i]);
            return 2;
        }
    }
    for (uint32_t i = 0; i < NOISE; i++) {
        g_noise[i] = grand();
    }
    char *ctxs[8], *codecs[8];
    const int n_ctx = split_list(ctx_s, ctxs, 8), n_codec = split_list(codecs_s, codecs, 8);
    const int n_cache = n_ctx * n_codec;
    tkv_kv_cache *caches = calloc((size_t)n_cache, sizeof *caches);
    uint32_t max_ctx = 0;
    for (int ci = 0; ci < n_cache; ci++) {
        const uint32_t ctx = (uint32_t)atoi(ctxs[ci / n_codec]);
        const tkv_codec_desc *desc = tkv_codec_desc_find(codecs[ci % n_codec]);
        const tkv_calib_params cp = {
            .center_keys = !plain, .smooth_keys = !plain, .smooth_alpha = 0.35f, .block = 256};
        if (!desc || ctx < 2 ||
            tkv_kv_init(&caches[ci], NL, NKV, D, ctx, desc->id, desc->id, 0, 7) != TKV_OK ||
            tkv_kv_set_levers(&caches[ci], plain ? 0 : 1, &cp) != TKV_OK ||
            fill(&caches[ci], ctx) != 0) {
            fprintf(stderr, "cannot build a %s cache of %u positions\n", codecs[ci % n_codec], ctx);
            return 1;
        }
        max_ctx = ctx > max_ctx ? ctx : max_ctx;
    }
    size_t code_bytes = 0;
    for (int ci = 0; ci < n_cache; ci++) {
        code_bytes += (size_t)tkv_kv_n_tokens(&caches[ci]) * tkv_kv_bytes_per_token(&caches[ci]);
    }
    FILE *smaps = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (smaps && fgets(line, sizeof line, smaps)) {
        if (strncmp(line, "AnonHugePages:", 14) == 0) {
            printf("huge pages: %ld kB of %.0f kB of codes (AnonHugePages of the process)\n",
                   atol(line + 14), (double)code_bytes / 1024.0);
        }
    }
    if (smaps) {
        fclose(smaps);
    }
    const size_t stride = max_ctx;
    const size_t evict_n = (size_t)(evict_mb * 1e6 / NL / sizeof(uint64_t)) + 1;
    uint64_t *evict = tkv_calloc_aligned(evict_n * NL, sizeof *evict);
    float *scores = tkv_calloc_aligned((size_t)TKV_MAX_QUERIES * stride, sizeof(float));
    float *work = tkv_calloc_aligned((size_t)TKV_MAX_QUERIES * TKV_ATTN_WORK_FLOATS(D), 4);
    float *part = tkv_calloc_aligned((max_ctx / CHUNK + 1) * TKV_ATTN_PART_FLOATS(D), 4);
    float *q = malloc((size_t)NL * NKV * GROUP * D * sizeof *q);
    float *out = malloc((size_t)NKV * GROUP * D * sizeof *out);
    memcpy(q, noise(99, (size_t)NL * NKV * GROUP * D), (size_t)NL * NKV * GROUP * D * sizeof *q);
    for (size_t i = 0; i < evict_n * NL; i++) {
        evict[i] = i;
    }
    const int n_cfg = 2 * n_cache; /* (cache, walk / kernels) */
    double *t = calloc((size_t)n_cfg * rounds, sizeof *t);
    volatile uint64_t sink = 0;
    for (int r = -1; r < rounds; r++) {
        for (int s = 0; s < n_cfg; s++) {
            const int cfg = (s + (r < 0 ? 0 : r)) % n_cfg, ci = cfg / 2, kernels = cfg % 2;
            const tkv_kv_cache *c = &caches[ci];
            const uint32_t n = tkv_kv_n_tokens(c);
            if (!(paths >> kernels & 1)) {
                continue;
            }
            double cpu = 0.0;
            for (uint32_t l = 0; l < NL; l++) {
                uint64_t acc = 0;
                for (size_t i = 0; evict_mb > 0 && i < evict_n; i += 8) { /* one per line */
                    acc += evict[(size_t)l * evict_n + i];
                }
                sink += acc;
                const double c0 = cpu_s();
                const float *ql = q + (size_t)l * NKV * GROUP * D;
                if (kernels) {
                    kernels_layer(c, l, n, ql, out, scores, stride, work);
                } else {
                    walk_layer(c, l, n - 1, ql, out, part, scores, stride, work);
                }
                cpu += cpu_s() - c0;
            }
            if (r >= 0) {
                t[(size_t)cfg * rounds + r] = cpu;
            }
        }
    }
    printf("model attention per decode token, %d layers x %d KV heads x %d queries, d %d, "
           "levers %s, evict %.0f MB per token, 1 thread, bound %.1f GB/s, median of %d\n",
           NL, NKV, GROUP, D, plain ? "off" : "default", evict_mb, bw, rounds);
    printf("%-14s %6s %-8s %10s %10s %8s %8s\n", "codec", "ctx", "path", "ms/token", "us/head",
           "GB/s", "of bound");
    for (int cfg = 0; cfg < n_cfg; cfg++) {
        const int ci = cfg / 2;
        const tkv_kv_cache *c = &caches[ci];
        if (!(paths >> (cfg % 2) & 1)) {
            continue;
        }
        const double med = median(t + (size_t)cfg * rounds, rounds);
        const double bytes = (double)tkv_kv_n_tokens(c) * (double)tkv_kv_bytes_per_token(c);
        printf("%-14s %6u %-8s %10.3f %10.2f %8.2f %7.0f%%\n", codecs[ci % n_codec],
               tkv_kv_n_tokens(c), cfg % 2 ? "kernels" : "walk", med * 1e3, med * 1e6 / (NL * NKV),
               bytes / med * 1e-9, 100.0 * bytes / med * 1e-9 / bw);
    }
    for (int ci = 0; ci < n_cache; ci++) {
        tkv_kv_release(&caches[ci]);
    }
    free(caches);
    tkv_free_aligned(evict);
    tkv_free_aligned(scores);
    tkv_free_aligned(work);
    tkv_free_aligned(part);
    free(q);
    free(out);
    free(t);
    return sink == 1 ? 1 : 0;
}
