/*
 * cache.c - compressed KV storage per (layer, KV head), grown in blocks.
 *
 * Position p of a layer is encoded when it leaves the fp16 window (at once when the
 * window is 0).  Code arrays grow by TKV_KV_GROW_TOKENS positions with realloc, so a
 * 32K-token capacity reserves nothing up front.  Codec seeds are derived from the
 * cache seed per (layer, head, K/V) with SplitMix64, so a cache's bytes can be decoded
 * by any process that knows the seed.  With key centering on, stored keys are k - mu
 * (see cache.h); attention scores then differ from <q, k> by <q, mu>, the same for
 * every position, which the softmax cancels.
 */
#include "kv/cache.h"

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
            free(h->k_window);
            free(h->v_window);
        }
    }
    free(c->heads);
    free(c->layers);
    free(c->key_offsets);
    free(c->offset_ready);
    c->heads = NULL;
    c->layers = NULL;
    c->key_offsets = NULL;
    c->offset_ready = NULL;
}

tkv_status tkv_kv_enable_key_centering(tkv_kv_cache *c) {
    c->key_offsets = calloc((size_t)c->n_layer * c->n_head_kv * c->head_dim, sizeof(float));
    c->offset_ready = calloc(c->n_layer, 1);
    TKV_REQUIRE(c->key_offsets && c->offset_ready, TKV_ERR_OUT_OF_MEMORY,
                "cache: out of memory for key offsets");
    c->center_keys = 1;
    return TKV_OK;
}

void tkv_kv_observe_keys(tkv_kv_cache *c, uint32_t layer, const float *k, uint32_t n_tok) {
    if (!c->center_keys || c->offset_ready[layer] || n_tok == 0) {
        return;
    }
    const size_t width = (size_t)c->n_head_kv * c->head_dim;
    float *mu = c->key_offsets + layer * width;
    for (size_t j = 0; j < width; j++) {
        double sum = 0.0;
        for (uint32_t t = 0; t < n_tok; t++) {
            sum += k[t * width + j];
        }
        mu[j] = (float)(sum / n_tok);
    }
    c->offset_ready[layer] = 1;
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
            if (st == TKV_OK && c->window > 0) {
                hd->k_window = calloc((size_t)c->window * c->head_dim, sizeof(uint16_t));
                hd->v_window = calloc((size_t)c->window * c->head_dim, sizeof(uint16_t));
                if (!hd->k_window || !hd->v_window) {
                    tkv_codec_release(&hd->k_codec);
                    tkv_codec_release(&hd->v_codec);
                    st = tkv_fail(TKV_ERR_OUT_OF_MEMORY, "cache: out of memory for the window");
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
    /* the oldest window entry is compressed when the window is full */
    const int evict = c->window > 0 && L->n - L->n_comp == c->window;
    const uint32_t target = c->window > 0 ? (evict ? L->n_comp + 1 : L->n_comp) : pos + 1;
    TKV_TRY(tkv_kv_grow(c, layer, target));
    float *row = scratch;                      /* d */
    float *centered = scratch + d;             /* d */
    float *codec_scratch = scratch + 2 * (size_t)d; /* codec scratch */
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const float *kh = k + (size_t)h * d;
        if (c->center_keys) {
            const float *mu = c->key_offsets + ((size_t)layer * c->n_head_kv + h) * d;
            for (uint32_t j = 0; j < d; j++) {
                centered[j] = kh[j] - mu[j];
            }
            kh = centered;
        }
        const float *vh = v + (size_t)h * d;
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
    if (c->window == 0) {
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
    for (uint32_t l = 0; l < c->n_layer; l++) {
        total += (size_t)c->layers[l].n_comp * tkv_layer_token_bytes(c, l);
        total += (size_t)(c->layers[l].n - c->layers[l].n_comp) * window_token;
    }
    return total;
}

size_t tkv_kv_bytes_allocated(const tkv_kv_cache *c) {
    size_t total = 0;
    const size_t window_bytes = (size_t)c->window * c->n_head_kv * c->head_dim * 2 * sizeof(uint16_t);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        total += (size_t)c->layers[l].n_alloc * tkv_layer_token_bytes(c, l);
        total += c->allocated ? window_bytes : 0;
    }
    return total;
}
