/*
 * test_kv.c - lib/kv/cache.c through its internal interface, no model.
 *
 * Small synthetic caches (2 layers, 2 KV heads, head_dim 16/64/80) are fed random keys,
 * values and queries (fixed seeds), calling tkv_kv_calibrate before tkv_kv_append for
 * every batch as the forward pass does.  What is read back (sink rows, codes, fp16 window
 * slots) is compared bit for bit with what the documented layout says must be there: the
 * key in its block's calibrated space (k - mu_b) / s_b, fp16-rounded in the window, coded
 * by the head's codec (from the fp16 row when it left a window).  Calibration blocks are
 * checked against a naive recomputation of cache.h's formulas from the data fed; byte
 * counts against sums over the documented layout.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/half.h"
#include "base/rng.h"
#include "base/threads.h"
#include "check.h"
#include "codec/codec.h"
#include "kv/cache.h"

#define NL 2  /* layers */
#define NKV 2 /* KV heads */

/* A synthetic sequence: per layer, q (n, n_head, d), k and v (n, NKV, d).  Keys have a
 * per-channel offset that drifts with the position and per-channel spreads, queries
 * per-channel spreads, so centering and smoothing have something to fit and every block
 * calibrates differently. */
typedef struct seq {
    uint32_t n, n_head, d;
    float *q, *k, *v;
} seq;

static seq seq_make(uint32_t n, uint32_t n_head, uint32_t d, uint64_t seed) {
    seq s = {n, n_head, d, NULL, NULL, NULL};
    const size_t QD = (size_t)n_head * d, KD = (size_t)NKV * d;
    s.q = malloc(NL * n * QD * sizeof(float));
    s.k = malloc(NL * n * KD * sizeof(float));
    s.v = malloc(NL * n * KD * sizeof(float));
    tkv_rng rng;
    tkv_rng_init(&rng, seed);
    float off[1024], ks[1024], qs[1024];
    for (uint32_t j = 0; j < d; j++) {
        off[j] = (float)(2.0 * tkv_rng_gaussian(&rng));
        ks[j] = (float)(0.2 + 2.0 * tkv_rng_uniform(&rng));
        qs[j] = (float)(0.2 + 2.0 * tkv_rng_uniform(&rng));
    }
    for (size_t i = 0; i < NL * n; i++) {
        const uint32_t t = (uint32_t)(i % n);
        for (size_t h = 0; h < KD; h++) {
            const uint32_t j = (uint32_t)(h % d);
            s.k[i * KD + h] = off[j] * (1.0f + (float)t / 128.0f) +
                              ks[j] * (float)tkv_rng_gaussian(&rng) + 0.3f * (float)(h / d);
            s.v[i * KD + h] = (float)tkv_rng_gaussian(&rng);
        }
        for (size_t h = 0; h < QD; h++) {
            s.q[i * QD + h] = qs[h % d] * (float)tkv_rng_gaussian(&rng) * (1.0f + (float)(h / d));
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
    return s->q + ((size_t)l * s->n + t) * s->n_head * s->d;
}
static const float *seq_k(const seq *s, uint32_t l, uint32_t t) {
    return s->k + ((size_t)l * s->n + t) * NKV * s->d;
}
static const float *seq_v(const seq *s, uint32_t l, uint32_t t) {
    return s->v + ((size_t)l * s->n + t) * NKV * s->d;
}

static float g_scratch[TKV_KV_SCRATCH_FLOATS(1024)];

/* Positions [pos0, pos0 + n) of every layer as one batch: calibrate, then append. */
static void feed_batch(tkv_kv_cache *c, const seq *s, uint32_t pos0, uint32_t n) {
    for (uint32_t l = 0; l < c->n_layer; l++) {
        CHECK_OK(tkv_kv_calibrate(c, l, pos0, seq_q(s, l, pos0), s->n_head, seq_k(s, l, pos0), n));
        for (uint32_t t = 0; t < n; t++) {
            CHECK_OK(tkv_kv_append(c, l, pos0 + t, seq_k(s, l, pos0 + t), seq_v(s, l, pos0 + t),
                                   g_scratch));
        }
    }
}

/* Positions [from, to) in batches cycling through `sizes` (0-terminated). */
static void feed(tkv_kv_cache *c, const seq *s, uint32_t from, uint32_t to, const uint32_t *sizes) {
    for (uint32_t p = from, i = 0; p < to; i = sizes[i + 1] ? i + 1 : 0) {
        const uint32_t n = sizes[i] < to - p ? sizes[i] : to - p;
        feed_batch(c, s, p, n);
        p += n;
    }
}

static const uint32_t kPrefill[] = {1, 1, 20, 1, 1, 37, 5, 64, 100, 3, 0};

/* The code row of compressed position t of (l, h), K (kind 0) or V (kind 1). */
static const uint8_t *code_at(const tkv_kv_cache *c, uint32_t l, uint32_t h, int kind, uint32_t t) {
    uint32_t run;
    return tkv_kv_code_run(c, l, h, kind, t, t + 1, &run);
}

static tkv_kv_cache make_cache(uint32_t d, uint32_t capacity, int32_t kc, int32_t vc,
                               uint32_t window, uint32_t n_sink, int center, int smooth,
                               uint32_t calib_block) {
    tkv_kv_cache c;
    CHECK_OK(tkv_kv_init(&c, NL, NKV, d, capacity, kc, vc, window, 1234));
    const tkv_calib_params cp = {.center_keys = center,
                                 .smooth_keys = smooth,
                                 .smooth_alpha = TKV_DEFAULT_KEY_SMOOTHING,
                                 .block = calib_block};
    CHECK_OK(tkv_kv_set_levers(&c, n_sink, &cp));
    return c;
}

/* ---- what must be stored ------------------------------------------------------------- */

/* Bytes of one vector from the layout documented in codec.c (d a multiple of 8 here). */
static size_t doc_vector_bytes(int32_t id, uint32_t d) {
    size_t q8 = 0, q4 = 0;
    for (uint32_t b = 0; b < d; b += 32) {
        const uint32_t t = d - b < 32 ? d - b : 32;
        q8 += 2 + t;
        q4 += 2 + t / 2;
    }
    switch (id) {
    case TKV_CODEC_FP32:
        return 4 * (size_t)d;
    case TKV_CODEC_FP16:
    case TKV_CODEC_BF16:
        return 2 * (size_t)d;
    case TKV_CODEC_Q8_0:
    case TKV_CODEC_Q8_0_ROT:
        return q8;
    case TKV_CODEC_Q4_0:
    case TKV_CODEC_Q4_0_ROT:
        return q4;
    case TKV_CODEC_TURBO_2B:
        return 2 + 2 * (size_t)d / 8;
    case TKV_CODEC_TURBO_3B:
        return 2 + 3 * (size_t)d / 8;
    case TKV_CODEC_TURBO_4B:
        return 2 + 4 * (size_t)d / 8;
    case TKV_CODEC_TURBO_5B:
        return 2 + 5 * (size_t)d / 8;
    case TKV_CODEC_TURBO_5B_FAST:
        return 2 + (size_t)d;
    case TKV_CODEC_TURBO_3B_QJL:
        return 4 + 2 * (size_t)d / 8 + d / 8;
    case TKV_CODEC_TURBO_4B_QJL:
        return 4 + 3 * (size_t)d / 8 + d / 8;
    case TKV_CODEC_TURBO_2B_TCQ:
        return 2 + 2 * (size_t)d / 8;
    case TKV_CODEC_TURBO_3B_TCQ:
        return 2 + 3 * (size_t)d / 8;
    case TKV_CODEC_TURBO_4B_TCQ:
        return 2 + 4 * (size_t)d / 8;
    default:
        return 0;
    }
}

/* Number of stored positions of layer l that must differ from the documented content:
 * key of position t in block b: (k - mu_b) / s_b (float, as the cache computes it);
 * a sink row holds it in fp32, a window slot t % window in fp16, codes encode it (its
 * fp16 rounding when a window is on: it was compressed leaving the window). */
static int count_content_mismatches(const tkv_kv_cache *c, const seq *s, uint32_t l) {
    const tkv_kv_layer *L = &c->layers[l];
    const uint32_t d = c->head_dim;
    float mu[1024], sc[1024], x[1024], y[1024];
    uint8_t code[8192];
    int bad = 0;
    for (uint32_t h = 0; h < NKV; h++) {
        const tkv_kv_head *hd = &c->heads[(size_t)l * NKV + h];
        for (uint32_t t = 0; t < L->n; t++) {
            for (int kind = 0; kind < 2; kind++) {
                const float *in = (kind ? seq_v(s, l, t) : seq_k(s, l, t)) + (size_t)h * d;
                memcpy(x, in, d * sizeof *x);
                if (kind == 0 && tkv_kv_has_calibration(c)) {
                    tkv_kv_block_calibration(c, l, h, tkv_kv_calib_block_of(c, t), mu, sc);
                    for (uint32_t j = 0; j < d; j++) {
                        x[j] = (in[j] - mu[j]) / sc[j];
                    }
                }
                if (t < c->n_sink) {
                    const float *row = (kind ? hd->v_sink : hd->k_sink) + (size_t)t * d;
                    bad += memcmp(row, x, d * sizeof *x) != 0;
                } else if (t < L->n_comp) {
                    const struct tkv_codec *cd = kind ? &hd->v_codec : &hd->k_codec;
                    const uint8_t *stored = code_at(c, l, h, kind, t);
                    for (uint32_t j = 0; c->window && j < d; j++) {
                        x[j] = tkv_fp16_to_f32(tkv_f32_to_fp16(x[j]));
                    }
                    CHECK_OK(tkv_codec_encode_one(cd, x, code, g_scratch));
                    bad += memcmp(stored, code, cd->layout.stride) != 0;
                } else {
                    const uint16_t *row =
                        (kind ? hd->v_window : hd->k_window) + (size_t)(t % c->window) * d;
                    for (uint32_t j = 0; j < d; j++) {
                        y[j] = tkv_fp16_to_f32(tkv_f32_to_fp16(x[j]));
                        bad += tkv_fp16_to_f32(row[j]) != y[j];
                    }
                }
            }
        }
    }
    return bad;
}

static uint32_t calib_blocks_expected(const tkv_kv_cache *c, uint32_t n) {
    if (!tkv_kv_has_calibration(c) || n == 0) {
        return 0;
    }
    return tkv_kv_calib_block_of(c, n - 1) + 1;
}

/* bytes_used from the documented layout: fp32 sink rows, codes of the compressed
 * positions, fp16 window entries in use, fp16 mu and/or s per calibration block; the
 * number of positions in the window is given (it depends on the history). */
static size_t doc_bytes_used(const tkv_kv_cache *c, const uint32_t *n, const uint32_t *in_window,
                             const uint32_t *calib) {
    size_t total = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const uint32_t sinks = n[l] < c->n_sink ? n[l] : c->n_sink;
        const size_t code = doc_vector_bytes(c->layers[l].k_codec_id, c->head_dim) +
                            doc_vector_bytes(c->layers[l].v_codec_id, c->head_dim);
        total += (size_t)sinks * NKV * c->head_dim * 2 * 4;
        total += (size_t)(n[l] - sinks - in_window[l]) * NKV * code;
        total += (size_t)in_window[l] * NKV * c->head_dim * 2 * 2;
        total += (size_t)calib[l] * (c->calib.p.center_keys + c->calib.p.smooth_keys) * NKV *
                 c->head_dim * 2;
    }
    return total;
}

/* bytes_used of an untruncated cache of n positions. */
static size_t doc_bytes_used_plain(const tkv_kv_cache *c, uint32_t n) {
    uint32_t nn[NL], w[NL], cb[NL];
    for (uint32_t l = 0; l < NL; l++) {
        const uint32_t sinks = n < c->n_sink ? n : c->n_sink;
        nn[l] = n;
        w[l] = n - sinks < c->window ? n - sinks : c->window;
        cb[l] = calib_blocks_expected(c, n);
    }
    return doc_bytes_used(c, nn, w, cb);
}

/* ---- growth, capacity, misuse --------------------------------------------------------- */

static void test_growth_and_capacity(void) {
    const uint32_t d = 16, cap = 600;
    seq s = seq_make(cap + 1, 2 * NKV, d, 1);
    tkv_kv_cache c = make_cache(d, cap, TKV_CODEC_FP32, TKV_CODEC_TURBO_4B, 0, 0, 0, 0, 256);
    CHECK_EQ_INT(tkv_kv_bytes_allocated(&c), 0);
    CHECK_EQ_INT(tkv_kv_bytes_used(&c), 0);
    const size_t per_tok =
        NL * NKV * (doc_vector_bytes(TKV_CODEC_FP32, d) + doc_vector_bytes(TKV_CODEC_TURBO_4B, d));
    CHECK_EQ_INT(tkv_kv_bytes_per_token(&c), per_tok);
    /* a capacity below TKV_KV_SEG_ROWS: one segment of the capacity from the first position */
    const uint32_t stops[] = {1, 255, 256, 257, 511, 512, 513, 599, 600};
    const uint32_t allocs[] = {600, 600, 600, 600, 600, 600, 600, 600, 600};
    uint32_t p = 0;
    for (size_t i = 0; i < sizeof stops / sizeof stops[0]; i++) {
        feed(&c, &s, p, stops[i], kPrefill);
        p = stops[i];
        CHECK_EQ_INT(tkv_kv_n_tokens(&c), p);
        for (uint32_t l = 0; l < NL; l++) {
            CHECK_EQ_INT(c.layers[l].seg_rows, cap);
            CHECK(c.layers[l].n_seg == 1 && c.layers[l].seg[0]);
            CHECK_EQ_INT(c.layers[l].n_comp, p);
        }
        CHECK_EQ_INT(tkv_kv_bytes_allocated(&c), (size_t)allocs[i] * per_tok);
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), (size_t)p * per_tok);
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used_plain(&c, p));
    }
    for (uint32_t l = 0; l < NL; l++) {
        CHECK_EQ_INT(count_content_mismatches(&c, &s, l), 0);
    }
    /* fp32 K codes are the keys themselves */
    CHECK(memcmp(code_at(&c, 1, 1, 0, 599), seq_k(&s, 1, 599) + d, 4 * d) == 0);
    /* full: position 600 does not fit, and nothing changes */
    CHECK_STATUS(tkv_kv_append(&c, 0, cap, seq_k(&s, 0, cap), seq_v(&s, 0, cap), g_scratch),
                 TKV_ERR_CACHE_FULL);
    CHECK_EQ_INT(tkv_kv_n_tokens(&c), cap);
    /* a position other than the layer's n is refused */
    tkv_kv_truncate(&c, 10);
    CHECK_STATUS(tkv_kv_append(&c, 0, 11, seq_k(&s, 0, 11), seq_v(&s, 0, 11), g_scratch),
                 TKV_ERR_INTERNAL);
    CHECK_STATUS(tkv_kv_append(&c, 0, 9, seq_k(&s, 0, 9), seq_v(&s, 0, 9), g_scratch),
                 TKV_ERR_INTERNAL);
    /* truncation keeps the allocation */
    CHECK_EQ_INT(tkv_kv_bytes_allocated(&c), (size_t)cap * per_tok);
    CHECK_EQ_INT(tkv_kv_bytes_used(&c), 10 * per_tok);
    /* settings change only before the first write */
    const tkv_calib_params on = {.center_keys = 1, .block = 64};
    CHECK_STATUS(tkv_kv_set_levers(&c, 1, &on), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_kv_set_layer_codecs(&c, 0, TKV_CODEC_FP16, TKV_CODEC_FP16),
                 TKV_ERR_INVALID_ARGUMENT);
    tkv_kv_release(&c);

    seq_free(&s);
}

