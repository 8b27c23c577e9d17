/*
 * cache.c - compressed KV storage per (layer, KV head), grown in blocks.
 *
 * Position p of a layer is encoded when it leaves the fp16 window (at once when the
 * window is 0).  Code arrays grow by TKV_KV_GROW_TOKENS positions with realloc, so a
 * 32K-token capacity reserves nothing up front.  Codec seeds are derived from the
 * cache seed per (layer, head, K/V) with SplitMix64, so a cache's bytes can be decoded
 * by any process that knows the seed.  Keys are stored in their calibration block's
 * space (kv/calib.c owns the offsets and scales); sinks, codes and window all hold
 * calibrated keys.  A sliding-window layer's codes are a ring (tkv_kv_set_layer_span):
 * position p in row p % ring, every writer and reader going through tkv_kv_row, runs of
 * codes ending where the ring wraps.
 */
#include "kv/cache.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

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

/* The compressed prefix forks share: per (layer, head) the K and V codes of positions
 * [0, n) of that layer (sink slots unused), immutable while shared. */
struct tkv_kv_shared {
    atomic_uint refs;     /* caches reading it */
    size_t n_arrays;      /* n_layer * n_head_kv */
    uint8_t **codes[2];   /* (n_arrays) K, V arrays indexed by position */
    size_t bytes;
};

static void tkv_kv_shared_unref(struct tkv_kv_shared *sh) {
    if (!sh || atomic_fetch_sub(&sh->refs, 1u) != 1u) {
        return;
    }
    for (int kind = 0; kind < 2; kind++) {
        for (size_t i = 0; sh->codes[kind] && i < sh->n_arrays; i++) {
            free(sh->codes[kind][i]);
        }
        free(sh->codes[kind]);
    }
    free(sh);
}

/* The row of the layer's own code arrays that holds compressed position pos. */
static size_t tkv_kv_row(const tkv_kv_layer *L, uint32_t pos) {
    return L->ring ? pos % L->ring : pos - L->n_shared;
}

/* Rows of the layer's own code arrays in use. */
static uint32_t tkv_kv_own_rows(const tkv_kv_layer *L) {
    if (L->ring) {
        return L->n_comp < L->ring ? L->n_comp : L->ring;
    }
    return L->n_comp - L->n_shared;
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
    const tkv_kv_layer *L = &c->layers[layer];
    const size_t i = (size_t)layer * c->n_head_kv + head;
    const tkv_kv_head *hd = &c->heads[i];
    const size_t stride = kind ? hd->v_codec.layout.stride : hd->k_codec.layout.stride;
    const uint8_t *own = kind ? hd->v_codes : hd->k_codes;
    if (L->ring) { /* contiguous up to the ring's last row */
        const uint32_t row = pos % L->ring;
        *run = end - pos < L->ring - row ? end - pos : L->ring - row;
        return own + (size_t)row * stride;
    }
    if (pos < L->n_shared) {
        *run = (end < L->n_shared ? end : L->n_shared) - pos;
        return c->shared->codes[kind][i] + (size_t)pos * stride;
    }
    *run = end - pos;
    return own + (size_t)(pos - L->n_shared) * stride;
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
            free(h->k_codes);
            free(h->v_codes);
            free(h->k_sink);
            free(h->v_sink);
            free(h->k_window);
            free(h->v_window);
        }
    }
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
    c->allocated = 1;
    return TKV_OK;
}

/* Room in the layer's own code arrays for compressed positions up to `need` (those
 * before n_shared live in the shared prefix; a ring layer needs at most its ring). */
