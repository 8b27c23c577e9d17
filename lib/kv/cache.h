/*
 * cache.h - the KV cache: for every (layer, KV head) the keys and values of the
 * positions seen so far, compressed with that layer's K and V codecs, plus an
 * optional window of the most recent positions kept in fp16 (not yet compressed).
 */
#ifndef TKV_KV_CACHE_H
#define TKV_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "codec/codec.h"
#include "turbokv.h"

#define TKV_KV_GROW_TOKENS 256 /* storage grows in blocks of this many positions */
#define TKV_KV_SCRATCH_FLOATS(d) (TKV_CODEC_SCRATCH_FLOATS(d) + 2 * (size_t)(d))

typedef struct tkv_kv_head {
    struct tkv_codec k_codec; /* seeded per (layer, head) */
    struct tkv_codec v_codec;
    uint8_t *k_codes;         /* (n_alloc, k_codec.layout.stride) positions [0, n_comp) */
    uint8_t *v_codes;         /* (n_alloc, v_codec.layout.stride) */
    float *k_sink;            /* (n_sink, d) fp32: the first positions, never compressed */
    float *v_sink;            /* (n_sink, d) */
    uint16_t *k_window;       /* (window, d) fp16 ring: position p in slot p % window */
    uint16_t *v_window;       /* (window, d) fp16 ring */
    uint16_t *k_mu;           /* (n_calib_alloc, d) fp16 key offset of each calibration block */
    uint16_t *k_scale;        /* (n_calib_alloc, d) fp16 key scales of each calibration block */
    double *stats;            /* (3, d) sums of k, k^2 and the group's q^2 over the positions of
                                 the block being filled (the next block calibrates from them) */
} tkv_kv_head;

typedef struct tkv_kv_layer {
    int32_t k_codec_id;
    int32_t v_codec_id;
    uint32_t n;          /* positions stored in this layer */
    uint32_t n_comp;     /* positions [0, n_comp) are sinks or compressed, [n_comp, n) in the
                            window; codes are indexed by position (sink slots unused) */
    uint32_t n_alloc;    /* positions the code arrays can hold */
    uint32_t n_calib;    /* calibration blocks [0, n_calib) are set */
    uint32_t n_calib_alloc; /* blocks k_mu / k_scale can hold */
    uint32_t stat_block;    /* the block whose positions the heads' stats sum */
    uint32_t stat_n;        /* positions summed into the stats */
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
    int center_keys;     /* subtract a fixed per-(layer, head) vector from keys */
    int smooth_keys;     /* divide keys (and multiply queries) by per-channel scales */
    float smooth_alpha;  /* exponent of the smoothing scales (see tkv_kv_enable_key_smoothing) */
    uint32_t calib_block; /* positions per calibration block; TKV_CALIBRATION_ONCE = one block */
    tkv_kv_layer *layers; /* (n_layer) */
    tkv_kv_head *heads;   /* (n_layer, n_head_kv) */
} tkv_kv_cache;

tkv_status tkv_kv_init(tkv_kv_cache *c, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                       uint32_t capacity, int32_t k_codec, int32_t v_codec, uint32_t window,
                       uint64_t seed);
/*
 * Attention sinks: the first positions of a sequence draw a large share of the softmax
 * weight in most heads of most models, so their coding error moves every query's
 * output; keeping the first n_sink positions exact (fp32 K and V, after centering and
 * smoothing) removes it for n_sink * 2 * head_dim * 4 bytes per head.  Before the first
 * write only.
 */
#define TKV_KV_MAX_SINK 64
#define TKV_DEFAULT_SINK_TOKENS 1 /* tkv_cache_default_params() */
tkv_status tkv_kv_set_sink_tokens(tkv_kv_cache *c, uint32_t n_sink);
void tkv_kv_release(tkv_kv_cache *c);
/*
 * Key centering: softmax ignores a constant added to every score of a query, and
 * <q, k - mu> = <q, k> - <q, mu> shifts every score of q by the same amount.  So a
 * vector mu per (layer, head) can be subtracted from every key before it is stored
 * (codes, sinks and fp16 window alike) without changing attention in exact arithmetic,
 * while the codec no longer spends its bits on the keys' shared offset.
 */
tkv_status tkv_kv_enable_key_centering(tkv_kv_cache *c);
/*
 * Key smoothing: <q, k> = <q * s, k / s> for any per-channel scales s > 0, so keys can
 * be stored divided by s and queries multiplied by s without changing any score in
 * exact arithmetic.  The codec's error is about isotropic in the space it codes, and
 * the score error then grows with |q * s| |k / s|; channels where keys are large and
 * queries small (common after RoPE) waste bits.  s_j = (rms k_j / rms q_j)^alpha (keys
 * centered first when centering is on, queries of the whole GQA group), normalized to
 * geometric mean 1; alpha = 0.5 balances the two, which minimizes |q * s| |k / s| for
 * channel-independent statistics; a smaller alpha (default 0.35) does better on later
 * positions (measured: KL to fp32 KV 0.0212 vs 0.0216 at 4 bits, 0.0731 vs 0.0751 at 3
 * bits, SmolLM2-135M).  Fewer than TKV_KV_SMOOTH_MIN_TOKENS samples leave s = 1.
 */