/* ---- window ring, sinks, codecs, per-layer overrides --------------------------------- */

static void test_window_sinks_codecs(void) {
    const uint32_t n = 70;
    const uint32_t dims[] = {16, 64, 80};
    const uint32_t windows[] = {0, 1, 7, 69, 70, 100};
    const uint32_t sinks[] = {0, 1, 5};
    const int32_t codecs[][2] = {{TKV_CODEC_FP32, TKV_CODEC_FP32},
                                 {TKV_CODEC_FP16, TKV_CODEC_FP32},
                                 {TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_3B},
                                 {TKV_CODEC_TURBO_3B_TCQ, TKV_CODEC_TURBO_3B_QJL}};
    for (size_t di = 0; di < 3; di++) {
        const uint32_t d = dims[di];
        seq s = seq_make(n, NKV, d, 10 + di);
        for (size_t wi = 0; wi < sizeof windows / sizeof windows[0]; wi++) {
            for (size_t si = 0; si < 3; si++) {
                /* two codec pairs per (window, sinks), each pair in every dim */
                for (size_t cj = 0; cj < 4; cj += 2) {
                    const size_t ci = (wi + si + cj) % 4;
                    const uint32_t W = windows[wi], ns = sinks[si];
                    /* layer 1 keeps the cache's codecs, layer 0 gets the next pair */
                    const int32_t *mine = codecs[ci], *other = codecs[(ci + 1) % 4];
                    tkv_kv_cache c = make_cache(d, 1000, mine[0], mine[1], W, ns, 0, 0, 256);
                    CHECK_OK(tkv_kv_set_layer_codecs(&c, 0, other[0], other[1]));
                    /* check along the way: before, at and after the window fills */
                    const uint32_t stops[] = {1, ns + 1, W, W + 1, ns + W + 3, n};
                    uint32_t p = 0;
                    for (size_t k = 0; k < 6; k++) {
                        const uint32_t to = stops[k] < n ? stops[k] : n;
                        if (to <= p) {
                            continue;
                        }
                        feed(&c, &s, p, to, kPrefill + 2);
                        p = to;
                        const uint32_t sk = p < ns ? p : ns;
                        const uint32_t in_w = p - sk < W ? p - sk : W;
                        int bad = 0;
                        for (uint32_t l = 0; l < NL; l++) {
                            CHECK_EQ_INT(c.layers[l].n, p);
                            CHECK_EQ_INT(c.layers[l].n_comp, p - in_w);
                            bad += count_content_mismatches(&c, &s, l);
                        }
                        CHECK_MSG(bad == 0, "d %u window %u sinks %u codecs %zu at %u: %d", d, W,
                                  ns, ci, p, bad);
                        CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used_plain(&c, p));
                    }
                    /* layer codecs and seeds */
                    for (uint32_t l = 0; l < NL; l++) {
                        const int32_t *want = l == 0 ? other : mine;
                        for (uint32_t h = 0; h < NKV; h++) {
                            const tkv_kv_head *hd = &c.heads[l * NKV + h];
                            CHECK_EQ_INT(hd->k_codec.desc->id, want[0]);
                            CHECK_EQ_INT(hd->v_codec.desc->id, want[1]);
                            CHECK(hd->k_codec.seed == tkv_kv_codec_seed(1234, l, h, 0));
                            CHECK(hd->v_codec.seed == tkv_kv_codec_seed(1234, l, h, 1));
                            CHECK_EQ_INT(hd->k_codec.layout.stride, doc_vector_bytes(want[0], d));
                        }
                    }
                    const size_t pt =
                        NKV * (doc_vector_bytes(mine[0], d) + doc_vector_bytes(mine[1], d) +
                               doc_vector_bytes(other[0], d) + doc_vector_bytes(other[1], d));
                    CHECK_EQ_INT(tkv_kv_bytes_per_token(&c), pt);
                    /* allocated: a code segment of the capacity (1000 positions) once a
                     * position is compressed, windows, sinks, and the rest of a huge-page
                     * slab (2 MB or more of codes at capacity) */
                    size_t alloc = c.arena.slack;
                    for (uint32_t l = 0; l < NL; l++) {
                        const int32_t *want = l == 0 ? other : mine;
                        const uint32_t need = W ? c.layers[l].n_comp : p;
                        CHECK_EQ_INT(c.layers[l].n_seg, need ? 1 : 0);
                        alloc += (size_t)(need ? 1000 : 0) * NKV *
                                 (doc_vector_bytes(want[0], d) + doc_vector_bytes(want[1], d));
                        alloc += (size_t)NKV * d * (W * 2 * 2 + ns * 2 * 4);
                    }
                    CHECK_EQ_INT(tkv_kv_bytes_allocated(&c), alloc);
                    tkv_kv_release(&c);
                }
            }
        }
        seq_free(&s);
    }
}

