/*
 * session.c - evaluation in batches of n_batch tokens, logits bookkeeping, timings.
 * Calls that keep every token's logits are limited to n_batch tokens (checked in
 * lib/api), so one forward pass produces all of them.
 */
#include "session/session.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "base/status.h"

uint64_t tkv_session_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

tkv_status tkv_session_eval_tokens(struct tkv_session *s, const int32_t *tokens, int64_t n,
                                   int all_logits) {
    const uint64_t t0 = tkv_session_now_ns();
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
    const uint64_t dt = tkv_session_now_ns() - t0;
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
