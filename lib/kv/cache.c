/*
 * cache.c - compressed KV storage per (layer, KV head), grown in blocks.
 *
 * Position p of a layer is encoded when it leaves the fp16 window (at once when the
 * window is 0).  Code arrays grow by TKV_KV_GROW_TOKENS positions with realloc, so a
 * 32K-token capacity reserves nothing up front.  Codec seeds are derived from the
 * cache seed per (layer, head, K/V) with SplitMix64, so a cache's bytes can be decoded
 * by any process that knows the seed.  With key centering and/or smoothing on, a stored
 * key of calibration block b is (k - mu_b) / s_b (see cache.h); attention scores block b
 * with q * s_b and adds <q, mu_b - mu_0>, so every score of a query differs from <q, k>
 * by the same <q, mu_0>, which the softmax cancels.  mu_b and s_b are kept in fp16 and
 * used as rounded, both to store keys and to score them.
 */
#include "kv/cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/half.h"
#include "base/rng.h"
#include "base/status.h"

uint64_t tkv_kv_codec_seed(uint64_t seed, uint32_t layer, uint32_t head, int kind) {
    return tkv_mix64(seed ^ tkv_mix64(((uint64_t)layer << 32) | ((uint64_t)head << 1) | (uint64_t)kind));
}

tkv_status tkv_kv_init(tkv_kv_cache *c, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                       uint32_t capacity, int32_t k_codec, int32_t v_codec, uint32_t window,
                       uint64_t seed) {
    memset(c, 0, sizeof *c);
    c->n_layer = n_layer;
    c->n_head_kv = n_head_kv;
    c->head_dim = head_dim;
    c->capacity = capacity;
    c->window = window;
    c->seed = seed;
    c->calib_block = TKV_DEFAULT_CALIB_BLOCK;
    c->layers = calloc(n_layer, sizeof *c->layers);
    c->heads = calloc((size_t)n_layer * n_head_kv, sizeof *c->heads);
    if (!c->layers || !c->heads) {
        tkv_kv_release(c);
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "cache: out of memory");
    }
    for (uint32_t l = 0; l < n_layer; l++) {
        c->layers[l].k_codec_id = k_codec;
        c->layers[l].v_codec_id = v_codec;
    }
    return TKV_OK;
}

void tkv_kv_release(tkv_kv_cache *c) {
    if (c->heads) {
        for (size_t i = 0; i < (size_t)c->n_layer * c->n_head_kv; i++) {
            tkv_kv_head *h = &c->heads[i];
            if (c->allocated) {
                tkv_codec_release(&h->k_codec);
                tkv_codec_release(&h->v_codec);
            }
            free(h->k_codes);
            free(h->v_codes);
            free(h->k_sink);
            free(h->v_sink);
            free(h->k_window);
            free(h->v_window);
            free(h->k_mu);
            free(h->k_scale);
            free(h->stats);
        }
    }
    free(c->heads);
    free(c->layers);
    c->heads = NULL;
    c->layers = NULL;
}

tkv_status tkv_kv_set_sink_tokens(tkv_kv_cache *c, uint32_t n_sink) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: sink tokens can only be set before the first write");
    TKV_REQUIRE(n_sink <= TKV_KV_MAX_SINK, TKV_ERR_INVALID_ARGUMENT,
                "cache: %u sink tokens, at most %u", n_sink, TKV_KV_MAX_SINK);
    c->n_sink = n_sink;
    return TKV_OK;
}

tkv_status tkv_kv_enable_key_centering(tkv_kv_cache *c) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: key centering can only be enabled before the first write");
    c->center_keys = 1;
    return TKV_OK;
}

tkv_status tkv_kv_enable_key_smoothing(tkv_kv_cache *c, float alpha) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: key smoothing can only be enabled before the first write");
    TKV_REQUIRE(isfinite(alpha) && alpha > 0.0f && alpha <= 1.0f, TKV_ERR_INVALID_ARGUMENT,
                "cache: key smoothing exponent %g outside (0, 1]", (double)alpha);
    c->smooth_keys = 1;
    c->smooth_alpha = alpha;
    return TKV_OK;
}