/* ---- truncation without calibration -------------------------------------------------- */

/* 1 if a and b store the same thing for every position (codes, sinks, window entries). */
static int same_state(const tkv_kv_cache *a, const tkv_kv_cache *b) {
    const uint32_t d = a->head_dim;
    for (uint32_t l = 0; l < NL; l++) {
        const tkv_kv_layer *La = &a->layers[l], *Lb = &b->layers[l];
        if (La->n != Lb->n || La->n_comp != Lb->n_comp) {
            return 0;
        }
        for (uint32_t h = 0; h < NKV; h++) {
            const tkv_kv_head *ha = &a->heads[l * NKV + h], *hb = &b->heads[l * NKV + h];
            const size_t ks = ha->k_codec.layout.stride, vs = ha->v_codec.layout.stride;
            for (uint32_t t = 0; t < La->n; t++) {
                int ok;
                if (t < a->n_sink) {
                    ok = !memcmp(ha->k_sink + t * d, hb->k_sink + t * d, d * 4) &&
                         !memcmp(ha->v_sink + t * d, hb->v_sink + t * d, d * 4);
                } else if (t < La->n_comp) {
                    ok = !memcmp(code_at(a, l, h, 0, t), code_at(b, l, h, 0, t), ks) &&
                         !memcmp(code_at(a, l, h, 1, t), code_at(b, l, h, 1, t), vs);
                } else {
                    const size_t o = (size_t)(t % a->window) * d;
                    ok = !memcmp(ha->k_window + o, hb->k_window + o, d * 2) &&
                         !memcmp(ha->v_window + o, hb->v_window + o, d * 2);
                }
                if (!ok) {
                    return 0;
                }
            }
        }
    }
    return 1;
}

static void test_truncate_plain(void) {
    const uint32_t d = 64, n = 600;
    seq s = seq_make(n, 2 * NKV, d, 20);
    const uint32_t windows[] = {0, 8};
    const uint32_t cuts[] = {0, 1, 2, 3, 100, 256, 300, 512, 590, 599, 600, 700};
    for (size_t wi = 0; wi < 2; wi++) {
        const uint32_t W = windows[wi];
        tkv_kv_cache ref =
            make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_Q4_0_ROT, W, 2, 0, 0, 256);
        feed(&ref, &s, 0, n, kPrefill);
        CHECK_EQ_INT(count_content_mismatches(&ref, &s, 0), 0);
        CHECK_EQ_INT(count_content_mismatches(&ref, &s, 1), 0);
        tkv_kv_cache c =
            make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_Q4_0_ROT, W, 2, 0, 0, 256);
        feed(&c, &s, 0, n, kPrefill + 3);
        CHECK(same_state(&c, &ref));
        for (size_t ci = 0; ci < sizeof cuts / sizeof cuts[0]; ci++) {
            const uint32_t cut = cuts[ci], kept = cut < n ? cut : n;
            const uint32_t comp_before = c.layers[0].n_comp;
            tkv_kv_truncate(&c, cut);
            CHECK_EQ_INT(tkv_kv_n_tokens(&c), kept);
            /* window entries below the cut stay, the compressed ones above go */
            const uint32_t comp = comp_before < kept ? comp_before : kept;
            uint32_t nn[NL] = {kept, kept}, in_w[NL] = {kept - comp, kept - comp}, cb[NL] = {0, 0};
            CHECK_EQ_INT(c.layers[1].n_comp, comp);
            CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used(&c, nn, in_w, cb));
            CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
            /* appending the same data again gives the cache that never truncated */
            feed(&c, &s, kept, n, kPrefill + ci % 5);
            CHECK_MSG(same_state(&c, &ref), "window %u cut %u", W, cut);
            CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used_plain(&c, n));
        }
        /* the window below the cut survives it; appending past it wraps the ring */
        if (W) {
            tkv_kv_truncate(&c, n - 3);
            CHECK_EQ_INT(c.layers[0].n_comp, n - W);
            uint32_t nn[NL] = {n - 3, n - 3}, in_w[NL] = {W - 3, W - 3}, cb[NL] = {0, 0};
            CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used(&c, nn, in_w, cb));
            feed(&c, &s, n - 3, n, kPrefill);
            CHECK(same_state(&c, &ref));
        }
        tkv_kv_release(&c);
        tkv_kv_release(&ref);
    }
    seq_free(&s);
}

/* ---- calibration blocks --------------------------------------------------------------- */

/* mu and s of a block recomputed naively, as cache.h documents them, from the keys of
 * positions [p0, p1) of (layer, head) and the queries of its GQA group: mu = mean key
 * (fp16), s_j = (rms (k_j - mu_j) / rms q_j)^alpha, both rms floored at 1% of their mean
 * over channels, normalized to geometric mean 1 (fp16); s = 1 below 8 keys. */
