/*
 * calib.c - key centering and key smoothing per calibration block (see calib.h).
 *
 * Sums are kept in double: a block of up to 2^24 positions of keys near 1e4 would lose
 * the mean in float.  mu and s are rounded to fp16 as soon as they are set, and the
 * spread that s is computed from is taken around the rounded mu actually subtracted.
 */
#include "kv/calib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "base/prefetch.h"
#include "base/status.h"
#include "codec/codec.h" /* TKV_HEAD_DIM_MAX */

tkv_status tkv_calib_init(tkv_calib *c, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim) {
    memset(c, 0, sizeof *c);
    c->n_layer = n_layer;
    c->n_head_kv = n_head_kv;
    c->head_dim = head_dim;
    c->p.block = TKV_DEFAULT_CALIB_BLOCK;
    c->layers = calloc(n_layer, sizeof *c->layers);
    TKV_REQUIRE(c->layers, TKV_ERR_OUT_OF_MEMORY, "cache: out of memory");
    return TKV_OK;
}

void tkv_calib_release(tkv_calib *c) {
    for (uint32_t l = 0; c->layers && l < c->n_layer; l++) {
        free(c->layers[l].mu);
        free(c->layers[l].scale);
        free(c->layers[l].stats);
    }
    free(c->layers);
    c->layers = NULL;
}

/* Floats of one block of a layer: (n_head_kv, head_dim). */
static size_t tkv_calib_block_floats(const tkv_calib *c) {
    return (size_t)c->n_head_kv * c->head_dim;
}

static uint16_t *tkv_calib_mu(const tkv_calib *c, uint32_t layer, uint32_t head, uint32_t block) {
    uint16_t *mu = c->layers[layer].mu;
    return mu ? mu + (size_t)block * tkv_calib_block_floats(c) + (size_t)head * c->head_dim : NULL;
}

static uint16_t *tkv_calib_scale(const tkv_calib *c, uint32_t layer, uint32_t head,
                                 uint32_t block) {
    uint16_t *s = c->layers[layer].scale;
    return s ? s + (size_t)block * tkv_calib_block_floats(c) + (size_t)head * c->head_dim : NULL;
}

/* Sums of k, k^2 and q^2 of (layer, head): 3 rows of head_dim. */
static double *tkv_calib_stats(const tkv_calib *c, uint32_t layer, uint32_t head) {
    return c->layers[layer].stats + (size_t)head * 3 * c->head_dim;
}

tkv_status tkv_calib_reserve(tkv_calib *c, uint32_t layer, uint32_t blocks) {
    tkv_calib_layer *L = &c->layers[layer];
    if (blocks <= L->n_alloc) {
        return TKV_OK;
    }
    const size_t bf = tkv_calib_block_floats(c);
    /* only the arrays of the levers that are on */
    uint16_t *mu = c->p.center_keys ? realloc(L->mu, (size_t)blocks * bf * sizeof *mu) : NULL;
    if (mu) {
        L->mu = mu;
    }
    uint16_t *sc = c->p.smooth_keys ? realloc(L->scale, (size_t)blocks * bf * sizeof *sc) : NULL;
    if (sc) {
        L->scale = sc;
    }
    const int blocks_on = c->p.block != TKV_CALIBRATION_ONCE;
    if (blocks_on && !L->stats) {
        L->stats = calloc(3 * bf, sizeof *L->stats);
    }
    TKV_REQUIRE((mu || !c->p.center_keys) && (sc || !c->p.smooth_keys) && (L->stats || !blocks_on),
                TKV_ERR_OUT_OF_MEMORY, "cache: out of memory for %u calibration blocks of layer %u",
                blocks, layer);
    const uint16_t one = tkv_f32_to_fp16(1.0f);
    for (size_t i = (size_t)L->n_alloc * bf; i < (size_t)blocks * bf; i++) {
        if (mu) {
            mu[i] = 0;
        }
        if (sc) {
            sc[i] = one;
        }
    }
    L->n_alloc = blocks;
    return TKV_OK;
}

