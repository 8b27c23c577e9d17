/*
 * session.c - what a session does with its cache: evaluation in batches of n_batch
 * tokens (all or nothing), logits bookkeeping, sampling with the session's generator,
 * the generate loop and its stop rule, and the per-phase timings.  Arguments are checked
 * in lib/api; calls that keep every token's logits are limited to n_batch tokens there,
 * so one forward pass produces all of them.
 */
#include "session/session.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/clock.h"
#include "base/status.h"

/* Non-finite logits come from weights or metadata out of range (a NaN scale, an
 * overflowing norm): sampling from them would silently pick token 0 (often end of
 * text), so they are an error.  A scan of n_vocab floats, far below one forward pass. */
static tkv_status tkv_check_logits(const struct tkv_session *s, uint32_t pos0) {
    const size_t n_vocab = s->model->hp.n_vocab;
    for (int64_t r = 0; r < s->n_logits; r++) {
        const float *row = s->fs.logits + (size_t)r * n_vocab;
        for (size_t i = 0; i < n_vocab; i++) {
            if (!isfinite(row[i])) {
                return tkv_fail(TKV_ERR_BAD_FORMAT,
                                "non-finite logit %g (token %zu) at position %u: the model's "
                                "weights or metadata produce NaN or Inf",
                                (double)row[i], i, pos0 + (uint32_t)r);
            }
        }
    }
    return TKV_OK;
}

static tkv_status tkv_eval_chunks(struct tkv_session *s, const int32_t *tokens, int64_t n,
                                  int all_logits) {
    const uint64_t t0 = tkv_now_ns();
    const uint32_t n_batch = s->fs.n_batch;
    uint32_t pos = tkv_kv_n_tokens(&s->cache->kv);
    s->n_logits = 0;
    if (all_logits) {
        TKV_TRY(tkv_forward_reserve_logits(&s->fs, s->model, n_batch));
    }
    for (int64_t done = 0; done < n;) {
        uint32_t chunk = (uint32_t)(n - done < n_batch ? n - done : n_batch);
        tkv_status st = tkv_forward(s->model, &s->cache->kv, s->pool, &s->fs, tokens + done, chunk,
                                    pos, all_logits, s->cache->sparse_v_threshold);
        if (st != TKV_OK) {
            return st;
        }
        memcpy(s->history + pos, tokens + done, chunk * sizeof *tokens);
        pos += chunk;
        done += chunk;
        s->n_logits = all_logits ? chunk : 1;
    }
    TKV_TRY(tkv_check_logits(s, pos - (uint32_t)s->n_logits));
    s->last_eval_n = n;
    const uint64_t dt = tkv_now_ns() - t0;
    /* decode = one token fed back after sampling; any other eval is (part of) a prompt,
     * a 1-token prompt included */
    if (n > 1 || !s->sampled_since_eval) {
        s->prefill_tokens += n;
        s->prefill_ns += dt;
    } else {
        s->decode_tokens += n;
        s->decode_ns += dt;
    }
    s->sampled_since_eval = 0;
    return TKV_OK;
}

tkv_status tkv_session_eval_tokens(struct tkv_session *s, const int32_t *tokens, int64_t n,
                                   int all_logits) {
    const uint32_t have = tkv_kv_n_tokens(&s->cache->kv);
    TKV_REQUIRE((uint64_t)have + (uint64_t)n <= s->cache->kv.capacity, TKV_ERR_CACHE_FULL,
                "%lld tokens after %u do not fit the cache capacity %u", (long long)n, have,
                s->cache->kv.capacity);
    s->cache->loaded_hash = 0; /* the cache is no longer what was loaded */
    tkv_status st = tkv_eval_chunks(s, tokens, n, all_logits);
    if (st != TKV_OK) {
        /* leave the cache as it was before the call: possible unless the call appended so
         * many positions that a sliding-window layer's ring overwrote the window of position
         * `have`; then the cache is emptied, and the message says so */
        s->n_logits = 0;
        if (have > 0 && have < tkv_kv_truncate_floor(&s->cache->kv)) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", tkv_last_error());
            tkv_kv_truncate(&s->cache->kv, 0);
            return tkv_fail(st,
                            "%s (the cache was emptied: its sliding-window layers no longer "
                            "held the positions before this call)",
                            msg);
        }
        tkv_kv_truncate(&s->cache->kv, have);
    }
    return st;
}

int32_t tkv_session_sample_next(struct tkv_session *s, const tkv_sampling *p, uint64_t seed) {
    const uint64_t t0 = tkv_now_ns();
    if (!s->rng_seeded || s->rng_seed != seed) {
        tkv_rng_init(&s->rng, seed);
        s->rng_seed = seed;
        s->rng_seeded = 1;
    }
    const int32_t n_vocab = (int32_t)s->model->hp.n_vocab;
    const float *logits = s->fs.logits + (size_t)(s->n_logits - 1) * (size_t)n_vocab;
    const int32_t tok = tkv_sample(p, logits, n_vocab, s->history, tkv_kv_n_tokens(&s->cache->kv),
                                   &s->rng, s->sample_probs, s->sample_ids);
    s->sample_ns += tkv_now_ns() - t0;
    s->sampled_since_eval = 1;
    return tok;
}

tkv_status tkv_session_generate_tokens(struct tkv_session *s, const tkv_sampling *p, uint64_t seed,
                                       int64_t max_tokens, tkv_token_callback callback,
                                       void *user_data, int64_t *n_generated) {
    *n_generated = 0;
    for (int64_t i = 0; i < max_tokens; i++) {
        int32_t tok = tkv_session_sample_next(s, p, seed);
        if (tkv_tokenizer_is_end(s->model->tokenizer, tok)) {
            break;
        }
        (*n_generated)++;
        if (callback && callback(tok, user_data) != 0) {
            break;
        }
        if (i + 1 == max_tokens) {
            break; /* the last token is the caller's to evaluate */
        }
        const uint32_t have = tkv_kv_n_tokens(&s->cache->kv);
        TKV_REQUIRE(have < s->cache->kv.capacity, TKV_ERR_CACHE_FULL,
                    "the cache is full (%u positions): generation stopped after %lld tokens, "
                    "the last one not evaluated",
                    have, (long long)*n_generated);
        TKV_TRY(tkv_session_eval_tokens(s, &tok, 1, 0));
    }
    return TKV_OK;
}

void tkv_session_get_timings(const struct tkv_session *s, tkv_timings *out) {
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->prefill_tokens = s->prefill_tokens;
    out->decode_tokens = s->decode_tokens;
    out->prefill_seconds = (double)s->prefill_ns * 1e-9;
    out->decode_seconds = (double)s->decode_ns * 1e-9;
    out->matmul_seconds = (double)(s->fs.times.matmul_ns - s->base_times.matmul_ns) * 1e-9;
    out->attention_seconds = (double)(s->fs.times.attention_ns - s->base_times.attention_ns) * 1e-9;
    out->other_seconds = (double)(s->fs.times.other_ns - s->base_times.other_ns) * 1e-9;
    out->sample_seconds = (double)s->sample_ns * 1e-9;
}

void tkv_session_clear_timings(struct tkv_session *s) {
    s->prefill_tokens = s->decode_tokens = 0;
    s->prefill_ns = s->decode_ns = s->sample_ns = 0;
    s->base_times = s->fs.times;
}