static void naive_calibration(const tkv_kv_cache *c, const seq *s, uint32_t l, uint32_t h,
                              uint32_t p0, uint32_t p1, float *mu, float *sc) {
    const uint32_t d = c->head_dim, group = s->n_head / NKV, nk = p1 - p0;
    double rk[1024], rq[1024], mk = 0, mq = 0;
    for (uint32_t j = 0; j < d; j++) {
        double sum = 0, sq = 0, var = 0;
        for (uint32_t t = p0; t < p1; t++) {
            sum += seq_k(s, l, t)[h * d + j];
            for (uint32_t g = 0; g < group; g++) {
                const double q = seq_q(s, l, t)[(h * group + g) * d + j];
                sq += q * q;
            }
        }
        mu[j] = c->calib.p.center_keys ? tkv_fp16_to_f32(tkv_f32_to_fp16((float)(sum / nk))) : 0.0f;
        for (uint32_t t = p0; t < p1; t++) {
            const double x = seq_k(s, l, t)[h * d + j] - (double)mu[j];
            var += x * x;
        }
        rk[j] = sqrt(var / nk);
        rq[j] = sqrt(sq / ((double)nk * group));
        mk += rk[j] / d;
        mq += rq[j] / d;
    }
    double ls[1024], mean = 0;
    for (uint32_t j = 0; j < d; j++) {
        ls[j] = TKV_DEFAULT_KEY_SMOOTHING * log(fmax(rk[j], 0.01 * mk) / fmax(rq[j], 0.01 * mq));
        mean += ls[j] / d;
    }
    for (uint32_t j = 0; j < d; j++) {
        sc[j] = c->calib.p.smooth_keys && nk >= TKV_KV_SMOOTH_MIN_TOKENS
                    ? tkv_fp16_to_f32(tkv_f32_to_fp16((float)exp(ls[j] - mean)))
                    : 1.0f;
    }
}

/* Number of channels of block b of (l, h) farther than two fp16 steps from want. */
static int calib_diff(const tkv_kv_cache *c, uint32_t l, uint32_t h, uint32_t b,
                      const float *want_mu, const float *want_s) {
    float mu[1024], sc[1024];
    tkv_kv_block_calibration(c, l, h, b, mu, sc);
    int bad = 0;
    for (uint32_t j = 0; j < c->head_dim; j++) {
        bad += fabsf(mu[j] - want_mu[j]) > 2e-3f * fabsf(want_mu[j]) + 1e-6f;
        bad += fabsf(sc[j] - want_s[j]) > 2e-3f * want_s[j];
    }
    return bad;
}

/* Block b of every (layer, head) against the naive calibration over [p0, p1). */
static void check_block(const tkv_kv_cache *c, const seq *s, uint32_t b, uint32_t p0, uint32_t p1,
                        const char *what) {
    float mu[1024], sc[1024];
    int bad = 0;
    for (uint32_t l = 0; l < NL; l++) {
        for (uint32_t h = 0; h < NKV; h++) {
            naive_calibration(c, s, l, h, p0, p1, mu, sc);
            bad += calib_diff(c, l, h, b, mu, sc);
        }
    }
    CHECK_MSG(bad == 0, "%s: block %u vs positions [%u, %u): %d channels off", what, b, p0, p1,
              bad);
}

/* Block b of every (layer, head) equal to block `src` (reused calibration). */
static void check_block_copy(const tkv_kv_cache *c, uint32_t b, uint32_t src, const char *what) {
    float mu[1024], sc[1024];
    int bad = 0;
    for (uint32_t l = 0; l < NL; l++) {
        for (uint32_t h = 0; h < NKV; h++) {
            tkv_kv_block_calibration(c, l, h, src, mu, sc);
            bad += calib_diff(c, l, h, b, mu, sc) != 0;
        }
    }
    CHECK_MSG(bad == 0, "%s: block %u is not block %u's calibration", what, b, src);
}

static void test_calibration_blocks(void) {
    const uint32_t d = 64, n = 300, B = 64;
    seq s = seq_make(n, 2 * NKV, d, 30);
    for (int levers = 1; levers <= 3; levers++) {
        const int center = levers & 1, smooth = levers >> 1;
        /* batches 1, 1 (the two sinks, block 0 waits), 20 (block 0 from positions 2..21),
         * then decode steps and chunks crossing block boundaries */
        tkv_kv_cache c =
            make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_FP16, 0, 2, center, smooth, B);
        feed_batch(&c, &s, 0, 1);
        feed_batch(&c, &s, 1, 1);
        CHECK_EQ_INT(c.calib.layers[0].n_set, 0);
        /* before block 0 is set: mu 0, s 1, sinks stored as given */
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 1), 0);
        feed(&c, &s, 2, n, kPrefill + 2);
        for (uint32_t l = 0; l < NL; l++) {
            CHECK_EQ_INT(c.calib.layers[l].n_set, (n - 1) / B + 1);
            /* sinks re-expressed in block 0's space, everything else in its block's */
            CHECK_EQ_INT(count_content_mismatches(&c, &s, l), 0);
        }
        check_block(&c, &s, 0, 2, 22, "first batch");
        for (uint32_t b = 1; b <= (n - 1) / B; b++) {
            check_block(&c, &s, b, (b - 1) * B, b * B, "previous block");
        }
        /* the levers that are off stay neutral; blocks differ (the keys drift) */
        float mu0[1024], s0[1024], mu1[1024], s1[1024];
        tkv_kv_block_calibration(&c, 1, 1, 1, mu0, s0);
        tkv_kv_block_calibration(&c, 1, 1, 3, mu1, s1);
        int zero_mu = 1, one_s = 1, same_mu = 1, same_s = 1;
        for (uint32_t j = 0; j < d; j++) {
            zero_mu &= mu0[j] == 0.0f;
            one_s &= s0[j] == 1.0f;
            same_mu &= mu0[j] == mu1[j];
            same_s &= s0[j] == s1[j];
        }
        CHECK(zero_mu == !center && one_s == !smooth);
        CHECK(same_mu == !center && same_s == !smooth);
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used_plain(&c, n));
        /* fp16 mu and s of every block reached, and the statistics the next block
         * calibrates from (3 sums in double per channel) */
        const size_t calib_alloc =
            (size_t)NL * ((n - 1) / B + 1) * (center + smooth) * NKV * d * 2 +
            (center || smooth ? (size_t)NL * NKV * 3 * d * 8 : 0);
        CHECK_EQ_INT(c.arena.slack, 0); /* under 2 MB of codes at capacity: no huge pages */
        CHECK_EQ_INT(tkv_kv_bytes_allocated(&c), 1024 * tkv_kv_bytes_per_token(&c) +
                                                     2 * (size_t)NL * NKV * d * 2 * 4 +
                                                     calib_alloc);
        tkv_kv_release(&c);
    }

    /* a first batch of fewer than 8 positions leaves s = 1 in block 0 (mu is set);
     * block 1 still calibrates from all of block 0 */
    {
        tkv_kv_cache c = make_cache(d, 1024, TKV_CODEC_FP32, TKV_CODEC_FP32, 0, 1, 1, 1, B);
        feed_batch(&c, &s, 0, 5);
        check_block(&c, &s, 0, 0, 5, "short first batch");
        float mu[1024], sc[1024];
        tkv_kv_block_calibration(&c, 0, 0, 0, mu, sc);
        CHECK(sc[0] == 1.0f && sc[d - 1] == 1.0f && mu[0] != 0.0f);
        feed(&c, &s, 5, 130, kPrefill);
        check_block(&c, &s, 1, 0, B, "after a short first batch");
        check_block(&c, &s, 2, B, 2 * B, "after a short first batch");
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
        tkv_kv_release(&c);
    }

    /* TKV_CALIBRATION_ONCE: one block from the first batch, for the whole sequence */
    {
        tkv_kv_cache c = make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, 16, 1, 1, 1,
                                    TKV_CALIBRATION_ONCE);
        feed_batch(&c, &s, 0, 40);
        feed(&c, &s, 40, n, kPrefill);
        CHECK_EQ_INT(tkv_kv_calib_block_of(&c, n - 1), 0);
        CHECK_EQ_INT(c.calib.layers[0].n_set, 1);
        CHECK(c.calib.layers[0].stats == NULL);
        check_block(&c, &s, 0, 0, 40, "once");
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 1), 0);
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used_plain(&c, n));
        tkv_kv_truncate(&c, 100);
        feed(&c, &s, 100, n, kPrefill);
        check_block(&c, &s, 0, 0, 40, "once, after a truncation");
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 1), 0);
        tkv_kv_release(&c);
    }
    seq_free(&s);
}

/* Truncation across calibration blocks (B = 64, both levers, 1 sink, window 8): blocks
 * that keep a position keep their calibration, so the positions they hold are stored
 * again bit for bit as before the cut; the block after the cut calibrates from the
 * positions written again (at least B/4 of them) or reuses its predecessor's
 * calibration; the blocks after it from their predecessor again. */