tkv_status tkv_kv_set_calibration_block(tkv_kv_cache *c, uint32_t calib_block) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: the calibration block can only be set before the first write");
    TKV_REQUIRE(calib_block == TKV_CALIBRATION_ONCE ||
                    (calib_block >= TKV_KV_MIN_CALIB_BLOCK && calib_block <= (1u << 24)),
                TKV_ERR_INVALID_ARGUMENT,
                "cache: calibration_block of %u positions outside %u..16777216 (or "
                "TKV_CALIBRATION_ONCE)",
                calib_block, TKV_KV_MIN_CALIB_BLOCK);
    c->calib_block = calib_block;
    return TKV_OK;
}

/* Room for `blocks` calibration blocks in every head of a layer (new blocks: mu = 0, s = 1
 * until set), and the heads' statistics when there is more than one block. */
static tkv_status tkv_kv_grow_calibration(tkv_kv_cache *c, uint32_t layer, uint32_t blocks) {
    tkv_kv_layer *L = &c->layers[layer];
    if (blocks <= L->n_calib_alloc) {
        return TKV_OK;
    }
    const uint32_t d = c->head_dim;
    const uint16_t one = tkv_f32_to_fp16(1.0f);
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        /* only the arrays of the levers that are on */
        uint16_t *mu = c->center_keys ? realloc(hd->k_mu, (size_t)blocks * d * sizeof *mu) : NULL;
        if (mu) {
            hd->k_mu = mu;
        }
        uint16_t *sc =
            c->smooth_keys ? realloc(hd->k_scale, (size_t)blocks * d * sizeof *sc) : NULL;
        if (sc) {
            hd->k_scale = sc;
        }
        const int blocks_on = c->calib_block != TKV_CALIBRATION_ONCE;
        if (blocks_on && !hd->stats) {
            hd->stats = calloc(3 * (size_t)d, sizeof *hd->stats);
        }
        TKV_REQUIRE((mu || !c->center_keys) && (sc || !c->smooth_keys) && (hd->stats || !blocks_on),
                    TKV_ERR_OUT_OF_MEMORY,
                    "cache: out of memory for %u calibration blocks of layer %u", blocks, layer);
        for (size_t i = (size_t)L->n_calib_alloc * d; i < (size_t)blocks * d; i++) {
            if (mu) {
                mu[i] = 0;
            }
            if (sc) {
                sc[i] = one;
            }
        }
    }
    L->n_calib_alloc = blocks;
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
static void tkv_kv_set_block(tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t block,
                             const double *sum_k, const double *sum_kk, const double *sum_qq,
                             double n_k, double n_q) {
    const uint32_t d = c->head_dim;
    tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + head];
    uint16_t *mu = c->center_keys ? hd->k_mu + (size_t)block * d : NULL;
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
    if (c->smooth_keys && n_k >= TKV_KV_SMOOTH_MIN_TOKENS) {
        tkv_smoothing_scales(rk, rq, d, c->smooth_alpha, hd->k_scale + (size_t)block * d);
    }
}

/* out = (k - mu) / s for (layer, head) in calibration block `block` (in and out may be
 * the same row): the space every stored key of that block lives in. */
static void tkv_kv_prepare_key(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t block,
                               const float *in, float *out) {
    const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + head];
    const uint16_t *mu = c->center_keys ? hd->k_mu + (size_t)block * c->head_dim : NULL;
    const uint16_t *s = c->smooth_keys ? hd->k_scale + (size_t)block * c->head_dim : NULL;
    for (uint32_t j = 0; j < c->head_dim; j++) {
        const float x = mu ? in[j] - tkv_fp16_to_f32(mu[j]) : in[j];
        out[j] = s ? x / tkv_fp16_to_f32(s[j]) : x;
    }
}