/* Scales s_j = (rk_j / rq_j)^alpha from per-channel rms values, both floored at 1% of
 * their channel mean (a dead channel must not blow s up), normalized to geometric mean
 * 1, rounded to fp16 into s.  rk is overwritten. */
static void tkv_smoothing_scales(double *rk, const double *rq, uint32_t d, float alpha,
                                 uint16_t *s) {
    double mk = 0.0, mq = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        mk += rk[j] / d;
        mq += rq[j] / d;
    }
    if (!(mk > 0.0) || !(mq > 0.0)) {
        return; /* all-zero keys or queries: keep s = 1 */
    }
    double log_mean = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        const double k = rk[j] > 0.01 * mk ? rk[j] : 0.01 * mk;
        const double q = rq[j] > 0.01 * mq ? rq[j] : 0.01 * mq;
        rk[j] = alpha * log(k / q); /* log s_j before normalization */
        log_mean += rk[j] / d;
    }
    for (uint32_t j = 0; j < d; j++) {
        s[j] = tkv_f32_to_fp16((float)exp(rk[j] - log_mean));
    }
}

/* Set block `block` of (layer, head) from per-channel sums over n_k keys (sum_k, sum_kk)
 * and n_q queries (sum_qq): mu = mean key, s from the rms of the centered keys and of the
 * queries. */
static void tkv_calib_set_block(tkv_calib *c, uint32_t layer, uint32_t head, uint32_t block,
                                const double *sum_k, const double *sum_kk, const double *sum_qq,
                                double n_k, double n_q) {
    const uint32_t d = c->head_dim;
    uint16_t *mu = tkv_calib_mu(c, layer, head, block);
    double rk[TKV_HEAD_DIM_MAX], rq[TKV_HEAD_DIM_MAX];
    for (uint32_t j = 0; j < d; j++) {
        const double mean = sum_k[j] / n_k;
        if (mu) {
            mu[j] = tkv_f32_to_fp16((float)mean);
        }
        /* spread around the offset actually subtracted (the fp16 one, or 0) */
        const double m = mu ? tkv_fp16_to_f32(mu[j]) : 0.0;
        const double var = sum_kk[j] / n_k - 2.0 * m * mean + m * m;
        rk[j] = sqrt(var > 0.0 ? var : 0.0);
        rq[j] = sqrt(sum_qq[j] / n_q);
    }
    if (c->p.smooth_keys && n_k >= TKV_KV_SMOOTH_MIN_TOKENS) {
        tkv_smoothing_scales(rk, rq, d, c->p.smooth_alpha, tkv_calib_scale(c, layer, head, block));
    }
}

void tkv_calib_prepare_key(const tkv_calib *c, uint32_t layer, uint32_t head, uint32_t block,
                           const float *in, float *out) {
    const uint16_t *mu = tkv_calib_mu(c, layer, head, block);
    const uint16_t *s = tkv_calib_scale(c, layer, head, block);
    for (uint32_t j = 0; j < c->head_dim; j++) {
        const float x = mu ? in[j] - tkv_fp16_to_f32(mu[j]) : in[j];
        out[j] = s ? x / tkv_fp16_to_f32(s[j]) : x;
    }
}

/* Every cache line of the fp16 row r[0..d) (NULL: none). */
static void tkv_calib_prefetch_row(const uint16_t *r, uint32_t d) {
    if (r) {
        TKV_PREFETCH_BYTES(r, (size_t)d * sizeof *r, 3);
    }
}

void tkv_calib_block(const tkv_calib *c, uint32_t layer, uint32_t head, uint32_t block, float *mu,
                     float *s) {
    const uint16_t *m = tkv_calib_mu(c, layer, head, block);
    const uint16_t *sc = tkv_calib_scale(c, layer, head, block);
    /* attention asks once per run of keys of every (layer, head): row conversions */
    if (m) {
        tkv_fp16_row_to_f32(m, mu, c->head_dim);
    }
    if (sc) {
        tkv_fp16_row_to_f32(sc, s, c->head_dim);
    }
    /* attention asks for block + 1 after a run of keys: its rows, read once per token and
     * so cache misses, are fetched while the kernels score this block's keys */
    if (block + 1 < c->layers[layer].n_alloc) {
        const size_t next = tkv_calib_block_floats(c);
        tkv_calib_prefetch_row(m ? m + next : NULL, c->head_dim);
        tkv_calib_prefetch_row(sc ? sc + next : NULL, c->head_dim);
    }
    for (uint32_t j = 0; (!m || !sc) && j < c->head_dim; j++) {
        mu[j] = m ? mu[j] : 0.0f;
        s[j] = sc ? s[j] : 1.0f;
    }
}

