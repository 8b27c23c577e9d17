/*
 * test_kernels_codec.c - every ISA kernel table against the scalar reference.
 *
 * For each table this CPU can run (avx2, avx512; others are skipped with a note), each
 * codec and head_dim in {2, 6, 64, 80, 96, 128, 256}: encode vectors drawn from several
 * distributions (gaussian, uniform, gaussian with large outliers, sparse spikes, zero),
 * then compare scores and accum (threshold 0 and one that skips rows, into a nonzero
 * accumulator) with the scalar table.
 *
 * Tolerance: the ISA kernels reorder sums and use FMA, so a result may differ from the
 * scalar one by a few roundings of each term.  We accept
 *     |simd - scalar| <= 1e-5 * sum |terms|
 * where the terms are q_j * x_j for a score, and acc0_j plus w_i * x_ij over the rows
 * kept for an accumulator element (x = the scalar decode).  fwht must match bit for bit
 * (each stage is exact, see the kernels); matvec / matvec_t use the same 1e-5 rule.
 *
 * Run with --print-isa, the binary prints tkv_kernel_isa() and exits: the TKV_ISA test
 * runs itself as a child with the variable set.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "base/rng.h"
#include "check.h"
#include "codec/codec.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"
#include "codec/pack.h"
#include "turbokv.h"

#define N_VEC 41
#define REL_TOL 1e-5

static const uint32_t test_dims[] = {2, 6, 16, 24, 64, 80, 96, 128, 256};

static float frand(tkv_rng *rng) {
    return (float)(tkv_rng_uniform(rng) * 2.0 - 1.0);
}

/* Vector i of a test set: the distribution cycles with i. */
static void make_vector(tkv_rng *rng, uint32_t d, int i, float *x) {
    const int kind = i % 5;
    for (uint32_t j = 0; j < d; j++) {
        switch (kind) {
        case 0:
            x[j] = (float)tkv_rng_gaussian(rng);
            break;
        case 1:
            x[j] = 3.0f * frand(rng);
            break;
        case 2: /* gaussian with a few large outliers */
            x[j] = (float)tkv_rng_gaussian(rng);
            if (tkv_rng_uniform(rng) < 0.05) {
                x[j] *= 200.0f;
            }
            break;
        case 3:
            x[j] = j % 7 == 3 ? 50.0f * frand(rng) : 0.0f;
            break; /* sparse spikes */
        default:
            x[j] = i == 4 ? 0.0f : 0.01f * frand(rng);
            break; /* zero, then tiny */
        }
    }
}

static int near_rel(double a, double b, double mag) {
    return fabs(a - b) <= REL_TOL * mag + 1e-30;
}

/* The bf16 (int8, or trellis fixed-point) rounding bound of accumulator element j
 * (kernels.h), 0 when the table sums this layout in fp32.  dec: the rows' scalar decodes,
 * `width` floats apart. */
static double bf16_bound(const tkv_codec_kernels *K, const tkv_code_layout *L, const float *w,
                         float threshold, const uint8_t *codes, const float *dec, size_t width,
                         size_t n, uint32_t j) {
    if (tkv_trellis_fixed(K, L)) {
        return tkv_trellis_fixed_accum_bound(L, w, threshold, codes, n, j);
    }
    if (tkv_turbo_accum_i8(K, L)) { /* int8 weights and codebook instead */
        return tkv_turbo_accum_i8_bound(L, w, threshold, codes, n, j);
    }
    if (!tkv_turbo_accum_bf16(K, L)) {
        return 0.0;
    }
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabsf(w[i]) >= threshold) {
            s += fabs((double)w[i] * dec[i * width + j]);
        }
    }
    return s / 128.0;
}

/* The int8 (or trellis fixed-point) rounding bound of one score of q against the code
 * (kernels.h), 0 when the table scores this layout in fp32. */
static double i8_bound(const tkv_codec_kernels *K, const tkv_code_layout *L, const float *q,
                       const uint8_t *code) {
    if (tkv_trellis_fixed(K, L)) {
        return tkv_trellis_fixed_scores_bound(L, q, code);
    }
    if (!tkv_turbo_scores_i8(K, L)) {
        return 0.0;
    }
    uint8_t idx[1024];
    tkv_unpack_indices(L->bits, L->d, code + L->payload_off, idx);
    double cmax = 0, qmax = 0, sc = 0, sq = 0;
    for (uint32_t i = 0; i < (1u << L->bits); i++) {
        cmax = fmax(cmax, fabs(L->centroids[i]));
    }
    for (uint32_t j = 0; j < L->d; j++) {
        qmax = fmax(qmax, fabs(q[j]));
        sc += fabs(L->centroids[idx[j]]);
        sq += fabs(q[j]);
    }
    const double scale =
        tkv_fp16_to_f32((uint16_t)(code[L->scale_off] | code[L->scale_off + 1] << 8));
    return 1.001 * scale * (qmax * sc + cmax * sq) / 254.0;
}