static void test_truncate_calibrated(void) {
    const uint32_t d = 80, n = 330, B = 64, W = 8;
    seq s = seq_make(n, 3 * NKV, d, 40);
    seq other = seq_make(n, 3 * NKV, d, 41);
    tkv_kv_cache ref = make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, W, 1, 1, 1, B);
    feed_batch(&ref, &s, 0, 20);
    feed(&ref, &s, 20, n, kPrefill);
    tkv_kv_cache c = make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, W, 1, 1, 1, B);
    feed_batch(&c, &s, 0, 20);
    feed(&c, &s, 20, n, kPrefill + 4);
    CHECK(same_state(&c, &ref));
    check_block(&c, &s, 0, 0, 20, "first batch");
    struct {
        uint32_t cut;
        uint32_t refill_from; /* the block after the cut calibrates from [refill_from, its
                                 start), or copies its predecessor when 0 */
    } cases[] = {{150, 150}, {185, 0}, {192, 0}, {129, 129}, {64, 0},
                 {300, 300}, {40, 40}, {1, 1},   {180, 0},   {176, 176}};
    const size_t ks = c.heads[0].k_codec.layout.stride, vs = c.heads[0].v_codec.layout.stride;
    uint8_t *k_before = malloc(NL * NKV * n * ks), *v_before = malloc(NL * NKV * n * vs);
    float *calib_before = malloc(NL * NKV * 6 * 2 * d * sizeof(float));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const uint32_t cut = cases[i].cut, last = (cut - 1) / B, next = last + 1;
        for (uint32_t hh = 0; hh < NL * NKV; hh++) {
            for (uint32_t t = 1; t < n - W; t++) { /* position 0 is the sink */
                memcpy(k_before + (hh * n + t) * ks, code_at(&c, hh / NKV, hh % NKV, 0, t), ks);
                memcpy(v_before + (hh * n + t) * vs, code_at(&c, hh / NKV, hh % NKV, 1, t), vs);
            }
            for (uint32_t b = 0; b <= last; b++) {
                float *m = calib_before + ((size_t)hh * 6 + b) * 2 * d;
                tkv_kv_block_calibration(&c, hh / NKV, hh % NKV, b, m, m + d);
            }
        }
        tkv_kv_truncate(&c, cut);
        CHECK_EQ_INT(c.calib.layers[0].n_set, next);
        CHECK_EQ_INT(c.layers[1].n_comp, cut);
        uint32_t nn[NL] = {cut, cut}, in_w[NL] = {0, 0}, cb[NL] = {next, next};
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used(&c, nn, in_w, cb));
        feed(&c, &s, cut, n, kPrefill + i);
        int kept_calib = 0;
        for (uint32_t hh = 0; hh < NL * NKV; hh++) {
            for (uint32_t b = 0; b <= last; b++) {
                const float *m = calib_before + ((size_t)hh * 6 + b) * 2 * d;
                kept_calib += calib_diff(&c, hh / NKV, hh % NKV, b, m, m + d);
            }
        }
        CHECK_MSG(kept_calib == 0, "cut %u: kept blocks changed calibration", cut);
        if (cases[i].refill_from) {
            check_block(&c, &s, next, cases[i].refill_from, next * B, "refilled");
        } else {
            check_block_copy(&c, next, last, "refilled too little");
        }
        for (uint32_t b = next + 1; b <= (n - 1) / B; b++) {
            check_block(&c, &s, b, (b - 1) * B, b * B, "after the refill");
        }
        CHECK_EQ_INT(c.layers[0].n_comp, n - W);
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 1), 0);
        /* the positions of the kept blocks are coded as before the cut */
        const uint32_t upto = next * B < n - W ? next * B : n - W;
        int same = 1;
        for (uint32_t hh = 0; hh < NL * NKV; hh++) {
            for (uint32_t t = 1; t < upto; t++) {
                same &= !memcmp(k_before + (hh * n + t) * ks, code_at(&c, hh / NKV, hh % NKV, 0, t),
                                ks);
                same &= !memcmp(v_before + (hh * n + t) * vs, code_at(&c, hh / NKV, hh % NKV, 1, t),
                                vs);
            }
        }
        CHECK_MSG(same, "cut %u: kept blocks not stored as before", cut);
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), doc_bytes_used_plain(&c, n));
    }
    free(k_before);
    free(v_before);
    free(calib_before);
    tkv_kv_release(&c);

    /* truncation to 0 and a new sequence: ARCHITECTURE.md, "After a truncation, blocks
     * without a position left recalibrate when reached again" - block 0 included, so the
     * cache equals a fresh one fed the new sequence */
    tkv_kv_cache fresh = make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, W, 1, 1, 1, B);
    feed(&fresh, &other, 0, n, kPrefill + 2);
    check_block(&fresh, &other, 0, 0, 20, "fresh cache");
    tkv_kv_truncate(&ref, 0);
    CHECK_EQ_INT(tkv_kv_n_tokens(&ref), 0);
    CHECK_EQ_INT(tkv_kv_bytes_used(&ref), 0);
    feed(&ref, &other, 0, n, kPrefill + 2);
    check_block(&ref, &other, 0, 0, 20, "new sequence after truncate(0)");
    CHECK_MSG(same_state(&ref, &fresh), "truncate(0) + new sequence differs from a fresh cache");
    CHECK_EQ_INT(count_content_mismatches(&ref, &other, 1), 0);
    /* again with a first batch of sinks only: they wait in the uncalibrated space (mu 0,
     * s 1), then move to block 0's when it is set */
    tkv_kv_release(&fresh);
    fresh = make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, W, 1, 1, 1, B);
    feed(&fresh, &s, 0, 100, kPrefill);
    tkv_kv_truncate(&ref, 0);
    feed_batch(&ref, &s, 0, 1);
    CHECK_EQ_INT(ref.calib.layers[0].n_set, 0);
    CHECK_EQ_INT(count_content_mismatches(&ref, &s, 0), 0);
    feed(&ref, &s, 1, 100, kPrefill + 1);
    check_block(&ref, &s, 0, 1, 2, "sinks first after truncate(0)");
    CHECK_EQ_INT(count_content_mismatches(&ref, &s, 0), 0);
    CHECK_MSG(same_state(&ref, &fresh), "truncate(0), sinks first: differs from a fresh cache");
    tkv_kv_release(&fresh);
    tkv_kv_release(&ref);
    seq_free(&s);
    seq_free(&other);
}

/* An append that fails (a value the codec refuses, found when its position leaves the
 * window) changes nothing: the session truncates back to the tokens it had and promises
 * the cache is as before, and a retry must store the same content. */
