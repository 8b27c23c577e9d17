/*
 * cache.c - compressed KV storage per (layer, KV head), grown in blocks.
 *
 * Position p of a layer is encoded when it leaves the fp16 window (at once when the
 * window is 0).  Code rows live in segments of TKV_KV_SEG_ROWS positions per layer
 * (kv/segment.h), added as the positions reach them, so a 32K-token capacity reserves
 * nothing up front; every reader and writer finds a row through tkv_kv_rows.  Codec seeds are
 * derived from the cache seed per (layer, head, K/V) with SplitMix64, so a cache's bytes can be
 * decoded by any process that knows the seed.  Keys are stored in their calibration block's space
 * (kv/calib.c owns the offsets and scales); sinks, codes and window all hold calibrated keys.  A
 * sliding-window layer's codes are a ring (tkv_kv_set_layer_span): position p in row p % ring of
 * one segment, runs of codes ending where the ring wraps.
 */
#include "kv/cache.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/half.h"
#include "base/rng.h"
#include "base/status.h"
#include "base/threads.h"

uint64_t tkv_kv_codec_seed(uint64_t seed, uint32_t layer, uint32_t head, int kind) {
    return tkv_mix64(seed ^ tkv_mix64(((uint64_t)layer << 32) | ((uint64_t)head << 1) | (uint64_t)kind));
}

/* A shared prefix ends this many positions after the sinks, or a multiple of it: where
 * attention's runs of codes then start, the kernels' blocks of rows start anyway (16 for
 * the bf16 value sums, which pair rows), so a fork sums in the unforked order. */
#define TKV_KV_SHARE_ALIGN 64u

/* The compressed prefix forks share: the segments of positions [0, n_shared) of each
 * layer, immutable while shared.  The segments count their readers themselves; this is
 * what tells forks of one prefix apart and how many bytes the prefix holds. */
struct tkv_kv_shared {
    atomic_uint refs; /* caches reading it */
    size_t bytes;     /* code bytes of its positions */
};

static void tkv_kv_shared_unref(struct tkv_kv_shared *sh) {
    if (sh && atomic_fetch_sub(&sh->refs, 1u) == 1u) {
        free(sh);
    }
}

/* Bytes of one KV head's K and V rows in a segment of the layer. */
static size_t tkv_kv_seg_head_bytes(const tkv_kv_cache *c, uint32_t layer) {
    const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv];
    return (size_t)c->layers[layer].seg_rows *
           (hd->k_codec.layout.stride + hd->v_codec.layout.stride);
}

static size_t tkv_kv_seg_bytes(const tkv_kv_cache *c, uint32_t layer) {
    return c->n_head_kv * tkv_kv_seg_head_bytes(c, layer);
}

/* Row r of segment s of the layer, K (kind 0) or V (kind 1) of a head. */
static uint8_t *tkv_kv_seg_row(const tkv_kv_cache *c, uint32_t layer, const tkv_kv_seg *s,
                               uint32_t head, int kind, uint32_t r) {
    const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + head];
    const size_t ks = hd->k_codec.layout.stride;
    const size_t at = kind ? (size_t)c->layers[layer].seg_rows * ks : 0;
    return s->rows + head * tkv_kv_seg_head_bytes(c, layer) + at +
           (size_t)r * (kind ? hd->v_codec.layout.stride : ks);
}

/* The rows of compressed position pos and in *run how many positions from pos up to end
 * follow contiguously: to the end of its segment (a ring's: where it wraps), of the shared
 * prefix when pos lies in it. */
static uint8_t *tkv_kv_rows(const tkv_kv_cache *c, uint32_t layer, uint32_t head, int kind,
                            uint32_t pos, uint32_t end, uint32_t *run) {
    const tkv_kv_layer *L = &c->layers[layer];
    const uint32_t R = L->seg_rows;
    const uint32_t row = L->ring ? pos % L->ring : pos;
    const uint32_t k = row / R;
    uint32_t n = R - row % R;
    const tkv_kv_seg *s = L->seg[k];
    if (pos < L->n_shared) {
        s = L->tail && k == L->n_shared / R ? L->tail : s;
        n = n < L->n_shared - pos ? n : L->n_shared - pos;
    }
    *run = end - pos < n ? end - pos : n;
    return tkv_kv_seg_row(c, layer, s, head, kind, row % R);
}

/* The row a write of position pos (>= n_shared, its segment allocated) goes to. */
static uint8_t *tkv_kv_own_row(tkv_kv_cache *c, uint32_t layer, uint32_t head, int kind,
                               uint32_t pos) {
    uint32_t run;
    return tkv_kv_rows(c, layer, head, kind, pos, pos + 1, &run);
}