void tkv_kv_block_calibration(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t block,
                              float *mu, float *s) {
    const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + head];
    const uint16_t *m = c->center_keys ? hd->k_mu + (size_t)block * c->head_dim : NULL;
    const uint16_t *sc = c->smooth_keys ? hd->k_scale + (size_t)block * c->head_dim : NULL;
    for (uint32_t j = 0; j < c->head_dim; j++) {
        mu[j] = m ? tkv_fp16_to_f32(m[j]) : 0.0f;
        s[j] = sc ? tkv_fp16_to_f32(sc[j]) : 1.0f;
    }
}

/* Sum one position's key (head h of k_row) and the queries of its GQA group (q_row) into
 * per-channel sums of k, k^2 and q^2. */
static void tkv_kv_accumulate(const float *k_row, const float *q_row, uint32_t h, uint32_t group,
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
static void tkv_kv_restart_stats(tkv_kv_cache *c, uint32_t layer, uint32_t b) {
    c->layers[layer].stat_block = b;
    c->layers[layer].stat_n = 0;
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        double *st = c->heads[(size_t)layer * c->n_head_kv + h].stats;
        if (st) {
            memset(st, 0, 3 * (size_t)c->head_dim * sizeof *st);
        }
    }
}

/* Block 0 from the whole first batch reaching past the sinks; sinks stored by earlier
 * batches (as they came: mu = 0, s = 1) are brought into the calibrated space. */
static void tkv_kv_calibrate_first(tkv_kv_cache *c, uint32_t layer, const float *q, uint32_t n_head,
                                   const float *k, uint32_t n_tok) {
    const uint32_t d = c->head_dim, group = n_head / c->n_head_kv;
    const size_t kw = (size_t)c->n_head_kv * d, qw = (size_t)n_head * d;
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        double sk[TKV_HEAD_DIM_MAX] = {0}, skk[TKV_HEAD_DIM_MAX] = {0}, sqq[TKV_HEAD_DIM_MAX] = {0};
        for (uint32_t t = 0; t < n_tok; t++) {
            tkv_kv_accumulate(k + t * kw, q + t * qw, h, group, d, sk, skk, sqq);
        }
        tkv_kv_set_block(c, layer, h, 0, sk, skk, sqq, n_tok, (double)n_tok * group);
        const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const uint32_t stored = c->layers[layer].n < c->n_sink ? c->layers[layer].n : c->n_sink;
        for (uint32_t t = 0; hd->k_sink && t < stored; t++) {
            tkv_kv_prepare_key(c, layer, h, 0, hd->k_sink + (size_t)t * d,
                               hd->k_sink + (size_t)t * d);
        }
    }
    c->layers[layer].n_calib = 1;
}

/* Block b > 0 as it starts: from the statistics of block b - 1 when they cover a good
 * part of it (after a truncation they may not), else block b - 1's calibration again. */
static void tkv_kv_calibrate_next(tkv_kv_cache *c, uint32_t layer, uint32_t b, uint32_t group) {
    tkv_kv_layer *L = &c->layers[layer];
    const uint32_t d = c->head_dim;
    const int fresh = L->stat_block == b - 1 && L->stat_n >= c->calib_block / 4;
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        if (fresh) {
            tkv_kv_set_block(c, layer, h, b, hd->stats, hd->stats + d, hd->stats + 2 * (size_t)d,
                             L->stat_n, (double)L->stat_n * group);
            continue;
        }
        if (hd->k_mu) {
            memcpy(hd->k_mu + (size_t)b * d, hd->k_mu + (size_t)(b - 1) * d, d * sizeof *hd->k_mu);
        }
        if (hd->k_scale) {
            memcpy(hd->k_scale + (size_t)b * d, hd->k_scale + (size_t)(b - 1) * d,
                   d * sizeof *hd->k_scale);
        }
    }
    L->n_calib = b + 1;
}

