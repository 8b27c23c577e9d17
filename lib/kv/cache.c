/*
 * cache.c - compressed KV storage per (layer, KV head), grown in blocks.
 *
 * Position p of a layer is encoded when it leaves the fp16 window (at once when the
 * window is 0).  Code arrays grow by TKV_KV_GROW_TOKENS positions with realloc, so a
 * 32K-token capacity reserves nothing up front.  Codec seeds are derived from the
 * cache seed per (layer, head, K/V) with SplitMix64, so a cache's bytes can be decoded
 * by any process that knows the seed.  With key centering on, stored keys are k - mu
 * (see cache.h); attention scores then differ from <q, k> by <q, mu>, the same for
 * every position, which the softmax cancels.  With key smoothing on, stored keys are
 * (k - mu) / s and attention multiplies queries by s (tkv_kv_query_scales).
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
        }
    }
    free(c->heads);
    free(c->layers);
    free(c->key_offsets);
    free(c->key_scales);
    free(c->calibrated);
    c->heads = NULL;
    c->layers = NULL;
    c->key_offsets = NULL;
    c->key_scales = NULL;
    c->calibrated = NULL;
}

tkv_status tkv_kv_set_sink_tokens(tkv_kv_cache *c, uint32_t n_sink) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: sink tokens can only be set before the first write");
    TKV_REQUIRE(n_sink <= TKV_KV_MAX_SINK, TKV_ERR_INVALID_ARGUMENT,
                "cache: %u sink tokens, at most %u", n_sink, TKV_KV_MAX_SINK);
    c->n_sink = n_sink;
    return TKV_OK;
}

static tkv_status tkv_kv_alloc_calibration(tkv_kv_cache *c) {
    if (!c->calibrated) {
        c->calibrated = calloc(c->n_layer, 1);
        TKV_REQUIRE(c->calibrated, TKV_ERR_OUT_OF_MEMORY, "cache: out of memory");
    }
    return TKV_OK;
}

tkv_status tkv_kv_enable_key_centering(tkv_kv_cache *c) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: key centering can only be enabled before the first write");
    TKV_TRY(tkv_kv_alloc_calibration(c));
    c->key_offsets = calloc((size_t)c->n_layer * c->n_head_kv * c->head_dim, sizeof(float));
    TKV_REQUIRE(c->key_offsets, TKV_ERR_OUT_OF_MEMORY, "cache: out of memory for key offsets");
    c->center_keys = 1;
    return TKV_OK;
}

tkv_status tkv_kv_enable_key_smoothing(tkv_kv_cache *c, float alpha) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: key smoothing can only be enabled before the first write");
    TKV_REQUIRE(isfinite(alpha) && alpha > 0.0f && alpha <= 1.0f, TKV_ERR_INVALID_ARGUMENT,
                "cache: key smoothing exponent %g outside (0, 1]", (double)alpha);
    TKV_TRY(tkv_kv_alloc_calibration(c));
    const size_t n = (size_t)c->n_layer * c->n_head_kv * c->head_dim;
    c->key_scales = malloc(n * sizeof(float));
    TKV_REQUIRE(c->key_scales, TKV_ERR_OUT_OF_MEMORY, "cache: out of memory for key scales");
    for (size_t i = 0; i < n; i++) {
        c->key_scales[i] = 1.0f;
    }
    c->smooth_keys = 1;
    c->smooth_alpha = alpha;
    return TKV_OK;
}

/* Root mean square per channel j of x[t * row + j], t < n_tok, j < d, into rms. */
static void tkv_channel_rms(const float *x, size_t row, uint32_t n_tok, uint32_t d, const float *mu,
                            double *rms) {
    for (uint32_t j = 0; j < d; j++) {
        double sum = 0.0;
        for (uint32_t t = 0; t < n_tok; t++) {
            const double v = x[t * row + j] - (mu ? mu[j] : 0.0f);
            sum += v * v;
        }
        rms[j] += sum;
    }
}

/* Scales s_j = (rk_j / rq_j)^alpha with both rms floored at 1% of their channel mean (a
 * dead channel must not blow s up), normalized to geometric mean 1.  rk is overwritten. */
static void tkv_smoothing_scales(double *rk, const double *rq, uint32_t d, float alpha,
                                 float *s) {
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
        s[j] = (float)exp(rk[j] - log_mean);
    }
}

/* out = (k - mu) / s for (layer, head) at offset `at`, with whichever levers are on (in
 * and out may be the same row): the space every stored key of the cache lives in. */