/* Rows [r0, r1) of every head, K and V, of segment `from` into the same rows of `to`. */
static void tkv_kv_copy_rows(const tkv_kv_cache *c, uint32_t layer, tkv_kv_seg *to,
                             const tkv_kv_seg *from, uint32_t r0, uint32_t r1) {
    for (uint32_t h = 0; r0 < r1 && h < c->n_head_kv; h++) {
        const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        for (int kind = 0; kind < 2; kind++) {
            const size_t stride = kind ? hd->v_codec.layout.stride : hd->k_codec.layout.stride;
            memcpy(tkv_kv_seg_row(c, layer, to, h, kind, r0),
                   tkv_kv_seg_row(c, layer, from, h, kind, r0), (size_t)(r1 - r0) * stride);
        }
    }
}

/* A ring layer is about to write the codes of positions up to end - 1: the positions
 * whose rows they take are lost (before the write, so that a write that fails part-way
 * never leaves a lost position counted as held). */
static void tkv_kv_ring_writes(tkv_kv_layer *L, uint32_t end) {
    if (L->ring && end > L->n_lost + L->ring) {
        L->n_lost = end - L->ring;
    }
}

const uint8_t *tkv_kv_code_run(const tkv_kv_cache *c, uint32_t layer, uint32_t head, int kind,
                               uint32_t pos, uint32_t end, uint32_t *run) {
    return tkv_kv_rows(c, layer, head, kind, pos, end, run);
}

uint8_t *tkv_kv_code_run_mut(tkv_kv_cache *c, uint32_t layer, uint32_t head, int kind, uint32_t pos,
                             uint32_t end, uint32_t *run) {
    return tkv_kv_rows(c, layer, head, kind, pos, end, run);
}

tkv_status tkv_kv_init(tkv_kv_cache *c, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                       uint32_t capacity, int32_t k_codec, int32_t v_codec, uint32_t window,
                       uint64_t seed) {
    memset(c, 0, sizeof *c);
    c->arena.huge = tkv_kv_huge_pages_wanted();
    c->n_layer = n_layer;
    c->n_head_kv = n_head_kv;
    c->head_dim = head_dim;
    c->capacity = capacity;
    c->window = window;
    c->seed = seed;
    c->sink_layout =
        (tkv_code_layout){.format = TKV_FMT_F32, .d = head_dim, .stride = 4 * head_dim};
    c->window_layout =
        (tkv_code_layout){.format = TKV_FMT_F16, .d = head_dim, .stride = 2 * head_dim};
    c->layers = calloc(n_layer, sizeof *c->layers);
    c->heads = calloc((size_t)n_layer * n_head_kv, sizeof *c->heads);
    tkv_status st = c->layers && c->heads ? tkv_calib_init(&c->calib, n_layer, n_head_kv, head_dim)
                                          : tkv_fail(TKV_ERR_OUT_OF_MEMORY, "cache: out of memory");
    if (st != TKV_OK) {
        tkv_kv_release(c);
        return st;
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
            free(h->k_sink);
            free(h->v_sink);
            free(h->k_window);
            free(h->v_window);
        }
    }
    for (uint32_t l = 0; c->layers && l < c->n_layer; l++) {
        tkv_kv_layer *L = &c->layers[l];
        for (uint32_t k = 0; k < L->n_seg; k++) {
            tkv_kv_seg_unref(L->seg[k]);
        }
        tkv_kv_seg_unref(L->tail);
        free(L->seg);
    }
    tkv_kv_arena_release(&c->arena);
    tkv_calib_release(&c->calib);
    free(c->heads);
    free(c->layers);
    tkv_kv_shared_unref(c->shared);
    c->heads = NULL;
    c->layers = NULL;
    c->shared = NULL;
}

tkv_status tkv_kv_set_levers(tkv_kv_cache *c, uint32_t n_sink, const tkv_calib_params *calib) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: sink tokens and key calibration can only be set before the first write");
    c->n_sink = n_sink;
    c->calib.p = *calib;
    c->calib.p.n_sink = n_sink;
    return TKV_OK;
}

tkv_status tkv_kv_calibrate(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, const float *q,
                            uint32_t n_head, const float *k, uint32_t n_tok) {
    int set_first = 0;
    TKV_TRY(tkv_calib_observe(&c->calib, layer, pos0, q, n_head, k, n_tok, &set_first));
    /* sinks stored by earlier batches (as they came: mu = 0, s = 1) move into block 0's
     * space */
    const uint32_t stored = c->layers[layer].n < c->n_sink ? c->layers[layer].n : c->n_sink;
    for (uint32_t h = 0; set_first && h < c->n_head_kv; h++) {
        float *ks = c->heads[(size_t)layer * c->n_head_kv + h].k_sink;
        for (uint32_t t = 0; ks && t < stored; t++) {
            tkv_calib_prepare_key(&c->calib, layer, h, 0, ks + (size_t)t * c->head_dim,
                                  ks + (size_t)t * c->head_dim);
        }
    }
    return TKV_OK;
}

void tkv_kv_block_calibration(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t block,
                              float *mu, float *s) {
    tkv_calib_block(&c->calib, layer, head, block, mu, s);
}

