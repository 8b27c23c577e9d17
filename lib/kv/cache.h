/*
 * cache.h - the KV cache: for every (layer, KV head) the keys and values of the
 * positions seen so far, compressed with that layer's K and V codecs, plus optional
 * exact sink positions (fp32) and a window of the most recent positions kept in fp16
 * (not yet compressed).  Keys are stored in the space of their calibration block
 * (kv/calib.h), which the cache owns and lib/attn reads through the runs below.
 */
#ifndef TKV_KV_CACHE_H
#define TKV_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "codec/codec.h"
#include "kv/calib.h"
#include "kv/segment.h"
#include "turbokv.h"

/* Code rows are stored in segments of this many positions per layer (kv/segment.h), the
 * grid of forward.c's attention chunks: a run of codes ends at a segment end, where a
 * chunk ends anyway, so segments change no sum's order. */
#define TKV_KV_SEG_ROWS 1024
#define TKV_KV_MAX_SINK 64     /* sink positions, 0..64 (checked by lib/api) */
#define TKV_DEFAULT_SINK_TOKENS 1

/* Scratch floats of tkv_kv_append, carved as tkv_kv_scratch. */
#define TKV_KV_SCRATCH_FLOATS(d) (TKV_CODEC_SCRATCH_FLOATS(d) + 2 * (size_t)(d))

typedef struct tkv_kv_head {
    struct tkv_codec k_codec; /* seeded per (layer, head) */
    struct tkv_codec v_codec;
    float *k_sink;            /* (n_sink, d) fp32: the first positions, never compressed */
    float *v_sink;            /* (n_sink, d) */
    uint16_t *k_window;       /* (window, d) fp16 ring: position p in slot p % window */
    uint16_t *v_window;       /* (window, d) fp16 ring */
} tkv_kv_head;

typedef struct tkv_kv_layer {
    int32_t k_codec_id;
    int32_t v_codec_id;
    uint32_t n;          /* positions stored in this layer */
    uint32_t n_comp;     /* positions [0, n_comp) are sinks or compressed, [n_comp, n) in the
                            window; codes are indexed by position (sink slots unused) */
    uint32_t n_shared;   /* codes of positions [0, n_shared) belong to the cache's shared prefix
                            (forks read them, nobody writes them); the layer's own segments
                            hold positions [n_shared, n_comp) */
    uint32_t span;       /* sliding-window layer: positions a query attends to, its own
                            included (0: every position) */
    uint32_t ring;       /* code rows kept: position p in row p % ring, older positions are
                            overwritten (0: no ring; a ring layer never shares its codes) */
    uint32_t n_lost;     /* ring layers: code positions [0, n_lost) were overwritten (the
                            ring holds [max(n_sink, n_lost), n_comp)) */
    /* Code rows: row r of the layer (position r, a ring's position p at r = p % ring) is
     * row r % seg_rows of segment r / seg_rows, which holds per KV head h, at h * (K + V
     * rows), seg_rows K rows then seg_rows V rows (sink rows unused).  seg_rows is
     * TKV_KV_SEG_ROWS (the capacity when smaller); a ring is one segment of its rows. */
    uint32_t seg_rows;
    uint32_t n_seg;   /* entries of seg */
    tkv_kv_seg **seg; /* (n_seg) entries below n_shared / seg_rows are the shared
                         prefix's, the others the layer's own (NULL: none yet) */
    tkv_kv_seg *tail; /* the shared prefix's last segment when n_shared is no multiple
                         of seg_rows: positions [n_shared / seg_rows * seg_rows,
                         n_shared) (the own segment of that index holds the rest) */
} tkv_kv_layer;

typedef struct tkv_kv_cache {
    uint32_t n_layer;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint32_t capacity;   /* max positions */
    uint32_t window;     /* fp16 window length, 0 = off */
    uint32_t n_sink;     /* first positions kept exact in fp32 (attention sinks), 0 = off */
    uint64_t seed;
    int allocated;       /* codecs built (happens at first write, after overrides) */
    tkv_calib calib;     /* key centering and smoothing per calibration block */
    tkv_code_layout sink_layout;   /* fp32 rows of head_dim */
    tkv_code_layout window_layout; /* fp16 rows of head_dim */
    tkv_kv_layer *layers; /* (n_layer) */
    tkv_kv_head *heads;   /* (n_layer, n_head_kv) */
    struct tkv_kv_shared *shared; /* compressed prefix shared with forks, NULL when none */
    tkv_kv_arena arena;           /* where the segments come from */
} tkv_kv_cache;

/* A cache of n_layer x n_head_kv heads of head_dim, up to capacity positions, K and V
 * codecs of every layer, an fp16 window of `window` positions (0 = off, <= capacity),
 * codec seeds derived from seed.  No sinks, no calibration until tkv_kv_set_levers. */
tkv_status tkv_kv_init(tkv_kv_cache *c, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                       uint32_t capacity, int32_t k_codec, int32_t v_codec, uint32_t window,
                       uint64_t seed);