static void tkv_kv_prepare_key(const tkv_kv_cache *c, size_t at, const float *in, float *out) {
    const float *mu = c->center_keys ? c->key_offsets + at : NULL;
    const float *s = c->smooth_keys ? c->key_scales + at : NULL;
    for (uint32_t j = 0; j < c->head_dim; j++) {
        const float x = mu ? in[j] - mu[j] : in[j];
        out[j] = s ? x / s[j] : x;
    }
}

void tkv_kv_calibrate(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, const float *q,
                      uint32_t n_head, const float *k, uint32_t n_tok) {
    if (!c->calibrated || c->calibrated[layer]) {
        return;
    }
    const uint32_t d = c->head_dim, group = n_head / c->n_head_kv;
    const size_t kw = (size_t)c->n_head_kv * d, qw = (size_t)n_head * d;
    /* a batch of sink positions only is too few (often one) samples: wait for a batch
     * that reaches past the sinks (its own sink positions count, measured to help a bit) */
    if (pos0 + n_tok <= c->n_sink) {
        return;
    }
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        const size_t at = ((size_t)layer * c->n_head_kv + h) * d;
        const float *mu = NULL;
        if (c->center_keys) {
            float *m = c->key_offsets + at;
            for (uint32_t j = 0; j < d; j++) {
                double sum = 0.0;
                for (uint32_t t = 0; t < n_tok; t++) {
                    sum += k[t * kw + h * d + j];
                }
                m[j] = (float)(sum / n_tok);
            }
            mu = m;
        }
        if (c->smooth_keys && n_tok >= TKV_KV_SMOOTH_MIN_TOKENS && d <= TKV_HEAD_DIM_MAX) {
            double rk[TKV_HEAD_DIM_MAX] = {0}, rq[TKV_HEAD_DIM_MAX] = {0};
            tkv_channel_rms(k + h * d, kw, n_tok, d, mu, rk);
            for (uint32_t g = 0; g < group; g++) {
                tkv_channel_rms(q + ((size_t)h * group + g) * d, qw, n_tok, d, NULL, rq);
            }
            for (uint32_t j = 0; j < d; j++) {
                rk[j] = sqrt(rk[j] / n_tok);
                rq[j] = sqrt(rq[j] / ((double)n_tok * group));
            }
            tkv_smoothing_scales(rk, rq, d, c->smooth_alpha, c->key_scales + at);
        }
        /* sinks of earlier batches were stored as they came (mu = 0, s = 1 until now):
         * bring them into the calibrated space, as every later key will be */
        const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const uint32_t stored = c->layers[layer].n < c->n_sink ? c->layers[layer].n : c->n_sink;
        for (uint32_t t = 0; hd->k_sink && t < stored; t++) {
            tkv_kv_prepare_key(c, at, hd->k_sink + (size_t)t * d, hd->k_sink + (size_t)t * d);
        }
    }
    c->calibrated[layer] = 1;
}

const float *tkv_kv_query_scales(const tkv_kv_cache *c, uint32_t layer, uint32_t head) {
    return c->smooth_keys ? c->key_scales + ((size_t)layer * c->n_head_kv + head) * c->head_dim
                          : NULL;
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
    if (!c->allocated) {
        TKV_TRY(tkv_kv_allocate(c));
    }
    const uint32_t d = c->head_dim;
    const int sink = pos < c->n_sink;
    /* the oldest window entry is compressed when the window is full */
    const int evict = c->window > 0 && L->n - L->n_comp == c->window;
    const uint32_t target = c->window > 0 ? (evict ? L->n_comp + 1 : L->n_comp) : pos + 1;
    TKV_TRY(tkv_kv_grow(c, layer, target));
    float *row = scratch;                      /* d */
    float *prepared = scratch + d;             /* d: key centered and smoothed */
    float *codec_scratch = scratch + 2 * (size_t)d; /* codec scratch */
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const float *kh = k + (size_t)h * d;
        if (c->center_keys || c->smooth_keys) {
            tkv_kv_prepare_key(c, ((size_t)layer * c->n_head_kv + h) * d, kh, prepared);
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
        if (evict) {
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
    }
    return total;
}

size_t tkv_kv_bytes_allocated(const tkv_kv_cache *c) {
    size_t total = 0;
    const size_t window_bytes = (size_t)c->window * c->n_head_kv * c->head_dim * 2 * sizeof(uint16_t);
    const size_t sink_bytes = (size_t)c->n_sink * c->n_head_kv * c->head_dim * 2 * sizeof(float);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        total += (size_t)c->layers[l].n_alloc * tkv_layer_token_bytes(c, l);
        total += c->allocated ? window_bytes + sink_bytes : 0;
    }
    return total;
}
