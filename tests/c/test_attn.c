/*
 * test_attn.c - tkv_attn_group against a naive attention computed here in double.
 *
 * A small synthetic cache (2 layers, 2 KV heads, head_dim 16/64/80) is filled with random
 * keys (per-channel offsets drifting with the position, per-channel spreads), values and
 * GQA queries, calling tkv_kv_calibrate before tkv_kv_append for every batch.  The
 * reference reads back what the cache stores for each position (fp32 sink row, codes
 * decoded with the head's own codec, fp16 window slot), undoes the calibration of the
 * position's block (k = stored * s_b + mu_b, the fp16 values tkv_kv_block_calibration
 * gives) and computes softmax(scale <q, k>) . v in double, skipping the value rows whose
 * weight is below sparse_threshold.  With the fp32 codec and no window the levers are
 * exact in arithmetic, so the output must also match the attention over the original
 * keys and values.  Cases cover nq = 1, 3, 4, sinks + codes + window in one sequence, a
 * window wider than the sequence, positions inside the sinks, before the first
 * calibration block ends, on block boundaries and inside the window, and the positions split
 * into ranges (tkv_attn_group_range, merged by tkv_attn_merge) as the model splits them.
 *
 * Tolerance: |out - ref| <= 2e-4 * (1 + max |v|) per element (float scores and sums vs
 * double), plus the weight of value rows whose weight is within 1e-5 of the threshold
 * (either side is right).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "codec/codec.h"
#include "codec/kernels.h"
#include "kv/cache.h"

#define NL 2
#define NKV 2
#define GROUP 4 /* query heads per KV head */

typedef struct seq {
    uint32_t n, d;
    float *q, *k, *v; /* per layer: q (n, NKV * GROUP, d), k and v (n, NKV, d) */
} seq;

static seq seq_make(uint32_t n, uint32_t d, uint64_t seed) {
    seq s = {n, d, NULL, NULL, NULL};
    const size_t QD = (size_t)NKV * GROUP * d, KD = (size_t)NKV * d;
    s.q = malloc(NL * n * QD * sizeof(float));
    s.k = malloc(NL * n * KD * sizeof(float));
    s.v = malloc(NL * n * KD * sizeof(float));
    tkv_rng rng;
    tkv_rng_init(&rng, seed);
    float off[1024], ks[1024], qs[1024];
    for (uint32_t j = 0; j < d; j++) {
        off[j] = (float)(1.5 * tkv_rng_gaussian(&rng));
        ks[j] = (float)(0.2 + 1.5 * tkv_rng_uniform(&rng));
        qs[j] = (float)(0.2 + 1.5 * tkv_rng_uniform(&rng));
    }
    for (size_t i = 0; i < NL * n; i++) {
        const uint32_t t = (uint32_t)(i % n);
        for (size_t h = 0; h < KD; h++) {
            const uint32_t j = (uint32_t)(h % d);
            s.k[i * KD + h] =
                off[j] * (1.0f + (float)t / 128.0f) + ks[j] * (float)tkv_rng_gaussian(&rng);
            s.v[i * KD + h] = (float)tkv_rng_gaussian(&rng);
        }
        for (size_t h = 0; h < QD; h++) {
            s.q[i * QD + h] = qs[h % d] * (float)tkv_rng_gaussian(&rng);
        }
    }
    return s;
}

static void seq_free(seq *s) {
    free(s->q);
    free(s->k);
    free(s->v);
}

static const float *seq_q(const seq *s, uint32_t l, uint32_t t) {
    return s->q + ((size_t)l * s->n + t) * NKV * GROUP * s->d;
}
static const float *seq_k(const seq *s, uint32_t l, uint32_t t) {
    return s->k + ((size_t)l * s->n + t) * NKV * s->d;
}
static const float *seq_v(const seq *s, uint32_t l, uint32_t t) {
    return s->v + ((size_t)l * s->n + t) * NKV * s->d;
}