tkv_status tkv_kv_calibrate(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, const float *q,
                            uint32_t n_head, const float *k, uint32_t n_tok) {
    if (!tkv_kv_has_calibration(c) || n_tok == 0) {
        return TKV_OK;
    }
    TKV_REQUIRE(c->head_dim <= TKV_HEAD_DIM_MAX, TKV_ERR_INTERNAL, "cache: head_dim %u",
                c->head_dim);
    tkv_kv_layer *L = &c->layers[layer];
    const uint32_t d = c->head_dim, group = n_head / c->n_head_kv;
    const size_t kw = (size_t)c->n_head_kv * d, qw = (size_t)n_head * d;
    TKV_TRY(tkv_kv_grow_calibration(c, layer, tkv_kv_calib_block_of(c, pos0 + n_tok - 1) + 1));
    /* a batch of sink positions only is too few (often one) samples: block 0 waits for a
     * batch that reaches past the sinks (its own sink positions count, measured to help) */
    if (L->n_calib == 0 && pos0 + n_tok > c->n_sink) {
        tkv_kv_calibrate_first(c, layer, q, n_head, k, n_tok);
    }
    if (c->calib_block == TKV_CALIBRATION_ONCE) {
        return TKV_OK;
    }
    for (uint32_t t = 0; t < n_tok; t++) {
        const uint32_t p = pos0 + t, b = p / c->calib_block;
        if (b != L->stat_block) {
            if (b > 0 && b >= L->n_calib) {
                /* block 0 is set: p >= calib_block >= n_sink, so this batch reached past
                 * the sinks */
                tkv_kv_calibrate_next(c, layer, b, group);
            }
            tkv_kv_restart_stats(c, layer, b);
        }
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            double *st = c->heads[(size_t)layer * c->n_head_kv + h].stats;
            tkv_kv_accumulate(k + t * kw, q + t * qw, h, group, d, st, st + d, st + 2 * (size_t)d);
        }
        L->stat_n++;
    }
    return TKV_OK;
}

tkv_status tkv_kv_set_layer_codecs(tkv_kv_cache *c, uint32_t layer, int32_t k_codec,
                                   int32_t v_codec) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: layer codecs can only change before the first token is written");
    c->layers[layer].k_codec_id = k_codec;
    c->layers[layer].v_codec_id = v_codec;
    return TKV_OK;
}

/* Build every codec and window (first write). */
static tkv_status tkv_kv_allocate(tkv_kv_cache *c) {
    for (uint32_t l = 0; l < c->n_layer; l++) {
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            tkv_kv_head *hd = &c->heads[(size_t)l * c->n_head_kv + h];
            tkv_status st = tkv_codec_init(&hd->k_codec, c->layers[l].k_codec_id, c->head_dim,
                                           tkv_kv_codec_seed(c->seed, l, h, 0));
            if (st == TKV_OK) {
                st = tkv_codec_init(&hd->v_codec, c->layers[l].v_codec_id, c->head_dim,
                                    tkv_kv_codec_seed(c->seed, l, h, 1));
                if (st != TKV_OK) {
                    tkv_codec_release(&hd->k_codec);
                }
            }
            if (st == TKV_OK) {
                /* exact sink rows and the fp16 window ring (freed by release() on failure) */
                const size_t ns = (size_t)c->n_sink * c->head_dim;
                const size_t nw = (size_t)c->window * c->head_dim;
                if (ns) {
                    hd->k_sink = calloc(ns, sizeof(float));
                    hd->v_sink = calloc(ns, sizeof(float));
                }
                if (nw) {
                    hd->k_window = calloc(nw, sizeof(uint16_t));
                    hd->v_window = calloc(nw, sizeof(uint16_t));
                }
                if ((ns && (!hd->k_sink || !hd->v_sink)) ||
                    (nw && (!hd->k_window || !hd->v_window))) {
                    tkv_codec_release(&hd->k_codec);
                    tkv_codec_release(&hd->v_codec);
                    st = tkv_fail(TKV_ERR_OUT_OF_MEMORY,
                                  "cache: out of memory for the sink tokens or the window");
                }
            }
            if (st != TKV_OK) {
                /* undo the heads built so far, so release() sees a consistent state */
                for (size_t i = 0; i < (size_t)l * c->n_head_kv + h; i++) {
                    tkv_codec_release(&c->heads[i].k_codec);
                    tkv_codec_release(&c->heads[i].v_codec);
                }
                return st;
            }
        }
    }
    c->allocated = 1;
    return TKV_OK;
}

