/*
 * forward.h - the llama-family forward pass over a batch of tokens, writing K/V into
 * the compressed cache and reading attention from it.
 */
#ifndef TKV_MODEL_FORWARD_H
#define TKV_MODEL_FORWARD_H

#include <stdint.h>

#include "base/threads.h"
#include "kv/cache.h"
#include "model/model.h"

/* Per-phase wall time, nanoseconds (accumulated). */
typedef struct tkv_phase_times {
    uint64_t matmul_ns;
    uint64_t attention_ns;
    uint64_t other_ns;
} tkv_phase_times;

/* Activation buffers, allocated once per session for up to n_batch tokens. */
typedef struct tkv_forward_state {
    uint32_t n_batch;
    uint32_t n_threads;
    uint32_t capacity;      /* cache capacity: size of each thread's score buffer */
    float *x;               /* (n_batch, n_embd) residual stream */
    float *xn;              /* (n_batch, n_embd) normed input of a block */
    float *q;               /* (n_batch, n_head * head_dim) */
    float *k;               /* (n_batch, n_head_kv * head_dim) */
    float *v;               /* (n_batch, n_head_kv * head_dim) */
    float *att;             /* (n_batch, n_head * head_dim) attention output */
    float *gate;            /* (n_batch, n_ff) */
    float *up;              /* (n_batch, n_ff) */
    float *logits;          /* (logits_rows, n_vocab) */
    uint32_t logits_rows;   /* 1 until a call keeps every token's logits, then n_batch */
    float *scores;          /* (n_threads, capacity) */
    float *work;            /* (n_threads, attention work) */
    float *attn_part;       /* attention chunk results to merge (forward.c) */
    float *kv_scratch;      /* (n_threads, TKV_KV_SCRATCH_FLOATS(head_dim)) codec scratch for cache
                               appends */
    void *mm_scratch;       /* quantized activations */
    size_t mm_scratch_bytes;
    float *rope_inv_freq; /* (2, n_rot / 2): angle per position of each pair, global layers
                             then sliding-window layers (their own RoPE base) */
    /* optional capture of post-RoPE vectors (research harnesses), NULL when off:
     * q (n, n_layer, n_head, head_dim), k and v (n, n_layer, n_head_kv, head_dim) */
    float *capture_q, *capture_k, *capture_v;
    tkv_phase_times times;
} tkv_forward_state;

tkv_status tkv_forward_state_init(tkv_forward_state *s, const struct tkv_model *m,
                                  uint32_t n_batch, uint32_t n_threads, uint32_t capacity);
void tkv_forward_state_release(tkv_forward_state *s);

/* Make s->logits hold `rows` (<= n_batch) rows; the memory of every token's logits
 * (n_batch x n_vocab, 50 MB for a 49K vocabulary at n_batch 256) is only taken by
 * sessions that ask for it. */
tkv_status tkv_forward_reserve_logits(tkv_forward_state *s, const struct tkv_model *m,
                                      uint32_t rows);
/*
 * Run tokens[0..n) at positions pos0.. (n <= n_batch), appending their K/V to the
 * cache (whose length must be pos0).  Logits of every token go to s->logits when
 * all_logits, else only the last token's, in row 0.
 */
tkv_status tkv_forward(const struct tkv_model *m, tkv_kv_cache *cache, tkv_pool *pool,
                       tkv_forward_state *s, const int32_t *tokens, uint32_t n, uint32_t pos0,
                       int all_logits, float sparse_threshold);

#endif