static float g_scratch[TKV_KV_SCRATCH_FLOATS(1024)];

static const uint32_t kBatches[] = {1, 2, 30, 1, 1, 50, 7, 64, 0};

/* All n positions of every layer, in batches cycling through kBatches. */
static void fill(tkv_kv_cache *c, const seq *s) {
    for (uint32_t p = 0, i = 0; p < s->n; i = kBatches[i + 1] ? i + 1 : 0) {
        const uint32_t n = kBatches[i] < s->n - p ? kBatches[i] : s->n - p;
        for (uint32_t l = 0; l < NL; l++) {
            CHECK_OK(tkv_kv_calibrate(c, l, p, seq_q(s, l, p), NKV * GROUP, seq_k(s, l, p), n));
            for (uint32_t t = 0; t < n; t++) {
                CHECK_OK(
                    tkv_kv_append(c, l, p + t, seq_k(s, l, p + t), seq_v(s, l, p + t), g_scratch));
            }
        }
        p += n;
    }
}

/* The keys (original space, calibration undone) and values of (l, h) as the cache holds
 * them, positions [0, n), decoded: (n, d) doubles each. */
static void decode_head(const tkv_kv_cache *c, uint32_t l, uint32_t h, double *k, double *v) {
    const tkv_kv_layer *L = &c->layers[l];
    const tkv_kv_head *hd = &c->heads[(size_t)l * c->n_head_kv + h];
    const uint32_t d = c->head_dim;
    float x[1024], mu[1024], s[1024];
    for (uint32_t t = 0; t < L->n; t++) {
        for (int kind = 0; kind < 2; kind++) {
            if (t < c->n_sink) {
                memcpy(x, (kind ? hd->v_sink : hd->k_sink) + (size_t)t * d, d * sizeof *x);
            } else if (t < L->n_comp) {
                const struct tkv_codec *cd = kind ? &hd->v_codec : &hd->k_codec;
                uint32_t run;
                tkv_codec_decode_one(cd, tkv_kv_code_run(c, l, h, kind, t, t + 1, &run), x,
                                     g_scratch);
            } else {
                const uint16_t *w =
                    (kind ? hd->v_window : hd->k_window) + (size_t)(t % c->window) * d;
                for (uint32_t j = 0; j < d; j++) {
                    x[j] = tkv_fp16_to_f32(w[j]);
                }
            }
            double *out = (kind ? v : k) + (size_t)t * d;
            if (kind == 0 && tkv_kv_has_calibration(c)) {
                tkv_kv_block_calibration(c, l, h, tkv_kv_calib_block_of(c, t), mu, s);
                for (uint32_t j = 0; j < d; j++) {
                    out[j] = (double)x[j] * s[j] + mu[j];
                }
            } else {
                for (uint32_t j = 0; j < d; j++) {
                    out[j] = x[j];
                }
            }
        }
    }
}

/* Naive attention of q over positions [0, pos] of k / v; returns the tolerance the
 * rows near the threshold add, and counts the rows skipped. */
static double naive_attention(const double *k, const double *v, uint32_t d, const float *q,
                              uint32_t pos, double scale, double threshold, double *out,
                              int *skipped) {
    double *w = malloc((pos + 1) * sizeof *w), mx = -INFINITY, sum = 0, slack = 0;
    for (uint32_t t = 0; t <= pos; t++) {
        double dot = 0;
        for (uint32_t j = 0; j < d; j++) {
            dot += (double)q[j] * k[(size_t)t * d + j];
        }
        w[t] = scale * dot;
        mx = w[t] > mx ? w[t] : mx;
    }
    for (uint32_t t = 0; t <= pos; t++) {
        w[t] = exp(w[t] - mx);
        sum += w[t];
    }
    memset(out, 0, d * sizeof *out);
    for (uint32_t t = 0; t <= pos; t++) {
        w[t] /= sum;
        if (fabs(w[t] - threshold) <= 1e-5 && threshold > 0) {
            double vmax = 0;
            for (uint32_t j = 0; j < d; j++) {
                vmax = fmax(vmax, fabs(v[(size_t)t * d + j]));
            }
            slack += w[t] * vmax;
        }
        if (w[t] < threshold) {
            (*skipped)++;
            continue;
        }
        for (uint32_t j = 0; j < d; j++) {
            out[j] += w[t] * v[(size_t)t * d + j];
        }
    }
    free(w);
    return slack;
}