static void test_codec_dim(const tkv_codec_kernels *K, const tkv_codec_kernels *S, int32_t id,
                           uint32_t d) {
    struct tkv_codec c;
    CHECK_OK(tkv_codec_init(&c, id, d, 1234 + id));
    const tkv_code_layout *L = &c.layout;
    const uint32_t width = tkv_codec_work_width(&c);
    const size_t stride = L->stride;
    /* +1: the kernels must not assume aligned codes */
    uint8_t *buf = malloc(N_VEC * stride + 1);
    uint8_t *codes = buf + 1;
    float *x = malloc(d * sizeof *x);
    float *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * sizeof(float));
    float *dec = malloc((size_t)N_VEC * width * sizeof *dec); /* scalar decodes */
    float *q = malloc(width * sizeof *q);
    float *out_s = malloc(N_VEC * sizeof *out_s), *out_k = malloc(N_VEC * sizeof *out_k);
    float *w = malloc(N_VEC * sizeof *w);
    float *acc0 = malloc(width * sizeof *acc0);
    float *acc_s = malloc(width * sizeof *acc_s), *acc_k = malloc(width * sizeof *acc_k);
    tkv_rng rng;
    tkv_rng_init(&rng, 99 + (uint64_t)id * 1000 + d);
    for (int i = 0; i < N_VEC; i++) {
        make_vector(&rng, d, i, x);
        CHECK_OK(tkv_codec_encode_one(&c, x, codes + (size_t)i * stride, scratch));
        tkv_decode_rotated_scalar(L, codes + (size_t)i * stride, dec + (size_t)i * width);
    }
    for (uint32_t j = 0; j < width; j++) {
        q[j] = (float)tkv_rng_gaussian(&rng);
        acc0[j] = frand(&rng);
    }
    for (int i = 0; i < N_VEC; i++) {
        w[i] = i % 9 == 5 ? 0.0f : frand(&rng);
    }

    /* scores */
    S->scores[L->format](L, q, codes, N_VEC, out_s);
    K->scores[L->format](L, q, codes, N_VEC, out_k);
    int bad = 0;
    for (int i = 0; i < N_VEC; i++) {
        double mag = 0.0;
        for (uint32_t j = 0; j < width; j++) {
            mag += fabs((double)q[j] * dec[(size_t)i * width + j]);
        }
        if (!near_rel(out_k[i], out_s[i], mag) &&
            !(fabs(out_k[i] - out_s[i]) <=
              i8_bound(K, L, q, codes + (size_t)i * stride) + REL_TOL * mag)) {
            if (bad++ < 3) {
                fprintf(stderr, "  %s %s d=%u scores[%d]: %.9g vs scalar %.9g (mag %.3g)\n", K->isa,
                        c.desc->name, d, i, (double)out_k[i], (double)out_s[i], mag);
            }
        }
    }
    CHECK_MSG(bad == 0, "%s %s d=%u: %d scores out of tolerance", K->isa, c.desc->name, d, bad);
    /* the scalar table itself against the reference decode (the trellis entries decode
     * word-wise, the reference bit by bit) */
    bad = 0;
    for (int i = 0; i < N_VEC; i++) {
        double ref = 0.0, mag = 0.0;
        for (uint32_t j = 0; j < width; j++) {
            ref += (double)q[j] * dec[(size_t)i * width + j];
            mag += fabs((double)q[j] * dec[(size_t)i * width + j]);
        }
        bad += !near_rel(out_s[i], ref, mag);
    }
    CHECK_MSG(bad == 0, "scalar %s d=%u: %d scores differ from the reference decode", c.desc->name,
              d, bad);

    /* accum: threshold 0 keeps every row (w = 0 included), 0.5 skips about half */
    const float thresholds[2] = {0.0f, 0.5f};
    for (int t = 0; t < 2; t++) {
        memcpy(acc_s, acc0, width * sizeof *acc0);
        memcpy(acc_k, acc0, width * sizeof *acc0);
        S->accum[L->format](L, w, thresholds[t], codes, N_VEC, acc_s);
        K->accum[L->format](L, w, thresholds[t], codes, N_VEC, acc_k);
        bad = 0;
        for (uint32_t j = 0; j < width; j++) {
            double mag = fabs(acc0[j]);
            for (int i = 0; i < N_VEC; i++) {
                if (fabsf(w[i]) >= thresholds[t]) {
                    mag += fabs((double)w[i] * dec[(size_t)i * width + j]);
                }
            }
            if (!near_rel(acc_k[j], acc_s[j], mag) &&
                !(fabs(acc_k[j] - acc_s[j]) <=
                  bf16_bound(K, L, w, thresholds[t], codes, dec, width, N_VEC, j) +
                      REL_TOL * mag)) {
                if (bad++ < 3) {
                    fprintf(stderr, "  %s %s d=%u thr=%g acc[%u]: %.9g vs scalar %.9g\n", K->isa,
                            c.desc->name, d, (double)thresholds[t], j, (double)acc_k[j],
                            (double)acc_s[j]);
                }
            }
        }
        CHECK_MSG(bad == 0, "%s %s d=%u threshold %g: %d accum elements out of tolerance", K->isa,
                  c.desc->name, d, (double)thresholds[t], bad);
    }

    free(buf);
    free(x);
    free(scratch);
    free(dec);
    free(q);
    free(out_s);
    free(out_k);
    free(w);
    free(acc0);
    free(acc_s);
    free(acc_k);
    tkv_codec_release(&c);
}

