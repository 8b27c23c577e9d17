/* session.h - the public cache and session objects (internal layout). */
#ifndef TKV_SESSION_SESSION_H
#define TKV_SESSION_SESSION_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/rng.h"
#include "base/threads.h"
#include "kv/cache.h"
#include "model/forward.h"
#include "model/model.h"
#include "session/sampler.h"

struct tkv_cache {
    /* References to this handle: the caller's plus one per session on it (see tkv_model) */
    atomic_uint refs;
    struct tkv_model *model; /* holds one of the model's refs */
    tkv_kv_cache kv;
    float sparse_v_threshold;
    /* Hash of the cache sections of the file this cache was loaded from, while it still
     * holds exactly what was loaded (0 once it changes): a session state saved with
     * those sections may be restored onto it (tkv_persist_load_state). */
    uint64_t loaded_hash;
};

struct tkv_session {
    struct tkv_cache *cache;
    const struct tkv_model *model;
    tkv_pool *pool;
    tkv_forward_state fs;
    int64_t n_logits;        /* rows of fs.logits valid since the last eval */
    int64_t last_eval_n;     /* tokens in the last eval */
    int32_t *history;        /* (capacity) tokens evaluated, for the repetition penalty */
    float *sample_probs;     /* (n_vocab) */
    int32_t *sample_ids;     /* (n_vocab) */
    tkv_rng rng;
    uint64_t rng_seed;
    int rng_seeded;
    int sampled_since_eval;  /* a token was sampled after the last eval (the next 1-token
                                eval is a decode step in the timings) */
    /* timings */
    int64_t prefill_tokens, decode_tokens;
    uint64_t prefill_ns, decode_ns, sample_ns;
    tkv_phase_times base_times;
};

/* Evaluate tokens (already validated) in chunks of n_batch. */
tkv_status tkv_session_eval_tokens(struct tkv_session *s, const int32_t *tokens, int64_t n,
                                   int all_logits);
uint64_t tkv_session_now_ns(void);

#endif