static tkv_status tkv_kv_grow(tkv_kv_cache *c, uint32_t layer, uint32_t need) {
    tkv_kv_layer *L = &c->layers[layer];
    if (need <= L->n_alloc) {
        return TKV_OK;
    }
    uint32_t n_alloc = (need + TKV_KV_GROW_TOKENS - 1) / TKV_KV_GROW_TOKENS * TKV_KV_GROW_TOKENS;
    if (n_alloc > c->capacity) {
        n_alloc = c->capacity;
    }
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        uint8_t *k = realloc(hd->k_codes, (size_t)n_alloc * hd->k_codec.layout.stride);
        if (k) {
            hd->k_codes = k;
        }
        uint8_t *v = realloc(hd->v_codes, (size_t)n_alloc * hd->v_codec.layout.stride);
        if (v) {
            hd->v_codes = v;
        }
        TKV_REQUIRE(k && v, TKV_ERR_OUT_OF_MEMORY, "cache: out of memory growing layer %u to %u "
                    "positions", layer, n_alloc);
    }
    L->n_alloc = n_alloc;
    return TKV_OK;
}

#define TKV_KV_FP16_MAX 65504.0f

static void tkv_f32_to_fp16_row(const float *x, uint32_t d, uint16_t *out) {
    for (uint32_t j = 0; j < d; j++) {
        out[j] = tkv_f32_to_fp16(x[j]);
    }
}

static void tkv_fp16_to_f32_row(const uint16_t *x, uint32_t d, float *out) {
    for (uint32_t j = 0; j < d; j++) {
        out[j] = tkv_fp16_to_f32(x[j]);
    }
}