void tkv_kv_release(tkv_kv_cache *c);
/*
 * Attention sinks and key calibration, before the first write only
 * (TKV_ERR_INVALID_ARGUMENT after); the caller has checked the ranges (lib/api).
 * The first n_sink positions (0..TKV_KV_MAX_SINK) are kept exact: fp32 K and V, keys
 * in block 0's calibrated space.  They draw a large share of the softmax weight in most
 * heads, so their coding error would move every query's output.  calib: the levers of
 * kv/calib.h (its n_sink is taken from here).
 */
tkv_status tkv_kv_set_levers(tkv_kv_cache *c, uint32_t n_sink, const tkv_calib_params *calib);
/*
 * Sliding-window layer: attention reads only the last `span` positions (the query's own
 * included) and at most `batch` positions are appended before attention reads them
 * (tkv_kv_append_limit), so the layer keeps span - 1 + batch code rows in a ring and its
 * memory grows with the window, not the context.  Positions that left the ring are gone:
 * truncation cannot go below tkv_kv_truncate_floor.  Before the first write; no ring when it
 * would not be smaller than the capacity (span is kept either way).
 */
#define TKV_KV_SLIDING_BATCH 256 /* positions appended before attention reads them */
tkv_status tkv_kv_set_layer_span(tkv_kv_cache *c, uint32_t layer, uint32_t span, uint32_t batch);
/* Positions of `layer` that may be appended (tkv_kv_append_batch, or as many
 * tkv_kv_append calls) before attention reads them: UINT32_MAX when the layer keeps every
 * position. */
uint32_t tkv_kv_append_limit(const tkv_kv_cache *c, uint32_t layer);
/* The smallest n > 0 that tkv_kv_truncate may cut to: below it a ring layer no longer
 * holds the window of position n (0 while no ring has overwritten a code position). */
uint32_t tkv_kv_truncate_floor(const tkv_kv_cache *c);
/* Change one layer's codecs; only before the first write. */
tkv_status tkv_kv_set_layer_codecs(tkv_kv_cache *c, uint32_t layer, int32_t k_codec,
                                   int32_t v_codec);

/* 1 when keys are stored centered or smoothed (scores need the block calibration). */
static inline int tkv_kv_has_calibration(const tkv_kv_cache *c) {
    return tkv_calib_active(&c->calib);
}
/* 1 when keys are stored centered (blocks past 0 need <q, mu_b - mu_0> added). */
static inline int tkv_kv_keys_centered(const tkv_kv_cache *c) {
    return c->calib.p.center_keys;
}
/* The calibration block of position pos. */
static inline uint32_t tkv_kv_calib_block_of(const tkv_kv_cache *c, uint32_t pos) {
    return tkv_calib_block_of(&c->calib, pos);
}
/* Observe a batch of one layer before it is appended (tkv_calib_observe): q is (n_tok,
 * n_head * head_dim), k (n_tok, n_head_kv * head_dim).  Sinks stored by earlier batches
 * move into block 0's space when it is set.  No-op without calibration. */
tkv_status tkv_kv_calibrate(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, const float *q,
                            uint32_t n_head, const float *k, uint32_t n_tok);
/* mu and s of calibration block `block` of (layer, head), as floats (tkv_calib_block):
 * stored keys of the block are (k - mu) / s.  The block must hold a stored position. */
void tkv_kv_block_calibration(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t block,
                              float *mu, float *s);
/* Append position `pos` (must equal the layer's n) of one layer: k and v are
 * (n_head_kv, head_dim).  scratch: TKV_KV_SCRATCH_FLOATS(head_dim) floats.
 * TKV_ERR_INVALID_ARGUMENT when a value does not fit the fp16 window or a codec refuses
 * one; what the layer stores is then unchanged. */
tkv_status tkv_kv_append(tkv_kv_cache *c, uint32_t layer, uint32_t pos, const float *k,
                         const float *v, float *scratch);
/* Append positions pos0 .. pos0 + n - 1 of one layer (k and v: (n, n_head_kv, head_dim)),
 * n <= tkv_kv_append_limit,
 * the same as n calls of tkv_kv_append -- the same bytes, the same error and the positions
 * before it kept (except out of memory, checked for the whole batch first) -- with the
 * encodes spread over pool (NULL: this thread).  With an fp16 window, or a pool of more
 * than TKV_KV_MAX_PARTS threads, it is those n calls on this thread.  scratch:
 * TKV_KV_SCRATCH_FLOATS(head_dim) floats per pool thread. */
#define TKV_KV_MAX_PARTS 64
struct tkv_pool;
tkv_status tkv_kv_append_batch(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, uint32_t n,
                               const float *k, const float *v, struct tkv_pool *pool,
                               float *scratch);
/* Build the codecs, sinks and window (when not yet built) and make room for `positions`
 * positions of codes in one layer, storing nothing: for the file reader, which then fills
 * the rows through tkv_kv_code_run_mut (the calibration's room: tkv_calib_reserve). */