#define TKV_KV_SMOOTH_MIN_TOKENS 8
#define TKV_DEFAULT_KEY_SMOOTHING 0.35f /* alpha when the caller leaves it 0 (measured best) */
tkv_status tkv_kv_enable_key_smoothing(tkv_kv_cache *c, float alpha);
/*
 * Calibration blocks.  RoPE turns every channel pair of a key by an angle that grows
 * with the position, so the keys' offset and per-channel spread drift along the
 * sequence: statistics of the first batch stop fitting a few hundred positions later
 * (measured on SmolLM2-135M at 4096 tokens: smoothing from the first 512 keys raised
 * the late attention error above no smoothing at all).  So mu and s are set per block
 * of `calib_block` positions: block 0 from the first batch that reaches past the sinks,
 * block b > 0 from the keys and queries of block b - 1 (it is complete when block b
 * starts, in prefill and decode alike).  Each block's mu and s are stored (fp16, 4 *
 * head_dim bytes per block and head with both levers on) and attention scores block b
 * with q * s_b plus the constant <q, mu_b - mu_0>, so the scores stay exact across
 * blocks.  TKV_CALIBRATION_ONCE keeps one block for the whole sequence.  Before the
 * first write only; calib_block >= TKV_KV_MIN_CALIB_BLOCK so the sinks sit in block 0.
 */
#define TKV_DEFAULT_CALIB_BLOCK 256
#define TKV_KV_MIN_CALIB_BLOCK 64
tkv_status tkv_kv_set_calibration_block(tkv_kv_cache *c, uint32_t calib_block);
/* The calibration block of position pos. */
static inline uint32_t tkv_kv_calib_block_of(const tkv_kv_cache *c, uint32_t pos) {
    return c->calib_block == TKV_CALIBRATION_ONCE ? 0 : pos / c->calib_block;
}
/* Set the calibration of every block the batch (positions pos0.., n_tok of them) starts
 * and sum its keys and queries into the statistics the next block calibrates from;
 * before the batch is appended.  q is (n_tok, n_head * head_dim), k is (n_tok,
 * n_head_kv * head_dim), n_head a multiple of n_head_kv.  No-op when centering and
 * smoothing are off. */
tkv_status tkv_kv_calibrate(tkv_kv_cache *c, uint32_t layer, uint32_t pos0, const float *q,
                            uint32_t n_head, const float *k, uint32_t n_tok);
/* 1 when keys are stored centered or smoothed (attention needs tkv_kv_block_calibration). */
static inline int tkv_kv_has_calibration(const tkv_kv_cache *c) {
    return c->center_keys || c->smooth_keys;
}
/* mu (zeros when centering is off) and s (ones when smoothing is off) of calibration
 * block `block` of (layer, head), which must be set (block < the layer's n_calib or
 * block 0), as floats: stored keys of the block are (k - mu) / s. */
void tkv_kv_block_calibration(const tkv_kv_cache *c, uint32_t layer, uint32_t head, uint32_t block,
                              float *mu, float *s);
/* Change one layer's codecs; only before the first write. */
tkv_status tkv_kv_set_layer_codecs(tkv_kv_cache *c, uint32_t layer, int32_t k_codec,
                                   int32_t v_codec);
/* Append position `pos` (must equal the layer's n) of one layer: k and v are
 * (n_head_kv, head_dim).  scratch: TKV_KV_SCRATCH_FLOATS(head_dim) floats.
 * TKV_ERR_INVALID_ARGUMENT when a value does not fit the fp16 window or a codec refuses
 * one; what the layer stores is then unchanged. */
tkv_status tkv_kv_append(tkv_kv_cache *c, uint32_t layer, uint32_t pos, const float *k,
                         const float *v, float *scratch);
/* Drop every position >= n (all layers). */
void tkv_kv_truncate(tkv_kv_cache *c, uint32_t n);
uint32_t tkv_kv_n_tokens(const tkv_kv_cache *c);
/* Bytes the stored positions take (codes, sinks, window entries in use and the
 * calibration blocks set). */
size_t tkv_kv_bytes_used(const tkv_kv_cache *c);
/* Bytes one more compressed position costs over all layers and heads. */
size_t tkv_kv_bytes_per_token(const tkv_kv_cache *c);
/* Bytes allocated (code arrays' capacity + windows). */
size_t tkv_kv_bytes_allocated(const tkv_kv_cache *c);
/* Seed of the K (kind 0) or V (kind 1) codec of (layer, head). */
uint64_t tkv_kv_codec_seed(uint64_t seed, uint32_t layer, uint32_t head, int kind);

#endif