static void test_fwht(const tkv_codec_kernels *K, const tkv_codec_kernels *S) {
    float a[1024], b[1024];
    tkv_rng rng;
    tkv_rng_init(&rng, 7);
    for (uint32_t d = 2; d <= 1024; d *= 2) {
        for (uint32_t j = 0; j < d; j++) {
            a[j] = b[j] = (float)tkv_rng_gaussian(&rng);
        }
        const float scale = 1.0f / sqrtf((float)d);
        S->fwht(a, d, scale);
        K->fwht(b, d, scale);
        CHECK_MSG(memcmp(a, b, d * sizeof(float)) == 0, "%s fwht d=%u differs from scalar", K->isa,
                  d);
    }
}

/* Grouped-query turbo kernels: each of nq queries must match the scalar single-query
 * kernels within the same 1e-5 * sum|terms| rule (checked loosely here against the sum of
 * absolute values of the scalar outputs over the codes, scaled by the vector size). */
static void test_multi_query(const tkv_codec_kernels *K, int32_t id, uint32_t d) {
    struct tkv_codec c;
    if (tkv_codec_init(&c, id, d, 5) != TKV_OK) {
        CHECK_MSG(0, "codec %d d=%u init failed", (int)id, d);
        return;
    }
    const size_t n = 23; /* not a multiple of the 4-key batches */
    const tkv_code_layout *L = &c.layout;
    const uint32_t width = tkv_codec_work_width(&c);
    uint8_t *codes = malloc(n * L->stride);
    float *x = malloc(d * sizeof *x), *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * sizeof(float));
    float q[TKV_MAX_QUERIES][2 * 256], out_k[TKV_MAX_QUERIES][23], out_s[23];
    float w[TKV_MAX_QUERIES][23], acc_k[TKV_MAX_QUERIES][2 * 256], acc_s[2 * 256];
    float *dec = malloc(n * width * sizeof *dec); /* scalar decodes, for the bf16 bound */
    tkv_rng rng;
    tkv_rng_init(&rng, 1000 + (uint64_t)id * 7 + d);
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < d; j++) {
            x[j] = (float)tkv_rng_gaussian(&rng) + (j % 7 == 0 ? 3.0f : 0.0f);
        }
        tkv_codec_encode_one(&c, x, codes + i * L->stride, scratch);
        tkv_decode_rotated_scalar(L, codes + i * L->stride, dec + i * width);
    }
    for (int nq = 1; nq <= TKV_MAX_QUERIES; nq++) {
        const float *qs[TKV_MAX_QUERIES], *ws[TKV_MAX_QUERIES];
        float *outs[TKV_MAX_QUERIES], *accs[TKV_MAX_QUERIES];
        for (int k = 0; k < nq; k++) {
            for (uint32_t j = 0; j < width; j++) {
                q[k][j] = (float)tkv_rng_gaussian(&rng);
                acc_k[k][j] = 0.25f * (float)k;
            }
            for (size_t i = 0; i < n; i++) {
                w[k][i] = (float)tkv_rng_uniform(&rng);
            }
            qs[k] = q[k];
            ws[k] = w[k];
            outs[k] = out_k[k];
            accs[k] = acc_k[k];
        }
        K->scores_multi[L->format](L, qs, nq, codes, n, outs);
        K->accum_multi[L->format](L, ws, nq, 0.3f, codes, n, accs);
        for (int k = 0; k < nq; k++) {
            tkv_scores_scalar(L, q[k], codes, n, out_s);
            double mag = 1e-6;
            for (size_t i = 0; i < n; i++) {
                mag += fabs(out_s[i]);
            }
            double worst = 0;
            for (size_t i = 0; i < n; i++) {
                /* int8 scores: the excess over their rounding bound (kernels.h) */
                worst = fmax(worst, fabs(out_s[i] - out_k[k][i]) -
                                        i8_bound(K, L, q[k], codes + i * L->stride));
            }
            CHECK_MSG(worst <= 1e-5 * mag, "%s %s d=%u nq=%d query %d: scores differ by %g (mag %g)",
                      K->isa, tkv_codec_name(id), d, nq, k, worst, mag);
            for (uint32_t j = 0; j < width; j++) {
                acc_s[j] = 0.25f * (float)k;
            }
            tkv_accum_scalar(L, w[k], 0.3f, codes, n, acc_s);
            double amag = 1e-6, aworst = 0;
            for (uint32_t j = 0; j < width; j++) {
                amag += fabs(acc_s[j]);
                /* bf16 value sums: the excess over their rounding bound (kernels.h) */
                aworst = fmax(aworst, fabs(acc_s[j] - acc_k[k][j]) -
                                          bf16_bound(K, L, w[k], 0.3f, codes, dec, width, n, j));
            }
            CHECK_MSG(aworst <= 1e-5 * amag, "%s %s d=%u nq=%d query %d: accum differs by %g",
                      K->isa, tkv_codec_name(id), d, nq, k, aworst);
        }
    }
    free(codes);
    free(dec);
    free(x);
    free(scratch);
    tkv_codec_release(&c);
}