tkv_status tkv_kv_set_layer_span(tkv_kv_cache *c, uint32_t layer, uint32_t span, uint32_t batch) {
    TKV_REQUIRE(!c->allocated, TKV_ERR_INVALID_ARGUMENT,
                "cache: a layer's window can only be set before the first token is written");
    TKV_REQUIRE(span >= 1 && batch >= 1, TKV_ERR_INVALID_ARGUMENT,
                "cache: layer %u window of %u positions, batch %u", layer, span, batch);
    tkv_kv_layer *L = &c->layers[layer];
    L->span = span;
    const uint64_t ring = (uint64_t)span - 1 + batch;
    L->ring = ring < c->capacity ? (uint32_t)ring : 0;
    return TKV_OK;
}

uint32_t tkv_kv_append_limit(const tkv_kv_cache *c, uint32_t layer) {
    const tkv_kv_layer *L = &c->layers[layer];
    return L->ring ? L->ring - (L->span - 1) : UINT32_MAX;
}

uint32_t tkv_kv_truncate_floor(const tkv_kv_cache *c) {
    uint32_t floor = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const tkv_kv_layer *L = &c->layers[l];
        /* positions before n_sink are sinks, never in the ring */
        const uint32_t need = L->ring && L->n_lost > c->n_sink ? L->n_lost + L->span - 1 : 0;
        floor = need > floor ? need : floor;
    }
    return floor;
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
    /* segments of the attention grid, a ring in one (its rows are all read at every
     * token); huge-page slabs only for a cache that can fill one */
    size_t most = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        tkv_kv_layer *L = &c->layers[l];
        L->seg_rows = L->ring                         ? L->ring
                      : c->capacity < TKV_KV_SEG_ROWS ? c->capacity
                                                      : TKV_KV_SEG_ROWS;
        most += tkv_kv_seg_bytes(c, l) * (L->ring ? 1 : (c->capacity - 1) / L->seg_rows + 1);
    }
    c->arena.huge = c->arena.huge && most >= TKV_HUGE_PAGE;
    c->allocated = 1;
    return TKV_OK;
}

/* Room in the layer's table for `entries` segments. */
static tkv_status tkv_kv_seg_table(tkv_kv_cache *c, uint32_t layer, uint32_t entries) {
    tkv_kv_layer *L = &c->layers[layer];
    if (entries <= L->n_seg) {
        return TKV_OK;
    }
    const uint32_t most = L->ring ? 1 : (c->capacity - 1) / L->seg_rows + 1;
    uint32_t n = L->n_seg ? L->n_seg : 1;
    while (n < entries) {
        n *= 2;
    }
    n = n < most ? n : most;
    tkv_kv_seg **t = realloc(L->seg, (size_t)n * sizeof *t);
    TKV_REQUIRE(t, TKV_ERR_OUT_OF_MEMORY, "cache: out of memory growing layer %u", layer);
    memset(t + L->n_seg, 0, (size_t)(n - L->n_seg) * sizeof *t);
    L->seg = t;
    L->n_seg = n;
    return TKV_OK;
}

/* Segments of the layer's own for compressed positions up to `need` (those before n_shared
 * are the shared prefix's; a ring layer has one). */
