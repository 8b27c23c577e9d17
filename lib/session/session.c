/*
 * session.c - evaluation in batches of n_batch tokens, logits bookkeeping, timings.
 * Calls that keep every token's logits are limited to n_batch tokens (checked in
 * lib/api), so one forward pass produces all of them.
 */
#include "session/session.h"

#include <string.h>
#include <time.h>

#include "base/status.h"

uint64_t tkv_session_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
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
    s->last_eval_n = n;
    const uint64_t dt = tkv_session_now_ns() - t0;
    if (n > 1) {
        s->prefill_tokens += n;
        s->prefill_ns += dt;
    } else {
        s->decode_tokens += n;
        s->decode_ns += dt;
    }
    return TKV_OK;
}