/* Positions per range when a head's positions are split (tkv_attn_group_range, as the model
 * splits them into chunks): ranges then start inside calibration blocks and span more
 * blocks than attn.c reads at once. */
#define RANGE 90

typedef struct config {
    int32_t k_codec, v_codec;
    uint32_t window, n_sink;
    int center, smooth;
    uint32_t calib_block;
} config;

/* Every query position of the list, nq in {1, 3, 4}, both heads of layer 1 (and head 0 of
 * layer 0), thresholds 0 and 0.01 (and 0 over ranges of RANGE positions, merged):
 * tkv_attn_group against the naive attention over the cache's decoded content; with
 * `exact`, also over the original keys and values. */
static void check_cache(const config *cf, uint32_t d, uint32_t n, int exact, uint64_t seed) {
    seq s = seq_make(n, d, seed);
    tkv_kv_cache c;
    CHECK_OK(tkv_kv_init(&c, NL, NKV, d, 1024, cf->k_codec, cf->v_codec, cf->window, seed));
    const tkv_calib_params cp = {.center_keys = cf->center,
                                 .smooth_keys = cf->smooth,
                                 .smooth_alpha = TKV_DEFAULT_KEY_SMOOTHING,
                                 .block = cf->calib_block};
    CHECK_OK(tkv_kv_set_levers(&c, cf->n_sink, &cp));
    fill(&c, &s);
    /* the sequence has sinks, codes and window entries as configured */
    const uint32_t sk = n < cf->n_sink ? n : cf->n_sink;
    CHECK_EQ_INT(c.layers[1].n_comp, n - (n - sk < cf->window ? n - sk : cf->window));

    const uint32_t positions[] = {0, 1, 2, 40, 63, 64, 65, 150, n - cf->window, n - 5, n - 1};
    const int nqs[] = {1, 3, 4};
    const float thresholds[] = {0.0f, 0.01f};
    const size_t stride = n + 3;
    double *kd = malloc((size_t)n * d * sizeof *kd), *vd = malloc((size_t)n * d * sizeof *vd);
    double *ko = malloc((size_t)n * d * sizeof *ko), *vo = malloc((size_t)n * d * sizeof *vo);
    double ref[1024], ref_exact[1024];
    float *part = malloc(((size_t)n / RANGE + 1) * TKV_ATTN_PART_FLOATS(d) * sizeof *part);
    int bad = 0, bad_exact = 0, skipped = 0, calls = 0;
    double worst = 0;
    for (uint32_t hh = NKV - 1; hh < NL * NKV; hh++) {
        const uint32_t l = hh / NKV, h = hh % NKV;
        decode_head(&c, l, h, kd, vd);
        /* The 4-bit turbo kernels of the avx2 / avx512 tables score on int8 queries and sum
         * values in bf16 (lib/codec/kernels.h states their bounds per score and per sum).
         * Through the softmax those bounds give no useful output bound, so these outputs get
         * a tolerance of 2% of the largest value: 4x the worst seen (0.5% of vmax), while a
         * wrong calibration block, window slot or sink row moves outputs by tens of percent. */
        const tkv_codec_kernels *K = tkv_codec_kernels_active();
        const tkv_kv_head *hd0 = &c.heads[(size_t)l * NKV + h];
        const int approx_kernels = c.allocated && (tkv_turbo_scores_i8(K, &hd0->k_codec.layout) ||
                                                   tkv_turbo_accum_bf16(K, &hd0->v_codec.layout) ||
                                                   tkv_turbo_accum_i8(K, &hd0->v_codec.layout));
        double vmax = 0;
        for (size_t i = 0; i < (size_t)n * d; i++) {
            vmax = fmax(vmax, fabs(vd[i]));
        }
        for (uint32_t t = 0; t < n; t++) {
            for (uint32_t j = 0; j < d; j++) {
                ko[(size_t)t * d + j] = seq_k(&s, l, t)[h * d + j];
                vo[(size_t)t * d + j] = seq_v(&s, l, t)[h * d + j];
            }
        }
        for (size_t pi = 0; pi < sizeof positions / sizeof positions[0]; pi++) {
            const uint32_t pos = positions[pi];
            if (pos >= n) {
                continue;
            }
            for (int ni = 0; ni < 3; ni++) {
                const int nq = nqs[ni];
                /* the group's first nq query heads of the token at pos */
                const float *q = seq_q(&s, l, pos) + (size_t)h * GROUP * d;
                float *out = malloc((size_t)nq * d * sizeof *out);
                float *scores = malloc((size_t)nq * stride * sizeof *scores);
                float *work = malloc((size_t)nq * TKV_ATTN_WORK_FLOATS(d) * sizeof *work);
                for (int ti = 0; ti < 3; ti++) {
                    /* ti 2: threshold 0 over ranges of RANGE positions, merged */
                    const float thr = thresholds[ti % 2];
                    const float scale = 1.0f / sqrtf((float)d);
                    if (ti < 2) {
                        tkv_attn_group(&c, l, h, q, nq, pos, scale, thr, out, scores, stride, work);
                    } else {
                        const uint32_t np = pos / RANGE + 1;
                        for (uint32_t p = 0; p < np; p++) {
                            const uint32_t t0 = p * RANGE, t1 = p + 1 < np ? t0 + RANGE : pos + 1;
                            float *o = part + p * TKV_ATTN_PART_FLOATS(d);
                            tkv_attn_group_range(&c, l, h, q, nq, pos, t0, t1, scale, thr, o,
                                                 o + (size_t)TKV_MAX_QUERIES * d, scores, stride,
                                                 work);
                        }
                        tkv_attn_merge(part, np, nq, d, out);
                    }
                    calls++;
                    for (int k = 0; k < nq; k++) {
                        const float *qk = q + (size_t)k * d;
                        const double slack =
                            naive_attention(kd, vd, d, qk, pos, scale, thr, ref, &skipped);
                        const double approx = approx_kernels ? 0.02 * vmax : 0.0;
                        const double tol = 2e-4 * (1.0 + vmax) + slack + approx;
                        for (uint32_t j = 0; j < d; j++) {
                            const double e = fabs(out[(size_t)k * d + j] - ref[j]);
                            worst = fmax(worst, e);
                            bad += e > tol;
                        }
                        if (exact) {
                            int unused = 0;
                            naive_attention(ko, vo, d, qk, pos, scale, thr, ref_exact, &unused);
                            for (uint32_t j = 0; j < d; j++) {
                                bad_exact += fabs(out[(size_t)k * d + j] - ref_exact[j]) > tol;
                            }
                        }
                    }
                }
                free(out);
                free(scores);
                free(work);
            }
        }
    }
    CHECK_MSG(bad == 0,
              "codecs %d/%d d %u window %u sinks %u levers %d%d block %u: %d elements off "
              "(worst %.3g)",
              cf->k_codec, cf->v_codec, d, cf->window, cf->n_sink, cf->center, cf->smooth,
              cf->calib_block, bad, worst);
    CHECK_MSG(bad_exact == 0, "fp32 codec, d %u: %d elements off the exact attention", d,
              bad_exact);
    CHECK(calls > 0 && (skipped > 0 || n < 50)); /* the threshold did skip rows */
    free(kd);
    free(vd);
    free(ko);
    free(vo);
    free(part);
    tkv_kv_release(&c);
    seq_free(&s);
}