static tkv_status tkv_kv_grow(tkv_kv_cache *c, uint32_t layer, uint32_t need) {
    tkv_kv_layer *L = &c->layers[layer];
    need = need < c->capacity ? need : c->capacity;
    if (need <= L->n_shared) {
        return TKV_OK;
    }
    const uint32_t R = L->seg_rows;
    const uint32_t last = L->ring ? 0 : (need - 1) / R;
    TKV_TRY(tkv_kv_seg_table(c, layer, last + 1));
    for (uint32_t k = L->ring ? 0 : L->n_shared / R; k <= last; k++) {
        if (!L->seg[k]) {
            L->seg[k] = tkv_kv_seg_new(&c->arena, tkv_kv_seg_bytes(c, layer));
            TKV_REQUIRE(L->seg[k], TKV_ERR_OUT_OF_MEMORY,
                        "cache: out of memory growing layer %u to %u positions", layer,
                        (k + 1) * R);
        }
    }
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

/* tkv_kv_append's scratch (TKV_KV_SCRATCH_FLOATS floats), by use. */
typedef struct tkv_kv_scratch {
    float *row;   /* d: a window row leaving for the codec, as floats */
    float *key;   /* d: the key in its calibration block's space */
    float *codec; /* TKV_CODEC_SCRATCH_FLOATS(d): the codec's own */
} tkv_kv_scratch;

static tkv_kv_scratch tkv_kv_carve_scratch(float *scratch, uint32_t d) {
    return (tkv_kv_scratch){.row = scratch, .key = scratch + d, .codec = scratch + 2 * (size_t)d};
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
        TKV_TRY(tkv_calib_reserve(&c->calib, layer, block + 1));
    }
    const tkv_kv_scratch sc = tkv_kv_carve_scratch(scratch, d);
    /* the window holds fp16: refuse what it cannot (as the fp16 codec does) before
     * anything changes, rather than store inf */
    for (uint32_t h = 0; c->window > 0 && !sink && h < c->n_head_kv; h++) {
        const float *kh = k + (size_t)h * d, *vh = v + (size_t)h * d;
        if (tkv_kv_has_calibration(c)) {
            tkv_calib_prepare_key(&c->calib, layer, h, block, kh, sc.key);
            kh = sc.key;
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
        tkv_kv_ring_writes(L, old + 1);
        tkv_fp16_to_f32_row(hd->k_window + slot, d, sc.row);
        TKV_TRY(tkv_codec_encode_one(&hd->k_codec, sc.row, tkv_kv_own_row(c, layer, h, 0, old),
                                     sc.codec));
        tkv_fp16_to_f32_row(hd->v_window + slot, d, sc.row);
        TKV_TRY(tkv_codec_encode_one(&hd->v_codec, sc.row, tkv_kv_own_row(c, layer, h, 1, old),
                                     sc.codec));
    }
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
        const float *kh = k + (size_t)h * d;
        if (tkv_kv_has_calibration(c)) {
            tkv_calib_prepare_key(&c->calib, layer, h, block, kh, sc.key);
            kh = sc.key;
        }
        const float *vh = v + (size_t)h * d;
        if (sink) {
            memcpy(hd->k_sink + (size_t)pos * d, kh, d * sizeof(float));
            memcpy(hd->v_sink + (size_t)pos * d, vh, d * sizeof(float));
            continue;
        }
        if (c->window == 0) {
            tkv_kv_ring_writes(L, pos + 1);
            TKV_TRY(tkv_codec_encode_one(&hd->k_codec, kh, tkv_kv_own_row(c, layer, h, 0, pos),
                                         sc.codec));
            TKV_TRY(tkv_codec_encode_one(&hd->v_codec, vh, tkv_kv_own_row(c, layer, h, 1, pos),
                                         sc.codec));
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

/*
 * Batch append without an fp16 window: every (position, head) is independent -- its
 * prepared key and value go to their own sink row or code slot, past what the layer
 * shows until the counters move -- so the encodes run over the pool, part i taking a
 * contiguous range of (position, head) jobs with its own scratch.  The bits written do
 * not depend on the thread count.  On a refused vector the layer keeps the positions
 * before it, as position-by-position appends would, and the refusal is repeated on the
 * calling thread so that its message is this thread's last error.
 */
typedef struct tkv_kv_batch_job {
    tkv_kv_cache *c;
    uint32_t layer, pos0, n;
    const float *k, *v;
    float *scratch;                     /* TKV_KV_SCRATCH_FLOATS(head_dim) per pool part */
    int64_t part_bad[TKV_KV_MAX_PARTS]; /* per part: its first refused job, or -1 */
} tkv_kv_batch_job;

/* Store (or encode) the key and value of one (position, head) job. */
static tkv_status tkv_kv_store_one(tkv_kv_cache *c, uint32_t layer, uint32_t pos, uint32_t h,
                                   const float *k, const float *v, float *scratch) {
    const uint32_t d = c->head_dim;
    tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + h];
    const float *kh = k + (size_t)h * d, *vh = v + (size_t)h * d;
    const tkv_kv_scratch sc = tkv_kv_carve_scratch(scratch, d);
    if (tkv_kv_has_calibration(c)) {
        tkv_calib_prepare_key(&c->calib, layer, h, tkv_kv_calib_block_of(c, pos), kh, sc.key);
        kh = sc.key;
    }
    if (pos < c->n_sink) {
        memcpy(hd->k_sink + (size_t)pos * d, kh, d * sizeof(float));
        memcpy(hd->v_sink + (size_t)pos * d, vh, d * sizeof(float));
        return TKV_OK;
    }
    TKV_TRY(tkv_codec_encode_one(&hd->k_codec, kh, tkv_kv_own_row(c, layer, h, 0, pos), sc.codec));
    return tkv_codec_encode_one(&hd->v_codec, vh, tkv_kv_own_row(c, layer, h, 1, pos), sc.codec);
}

static void tkv_kv_batch_task(void *ctx, int ith, int nth) {
    tkv_kv_batch_job *job = ctx;
    tkv_kv_cache *c = job->c;
    const uint32_t HK = c->n_head_kv;
    const size_t KD = (size_t)HK * c->head_dim;
    int64_t b, e;
    tkv_split_range((int64_t)job->n * HK, ith, nth, &b, &e);
    job->part_bad[ith] = -1;
    float *scratch = job->scratch + (size_t)ith * TKV_KV_SCRATCH_FLOATS(c->head_dim);
    for (int64_t i = b; i < e; i++) {
        const uint32_t t = (uint32_t)(i / HK), h = (uint32_t)(i % HK);
        if (tkv_kv_store_one(c, job->layer, job->pos0 + t, h, job->k + t * KD, job->v + t * KD,
                             scratch) != TKV_OK) {
            job->part_bad[ith] = i;
            return;
        }
    }
}

tkv_status tkv_kv_append_batch(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, uint32_t n,
                               const float *k, const float *v, tkv_pool *pool, float *scratch) {
    const size_t KD = (size_t)c->n_head_kv * c->head_dim;
    const int nth = pool ? tkv_pool_size(pool) : 1;
    if (c->window > 0 || n == 0 || nth > TKV_KV_MAX_PARTS) {
        for (uint32_t t = 0; t < n; t++) {
            TKV_TRY(tkv_kv_append(c, layer, pos0 + t, k + t * KD, v + t * KD, scratch));
        }
        return TKV_OK;
    }
    tkv_kv_layer *L = &c->layers[layer];
    TKV_REQUIRE(pos0 == L->n, TKV_ERR_INTERNAL, "cache: layer %u appends position %u at %u", layer,
                pos0, L->n);
    /* a ring's rows would be written twice, by two threads */
    TKV_REQUIRE(n <= tkv_kv_append_limit(c, layer), TKV_ERR_INTERNAL,
                "cache: layer %u appends %u positions at once, its ring takes %u", layer, n,
                tkv_kv_append_limit(c, layer));
    /* the checks of tkv_kv_append, position by position: the first failing one is the
     * error and the positions before it are appended */
    uint32_t ok = 0;
    tkv_status st = TKV_OK;
    for (; ok < n && st == TKV_OK; ok++) {
        const uint32_t pos = pos0 + ok;
        if (pos >= c->capacity) {
            st = tkv_fail(TKV_ERR_CACHE_FULL,
                          "cache full: position %u does not fit a capacity of %u tokens", pos,
                          c->capacity);
            break;
        }
        const float *kt = k + ok * KD, *vt = v + ok * KD;
        for (size_t i = 0; i < KD; i++) {
            if (!isfinite(kt[i]) || !isfinite(vt[i])) {
                st = tkv_fail(TKV_ERR_INVALID_ARGUMENT,
                              "cache: layer %u position %u: key %g or value %g at element %zu is "
                              "not finite",
                              layer, pos, (double)kt[i], (double)vt[i], i);
                break;
            }
        }
        if (st != TKV_OK) {
            break;
        }
    }
    if (ok > 0) {
        if (!c->allocated) {
            TKV_TRY(tkv_kv_allocate(c));
        }
        TKV_TRY(tkv_kv_grow(c, layer, pos0 + ok));
        if (tkv_kv_has_calibration(c)) {
            TKV_TRY(
                tkv_calib_reserve(&c->calib, layer, tkv_kv_calib_block_of(c, pos0 + ok - 1) + 1));
        }
        tkv_kv_ring_writes(L, pos0 + ok); /* the rows every part may write */
        tkv_kv_batch_job job = {c, layer, pos0, ok, k, v, scratch, {0}};
        const int parts = ok * c->n_head_kv > 1 ? nth : 1;
        if (parts > 1) {
            tkv_pool_run(pool, tkv_kv_batch_task, &job);
        } else {
            tkv_kv_batch_task(&job, 0, 1);
        }
        int64_t bad = -1;
        for (int i = 0; i < parts; i++) {
            if (job.part_bad[i] >= 0 && (bad < 0 || job.part_bad[i] < bad)) {
                bad = job.part_bad[i];
            }
        }
        uint32_t done = ok;
        if (bad >= 0) {
            /* positions before the refused one stay; the refusal again, for its message */
            const uint32_t t = (uint32_t)(bad / c->n_head_kv), h = (uint32_t)(bad % c->n_head_kv);
            done = t;
            st = tkv_kv_store_one(c, layer, pos0 + t, h, k + t * KD, v + t * KD, scratch);
            if (st == TKV_OK) {
                st = tkv_fail(TKV_ERR_INTERNAL,
                              "cache: layer %u position %u head %u: encode "
                              "refused on a worker, accepted on retry",
                              layer, pos0 + t, h);
            }
        }
        L->n = L->n_comp = pos0 + done;
    }
    return st;
}

/* The layer's shared prefix ends at b, below its end now: segments wholly past b are no
 * longer read through it (their references dropped; positions there are written into own
 * segments from now on), the one holding b becomes the tail when b is inside it. */
static void tkv_kv_shared_cut(tkv_kv_layer *L, uint32_t b) {
    const uint32_t R = L->seg_rows, kb = b / R, ks = L->n_shared / R;
    if (kb < ks) {
        tkv_kv_seg_unref(L->tail);
        L->tail = NULL;
        for (uint32_t k = kb + 1; k < ks; k++) {
            tkv_kv_seg_unref(L->seg[k]);
            L->seg[k] = NULL;
        }
        if (b % R) {
            L->tail = L->seg[kb];
        } else {
            tkv_kv_seg_unref(L->seg[kb]);
        }
        L->seg[kb] = NULL;
    } else if (b % R == 0) { /* kb == ks: b is inside the old tail's range */
        tkv_kv_seg_unref(L->tail);
        L->tail = NULL;
    }
    L->n_shared = b;
}

/* Truncation to n inside the shared prefix of a layer: the prefix is read up to the
 * aligned boundary at or below n (tkv_kv_share_end), and positions from there to n are
 * copied into an own segment, whose positions were all at or past the old prefix end and
 * are dropped; so a truncated fork still sums its values in the unforked order.  Without
 * memory for the copy the prefix is read up to n (still right, maybe not the same bits). */
static void tkv_kv_unshare_tail(tkv_kv_cache *c, uint32_t layer, uint32_t n) {
    tkv_kv_layer *L = &c->layers[layer];
    const uint32_t s0 = n < c->n_sink ? n : c->n_sink;
    const uint32_t a = s0 + (n - s0) / TKV_KV_SHARE_ALIGN * TKV_KV_SHARE_ALIGN;
    const uint32_t R = L->seg_rows, ka = a / R, ks = L->n_shared / R;
    if (a < n) {
        /* the own segment of a: the one of the old tail's index, or a new one */
        tkv_kv_seg *own = ka == ks ? L->seg[ka] : NULL;
        tkv_kv_seg *fresh = own ? NULL : tkv_kv_seg_new(&c->arena, tkv_kv_seg_bytes(c, layer));
        if (!own && !fresh) {
            tkv_kv_shared_cut(L, n);
            return;
        }
        const tkv_kv_seg *from = ka == ks ? L->tail : L->seg[ka];
        tkv_kv_copy_rows(c, layer, own ? own : fresh, from, a % R, a % R + (n - a));
        tkv_kv_shared_cut(L, a);
        if (fresh) {
            L->seg[ka] = fresh;
        }
        return;
    }
    tkv_kv_shared_cut(L, a);
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
        if (n < L->n_shared) {
            tkv_kv_unshare_tail(c, l, n);
        }
        if (n <= c->n_sink) {
            L->n_lost = 0; /* no code position left: nothing in the ring is missing */
        }
        L->n = n;
        tkv_calib_truncate(&c->calib, l, n);
    }
}

/* The run of (layer, head) at position t, ending before t1: the stretch of t's storage
 * kind with contiguous rows (a window run ends where the ring wraps), cut at t's
 * calibration block end when by_block. */
static void tkv_kv_run_at(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t t,
                          uint32_t t1, int keys, tkv_kv_run *run) {
    const tkv_kv_layer *L = &c->layers[layer];
    const tkv_kv_head *hd = &c->heads[(size_t)layer * c->n_head_kv + head];
    const uint32_t n_comp = L->n_comp;
    const uint32_t s0 = c->n_sink < n_comp ? c->n_sink : n_comp;
    uint32_t end = t1;
    run->t0 = t;
    run->codec = NULL;
    run->block = 0;
    if (keys && tkv_kv_has_calibration(c) && c->calib.p.block != TKV_CALIBRATION_ONCE) {
        const uint32_t B = c->calib.p.block;
        run->block = t / B;
        end = t1 - t / B * B > B ? t / B * B + B : t1;
    }
    if (t < s0) {
        run->store = TKV_KV_STORE_SINK;
        run->layout = &c->sink_layout;
        run->rows = (const uint8_t *)((keys ? hd->k_sink : hd->v_sink) + (size_t)t * c->head_dim);
        end = end < s0 ? end : s0;
    } else if (t < n_comp) {
        const struct tkv_codec *codec = keys ? &hd->k_codec : &hd->v_codec;
        run->store = TKV_KV_STORE_CODES;
        run->codec = codec;
        run->layout = &codec->layout;
        uint32_t len;
        run->rows = tkv_kv_code_run(c, layer, head, keys ? 0 : 1, t,
                                    end < n_comp ? end : n_comp, &len);
        end = t + len;
    } else {
        const uint32_t slot = t % c->window;
        run->store = TKV_KV_STORE_WINDOW;
        run->layout = &c->window_layout;
        run->rows =
            (const uint8_t *)((keys ? hd->k_window : hd->v_window) + (size_t)slot * c->head_dim);
        end = end - t < c->window - slot ? end : t + (c->window - slot);
    }
    run->n = end - t;
}

void tkv_kv_key_run(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t t, uint32_t t1,
                    tkv_kv_run *run) {
    tkv_kv_run_at(c, layer, head, t, t1, 1, run);
}

void tkv_kv_value_run(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t t, uint32_t t1,
                      tkv_kv_run *run) {
    tkv_kv_run_at(c, layer, head, t, t1, 0, run);
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
        uint32_t held = L->n_lost > sinks ? L->n_lost : sinks; /* first code position held */
        held = held < L->n_comp ? held : L->n_comp;
        total += (size_t)sinks * sink_token;
        total += (size_t)(L->n_comp - held) * tkv_layer_token_bytes(c, l);
        total += (size_t)(L->n - L->n_comp) * window_token;
        total += tkv_calib_bytes_used(&c->calib, l, L->n);
    }
    return total;
}