/* The int8 turbo kernels on a long run, nq = 1..4 through the grouped-query entries: every
 * pass width of the scores (8 / 4 keys, single keys), whole and partial weight blocks over
 * more than one span, weights all >= 0 (softmax outputs: the unsigned-weight path) and of
 * both signs, threshold 0 and one that skips rows.  Each query against the scalar
 * single-query kernels, per score and per accumulator element, within the int8 rounding
 * bounds of kernels.h plus the 1e-5 rule. */
static void test_multi_query_i8(const tkv_codec_kernels *K, int32_t id, uint32_t d) {
    struct tkv_codec c;
    CHECK_OK(tkv_codec_init(&c, id, d, 77));
    const tkv_code_layout *L = &c.layout;
    if (!tkv_turbo_scores_i8(K, L) || !tkv_turbo_accum_i8(K, L)) {
        tkv_codec_release(&c);
        return;
    }
    const size_t n = 555; /* two spans and a part, a partial block, 8-, 4- and 1-key passes */
    uint8_t *codes = malloc(n * L->stride);
    float *x = malloc(d * sizeof *x),
          *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * sizeof(float));
    float *dec = malloc(n * d * sizeof *dec);
    float *q = malloc((size_t)TKV_MAX_QUERIES * d * sizeof *q);
    float *w = malloc((size_t)TKV_MAX_QUERIES * n * sizeof *w);
    float *out = malloc((size_t)TKV_MAX_QUERIES * n * sizeof *out),
          *out_s = malloc(n * sizeof *out_s);
    float *acc = malloc((size_t)TKV_MAX_QUERIES * d * sizeof *acc),
          *acc_s = malloc(d * sizeof *acc_s);
    tkv_rng rng;
    tkv_rng_init(&rng, 31 + (uint64_t)id * 13 + d);
    for (size_t i = 0; i < n; i++) {
        make_vector(&rng, d, (int)(i % 5), x);
        CHECK_OK(tkv_codec_encode_one(&c, x, codes + i * L->stride, scratch));
        tkv_decode_rotated_scalar(L, codes + i * L->stride, dec + i * d);
    }
    for (int sign = 0; sign < 2; sign++) {
        for (int nq = 1; nq <= TKV_MAX_QUERIES; nq++) {
            const float thr = nq % 2 ? 0.0f : 0.3f;
            const float *qs[TKV_MAX_QUERIES], *ws[TKV_MAX_QUERIES];
            float *outs[TKV_MAX_QUERIES], *accs[TKV_MAX_QUERIES];
            for (int k = 0; k < nq; k++) {
                qs[k] = q + (size_t)k * d;
                ws[k] = w + (size_t)k * n;
                outs[k] = out + (size_t)k * n;
                accs[k] = acc + (size_t)k * d;
                for (uint32_t j = 0; j < d; j++) {
                    q[(size_t)k * d + j] = (float)tkv_rng_gaussian(&rng);
                    acc[(size_t)k * d + j] = 0.5f * (float)k;
                }
                for (size_t i = 0; i < n; i++) { /* a few large weights, like a softmax */
                    const float u = (float)tkv_rng_uniform(&rng);
                    const float v = i % 37 == 3 ? 20.0f * u : u * u;
                    w[(size_t)k * n + i] = sign && i % 3 == 1 ? -v : v;
                }
            }
            K->scores_multi[L->format](L, qs, nq, codes, n, outs);
            K->accum_multi[L->format](L, ws, nq, thr, codes, n, accs);
            for (int k = 0; k < nq; k++) {
                tkv_scores_scalar(L, qs[k], codes, n, out_s);
                int bad = 0;
                for (size_t i = 0; i < n; i++) {
                    double mag = 0;
                    for (uint32_t j = 0; j < d; j++) {
                        mag += fabs((double)qs[k][j] * dec[i * d + j]);
                    }
                    bad += !(fabs(outs[k][i] - out_s[i]) <=
                             i8_bound(K, L, qs[k], codes + i * L->stride) + REL_TOL * mag);
                }
                CHECK_MSG(bad == 0, "%s %s d=%u nq=%d query %d: %d int8 scores out of bound",
                          K->isa, c.desc->name, d, nq, k, bad);
                for (uint32_t j = 0; j < d; j++) {
                    acc_s[j] = 0.5f * (float)k;
                }
                tkv_accum_scalar(L, ws[k], thr, codes, n, acc_s);
                bad = 0;
                for (uint32_t j = 0; j < d; j++) {
                    double mag = fabs(acc_s[j]);
                    for (size_t i = 0; i < n; i++) {
                        if (fabsf(ws[k][i]) >= thr) {
                            mag += fabs((double)ws[k][i] * dec[i * d + j]);
                        }
                    }
                    bad += !(fabs(accs[k][j] - acc_s[j]) <=
                             tkv_turbo_accum_i8_bound(L, ws[k], thr, codes, n, j) + REL_TOL * mag);
                }
                CHECK_MSG(bad == 0,
                          "%s %s d=%u nq=%d query %d weights %s: %d int8 sums out of bound", K->isa,
                          c.desc->name, d, nq, k, sign ? "signed" : ">= 0", bad);
            }
        }
    }
    free(codes);
    free(x);
    free(scratch);
    free(dec);
    free(q);
    free(w);
    free(out);
    free(out_s);
    free(acc);
    free(acc_s);
    tkv_codec_release(&c);
}