static void test_failed_append(void) {
    const uint32_t d = 16, W = 4;
    seq s = seq_make(8, NKV, d, 50);
    /* position 2, head 1: values at the edge of fp16, whose 2-bit turbo scale overflows */
    float *v = (float *)seq_v(&s, 0, 2) + d;
    struct tkv_codec codec;
    CHECK_OK(tkv_codec_init(&codec, TKV_CODEC_TURBO_2B, d, tkv_kv_codec_seed(1234, 0, 1, 1)));
    uint8_t code[64];
    tkv_rng rng;
    tkv_rng_init(&rng, 7);
    int refused = 0;
    for (int trial = 0; trial < 1000 && !refused; trial++) {
        for (uint32_t j = 0; j < d; j++) {
            v[j] = (tkv_rng_next(&rng) & 1) ? 65504.0f : -65504.0f;
        }
        refused = tkv_codec_encode_one(&codec, v, code, g_scratch) == TKV_ERR_INVALID_ARGUMENT;
    }
    tkv_codec_release(&codec);
    CHECK(refused);
    tkv_kv_cache c = make_cache(d, 64, TKV_CODEC_FP16, TKV_CODEC_TURBO_2B, W, 0, 0, 0, 256);
    feed(&c, &s, 0, 6, kPrefill + 2);
    CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
    CHECK_STATUS(tkv_kv_append(&c, 0, 6, seq_k(&s, 0, 6), seq_v(&s, 0, 6), g_scratch),
                 TKV_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(c.layers[0].n, 6);
    CHECK_EQ_INT(c.layers[0].n_comp, 2);
    /* head 0's window slot of position 2 must still hold position 2 */
    CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
    tkv_kv_release(&c);
    seq_free(&s);

    /* a key beyond the fp16 range: fp32 codes hold it; the fp16 window cannot, and must
     * refuse it (as the fp16 codec does) rather than store inf, which turns attention
     * into NaN and fails only when the entry leaves the window */
    s = seq_make(8, NKV, d, 51);
    ((float *)seq_k(&s, 0, 3))[d + 5] = 1e5f;
    for (uint32_t w = 0; w <= W; w += W) {
        c = make_cache(d, 64, TKV_CODEC_FP32, TKV_CODEC_TURBO_4B, w, 1, 0, 0, 256);
        feed(&c, &s, 0, 3, kPrefill + 2);
        const tkv_status st = tkv_kv_append(&c, 0, 3, seq_k(&s, 0, 3), seq_v(&s, 0, 3), g_scratch);
        CHECK_STATUS(st, w ? TKV_ERR_INVALID_ARGUMENT : TKV_OK);
        CHECK_EQ_INT(c.layers[0].n, w ? 3 : 4);
        CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
        for (uint32_t h = 0; w && h < NKV; h++) {
            for (uint32_t j = 0; j < d; j++) {
                CHECK(isfinite(tkv_fp16_to_f32(c.heads[h].k_window[3 % W * d + j])));
            }
        }
        tkv_kv_release(&c);
    }
    seq_free(&s);
}

/* ---- the experimental hook tkv_cache_calibrate_keys --------------------------------- */

/* The hook gives, bit for bit, the blocks a cache sets from one batch, for every lever
 * combination; and follows the two-call protocol. */
static void test_calibrate_keys_hook(void) {
    const uint32_t n = 300, d = 64, group = 3;
    seq s = seq_make(n, NKV * group, d, 77);
    float *keys = malloc((size_t)n * d * sizeof(float));
    float *queries = malloc((size_t)n * group * d * sizeof(float));
    for (uint32_t t = 0; t < n; t++) { /* layer 1, KV head 1 */
        memcpy(keys + (size_t)t * d, seq_k(&s, 1, t) + d, d * sizeof(float));
        memcpy(queries + (size_t)t * group * d, seq_q(&s, 1, t) + (size_t)group * d,
               (size_t)group * d * sizeof(float));
    }
    const uint32_t blocks[] = {64, 100, TKV_CALIBRATION_ONCE};
    for (int lever = 0; lever < 4; lever++) {
        for (int bi = 0; bi < 3; bi++) {
            for (uint32_t sink = 0; sink <= 4; sink += 4) {
                const int center = lever & 1, smooth = lever >> 1;
                tkv_kv_cache c = make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, 0,
                                            sink, center, smooth, blocks[bi]);
                feed_batch(&c, &s, 0, n);
                tkv_cache_params p = tkv_cache_default_params();
                p.flags = (center ? TKV_CACHE_FLAG_CENTER_KEYS : 0) |
                          (smooth ? TKV_CACHE_FLAG_SMOOTH_KEYS : 0);
                p.key_smoothing = TKV_DEFAULT_KEY_SMOOTHING;
                p.sink_tokens = sink;
                p.calibration_block = blocks[bi];
                size_t nb = 0;
                CHECK_STATUS(
                    tkv_cache_calibrate_keys(&p, d, group, keys, queries, n, NULL, NULL, 0, &nb),
                    TKV_ERR_BUFFER_TOO_SMALL);
                const size_t want =
                    blocks[bi] == TKV_CALIBRATION_ONCE ? 1 : (n - 1) / blocks[bi] + 1;
                CHECK_EQ_INT(nb, want);
                float mu[5 * 64], sc[5 * 64], cmu[64], csc[64];
                CHECK_STATUS(
                    tkv_cache_calibrate_keys(&p, d, group, keys, queries, n, mu, sc, nb - 1, &nb),
                    TKV_ERR_BUFFER_TOO_SMALL);
                CHECK_OK(tkv_cache_calibrate_keys(&p, d, group, keys, queries, n, mu, sc, 5, &nb));
                for (uint32_t b = 0; b < nb; b++) {
                    tkv_kv_block_calibration(&c, 1, 1, b, cmu, csc);
                    CHECK(memcmp(cmu, mu + b * d, sizeof cmu) == 0);
                    CHECK(memcmp(csc, sc + b * d, sizeof csc) == 0);
                }
                tkv_kv_release(&c);
            }
        }
    }
    tkv_cache_params p = tkv_cache_default_params();
    size_t nb = 0;
    p.calibration_block = 63;
    CHECK_STATUS(tkv_cache_calibrate_keys(&p, d, group, keys, queries, n, NULL, NULL, 0, &nb),
                 TKV_ERR_INVALID_ARGUMENT);
    p.calibration_block = 0;
    CHECK_STATUS(tkv_cache_calibrate_keys(&p, 0, group, keys, queries, n, NULL, NULL, 0, &nb),
                 TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_cache_calibrate_keys(&p, d, group, NULL, queries, n, NULL, NULL, 0, &nb),
                 TKV_ERR_INVALID_ARGUMENT);
    p.struct_size = 4;
    CHECK_STATUS(tkv_cache_calibrate_keys(&p, d, group, keys, queries, n, NULL, NULL, 0, &nb),
                 TKV_ERR_ABI);
    free(keys);
    free(queries);
    seq_free(&s);
}

/* tkv_kv_append_batch over pools of 1-3 threads stores the same bytes as appends one by
 * one (no window: the parallel path; a window: the fallback), and on a refused vector
 * keeps the positions before it with the same error. */
static void test_append_batch(void) {
    const uint32_t d = 64, n = 70;
    static float scratch[3 * TKV_KV_SCRATCH_FLOATS(64)];
    const int32_t codecs[][2] = {{TKV_CODEC_TURBO_4B_TCQ, TKV_CODEC_TURBO_3B_TCQ},
                                 {TKV_CODEC_TURBO_4B, TKV_CODEC_Q8_0}};
    for (int ci = 0; ci < 2; ci++) {
        for (uint32_t w = 0; w <= 8; w += 8) {
            seq s = seq_make(n, 2 * NKV, d, 60 + ci);
            tkv_kv_cache ref = make_cache(d, 128, codecs[ci][0], codecs[ci][1], w, 2, 1, 1, 64);
            feed(&ref, &s, 0, n, kPrefill);
            for (int threads = 1; threads <= 3; threads++) {
                tkv_pool *pool = NULL;
                CHECK_OK(tkv_pool_create(threads, &pool));
                tkv_kv_cache c = make_cache(d, 128, codecs[ci][0], codecs[ci][1], w, 2, 1, 1, 64);
                for (uint32_t p = 0, i = 0; p < n; i = kPrefill[i + 1] ? i + 1 : 0) {
                    const uint32_t m = kPrefill[i] < n - p ? kPrefill[i] : n - p;
                    for (uint32_t l = 0; l < NL; l++) {
                        CHECK_OK(tkv_kv_calibrate(&c, l, p, seq_q(&s, l, p), s.n_head,
                                                  seq_k(&s, l, p), m));
                        CHECK_OK(tkv_kv_append_batch(&c, l, p, m, seq_k(&s, l, p), seq_v(&s, l, p),
                                                     pool, scratch));
                    }
                    p += m;
                }
                for (size_t h = 0; h < (size_t)NL * NKV; h++) {
                    const tkv_kv_head *a = &ref.heads[h], *b = &c.heads[h];
                    const uint32_t l = (uint32_t)(h / NKV), nc = ref.layers[l].n_comp;
                    CHECK_EQ_INT(c.layers[l].n, ref.layers[l].n);
                    CHECK_EQ_INT(c.layers[l].n_comp, nc);
                    int same = 1;
                    for (uint32_t t = 2; t < nc; t++) {
                        same &= !memcmp(code_at(&ref, l, (uint32_t)(h % NKV), 0, t),
                                        code_at(&c, l, (uint32_t)(h % NKV), 0, t),
                                        a->k_codec.layout.stride);
                        same &= !memcmp(code_at(&ref, l, (uint32_t)(h % NKV), 1, t),
                                        code_at(&c, l, (uint32_t)(h % NKV), 1, t),
                                        a->v_codec.layout.stride);
                    }
                    CHECK(same);
                    CHECK(memcmp(a->k_sink, b->k_sink, 2 * d * sizeof(float)) == 0);
                    CHECK(memcmp(a->v_sink, b->v_sink, 2 * d * sizeof(float)) == 0);
                }
                CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
                tkv_kv_release(&c);
                tkv_pool_free(pool);
            }
            tkv_kv_release(&ref);
            seq_free(&s);
        }
    }
    /* a non-finite value at position 9 of a 20-position batch: 0..8 stay, the error is
     * the one-by-one append's */
    seq s = seq_make(20, NKV, d, 70);
    for (int kind = 0; kind < 2; kind++) {
        float *v9 = (float *)seq_v(&s, 0, 9) + d;
        if (kind == 0) {
            v9[3] = NAN;
        } else { /* values at the edge of fp16 that the 2-bit turbo codec of head 1 refuses */
            struct tkv_codec codec;
            CHECK_OK(
                tkv_codec_init(&codec, TKV_CODEC_TURBO_2B, d, tkv_kv_codec_seed(1234, 0, 1, 1)));
            uint8_t code[64];
            tkv_rng rng;
            tkv_rng_init(&rng, 7);
            int refused = 0;
            for (int trial = 0; trial < 1000 && !refused; trial++) {
                for (uint32_t j = 0; j < d; j++) {
                    v9[j] = (tkv_rng_next(&rng) & 1) ? 65504.0f : -65504.0f;
                }
                refused =
                    tkv_codec_encode_one(&codec, v9, code, g_scratch) == TKV_ERR_INVALID_ARGUMENT;
            }
            tkv_codec_release(&codec);
            CHECK(refused);
        }
        for (int threads = 1; threads <= 2; threads++) {
            tkv_pool *pool = NULL;
            CHECK_OK(tkv_pool_create(threads, &pool));
            tkv_kv_cache c =
                make_cache(d, 64, TKV_CODEC_TURBO_2B_TCQ, TKV_CODEC_TURBO_2B, 0, 1, 0, 0, 256);
            CHECK_STATUS(
                tkv_kv_append_batch(&c, 0, 0, 20, seq_k(&s, 0, 0), seq_v(&s, 0, 0), pool, scratch),
                TKV_ERR_INVALID_ARGUMENT);
            CHECK_EQ_INT(c.layers[0].n, 9);
            CHECK_EQ_INT(c.layers[0].n_comp, 9);
            CHECK_EQ_INT(count_content_mismatches(&c, &s, 0), 0);
            tkv_kv_release(&c);
            tkv_pool_free(pool);
        }
    }
    seq_free(&s);
}