tkv_status tkv_kv_append(tkv_kv_cache *c, uint32_t layer, uint32_t pos, const float *k,
                         const float *v, float *scratch) {
    tkv_kv_layer *L = &c->layers[layer];
    TKV_REQUIRE(pos == L->n, TKV_ERR_INTERNAL, "cache: layer %u appends position %u at %u", layer,
                pos, L->n);
    TKV_REQUIRE(pos < c->capacity, TKV_ERR_CACHE_FULL,
                "cache full: position %u does not fit a capacity of %u tokens", pos, c->capacity);
    /* codecs assume finite input (a NaN cast to an integer is undefined) */
    for (size_t i = 0; i < (size_t)c->n_head_kv * c->head_dim; i++) {
        TKV_REQUIRE(isfinite(k[i]) && isfinite(v[i]), TKV_ERR_INVALID_ARGUMENT,
                    "cache: layer %u position %u: key %g or value %g at element %zu is not finite",
                    layer, pos, (double)k[i], (double)v[i], i);
    }
    if (!c->allocated) {
        TKV_TRY(tkv_kv_allocate(c));
    }
    const uint32_t d = c->head_dim;
    const int sink = pos < c->n_sink;
    /* the oldest window entry is compressed when the window is full */
    const int evict = c->window > 0 && L->n - L->n_comp == c->window;
    const uint32_t target = c->window > 0 ? (evict ? L->n_comp + 1 : L->n_comp) : pos + 1;
    TKV_TRY(tkv_kv_grow(c, layer, target));
    const uint32_t block = tkv_kv_calib_block_of(c, pos);
    if (tkv_kv_has_calibration(c)) {
        /* tkv_kv_calibrate has set this block; the grow only keeps a caller that skipped it
         * memory-safe (its keys are then stored and scored with mu = 0, s = 1, still exact) */
        TKV_TRY(tkv_kv_grow_calibration(c, layer, block + 1));
    }
    float *row = scratch;                      /* d */
    float *prepared = scratch + d;             /* d: key centered and smoothed */
    float *codec_scratch = scratch + 2 * (size_t)d; /* codec scratch */
    /* the window holds fp16: refuse what it cannot (as the fp16 codec does) before
     * anything changes, rather than store inf */
    for (uint32_t h = 0; c->window > 0 && !sink && h < c->n_head_kv; h++) {
        const float *kh = k + (size_t)h * d, *vh = v + (size_t)h * d;
        if (tkv_kv_has_calibration(c)) {
            tkv_kv_prepare_key(c, layer, h, block, kh, prepared);
            kh = prepared;
        }
        for (uint32_t j = 0; j < d; j++) {
            TKV_REQUIRE(fabsf(kh[j]) <= TKV_KV_FP16_MAX && fabsf(vh[j]) <= TKV_KV_FP16_MAX,
                        TKV_ERR_INVALID_ARGUMENT,
                        "cache: layer %u position %u head %u: key %g or value %g outside the "
                        "fp16 range of the window",
                        layer, pos, h, (double)kh[j], (double)vh[j]);
        }
    }
    /* the oldest window entry of every head is compressed before any slot is overwritten:
     * a codec that refuses one leaves every window as it was (the slot is the new one's) */
    for (uint32_t h = 0; evict && h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const uint32_t old = L->n_comp;
        const size_t slot = (size_t)(old % c->window) * d;
        tkv_fp16_to_f32_row(hd->k_window + slot, d, row);
        TKV_TRY(tkv_codec_encode_one(&hd->k_codec, row,
                                     hd->k_codes + (size_t)old * hd->k_codec.layout.stride,
                                     codec_scratch));
        tkv_fp16_to_f32_row(hd->v_window + slot, d, row);
        TKV_TRY(tkv_codec_encode_one(&hd->v_codec, row,
                                     hd->v_codes + (size_t)old * hd->v_codec.layout.stride,
                                     codec_scratch));
    }
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const float *kh = k + (size_t)h * d;
        if (tkv_kv_has_calibration(c)) {
            tkv_kv_prepare_key(c, layer, h, block, kh, prepared);
            kh = prepared;
        }
        const float *vh = v + (size_t)h * d;
        if (sink) {
            memcpy(hd->k_sink + (size_t)pos * d, kh, d * sizeof(float));
            memcpy(hd->v_sink + (size_t)pos * d, vh, d * sizeof(float));
            continue;
        }
        if (c->window == 0) {
            TKV_TRY(tkv_codec_encode_one(&hd->k_codec, kh,
                                         hd->k_codes + (size_t)pos * hd->k_codec.layout.stride,
                                         codec_scratch));
            TKV_TRY(tkv_codec_encode_one(&hd->v_codec, vh,
                                         hd->v_codes + (size_t)pos * hd->v_codec.layout.stride,
                                         codec_scratch));
            continue;
        }
        const size_t slot = (size_t)(pos % c->window) * d;
        tkv_f32_to_fp16_row(kh, d, hd->k_window + slot);
        tkv_f32_to_fp16_row(vh, d, hd->v_window + slot);
    }
    if (c->window == 0 || sink) {
        L->n_comp = pos + 1;
    } else if (evict) {
        L->n_comp++;
    }
    L->n = pos + 1;
    return TKV_OK;
}

/* Block 0 of every head of a layer back to mu = 0, s = 1 (not calibrated). */
static void tkv_kv_reset_block0(tkv_kv_cache *c, uint32_t layer) {
    const uint32_t d = c->head_dim;
    const uint16_t one = tkv_f32_to_fp16(1.0f);
    for (uint32_t h = 0; h < c->n_head_kv && c->layers[layer].n_calib_alloc > 0; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        for (uint32_t j = 0; j < d; j++) {
            if (hd->k_mu) {
                hd->k_mu[j] = 0;
            }
            if (hd->k_scale) {
                hd->k_scale[j] = one;
            }
        }
    }
}