size_t tkv_kv_bytes_shared(const tkv_kv_cache *c) { return c->shared ? c->shared->bytes : 0; }

int tkv_kv_shares_prefix(const tkv_kv_cache *a, const tkv_kv_cache *b) {
    return a->shared != NULL && a->shared == b->shared;
}

/* Positions a layer's shared prefix ends at when c forks: the compressed positions up to
 * a multiple of TKV_KV_SHARE_ALIGN after the sinks.  Attention then walks a fork's codes
 * in runs that start where the kernels' blocks of rows start anyway (16 for the bf16
 * value sums, which pair rows), so a fork sums in the same order as an unforked cache
 * and gives the same bits; the few positions past it are copied into each fork. */
static uint32_t tkv_kv_share_end(const tkv_kv_cache *c, const tkv_kv_layer *L) {
    if (L->ring) {
        return L->n_shared; /* 0: its rows are overwritten, so they are copied, not shared */
    }
    const uint32_t s0 = L->n_comp < c->n_sink ? L->n_comp : c->n_sink;
    const uint32_t m = s0 + (L->n_comp - s0) / TKV_KV_SHARE_ALIGN * TKV_KV_SHARE_ALIGN;
    return m > L->n_shared ? m : L->n_shared;
}

/* Make c's compressed positions up to tkv_kv_share_end its shared prefix.  Segments
 * wholly before the end just become the prefix's (no copy; a previous prefix's partial
 * last segment is first completed from the own segment of its index); the segment holding
 * the end, when it is inside one, becomes the prefix's tail and c gets a new own segment
 * with the few positions past the end copied. */