/* ---- sliding-window layers: a ring of code rows ----------------------------------------- */

/* Positions [t0, t1) of (layer, head) read through a's runs (every row of each run) equal
 * the rows b gives for them one at a time. */
static int runs_equal(const tkv_kv_cache *a, const tkv_kv_cache *b, uint32_t l, uint32_t h,
                      uint32_t t0, uint32_t t1, int keys) {
    void (*run_of)(const tkv_kv_cache *, uint32_t, uint32_t, uint32_t, uint32_t, tkv_kv_run *) =
        keys ? tkv_kv_key_run : tkv_kv_value_run;
    for (uint32_t t = t0; t < t1;) {
        tkv_kv_run ra;
        run_of(a, l, h, t, t1, &ra);
        if (ra.t0 != t || ra.n < 1 || ra.n > t1 - t) {
            return 0;
        }
        for (uint32_t i = 0; i < ra.n; i++) {
            tkv_kv_run rb;
            run_of(b, l, h, t + i, t + i + 1, &rb);
            if (ra.store != rb.store || ra.layout->stride != rb.layout->stride ||
                memcmp(ra.rows + (size_t)i * ra.layout->stride, rb.rows, rb.layout->stride)) {
                return 0;
            }
        }
        t += ra.n;
    }
    return 1;
}

/* Append [p, p + m) of every layer with tkv_kv_append_batch over pool. */
static void feed_pool(tkv_kv_cache *c, const seq *s, uint32_t p, uint32_t m, tkv_pool *pool,
                      float *scratch) {
    for (uint32_t l = 0; l < NL; l++) {
        CHECK_OK(tkv_kv_calibrate(c, l, p, seq_q(s, l, p), s->n_head, seq_k(s, l, p), m));
        CHECK_OK(tkv_kv_append_batch(c, l, p, m, seq_k(s, l, p), seq_v(s, l, p), pool, scratch));
    }
}

static void test_sliding_ring(void) {
    const uint32_t d = 64, n = 600, span = 20, batch = 16, ring = span - 1 + batch;
    static float scratch[3 * TKV_KV_SCRATCH_FLOATS(64)];
    seq s = seq_make(n, 2 * NKV, d, 31);
    static const uint32_t sizes[] = {1, 5, 16, 3, 16, 0};
    tkv_pool *pool = NULL;
    CHECK_OK(tkv_pool_create(3, &pool));
    /* fp16 window off / on; appended one by one / as batches over 3 threads */
    for (uint32_t W = 0, by_pool = 0; W <= 8; by_pool = !by_pool, W += by_pool ? 0 : 8) {
        tkv_kv_cache ref =
            make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_Q4_0_ROT, W, 2, 1, 1, 256);
        tkv_kv_cache c =
            make_cache(d, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_Q4_0_ROT, W, 2, 1, 1, 256);
        CHECK_OK(tkv_kv_set_layer_span(&c, 1, span, batch));
        CHECK_EQ_INT(tkv_kv_append_limit(&c, 1), batch);
        CHECK_EQ_INT(tkv_kv_append_limit(&c, 0), UINT32_MAX);
        CHECK_EQ_INT(tkv_kv_truncate_floor(&c), 0);
        /* after every batch, the window of each new position reads the same rows as in a
         * cache that keeps every position */
        for (uint32_t p = 0, i = 0; p < n; i = sizes[i + 1] ? i + 1 : 0) {
            const uint32_t m = sizes[i] < n - p ? sizes[i] : n - p;
            feed_batch(&ref, &s, p, m);
            if (by_pool) {
                feed_pool(&c, &s, p, m, pool, scratch);
            } else {
                feed_batch(&c, &s, p, m);
            }
            for (uint32_t h = 0; h < NKV; h++) {
                const uint32_t lo = p + 1 > span ? p + 1 - span : 0;
                CHECK_MSG(runs_equal(&c, &ref, 1, h, lo, p + m, 1) &&
                              runs_equal(&c, &ref, 1, h, lo, p + m, 0),
                          "window %u pool %u: ring rows differ after position %u", W, by_pool,
                          p + m);
                CHECK(runs_equal(&c, &ref, 0, h, 0, p + m, 1));
            }
            p += m;
        }
        /* the ring layer holds ring code rows (besides the sinks and the fp16 window): its
         * code positions before n_lost are the only bytes it lacks */
        CHECK(c.layers[1].seg_rows == ring && c.layers[1].n_seg == 1); /* one segment */
        const uint32_t lost = c.layers[1].n_comp - ring;
        CHECK_EQ_INT(c.layers[1].n_lost, lost);
        CHECK_EQ_INT(tkv_kv_bytes_used(&ref) - tkv_kv_bytes_used(&c),
                     (size_t)(lost - 2) * (tkv_kv_bytes_per_token(&c) / NL));
        CHECK(tkv_kv_bytes_allocated(&c) < tkv_kv_bytes_allocated(&ref));
        CHECK_EQ_INT(tkv_kv_truncate_floor(&c), lost + span - 1);
        /* a fork copies the ring (it is not shared) and reads the same rows */
        tkv_kv_cache f;
        CHECK_OK(tkv_kv_fork(&c, &f));
        CHECK_EQ_INT(f.layers[1].n_shared, 0);
        CHECK_EQ_INT(tkv_kv_bytes_used(&f), tkv_kv_bytes_used(&c));
        for (uint32_t h = 0; h < NKV; h++) {
            CHECK(runs_equal(&f, &ref, 1, h, n - span, n, 1));
            CHECK(runs_equal(&f, &ref, 1, h, n - span, n, 0));
        }
        /* truncation within the rings keeps what attention reads; appending again gives
         * the same rows as the cache that never truncated (the fork too, independently) */
        tkv_kv_truncate(&c, n - 10);
        tkv_kv_truncate(&ref, n - 10);
        feed(&c, &s, n - 10, n, sizes);
        feed(&ref, &s, n - 10, n, sizes);
        tkv_kv_truncate(&f, n - 7);
        feed(&f, &s, n - 7, n, sizes);
        for (uint32_t h = 0; h < NKV; h++) {
            CHECK(runs_equal(&c, &ref, 1, h, n - span, n, 1));
            CHECK(runs_equal(&c, &ref, 1, h, n - span, n, 0));
            CHECK(runs_equal(&f, &ref, 1, h, n - span, n, 1));
            CHECK(runs_equal(&f, &ref, 1, h, n - span, n, 0));
        }
        tkv_kv_release(&f);
        tkv_kv_truncate(&c, 0);
        CHECK_EQ_INT(tkv_kv_truncate_floor(&c), 0);
        CHECK_EQ_INT(tkv_kv_bytes_used(&c), 0);
        tkv_kv_release(&c);
        tkv_kv_release(&ref);
    }
    tkv_pool_free(pool);
    /* no ring when it would not be smaller than the capacity; only before the first write */
    tkv_kv_cache small = make_cache(d, 30, TKV_CODEC_FP16, TKV_CODEC_FP16, 0, 0, 0, 0, 256);
    CHECK_OK(tkv_kv_set_layer_span(&small, 0, 20, 16));
    CHECK_EQ_INT(small.layers[0].ring, 0);
    CHECK_EQ_INT(tkv_kv_append_limit(&small, 0), UINT32_MAX);
    feed(&small, &s, 0, 5, sizes);
    CHECK_STATUS(tkv_kv_set_layer_span(&small, 1, 4, 4), TKV_ERR_INVALID_ARGUMENT);
    tkv_kv_release(&small);
    seq_free(&s);
}