void tkv_kv_truncate(tkv_kv_cache *c, uint32_t n) {
    for (uint32_t l = 0; l < c->n_layer; l++) {
        tkv_kv_layer *L = &c->layers[l];
        if (n >= L->n) {
            continue;
        }
        if (n < L->n_comp) {
            L->n_comp = n; /* window entries after n are dropped with the rest */
        }
        L->n = n;
        if (tkv_kv_has_calibration(c) && c->calib_block != TKV_CALIBRATION_ONCE) {
            /* blocks with no position left recalibrate when reached again; the block
             * holding position n - 1 and those before keep theirs (stored keys use them).
             * The stats summed the dropped positions too: start them afresh, so the next
             * block calibrates from what is written again (or reuses this block's
             * calibration, see tkv_kv_calibrate_next) */
            const uint32_t last = n ? tkv_kv_calib_block_of(c, n - 1) : 0;
            const uint32_t keep = n ? last + 1 : 0;
            if (L->n_calib > keep) {
                L->n_calib = keep;
            }
            if (n == 0) {
                /* block 0 recalibrates on the next first batch: back to mu = 0, s = 1, the
                 * space sinks are written in until then (and s stays 1 below 8 keys) */
                tkv_kv_reset_block0(c, l);
            }
            /* the stats belong to the block of the last kept position: when n starts a
             * block, entering it then calibrates it (from its predecessor, the stats are
             * empty) */
            tkv_kv_restart_stats(c, l, last);
        }
    }
}

uint32_t tkv_kv_n_tokens(const tkv_kv_cache *c) { return c->n_layer ? c->layers[0].n : 0; }

static size_t tkv_layer_token_bytes(const tkv_kv_cache *c, uint32_t l) {
    size_t kb = tkv_codec_desc_vector_bytes(tkv_codec_desc_get(c->layers[l].k_codec_id), c->head_dim);
    size_t vb = tkv_codec_desc_vector_bytes(tkv_codec_desc_get(c->layers[l].v_codec_id), c->head_dim);
    return (kb + vb) * c->n_head_kv;
}

size_t tkv_kv_bytes_per_token(const tkv_kv_cache *c) {
    size_t total = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        total += tkv_layer_token_bytes(c, l);
    }
    return total;
}

/* Bytes one calibration block of a layer takes: fp16 mu and/or s per head. */
static size_t tkv_calib_block_bytes(const tkv_kv_cache *c) {
    return (size_t)(c->center_keys + c->smooth_keys) * c->n_head_kv * c->head_dim *
           sizeof(uint16_t);
}

size_t tkv_kv_bytes_used(const tkv_kv_cache *c) {
    size_t total = 0;
    const size_t window_token = (size_t)c->n_head_kv * c->head_dim * 2 * sizeof(uint16_t);
    const size_t sink_token = (size_t)c->n_head_kv * c->head_dim * 2 * sizeof(float);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const tkv_kv_layer *L = &c->layers[l];
        const uint32_t sinks = L->n_comp < c->n_sink ? L->n_comp : c->n_sink;
        total += (size_t)sinks * sink_token;
        total += (size_t)(L->n_comp - sinks) * tkv_layer_token_bytes(c, l);
        total += (size_t)(L->n - L->n_comp) * window_token;
        if (L->n > 0 && L->n_calib > 0) {
            const uint32_t blocks = tkv_kv_calib_block_of(c, L->n - 1) + 1;
            total += (size_t)(blocks < L->n_calib ? blocks : L->n_calib) * tkv_calib_block_bytes(c);
        }
    }
    return total;
}

size_t tkv_kv_bytes_allocated(const tkv_kv_cache *c) {
    size_t total = 0;
    const size_t window_bytes = (size_t)c->window * c->n_head_kv * c->head_dim * 2 * sizeof(uint16_t);
    const size_t sink_bytes = (size_t)c->n_sink * c->n_head_kv * c->head_dim * 2 * sizeof(float);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        total += (size_t)c->layers[l].n_alloc * tkv_layer_token_bytes(c, l);
        total += (size_t)c->layers[l].n_calib_alloc * tkv_calib_block_bytes(c);
        total += c->allocated ? window_bytes + sink_bytes : 0;
    }
    return total;
}