/* fp32 codec, no window: every lever is exact in arithmetic, so the output is the exact
 * attention of the original keys and values (sinks in fp32, codes in fp32). */
static void test_exact(void) {
    const config cfs[] = {
        {TKV_CODEC_FP32, TKV_CODEC_FP32, 0, 2, 1, 1, 64},
        {TKV_CODEC_FP32, TKV_CODEC_FP32, 0, 0, 1, 0, 64},
        {TKV_CODEC_FP32, TKV_CODEC_FP32, 0, 5, 0, 1, 128},
        {TKV_CODEC_FP32, TKV_CODEC_FP32, 0, 1, 1, 1, TKV_CALIBRATION_ONCE},
        {TKV_CODEC_FP32, TKV_CODEC_FP32, 0, 1, 0, 0, 256},
    };
    for (size_t i = 0; i < sizeof cfs / sizeof cfs[0]; i++) {
        check_cache(&cfs[i], 64, 200, 1, 100 + i);
        check_cache(&cfs[i], 16, 200, 1, 200 + i);
    }
}

/* Every codec family against its own decoded vectors, with sinks, codes and the window
 * in one sequence, and the calibration settings varied. */
static void test_codecs(void) {
    const int32_t codecs[][2] = {
        {TKV_CODEC_FP16, TKV_CODEC_FP16},
        {TKV_CODEC_Q8_0, TKV_CODEC_Q4_0_ROT},
        {TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B},
        {TKV_CODEC_TURBO_3B, TKV_CODEC_TURBO_5B_FAST},
        {TKV_CODEC_TURBO_3B_QJL, TKV_CODEC_TURBO_4B_QJL},
        {TKV_CODEC_TURBO_3B_TCQ, TKV_CODEC_TURBO_4B_TCQ},
        {TKV_CODEC_TURBO_2B_TCQ, TKV_CODEC_TURBO_2B},
    };
    const config settings[] = {
        /* window, sinks, center, smooth, block */
        {0, 0, 16, 3, 1, 1, 64},                    /* sinks + codes + window, 3 blocks */
        {0, 0, 0, 0, 0, 0, 256},                    /* codes only, no levers */
        {0, 0, 300, 1, 1, 0, TKV_CALIBRATION_ONCE}, /* window wider than the sequence */
        {0, 0, 5, 0, 0, 1, 64},                     /* small window wrapping many times */
        {0, 0, 8, 1, 1, 1, 16},                     /* 13 blocks, a range spans 6-7 */
    };
    const uint32_t dims[] = {16, 64, 80};
    for (size_t ci = 0; ci < sizeof codecs / sizeof codecs[0]; ci++) {
        for (size_t si = 0; si < sizeof settings / sizeof settings[0]; si++) {
            config cf = settings[si];
            cf.k_codec = codecs[ci][0];
            cf.v_codec = codecs[ci][1];
            check_cache(&cf, dims[(ci + si) % 3], 200, 0, 1000 + ci * 10 + si);
        }
    }
}

/* The first few positions: sinks only, sinks and a window with no codes yet (the code
 * arrays may not exist), one compressed position. */
static void test_short(void) {
    const config cfs[] = {
        {TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, 16, 1, 1, 1, 64},
        {TKV_CODEC_TURBO_3B_QJL, TKV_CODEC_FP16, 4, 3, 1, 0, 64},
        {TKV_CODEC_TURBO_3B_TCQ, TKV_CODEC_Q8_0, 0, 2, 0, 1, 64},
        {TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_2B, 2, 0, 1, 1, 64},
    };
    const uint32_t ns[] = {1, 2, 3, 5};
    for (size_t i = 0; i < sizeof cfs / sizeof cfs[0]; i++) {
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            check_cache(&cfs[i], 64, ns[j], 0, 300 + i * 10 + j);
        }
    }
}

int main(void) {
    test_short();
    test_exact();
    test_codecs();
    CHECK_MAIN_END();
}