/* The trellis encoder's Viterbi steps: the same bits as scalar (codes must not depend on
 * the CPU), keys and final costs, from random costs including ties (coarse values) and a
 * path start (one finite cost), over coordinates that are sometimes exactly a level. */
static void test_trellis_forward(const tkv_codec_kernels *K, const tkv_codec_kernels *S) {
    tkv_rng rng;
    tkv_rng_init(&rng, 4242);
    enum { STEPS = 40 };
    static uint32_t keys_s[STEPS * 64], keys_k[STEPS * 64];
    for (uint32_t bits = 2; bits <= 4; bits++) {
        const tkv_trellis *t = tkv_trellis_get(bits);
        const uint32_t states = 1u << t->state_bits;
        for (int trial = 0; trial < 200; trial++) {
            const uint32_t n = 1 + (uint32_t)trial % STEPS;
            float cost_s[64], cost_k[64];
            for (uint32_t s = 0; s < states; s++) {
                const float r = (float)tkv_rng_uniform(&rng) * 4.0f;
                cost_s[s] = trial % 3 == 0 ? floorf(r) : r;
                if (trial % 7 == 1) {
                    cost_s[s] = s == (uint32_t)trial % states ? 0.0f : FLT_MAX / 4;
                }
            }
            float x[STEPS];
            for (uint32_t j = 0; j < n; j++) {
                x[j] = (trial + j) % 5 == 0 ? t->table[(trial + 3 * j) % (1u << t->window_bits)]
                                            : (float)tkv_rng_gaussian(&rng) * 1.5f;
            }
            memcpy(cost_k, cost_s, states * sizeof(float));
            S->trellis_forward(t, x, n, cost_s, keys_s);
            K->trellis_forward(t, x, n, cost_k, keys_k);
            CHECK_MSG(memcmp(keys_s, keys_k, n * states * sizeof(uint32_t)) == 0 &&
                          memcmp(cost_s, cost_k, states * sizeof(float)) == 0,
                      "%s trellis steps N=%u trial %d differ from scalar", K->isa, bits, trial);
        }
    }
}

/* softmax: every probability within 2e-6 relative (+1e-12 absolute) of scalar expf's,
 * for lengths around the vector widths and logits spread over a wide range */
static void test_softmax(const tkv_codec_kernels *K, const tkv_codec_kernels *S) {
    static float a[5000], b[5000];
    tkv_rng rng;
    tkv_rng_init(&rng, 11);
    const size_t lens[] = {1, 2, 7, 8, 15, 16, 17, 33, 100, 1023, 4999};
    const float spreads[] = {0.1f, 3.0f, 40.0f};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        for (size_t si = 0; si < 3; si++) {
            const size_t n = lens[li];
            double mx = -INFINITY, sum = 0;
            for (size_t i = 0; i < n; i++) {
                a[i] = b[i] = spreads[si] * (float)tkv_rng_gaussian(&rng);
                mx = fmax(mx, 0.7 * a[i]);
            }
            for (size_t i = 0; i < n; i++) {
                sum += exp(0.7 * a[i] - mx);
            }
            const double lse = mx + log(sum); /* the log-sum-exp both return */
            const float lse_s = S->softmax(a, n, 0.7f), lse_k = K->softmax(b, n, 0.7f);
            CHECK_MSG(fabs(lse_s - lse) <= 1e-5 * (fabs(lse) + 1) &&
                          fabs(lse_k - lse) <= 1e-5 * (fabs(lse) + 1),
                      "%s softmax n=%zu: log-sum-exp %g, scalar %g, exact %g", K->isa, n,
                      (double)lse_k, (double)lse_s, lse);
            double worst = 0, total = 0;
            for (size_t i = 0; i < n; i++) {
                worst = fmax(worst, fabs(a[i] - b[i]) / (fabs(a[i]) + 1e-12 / 2e-6));
                total += b[i];
            }
            CHECK_MSG(worst <= 2e-6, "%s softmax n=%zu spread %g: relative error %g", K->isa, n,
                      (double)spreads[si], worst);
            CHECK_NEAR(total, 1.0, 1e-5);
        }
    }
}