/* Sum one position's key (head h of k_row) and the queries of its GQA group (q_row) into
 * per-channel sums of k, k^2 and q^2. */
static void tkv_calib_accumulate(const float *k_row, const float *q_row, uint32_t h, uint32_t group,
                                 uint32_t d, double *sum_k, double *sum_kk, double *sum_qq) {
    const float *kt = k_row + (size_t)h * d;
    for (uint32_t j = 0; j < d; j++) {
        sum_k[j] += kt[j];
        sum_kk[j] += (double)kt[j] * kt[j];
    }
    for (uint32_t g = 0; g < group; g++) {
        const float *qt = q_row + ((size_t)h * group + g) * d;
        for (uint32_t j = 0; j < d; j++) {
            sum_qq[j] += (double)qt[j] * qt[j];
        }
    }
}

/* The layer's statistics start summing block b afresh. */
static void tkv_calib_restart_stats(tkv_calib *c, uint32_t layer, uint32_t b) {
    tkv_calib_layer *L = &c->layers[layer];
    L->stat_block = b;
    L->stat_n = 0;
    if (L->stats) {
        memset(L->stats, 0, 3 * tkv_calib_block_floats(c) * sizeof *L->stats);
    }
}

/* Block 0 from the whole first batch reaching past the sinks. */
static void tkv_calib_first(tkv_calib *c, uint32_t layer, const float *q, uint32_t n_head,
                            const float *k, uint32_t n_tok) {
    const uint32_t d = c->head_dim, group = n_head / c->n_head_kv;
    const size_t kw = (size_t)c->n_head_kv * d, qw = (size_t)n_head * d;
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        double sk[TKV_HEAD_DIM_MAX] = {0}, skk[TKV_HEAD_DIM_MAX] = {0}, sqq[TKV_HEAD_DIM_MAX] = {0};
        for (uint32_t t = 0; t < n_tok; t++) {
            tkv_calib_accumulate(k + t * kw, q + t * qw, h, group, d, sk, skk, sqq);
        }
        tkv_calib_set_block(c, layer, h, 0, sk, skk, sqq, n_tok, (double)n_tok * group);
    }
    c->layers[layer].n_set = 1;
}

/* Block b > 0 as it starts: from the statistics of block b - 1 when they cover a good
 * part of it (after a truncation they may not), else block b - 1's calibration again. */
static void tkv_calib_next(tkv_calib *c, uint32_t layer, uint32_t b, uint32_t group) {
    tkv_calib_layer *L = &c->layers[layer];
    const uint32_t d = c->head_dim;
    const int fresh = L->stat_block == b - 1 && L->stat_n >= c->p.block / 4;
    if (fresh) {
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            const double *st = tkv_calib_stats(c, layer, h);
            tkv_calib_set_block(c, layer, h, b, st, st + d, st + 2 * (size_t)d, L->stat_n,
                                (double)L->stat_n * group);
        }
    } else {
        const size_t bf = tkv_calib_block_floats(c);
        if (L->mu) {
            memcpy(L->mu + (size_t)b * bf, L->mu + (size_t)(b - 1) * bf, bf * sizeof *L->mu);
        }
        if (L->scale) {
            memcpy(L->scale + (size_t)b * bf, L->scale + (size_t)(b - 1) * bf,
                   bf * sizeof *L->scale);
        }
    }
    L->n_set = b + 1;
}

