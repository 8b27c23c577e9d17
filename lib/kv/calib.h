/*
 * calib.h - key calibration of the KV cache: key centering and key smoothing, set per
 * calibration block of positions, for every (layer, KV head).
 *
 * Key centering: softmax ignores a constant added to every score of a query, and
 * <q, k - mu> = <q, k> - <q, mu>, so an offset mu can be subtracted from every key
 * before it is stored without changing attention in exact arithmetic, while the codec
 * stops spending bits on the keys' common offset.
 *
 * Key smoothing: <q, k> = <q * s, k / s> for any per-channel scales s > 0, so keys are
 * stored divided by s and queries multiplied by s.  The codec's error is about
 * isotropic in the space it codes and the score error grows with |q * s| |k / s|, so
 * s_j = (rms k_j / rms q_j)^alpha (keys centered first when centering is on, queries of
 * the whole GQA group), normalized to geometric mean 1, moves bits to the channels
 * that matter.  alpha = 0.5 minimizes |q * s| |k / s| for channel-independent
 * statistics; fewer than TKV_KV_SMOOTH_MIN_TOKENS samples leave s = 1.
 *
 * Calibration blocks: RoPE turns every channel pair of a key by an angle that grows
 * with the position, so the keys' offset and spread drift along the sequence.  mu and
 * s are therefore set per block of `block` positions: block 0 from the first batch
 * that reaches past the sinks (its sink positions included), block b > 0 from the keys
 * and queries of block b - 1 (complete when block b starts).  A stored key of block b
 * is (k - mu_b) / s_b; attention scores block b with q * s_b plus <q, mu_b - mu_0>, so
 * every score of a query differs from <q, k> by the same <q, mu_0>.  mu and s are kept
 * in fp16 and used as rounded, both to store keys and to score them.
 *
 * State (tkv_calib_layer) is plain arrays per layer, block-major, so a block of a layer
 * is one contiguous (n_head_kv, head_dim) slice: it can be written to a file and read
 * back as it is.
 */
#ifndef TKV_KV_CALIB_H
#define TKV_KV_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "turbokv.h"

/* Ranges and defaults of the calibration levers (checked by lib/api, nowhere else). */
#define TKV_DEFAULT_CALIB_BLOCK 256       /* positions per calibration block */
#define TKV_KV_MIN_CALIB_BLOCK 64         /* >= TKV_KV_MAX_SINK: the sinks sit in block 0 */
#define TKV_KV_MAX_CALIB_BLOCK (1u << 24) /* or TKV_CALIBRATION_ONCE: one block */
#define TKV_DEFAULT_KEY_SMOOTHING 0.35f   /* alpha when the caller leaves it 0; in (0, 1] */
#define TKV_KV_SMOOTH_MIN_TOKENS 8        /* fewer samples leave s = 1 */

/* The levers, fixed before the first write. */
typedef struct tkv_calib_params {
    int center_keys;    /* subtract mu from keys */
    int smooth_keys;    /* divide keys (multiply queries) by s */
    float smooth_alpha; /* exponent of s, in (0, 1] when smooth_keys */
    uint32_t block;     /* TKV_KV_MIN_CALIB_BLOCK..TKV_KV_MAX_CALIB_BLOCK or TKV_CALIBRATION_ONCE */
    uint32_t n_sink;    /* the cache's sink positions: block 0 waits for a batch past them */
} tkv_calib_params;

/* One layer's calibration: what a saved cache must keep to continue bit for bit. */
typedef struct tkv_calib_layer {
    uint32_t n_set;      /* blocks [0, n_set) are set */
    uint32_t n_alloc;    /* blocks mu / scale can hold (new ones: mu = 0, s = 1) */
    uint32_t stat_block; /* the block whose positions stats sum */
    uint32_t stat_n;     /* positions summed into stats */
    uint16_t *mu;        /* (n_alloc, n_head_kv, head_dim) fp16 key offsets; NULL without
                            centering */
    uint16_t *scale;     /* (n_alloc, n_head_kv, head_dim) fp16 key scales; NULL without
                            smoothing */
    double *stats;       /* (n_head_kv, 3, head_dim) sums of k, k^2 and the group's q^2 over
                            the positions of stat_block (the next block calibrates from
                            them); NULL with TKV_CALIBRATION_ONCE */
} tkv_calib_layer;

typedef struct tkv_calib {
    uint32_t n_layer;
    uint32_t n_head_kv;
    uint32_t head_dim;
    tkv_calib_params p;
    tkv_calib_layer *layers; /* (n_layer) */
} tkv_calib;

/* Both levers off, block TKV_DEFAULT_CALIB_BLOCK, no sinks. */
tkv_status tkv_calib_init(tkv_calib *c, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim);
void tkv_calib_release(tkv_calib *c);

/* 1 when keys are stored centered or smoothed. */
static inline int tkv_calib_active(const tkv_calib *c) {
    return c->p.center_keys || c->p.smooth_keys;
}

/* The calibration block of position pos. */
static inline uint32_t tkv_calib_block_of(const tkv_calib *c, uint32_t pos) {
    return c->p.block == TKV_CALIBRATION_ONCE ? 0 : pos / c->p.block;
}

/* Room for blocks [0, blocks) of a layer. */
tkv_status tkv_calib_reserve(tkv_calib *c, uint32_t layer, uint32_t blocks);

/*
 * Observe a batch of one layer (positions pos0.., n_tok of them) before it is stored:
 * set the calibration of every block it starts, and sum its keys and queries into the
 * statistics the next block calibrates from.  q is (n_tok, n_head * head_dim), k is
 * (n_tok, n_head_kv * head_dim), n_head a multiple of n_head_kv.  *set_first is 1 when
 * block 0 was set by this call: positions stored before it (sinks, as they came) must
 * then be brought into block 0's space with tkv_calib_prepare_key.  No-op when inactive.
 */
tkv_status tkv_calib_observe(tkv_calib *c, uint32_t layer, uint32_t pos0, const float *q,
                             uint32_t n_head, const float *k, uint32_t n_tok, int *set_first);

/* out = (k - mu_b) / s_b for (layer, head) (in and out may be the same row): the space
 * every stored key of block b lives in.  Block b must be reserved. */
void tkv_calib_prepare_key(const tkv_calib *c, uint32_t layer, uint32_t head, uint32_t block,
                           const float *in, float *out);

/* mu (zeros without centering) and s (ones without smoothing) of block b of (layer, head)
 * as floats.  Block b must be reserved. */
void tkv_calib_block(const tkv_calib *c, uint32_t layer, uint32_t head, uint32_t block, float *mu,
                     float *s);

/*
 * A layer is cut to n positions (n < its count): blocks left without a position
 * recalibrate when reached again; the block of position n - 1 and those before keep
 * theirs (stored keys use them).  The statistics summed dropped positions too, so they
 * start afresh: when n starts a block, that block then reuses its predecessor's
 * calibration (too few statistics), unlike a cache that never went back.  n = 0 resets
 * block 0 to mu = 0, s = 1 until the next first batch.
 */
void tkv_calib_truncate(tkv_calib *c, uint32_t layer, uint32_t n);

/* Bytes the calibration of a layer's first n positions takes (fp16 mu and s of the set
 * blocks they cover). */
size_t tkv_calib_bytes_used(const tkv_calib *c, uint32_t layer, uint32_t n);
/* Bytes allocated: blocks reserved and statistics. */
size_t tkv_calib_bytes_allocated(const tkv_calib *c);

#endif