static void test_matvec(const tkv_codec_kernels *K, const tkv_codec_kernels *S, uint32_t rows,
                        uint32_t cols) {
    float *m = malloc((size_t)rows * cols * sizeof *m);
    float *x = malloc((rows > cols ? rows : cols) * sizeof *x);
    float *ys = malloc((rows > cols ? rows : cols) * sizeof *ys);
    float *yk = malloc((rows > cols ? rows : cols) * sizeof *yk);
    tkv_rng rng;
    tkv_rng_init(&rng, rows * 131 + cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        m[i] = (float)tkv_rng_gaussian(&rng);
    }
    for (uint32_t i = 0; i < (rows > cols ? rows : cols); i++) {
        x[i] = frand(&rng);
    }
    S->matvec(m, x, rows, cols, ys);
    K->matvec(m, x, rows, cols, yk);
    int bad = 0;
    for (uint32_t r = 0; r < rows; r++) {
        double mag = 0.0;
        for (uint32_t c = 0; c < cols; c++) {
            mag += fabs((double)m[(size_t)r * cols + c] * x[c]);
        }
        bad += !near_rel(yk[r], ys[r], mag);
    }
    CHECK_MSG(bad == 0, "%s matvec %ux%u: %d rows out of tolerance", K->isa, rows, cols, bad);
    S->matvec_t(m, x, rows, cols, ys);
    K->matvec_t(m, x, rows, cols, yk);
    bad = 0;
    for (uint32_t c = 0; c < cols; c++) {
        double mag = 0.0;
        for (uint32_t r = 0; r < rows; r++) {
            mag += fabs((double)m[(size_t)r * cols + c] * x[r]);
        }
        bad += !near_rel(yk[c], ys[c], mag);
    }
    CHECK_MSG(bad == 0, "%s matvec_t %ux%u: %d columns out of tolerance", K->isa, rows, cols, bad);
    free(m);
    free(x);
    free(ys);
    free(yk);
}

/*
 * Arbitrary bytes.  The cache's own codes (and a loaded cache file's) reach the kernels
 * without validation, so every table must stay inside the vector and the 32-float
 * codebook on any bytes (ASan checks the reads), treat a one-per-byte index by its low
 * 5 bits like the SIMD lookups do, and agree with the reference decode wherever that is
 * finite and the sum of |terms| stays below 1e30 (beyond that a float sum may overflow
 * in one order and not in another).  Half of the vectors get a finite fp16 scale so the
 * index paths are compared, not only NaN propagation.
 */
#define N_RAW 13

/* The fixed-point trellis scores' rounding bound (kernels.h), 0 for other kernels. */
static double raw_score_bound(const tkv_codec_kernels *K, const tkv_code_layout *L, const float *q,
                              const uint8_t *code) {
    return tkv_trellis_fixed(K, L) ? tkv_trellis_fixed_scores_bound(L, q, code) : 0.0;
}

