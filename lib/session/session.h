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

/*
 * Evaluate n tokens (ids already checked against the vocabulary; n <= n_batch when
 * all_logits) in chunks of n_batch at the end of the cache.  TKV_ERR_CACHE_FULL when they
 * do not fit; on any error the cache is left as it was and no logits are kept.
 */
tkv_status tkv_session_eval_tokens(struct tkv_session *s, const int32_t *tokens, int64_t n,
                                   int all_logits);

/* The next token from the last eval's last logits (there must be some), with the
 * generator (re)started from seed when the seed differs from the one it runs on. */
int32_t tkv_session_sample_next(struct tkv_session *s, const tkv_sampling *p, uint64_t seed);

/*
 * Sample, call back, evaluate, up to max_tokens tokens after the evaluated ones (there must
 * be logits).  Stops at an end token (tkv_tokenizer_is_end; not passed to the callback),
 * when the callback returns non-zero, after max_tokens, or when the cache has no room for
 * the token just passed to the callback: TKV_ERR_CACHE_FULL then, that token stays
 * unevaluated.  *n_generated counts the tokens passed to the callback.
 */
tkv_status tkv_session_generate_tokens(struct tkv_session *s, const tkv_sampling *p, uint64_t seed,
                                       int64_t max_tokens, tkv_token_callback callback,
                                       void *user_data, int64_t *n_generated);

/* Timings since creation or the last reset. */
void tkv_session_get_timings(const struct tkv_session *s, tkv_timings *out);
void tkv_session_clear_timings(struct tkv_session *s);

#endif