static tkv_status tkv_kv_grow(tkv_kv_cache *c, uint32_t layer, uint32_t need) {
    tkv_kv_layer *L = &c->layers[layer];
    need = need > L->n_shared ? need - L->n_shared : 0;
    const uint32_t rows = L->ring ? L->ring : c->capacity;
    need = need < rows ? need : rows;
    if (need <= L->n_alloc) {
        return TKV_OK;
    }
    uint32_t n_alloc = (need + TKV_KV_GROW_TOKENS - 1) / TKV_KV_GROW_TOKENS * TKV_KV_GROW_TOKENS;
    if (n_alloc > rows) {
        n_alloc = rows;
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
        const size_t slot = (size_t)(old % c->window) * d, row = tkv_kv_row(L, old);
        tkv_kv_ring_writes(L, old + 1);
        tkv_fp16_to_f32_row(hd->k_window + slot, d, sc.row);
        TKV_TRY(tkv_codec_encode_one(&hd->k_codec, sc.row,
                                     hd->k_codes + row * hd->k_codec.layout.stride, sc.codec));
        tkv_fp16_to_f32_row(hd->v_window + slot, d, sc.row);
        TKV_TRY(tkv_codec_encode_one(&hd->v_codec, sc.row,
                                     hd->v_codes + row * hd->v_codec.layout.stride, sc.codec));
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
            const size_t row = tkv_kv_row(L, pos);
            tkv_kv_ring_writes(L, pos + 1);
            TKV_TRY(tkv_codec_encode_one(&hd->k_codec, kh,
                                         hd->k_codes + row * hd->k_codec.layout.stride, sc.codec));
            TKV_TRY(tkv_codec_encode_one(&hd->v_codec, vh,
                                         hd->v_codes + row * hd->v_codec.layout.stride, sc.codec));
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
    const tkv_kv_layer *L = &c->layers[layer];
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
    const size_t row = tkv_kv_row(L, pos);
    TKV_TRY(tkv_codec_encode_one(&hd->k_codec, kh, hd->k_codes + row * hd->k_codec.layout.stride,
                                 sc.codec));
    return tkv_codec_encode_one(&hd->v_codec, vh, hd->v_codes + row * hd->v_codec.layout.stride,
                                sc.codec);
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

/* Truncation to n inside the shared prefix of a layer: the prefix is read up to the
 * aligned boundary at or below n (tkv_kv_share_end), and positions from there to n are
 * copied into the own arrays, whose positions were all at or past the old prefix end and
 * are dropped; so a truncated fork still sums its values in the unforked order.  Without
 * memory for the copy the prefix is read up to n (still right, maybe not the same bits). */
static void tkv_kv_unshare_tail(tkv_kv_cache *c, uint32_t layer, uint32_t n) {
    tkv_kv_layer *L = &c->layers[layer];
    const uint32_t s0 = n < c->n_sink ? n : c->n_sink;
    const uint32_t a = s0 + (n - s0) / TKV_KV_SHARE_ALIGN * TKV_KV_SHARE_ALIGN;
    L->n_shared = a;
    if (a < n && tkv_kv_grow(c, layer, n) != TKV_OK) {
        L->n_shared = n;
        return;
    }
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        const size_t i = (size_t)layer * c->n_head_kv + h;
        tkv_kv_head *hd = &c->heads[i];
        for (int kind = 0; a < n && kind < 2; kind++) {
            const size_t stride = kind ? hd->v_codec.layout.stride : hd->k_codec.layout.stride;
            memcpy(kind ? hd->v_codes : hd->k_codes, c->shared->codes[kind][i] + (size_t)a * stride,
                   (size_t)(n - a) * stride);
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

static uint32_t tkv_kv_round_grow(uint32_t n) {
    return (n + TKV_KV_GROW_TOKENS - 1) / TKV_KV_GROW_TOKENS * TKV_KV_GROW_TOKENS;
}

/* Move c's compressed positions up to tkv_kv_share_end into one shared prefix.  A layer
 * without a prefix hands its own arrays over (no copy) and gets new ones for the
 * positions past the prefix; a layer with one gets the old prefix and its own codes up to
 * the end copied into a new one, and its remaining own codes moved to the front. */
static tkv_status tkv_kv_share(tkv_kv_cache *c) {
    int needed = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        needed |= tkv_kv_share_end(c, &c->layers[l]) > c->layers[l].n_shared;
    }
    if (!c->allocated || !needed) {
        return TKV_OK;
    }
    const size_t n_arrays = (size_t)c->n_layer * c->n_head_kv;
    struct tkv_kv_shared *sh = calloc(1, sizeof *sh);
    uint8_t **fresh = calloc(2 * n_arrays, sizeof *fresh); /* new own arrays (K, V) */
    if (sh) {
        sh->n_arrays = n_arrays;
        sh->codes[0] = calloc(n_arrays, sizeof *sh->codes[0]);
        sh->codes[1] = calloc(n_arrays, sizeof *sh->codes[1]);
        atomic_init(&sh->refs, 1u);
    }
    int ok = sh && fresh && sh->codes[0] && sh->codes[1];
    /* first everything that can fail, leaving c as it was */
    for (uint32_t l = 0; ok && l < c->n_layer; l++) {
        const tkv_kv_layer *L = &c->layers[l];
        const uint32_t m = tkv_kv_share_end(c, L);
        for (uint32_t h = 0; ok && (m > L->n_shared || L->n_shared > 0) && h < c->n_head_kv; h++) {
            const size_t i = (size_t)l * c->n_head_kv + h;
            const tkv_kv_head *hd = &c->heads[i];
            for (int kind = 0; ok && kind < 2; kind++) {
                const size_t stride = kind ? hd->v_codec.layout.stride : hd->k_codec.layout.stride;
                const uint8_t *own = kind ? hd->v_codes : hd->k_codes;
                if (L->n_shared == 0) { /* own [m, n_comp) into a new own array */
                    uint8_t *o = malloc((size_t)tkv_kv_round_grow(L->n_comp - m) * stride + 1);
                    ok = o != NULL;
                    if (ok) {
                        memcpy(o, own + (size_t)m * stride, (size_t)(L->n_comp - m) * stride);
                        fresh[2 * i + kind] = o;
                    }
                    continue;
                }
                uint8_t *dst = malloc((size_t)m * stride + 1);
                ok = dst != NULL;
                if (ok) {
                    memcpy(dst, c->shared->codes[kind][i], (size_t)L->n_shared * stride);
                    memcpy(dst + (size_t)L->n_shared * stride, own,
                           (size_t)(m - L->n_shared) * stride);
                    sh->codes[kind][i] = dst;
                }
            }
        }
    }
    if (!ok) {
        for (size_t i = 0; fresh && i < 2 * n_arrays; i++) {
            free(fresh[i]);
        }
        free(fresh);
        tkv_kv_shared_unref(sh);
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "cache fork: out of memory");
    }
    for (uint32_t l = 0; l < c->n_layer; l++) {
        tkv_kv_layer *L = &c->layers[l];
        const uint32_t m = tkv_kv_share_end(c, L);
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            const size_t i = (size_t)l * c->n_head_kv + h;
            tkv_kv_head *hd = &c->heads[i];
            for (int kind = 0; kind < 2; kind++) {
                const size_t stride = kind ? hd->v_codec.layout.stride : hd->k_codec.layout.stride;
                uint8_t **own = kind ? &hd->v_codes : &hd->k_codes;
                if (m > L->n_shared && L->n_shared == 0) {
                    /* handed over, indexed by position, without its spare capacity (a
                     * failed shrink keeps the larger block) */
                    uint8_t *r = realloc(*own, (size_t)m * stride + 1);
                    sh->codes[kind][i] = r ? r : *own;
                    *own = fresh[2 * i + kind];
                } else if (m > L->n_shared) { /* copied into the new prefix above */
                    memmove(*own, *own + (size_t)(m - L->n_shared) * stride,
                            (size_t)(L->n_comp - m) * stride);
                }
                sh->bytes += (size_t)m * stride;
            }
        }
        if (m > L->n_shared && L->n_shared == 0) {
            L->n_alloc = tkv_kv_round_grow(L->n_comp - m);
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
    for (uint32_t l = 0; l < src->n_layer; l++) {
        tkv_kv_layer *L = &dst->layers[l];
        *L = src->layers[l];
        L->n_alloc = 0;
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
        if (L->n_comp > L->n_shared) { /* the codes past the shared prefix: copied */
            st = tkv_kv_grow(dst, l, L->n_comp);
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
            if (L->n_comp > L->n_shared) {
                const size_t own = tkv_kv_own_rows(L);
                memcpy(b->k_codes, a->k_codes, own * a->k_codec.layout.stride);
                memcpy(b->v_codes, a->v_codes, own * a->v_codec.layout.stride);
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
        total += (size_t)c->layers[l].n_alloc * tkv_layer_token_bytes(c, l);
        total += c->allocated ? window_bytes + sink_bytes : 0;
    }
    return total + tkv_calib_bytes_allocated(&c->calib);
}