static void test_arbitrary_bytes(const tkv_codec_kernels *K, int32_t id, uint32_t d) {
    struct tkv_codec c;
    CHECK_OK(tkv_codec_init(&c, id, d, 77));
    const tkv_code_layout *L = &c.layout;
    const uint32_t width = tkv_codec_work_width(&c);
    const size_t stride = L->stride;
    uint8_t *buf = malloc(N_RAW * stride + 1);
    uint8_t *codes = buf + 1;
    float *dec = malloc((size_t)N_RAW * width * sizeof *dec);
    float *q = malloc(width * sizeof *q), *q2 = malloc(width * sizeof *q2);
    float *acc = malloc(width * sizeof *acc), *acc2 = malloc(width * sizeof *acc2);
    float out[N_RAW], out2[N_RAW], w[N_RAW], w2[N_RAW];
    tkv_rng rng;
    tkv_rng_init(&rng, 4242 + (uint64_t)id * 1000 + d);
    for (size_t b = 0; b < N_RAW * stride; b++) {
        codes[b] = (uint8_t)(tkv_rng_next(&rng) >> 56);
    }
    for (int i = 0; i < N_RAW; i++) {
        uint8_t *code = codes + (size_t)i * stride;
        if (i == 0) {
            memset(code, 0xff, stride);
        } else if (i % 2 == 1 && (L->format == TKV_FMT_TURBO || L->format == TKV_FMT_TRELLIS)) {
            code[L->scale_off] = (uint8_t)(tkv_rng_next(&rng) >> 56);
            code[L->scale_off + 1] = 0x3c; /* 1 .. 2 */
            if (L->has_qjl) {
                code[L->rnorm_off] = 0;
                code[L->rnorm_off + 1] = 0x38; /* 0.5 */
            }
        }
        tkv_decode_rotated_scalar(L, code, dec + (size_t)i * width);
    }
    if (L->format == TKV_FMT_TURBO && L->bits == 8) {
        /* one index per byte: byte b decodes as index b & 31 */
        uint8_t *masked = malloc(stride);
        float *xm = malloc(width * sizeof *xm);
        int bad = 0;
        for (int i = 1; i < N_RAW; i += 2) {
            memcpy(masked, codes + (size_t)i * stride, stride);
            for (uint32_t j = 0; j < d; j++) {
                masked[L->payload_off + j] &= 31;
            }
            tkv_decode_rotated_scalar(L, masked, xm);
            bad += memcmp(xm, dec + (size_t)i * width, d * sizeof *xm) != 0;
        }
        CHECK_MSG(bad == 0, "%s d=%u: %d decodes of index bytes >= 32 differ from their low 5 bits",
                  c.desc->name, d, bad);
        free(masked);
        free(xm);
    }
    for (uint32_t j = 0; j < width; j++) {
        q[j] = (float)tkv_rng_gaussian(&rng);
        q2[j] = (float)tkv_rng_gaussian(&rng);
    }
    for (int i = 0; i < N_RAW; i++) {
        w[i] = frand(&rng);
        w2[i] = frand(&rng);
    }
    /* scores, single and grouped */
    K->scores[L->format](L, q, codes, N_RAW, out);
    if (K->scores_multi[L->format]) {
        const float *qs[2] = {q, q2};
        float tmp[N_RAW];
        float *outs[2] = {tmp, out2};
        K->scores_multi[L->format](L, qs, 2, codes, N_RAW, outs);
        for (int i = 0; i < N_RAW; i++) {
            double mag = 0.0;
            for (uint32_t j = 0; j < width; j++) {
                mag += fabs((double)q[j] * dec[(size_t)i * width + j]);
            }
            if (isfinite(mag) && mag < 1e30) {
                const double fx = 2.0 * raw_score_bound(K, L, q, codes + (size_t)i * stride);
                CHECK_MSG(fabs((double)tmp[i] - out[i]) <= REL_TOL * mag + fx + 1e-30,
                          "%s %s d=%u multi score %d: %g vs %g", K->isa, c.desc->name, d, i,
                          (double)tmp[i], (double)out[i]);
            }
        }
    }
    int bad = 0, compared = 0;
    for (int i = 0; i < N_RAW; i++) {
        double ref = 0.0, mag = 0.0;
        for (uint32_t j = 0; j < width; j++) {
            ref += (double)q[j] * dec[(size_t)i * width + j];
            mag += fabs((double)q[j] * dec[(size_t)i * width + j]);
        }
        if (!(isfinite(mag) && mag < 1e30)) {
            continue;
        }
        compared++;
        const double fx = raw_score_bound(K, L, q, codes + (size_t)i * stride);
        if (!isfinite(out[i]) || !(fabs(out[i] - ref) <= REL_TOL * mag + fx + 1e-30)) {
            if (bad++ < 3) {
                fprintf(stderr, "  %s %s d=%u raw scores[%d]: %.9g vs reference %.9g\n", K->isa,
                        c.desc->name, d, i, (double)out[i], ref);
            }
        }
    }
    CHECK_MSG(bad == 0, "%s %s d=%u: %d of %d scores of arbitrary bytes off the reference", K->isa,
              c.desc->name, d, bad, compared);
    /* accum over the vectors whose decode is usable, single and grouped */
    int keep[N_RAW];
    for (int i = 0; i < N_RAW; i++) {
        double mag = 0.0;
        for (uint32_t j = 0; j < width; j++) {
            mag += fabs((double)dec[(size_t)i * width + j]);
        }
        keep[i] = isfinite(mag) && mag < 1e30;
        if (!keep[i]) {
            w[i] = w2[i] = 0.0f;
        }
    }
    memset(acc, 0, width * sizeof *acc);
    K->accum[L->format](L, w, 1e-3f, codes, N_RAW, acc);
    if (K->accum_multi[L->format]) {
        const float *ws[2] = {w, w2};
        float *accs[2] = {acc2, q2}; /* q2 is free now */
        memset(acc2, 0, width * sizeof *acc2);
        memset(q2, 0, width * sizeof *q2);
        K->accum_multi[L->format](L, ws, 2, 1e-3f, codes, N_RAW, accs);
    }
    bad = 0;
    for (uint32_t j = 0; j < width; j++) {
        double ref = 0.0, mag = 0.0;
        for (int i = 0; i < N_RAW; i++) {
            if (keep[i] && fabsf(w[i]) >= 1e-3f) {
                ref += (double)w[i] * dec[(size_t)i * width + j];
                mag += fabs((double)w[i] * dec[(size_t)i * width + j]);
            }
        }
        /* the fixed-point trellis sums (kernels.h): their rounding bound on top */
        const double fx = tkv_trellis_fixed(K, L)
                              ? tkv_trellis_fixed_accum_bound(L, w, 1e-3f, codes, N_RAW, j)
                              : 0.0;
        bad += !isfinite(acc[j]) || !(fabs(acc[j] - ref) <= REL_TOL * mag + fx + 1e-30);
        if (K->accum_multi[L->format]) {
            bad += !isfinite(acc2[j]) || !(fabs(acc2[j] - ref) <= REL_TOL * mag + fx + 1e-30);
        }
    }
    CHECK_MSG(bad == 0, "%s %s d=%u: %d accumulator elements of arbitrary bytes off the reference",
              K->isa, c.desc->name, d, bad);
    free(buf);
    free(dec);
    free(q);
    free(q2);
    free(acc);
    free(acc2);
    tkv_codec_release(&c);
}

/* The name printed by a child of this binary run with TKV_ISA=want ("" if it failed). */
static void child_isa(const char *self, const char *want, char *got, size_t got_size) {
    char cmd[4096];
    got[0] = '\0';
    if (strlen(self) > 3000 || strchr(self, '\'')) {
        return;
    }
    snprintf(cmd, sizeof cmd, "TKV_ISA=%s '%s' --print-isa", want, self);
    FILE *p = popen(cmd, "r");
    if (!p) {
        return;
    }
    if (fgets(got, (int)got_size, p)) {
        got[strcspn(got, "\r\n")] = '\0';
    }
    pclose(p);
}