tkv_status tkv_kv_reserve(tkv_kv_cache *c, uint32_t layer, uint32_t positions);
/* Codes of compressed position pos of (layer, head), K (kind 0) or V (kind 1), and in *run
 * how many positions from pos up to end (<= the layer's n_comp) follow contiguously: to the
 * end of pos's segment (TKV_KV_SEG_ROWS positions from a multiple of it), of a fork's
 * shared prefix, of a ring's rows (where it wraps).  A ring layer holds positions from
 * max(n_sink, n_lost) only. */
const uint8_t *tkv_kv_code_run(const tkv_kv_cache *c, uint32_t layer, uint32_t head, int kind,
                               uint32_t pos, uint32_t end, uint32_t *run);
/* The same rows to write, for positions pos >= n_shared that tkv_kv_reserve made room for. */
uint8_t *tkv_kv_code_run_mut(tkv_kv_cache *c, uint32_t layer, uint32_t head, int kind, uint32_t pos,
                             uint32_t end, uint32_t *run);
/*
 * Fork: *dst becomes a cache holding what src holds, sharing src's compressed positions
 * instead of copying them (src's own codes move into a reference-counted prefix both read,
 * ending a multiple of TKV_KV_SHARE_ALIGN positions after the sinks; sinks, window,
 * calibration and the few codes past the prefix are copied).  Ring layers are copied
 * whole: their rows are overwritten as positions are appended, so they cannot be shared.
 * Each then appends its own positions; a truncation into the prefix only shortens what a
 * cache reads of it.  The prefix is freed with the last cache that reads it.
 */
tkv_status tkv_kv_fork(tkv_kv_cache *src, tkv_kv_cache *dst);
/* 1 when both caches read the same shared prefix (one was forked from the other). */
int tkv_kv_shares_prefix(const tkv_kv_cache *a, const tkv_kv_cache *b);
/* Bytes of the shared prefix this cache reads (0 without one), once however many forks. */
size_t tkv_kv_bytes_shared(const tkv_kv_cache *c);
/* Drop every position >= n (all layers), with the calibration rules of tkv_calib_truncate;
 * n = 0 or n >= tkv_kv_truncate_floor (the caller checks). */
void tkv_kv_truncate(tkv_kv_cache *c, uint32_t n);
uint32_t tkv_kv_n_tokens(const tkv_kv_cache *c);

/*
 * Read side: the stored positions of (layer, head) as runs, each a stretch of positions
 * with one storage kind whose rows are contiguous in memory.  Walk [t0, t1) (t1 <= the
 * layer's n) with
 *     for (uint32_t t = t0; t < t1; t += run.n) { tkv_kv_key_run(c, l, h, t, t1, &run); ... }
 * Key runs also end at calibration block boundaries (values are not calibrated, so
 * value runs do not): every key of a run is stored as (k - mu_b) / s_b of run.block.
 * Sink and window rows are unrotated (fp32 / fp16 kernels); code rows go through
 * run.codec (rotated query, finished accumulation).
 */
typedef enum tkv_kv_store {
    TKV_KV_STORE_SINK,   /* fp32 rows, exact */
    TKV_KV_STORE_CODES,  /* rows coded by run.codec */
    TKV_KV_STORE_WINDOW, /* fp16 rows of the recent-positions window */
} tkv_kv_store;

typedef struct tkv_kv_run {
    tkv_kv_store store;
    uint32_t t0;                   /* first position */
    uint32_t n;                    /* positions, >= 1 */
    uint32_t block;                /* key runs: calibration block of every position; 0 for
                                      value runs and without calibration */
    const uint8_t *rows;           /* n rows of layout->stride bytes, position t0 first */
    const tkv_code_layout *layout; /* the rows' format */
    const struct tkv_codec *codec; /* TKV_KV_STORE_CODES: the codec; NULL otherwise */
} tkv_kv_run;

void tkv_kv_key_run(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t t, uint32_t t1,
                    tkv_kv_run *run);
void tkv_kv_value_run(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t t, uint32_t t1,
                      tkv_kv_run *run);

/* Bytes the stored positions take (codes -- of a ring layer those it still holds --,
 * sinks, window entries in use and the calibration blocks set). */
size_t tkv_kv_bytes_used(const tkv_kv_cache *c);
/* Bytes one more compressed position costs over all layers and heads. */
size_t tkv_kv_bytes_per_token(const tkv_kv_cache *c);
/* Bytes allocated: the cache's own code segments (a shared prefix's are
 * tkv_kv_bytes_shared), the part of its huge-page slabs no segment took (committed with the
 * page), sinks, windows and the calibration's blocks and statistics. */
size_t tkv_kv_bytes_allocated(const tkv_kv_cache *c);
/* Seed of the K (kind 0) or V (kind 1) codec of (layer, head). */
uint64_t tkv_kv_codec_seed(uint64_t seed, uint32_t layer, uint32_t head, int kind);

#endif