/* ---- segments: code rows in runs of TKV_KV_SEG_ROWS positions ---------------------------- */

/* 1 when every code run of the cache over [0, n) lies inside one segment of the grid. */
static int runs_within_segments(const tkv_kv_cache *c, uint32_t n) {
    for (uint32_t l = 0; l < c->n_layer; l++) {
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            for (int keys = 0; keys < 2; keys++) {
                tkv_kv_run run;
                for (uint32_t t = 0; t < n; t += run.n) {
                    (keys ? tkv_kv_key_run : tkv_kv_value_run)(c, l, h, t, n, &run);
                    if (run.store == TKV_KV_STORE_CODES &&
                        t / TKV_KV_SEG_ROWS != (t + run.n - 1) / TKV_KV_SEG_ROWS) {
                        return 0;
                    }
                }
            }
        }
    }
    return 1;
}

/* Bytes of tkv_kv_bytes_allocated that are code segments of the cache's own. */
static size_t own_code_bytes(const tkv_kv_cache *c) {
    const size_t sinks = (size_t)c->n_layer * c->n_sink * c->n_head_kv * c->head_dim * 2 * 4;
    const size_t windows = (size_t)c->n_layer * c->window * c->n_head_kv * c->head_dim * 2 * 2;
    return tkv_kv_bytes_allocated(c) - c->arena.slack - sinks - windows -
           tkv_calib_bytes_allocated(&c->calib);
}

/* Positions across segment ends, appended one by one and in batches over a pool, forked
 * with prefixes ending inside a segment, truncated into the prefix (into the tail's
 * segment and before it), with segments from huge-page slabs (huge = 1, where the system
 * gives them) or malloc'd one by one (TKV_HUGE_PAGES=0, the path where it does not). */
static void test_segments(int huge) {
    const uint32_t d = 128, n = 2600, cap = 3000, R = TKV_KV_SEG_ROWS;
    static float scratch[2 * TKV_KV_SCRATCH_FLOATS(128)];
    CHECK(setenv("TKV_HUGE_PAGES", huge ? "1" : "0", 1) == 0);
    seq s = seq_make(n, 2 * NKV, d, 80);
    tkv_pool *pool = NULL;
    CHECK_OK(tkv_pool_create(2, &pool));
    tkv_kv_cache ref = make_cache(d, cap, TKV_CODEC_TURBO_4B, TKV_CODEC_FP16, 0, 1, 0, 0, 256);
    feed(&ref, &s, 0, n, kPrefill);
    CHECK_EQ_INT(count_content_mismatches(&ref, &s, 0), 0);
    CHECK_EQ_INT(count_content_mismatches(&ref, &s, 1), 0);
    CHECK(runs_within_segments(&ref, n));
    tkv_kv_run run;
    tkv_kv_value_run(&ref, 0, 1, 1000, n, &run);
    CHECK_EQ_INT(run.n, 24);
    tkv_kv_key_run(&ref, 1, 0, 2048, 2100, &run);
    CHECK_EQ_INT(run.n, 52);
    /* three segments per layer, every head's K and V rows in each */
    const size_t seg =
        (size_t)R * NKV *
        (doc_vector_bytes(TKV_CODEC_TURBO_4B, d) + doc_vector_bytes(TKV_CODEC_FP16, d));
    CHECK_EQ_INT(ref.layers[0].seg_rows, R);
    CHECK(ref.layers[0].seg[2] && ref.layers[1].seg[2]);
    CHECK_EQ_INT(own_code_bytes(&ref), NL * 3 * seg);
    if (!huge || !ref.arena.huge) { /* malloc'd segments, nothing else */
        CHECK(ref.arena.cur == NULL && ref.arena.slack == 0 && ref.layers[0].seg[0]->slab == NULL);
    } else { /* 3 segments of 659 KB per 2 MB slab: the last slab's rest is slack */
        CHECK(ref.arena.cur && ref.layers[1].seg[2]->slab == ref.arena.cur);
        CHECK_EQ_INT(ref.arena.slack, 2 * TKV_HUGE_PAGE - NL * 3 * seg);
    }

    /* batches over a pool across the segment ends: the same bytes */
    tkv_kv_cache c = make_cache(d, cap, TKV_CODEC_TURBO_4B, TKV_CODEC_FP16, 0, 1, 0, 0, 256);
    feed_pool(&c, &s, 0, 1000, pool, scratch);
    feed_pool(&c, &s, 1000, 500, pool, scratch);
    /* a fork at 1500: the prefix ends at 1 + 23 * 64 = 1473, inside segment 1 */
    tkv_kv_cache f, g;
    CHECK_OK(tkv_kv_fork(&c, &f));
    for (uint32_t l = 0; l < NL; l++) {
        CHECK(c.layers[l].n_shared == 1473 && c.layers[l].tail &&
              f.layers[l].tail == c.layers[l].tail);
        CHECK(c.layers[l].seg[0] == f.layers[l].seg[0] && c.layers[l].seg[1] != f.layers[l].seg[1]);
    }
    CHECK(tkv_kv_shares_prefix(&c, &f));
    CHECK_EQ_INT(tkv_kv_bytes_shared(&f), (size_t)1473 * NL * seg / R);
    CHECK_EQ_INT(own_code_bytes(&f), NL * seg); /* segment 1 with positions [1473, 1500) */
    for (uint32_t h = 0; h < NKV; h++) {
        CHECK(runs_equal(&f, &ref, 0, h, 0, 1500, 0) && runs_equal(&f, &ref, 1, h, 0, 1500, 1));
    }
    feed_pool(&c, &s, 1500, n - 1500, pool, scratch);
    feed(&f, &s, 1500, n, kPrefill);
    CHECK(same_state(&c, &ref) && same_state(&f, &ref));
    CHECK(runs_within_segments(&f, n));
    /* a fork of the fork: the old tail completes segment 1, the new prefix ends at 2561 */
    CHECK_OK(tkv_kv_fork(&f, &g));
    CHECK(g.layers[0].n_shared == 2561 && g.layers[0].tail == f.layers[0].tail);
    CHECK(g.layers[0].seg[1] == f.layers[0].seg[1] && !tkv_kv_shares_prefix(&c, &g));
    CHECK(same_state(&g, &ref) && same_state(&f, &ref) && same_state(&c, &ref));
    CHECK(tkv_kv_bytes_allocated(&g) < tkv_kv_bytes_allocated(&ref));
    /* truncations into the prefix: before the tail's segment, inside it, at a segment end;
     * appending again gives the same bytes as the cache that never forked */
    const uint32_t cuts[3] = {1100, 2100, 1024};
    tkv_kv_cache *which[3] = {&g, &f, &c};
    for (int i = 0; i < 3; i++) {
        tkv_kv_truncate(which[i], cuts[i]);
        CHECK(runs_within_segments(which[i], cuts[i]));
        feed(which[i], &s, cuts[i], n, kPrefill + i);
        CHECK_MSG(same_state(which[i], &ref), "truncated to %u and refilled", cuts[i]);
    }
    CHECK(g.layers[1].n_shared == 1089 && g.layers[1].tail == f.layers[1].seg[1]);
    CHECK(f.layers[1].n_shared == 2049 && f.layers[1].tail);
    CHECK(c.layers[1].n_shared == 961 && c.layers[1].tail == g.layers[1].seg[0]);
    /* the other mode stores the same bytes */
    CHECK(setenv("TKV_HUGE_PAGES", huge ? "0" : "1", 1) == 0);
    tkv_kv_cache other = make_cache(d, cap, TKV_CODEC_TURBO_4B, TKV_CODEC_FP16, 0, 1, 0, 0, 256);
    feed(&other, &s, 0, n, kPrefill + 5);
    CHECK(same_state(&other, &ref));
    tkv_kv_release(&other);
    tkv_kv_release(&f); /* in any order: segments live while a cache reads them */
    CHECK(same_state(&g, &ref) && same_state(&c, &ref));
    tkv_kv_release(&c);
    CHECK(same_state(&g, &ref));
    tkv_kv_release(&g);
    tkv_kv_release(&ref);
    tkv_pool_free(pool);
    seq_free(&s);
    unsetenv("TKV_HUGE_PAGES");
}

int main(void) {
    test_segments(1);
    test_segments(0);
    test_sliding_ring();
    test_append_batch();
    test_failed_append();
    test_growth_and_capacity();
    test_window_sinks_codecs();
    test_truncate_plain();
    test_calibration_blocks();
    test_truncate_calibrated();
    test_calibrate_keys_hook();
    CHECK_MAIN_END();
}