static void test_isa_selection(const char *self) {
    CHECK(tkv_codec_kernels_for_isa("scalar") == &tkv_codec_kernels_scalar);
    CHECK(tkv_codec_kernels_for_isa(NULL) == NULL);
    CHECK(tkv_codec_kernels_for_isa("sse9") == NULL);
    const uint32_t f = tkv_cpu_features();
    const tkv_codec_kernels *k2 = tkv_codec_kernels_for_isa("avx2");
    const tkv_codec_kernels *k5 = tkv_codec_kernels_for_isa("avx512");
    CHECK((k2 != NULL) == ((f & TKV_CPU_AVX2) != 0));
    CHECK((k5 != NULL) == ((f & TKV_CPU_AVX512) != 0));
    if (k2) {
        CHECK(strcmp(k2->isa, "avx2") == 0);
    }
    if (k5) {
        CHECK(strcmp(k5->isa, "avx512") == 0);
    }
    /* TKV_ISA picks the named table when the CPU can run it, else the best it can */
    const char *best = k5 ? "avx512" : k2 ? "avx2" : "scalar";
    const char *const wants[] = {"scalar", "avx2", "avx512"};
    const char *expect[] = {"scalar", k2 ? "avx2" : "scalar", best};
    char got[64];
    for (int i = 0; i < 3; i++) {
        child_isa(self, wants[i], got, sizeof got);
        CHECK_MSG(strcmp(got, expect[i]) == 0, "TKV_ISA=%s: child chose '%s', expected '%s'",
                  wants[i], got, expect[i]);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--print-isa") == 0) {
        printf("%s\n", tkv_kernel_isa());
        return 0;
    }
    const tkv_codec_kernels *S = &tkv_codec_kernels_scalar;
    const char *const all_isas[] = {"scalar", "avx2", "avx512"};
    for (int k = 0; k < 3; k++) {
        const tkv_codec_kernels *K = tkv_codec_kernels_for_isa(all_isas[k]);
        const uint32_t raw_dims[] = {2, 6, 16, 18, 24, 34, 66, 80, 130};
        for (int32_t id = TKV_CODEC_FP32; K && id < TKV_CODEC_COUNT; id++) {
            for (size_t t = 0; t < sizeof raw_dims / sizeof raw_dims[0]; t++) {
                if (tkv_codec_desc_dim_valid(tkv_codec_desc_get(id), raw_dims[t])) {
                    test_arbitrary_bytes(K, id, raw_dims[t]);
                }
            }
        }
    }
    const char *const isas[] = {"avx2", "avx512"};
    for (int k = 0; k < 2; k++) {
        const tkv_codec_kernels *K = tkv_codec_kernels_for_isa(isas[k]);
        if (!K) {
            printf("note: %s kernels not available on this CPU/build, skipped\n", isas[k]);
            continue;
        }
        printf("testing %s kernels\n", K->isa);
        for (int32_t id = TKV_CODEC_FP32; id < TKV_CODEC_COUNT; id++) {
            for (size_t t = 0; t < sizeof test_dims / sizeof test_dims[0]; t++) {
                if (tkv_codec_desc_dim_valid(tkv_codec_desc_get(id), test_dims[t])) {
                    test_codec_dim(K, S, id, test_dims[t]);
                }
            }
        }
        test_fwht(K, S);
        test_trellis_forward(K, S);
        test_softmax(K, S);
        for (int32_t id = TKV_CODEC_TURBO_2B; id < TKV_CODEC_COUNT; id++) {
            const uint32_t dims[] = {6, 16, 24, 64, 80, 96, 128, 256};
            for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
                if (tkv_codec_desc_dim_valid(tkv_codec_desc_get(id), dims[t])) {
                    test_multi_query(K, id, dims[t]);
                }
            }
        }
        for (int32_t id = TKV_CODEC_TURBO_2B; id <= TKV_CODEC_TURBO_5B; id++) {
            test_multi_query_i8(K, id, 64);
            test_multi_query_i8(K, id, 128);
        }
        if (strcmp(K->isa, "avx512") == 0) {
            /* the avx512 trellis entries pick the VBMI kernels where the CPU has VBMI;
             * the float-permute ones (CPUs without it) are tested here in any case */
            tkv_codec_kernels F = *K;
            F.isa = "avx512 (trellis without vbmi)";
            F.scores[TKV_FMT_TRELLIS] = tkv_scores_trellis_avx512f;
            F.accum[TKV_FMT_TRELLIS] = tkv_accum_trellis_avx512f;
            F.scores_multi[TKV_FMT_TRELLIS] = tkv_scores_trellis_multi_avx512f;
            F.accum_multi[TKV_FMT_TRELLIS] = tkv_accum_trellis_multi_avx512f;
            const uint32_t dims[] = {16, 24, 64, 80, 96, 128, 256};
            for (int32_t id = TKV_CODEC_TURBO_2B_TCQ; id <= TKV_CODEC_TURBO_4B_TCQ; id++) {
                for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
                    test_codec_dim(&F, S, id, dims[t]);
                    test_multi_query(&F, id, dims[t]);
                }
            }
        }
        test_matvec(K, S, 80, 80);
        test_matvec(K, S, 96, 96);
        test_matvec(K, S, 130, 130);
        test_matvec(K, S, 7, 33);
        test_matvec(K, S, 33, 7);
    }
    test_isa_selection(argv[0]);
    CHECK_MAIN_END();
}