static tkv_status tkv_kv_share(tkv_kv_cache *c) {
    int needed = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        needed |= tkv_kv_share_end(c, &c->layers[l]) > c->layers[l].n_shared;
    }
    if (!c->allocated || !needed) {
        return TKV_OK;
    }
    struct tkv_kv_shared *sh = calloc(1, sizeof *sh);
    tkv_kv_seg **fresh = calloc(c->n_layer, sizeof *fresh); /* per layer: its new own segment */
    int ok = sh && fresh;
    /* first everything that can fail, leaving c as it was */
    for (uint32_t l = 0; ok && l < c->n_layer; l++) {
        const tkv_kv_layer *L = &c->layers[l];
        const uint32_t m = tkv_kv_share_end(c, L);
        if (m > L->n_shared && m % L->seg_rows && L->n_comp > m) {
            fresh[l] = tkv_kv_seg_new(&c->arena, tkv_kv_seg_bytes(c, l));
            ok = fresh[l] != NULL;
        }
    }
    if (!ok) {
        for (uint32_t l = 0; fresh && l < c->n_layer; l++) {
            tkv_kv_seg_unref(fresh[l]);
        }
        free(fresh);
        free(sh);
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "cache fork: out of memory");
    }
    atomic_init(&sh->refs, 1u);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        tkv_kv_layer *L = &c->layers[l];
        const uint32_t m = tkv_kv_share_end(c, L), R = L->seg_rows;
        sh->bytes += (size_t)m * tkv_kv_seg_bytes(c, l) / R;
        if (m <= L->n_shared) {
            continue;
        }
        if (L->tail) { /* the old tail's positions into the own segment of its index */
            const uint32_t k = L->n_shared / R;
            tkv_kv_copy_rows(c, l, L->seg[k], L->tail, 0, L->n_shared % R);
            tkv_kv_seg_unref(L->tail);
            L->tail = NULL;
        }
        if (m % R) {
            const uint32_t k = m / R, end = L->n_comp < (k + 1) * R ? L->n_comp : (k + 1) * R;
            L->tail = L->seg[k];
            L->seg[k] = fresh[l];
            if (fresh[l]) {
                tkv_kv_copy_rows(c, l, fresh[l], L->tail, m % R, end - k * R);
            }
        }
        L->n_shared = m;
    }
    free(fresh);
    tkv_kv_shared_unref(c->shared);
    c->shared = sh;
    return TKV_OK;
}