tkv_status tkv_calib_observe(tkv_calib *c, uint32_t layer, uint32_t pos0, const float *q,
                             uint32_t n_head, const float *k, uint32_t n_tok, int *set_first) {
    *set_first = 0;
    if (!tkv_calib_active(c) || n_tok == 0) {
        return TKV_OK;
    }
    TKV_REQUIRE(c->head_dim <= TKV_HEAD_DIM_MAX, TKV_ERR_INTERNAL, "cache: head_dim %u",
                c->head_dim);
    tkv_calib_layer *L = &c->layers[layer];
    const uint32_t d = c->head_dim, group = n_head / c->n_head_kv;
    const size_t kw = (size_t)c->n_head_kv * d, qw = (size_t)n_head * d;
    TKV_TRY(tkv_calib_reserve(c, layer, tkv_calib_block_of(c, pos0 + n_tok - 1) + 1));
    /* a batch of sink positions only is too few (often one) samples: block 0 waits for a
     * batch that reaches past the sinks (its own sink positions count too) */
    if (L->n_set == 0 && pos0 + n_tok > c->p.n_sink) {
        tkv_calib_first(c, layer, q, n_head, k, n_tok);
        *set_first = 1;
    }
    if (c->p.block == TKV_CALIBRATION_ONCE) {
        return TKV_OK;
    }
    for (uint32_t t = 0; t < n_tok; t++) {
        const uint32_t p = pos0 + t, b = p / c->p.block;
        if (b != L->stat_block) {
            if (b > 0 && b >= L->n_set) {
                /* block 0 is set: p >= block >= n_sink, so this batch reached past the
                 * sinks */
                tkv_calib_next(c, layer, b, group);
            }
            tkv_calib_restart_stats(c, layer, b);
        }
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            double *st = tkv_calib_stats(c, layer, h);
            tkv_calib_accumulate(k + t * kw, q + t * qw, h, group, d, st, st + d,
                                 st + 2 * (size_t)d);
        }
        L->stat_n++;
    }
    return TKV_OK;
}

void tkv_calib_truncate(tkv_calib *c, uint32_t layer, uint32_t n) {
    if (!tkv_calib_active(c) || c->p.block == TKV_CALIBRATION_ONCE) {
        return;
    }
    tkv_calib_layer *L = &c->layers[layer];
    const uint32_t last = n ? tkv_calib_block_of(c, n - 1) : 0;
    const uint32_t keep = n ? last + 1 : 0;
    if (L->n_set > keep) {
        L->n_set = keep;
    }
    if (n == 0 && L->n_alloc > 0) {
        /* block 0 recalibrates on the next first batch: back to mu = 0, s = 1, the space
         * sinks are written in until then (and s stays 1 below 8 keys) */
        const size_t bf = tkv_calib_block_floats(c);
        const uint16_t one = tkv_f32_to_fp16(1.0f);
        for (size_t i = 0; i < bf; i++) {
            if (L->mu) {
                L->mu[i] = 0;
            }
            if (L->scale) {
                L->scale[i] = one;
            }
        }
    }
    /* the stats belong to the block of the last kept position: when n starts a block,
     * entering it then calibrates it (from its predecessor, the stats are empty) */
    tkv_calib_restart_stats(c, layer, last);
}

/* Bytes one calibration block of a layer takes: fp16 mu and/or s per head. */
static size_t tkv_calib_block_bytes(const tkv_calib *c) {
    return (size_t)(c->p.center_keys + c->p.smooth_keys) * tkv_calib_block_floats(c) *
           sizeof(uint16_t);
}

size_t tkv_calib_bytes_used(const tkv_calib *c, uint32_t layer, uint32_t n) {
    const tkv_calib_layer *L = &c->layers[layer];
    if (n == 0 || L->n_set == 0) {
        return 0;
    }
    const uint32_t blocks = tkv_calib_block_of(c, n - 1) + 1;
    return (size_t)(blocks < L->n_set ? blocks : L->n_set) * tkv_calib_block_bytes(c);
}

size_t tkv_calib_bytes_allocated(const tkv_calib *c) {
    size_t total = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        total += (size_t)c->layers[l].n_alloc * tkv_calib_block_bytes(c);
        total += c->layers[l].stats ? 3 * tkv_calib_block_floats(c) * sizeof(double) : 0;
    }
    return total;
}