/* dst's calibration: a copy of src's (levers, blocks set, statistics). */
static tkv_status tkv_kv_copy_calib(const tkv_calib *src, tkv_calib *dst) {
    const size_t bf = (size_t)src->n_head_kv * src->head_dim;
    dst->p = src->p;
    for (uint32_t l = 0; l < src->n_layer; l++) {
        const tkv_calib_layer *a = &src->layers[l];
        tkv_calib_layer *b = &dst->layers[l];
        if (a->n_alloc > 0) {
            TKV_TRY(tkv_calib_reserve(dst, l, a->n_alloc));
        }
        if (a->mu && b->mu) {
            memcpy(b->mu, a->mu, (size_t)a->n_alloc * bf * sizeof *a->mu);
        }
        if (a->scale && b->scale) {
            memcpy(b->scale, a->scale, (size_t)a->n_alloc * bf * sizeof *a->scale);
        }
        if (a->stats && b->stats) {
            memcpy(b->stats, a->stats, 3 * bf * sizeof *a->stats);
        }
        b->n_set = a->n_set;
        b->stat_block = a->stat_block;
        b->stat_n = a->stat_n;
    }
    return TKV_OK;
}

tkv_status tkv_kv_fork(tkv_kv_cache *src, tkv_kv_cache *dst) {
    TKV_TRY(tkv_kv_share(src));
    if (src->allocated && !src->shared) {
        /* too few positions to share yet: an empty prefix still marks the two as forks */
        struct tkv_kv_shared *sh = calloc(1, sizeof *sh);
        TKV_REQUIRE(sh, TKV_ERR_OUT_OF_MEMORY, "cache fork: out of memory");
        atomic_init(&sh->refs, 1u);
        src->shared = sh;
    }
    TKV_TRY(tkv_kv_init(dst, src->n_layer, src->n_head_kv, src->head_dim, src->capacity,
                        TKV_CODEC_FP32, TKV_CODEC_FP32, src->window, src->seed));
    dst->n_sink = src->n_sink;
    dst->arena.huge = src->arena.huge;
    for (uint32_t l = 0; l < src->n_layer; l++) {
        tkv_kv_layer *L = &dst->layers[l];
        *L = src->layers[l];
        L->n_seg = 0; /* its segments: the prefix's shared below, its own copied */
        L->seg = NULL;
        L->tail = NULL;
    }
    tkv_status st = tkv_kv_copy_calib(&src->calib, &dst->calib);
    if (st != TKV_OK || !src->allocated) {
        if (st != TKV_OK) {
            tkv_kv_release(dst);
        }
        return st; /* without a write yet: a fresh cache with the same settings */
    }
    const uint32_t d = src->head_dim;
    st = tkv_kv_allocate(dst);
    for (uint32_t l = 0; st == TKV_OK && l < src->n_layer; l++) {
        const tkv_kv_layer *L = &src->layers[l];
        tkv_kv_layer *D = &dst->layers[l];
        const uint32_t R = L->seg_rows, ks = L->n_shared / R;
        st = tkv_kv_seg_table(dst, l, ks + 1);
        for (uint32_t k = 0; st == TKV_OK && k < ks; k++) { /* the shared prefix */
            tkv_kv_seg_ref(L->seg[k]);
            D->seg[k] = L->seg[k];
        }
        if (st == TKV_OK && L->tail) {
            tkv_kv_seg_ref(L->tail);
            D->tail = L->tail;
        }
        if (st == TKV_OK && L->n_comp > L->n_shared) { /* the codes past it: copied */
            st = tkv_kv_grow(dst, l, L->n_comp);
        }
        /* rows of positions [n_shared, n_comp), a ring's rows in use */
        const uint32_t r1 = L->ring ? (L->n_comp < L->ring ? L->n_comp : L->ring) : L->n_comp;
        for (uint32_t r = L->ring ? 0 : L->n_shared; st == TKV_OK && r < r1;) {
            const uint32_t k = r / R, end = r1 < (k + 1) * R ? r1 : (k + 1) * R;
            tkv_kv_copy_rows(src, l, D->seg[k], L->seg[k], r % R, end - k * R);
            r = end;
        }
        for (uint32_t h = 0; st == TKV_OK && h < src->n_head_kv; h++) {
            const size_t i = (size_t)l * src->n_head_kv + h;
            const tkv_kv_head *a = &src->heads[i];
            tkv_kv_head *b = &dst->heads[i];
            const size_t ns = (size_t)src->n_sink * d, nw = (size_t)src->window * d;
            if (ns) {
                memcpy(b->k_sink, a->k_sink, ns * sizeof(float));
                memcpy(b->v_sink, a->v_sink, ns * sizeof(float));
            }
            if (nw) {
                memcpy(b->k_window, a->k_window, nw * sizeof(uint16_t));
                memcpy(b->v_window, a->v_window, nw * sizeof(uint16_t));
            }
        }
    }
    if (st != TKV_OK) {
        tkv_kv_release(dst);
        return st;
    }
    if (src->shared) {
        atomic_fetch_add(&src->shared->refs, 1u);
        dst->shared = src->shared;
    }
    return TKV_OK;
}

tkv_status tkv_kv_reserve(tkv_kv_cache *c, uint32_t layer, uint32_t positions) {
    if (!c->allocated) {
        TKV_TRY(tkv_kv_allocate(c));
    }
    return tkv_kv_grow(c, layer, positions);
}

size_t tkv_kv_bytes_allocated(const tkv_kv_cache *c) {
    size_t total = 0;
    const size_t window_bytes = (size_t)c->window * c->n_head_kv * c->head_dim * 2 * sizeof(uint16_t);
    const size_t sink_bytes = (size_t)c->n_sink * c->n_head_kv * c->head_dim * 2 * sizeof(float);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const tkv_kv_layer *L = &c->layers[l];
        for (uint32_t k = L->n_seg ? L->n_shared / L->seg_rows : 0; k < L->n_seg; k++) {
            total += L->seg[k] ? tkv_kv_seg_bytes(c, l) : 0; /* own segments */
        }
        total += c->allocated ? window_bytes + sink_bytes : 0;
    }
    return total + c->arena.slack + tkv_calib_bytes_allocated(&c->calib);
}
