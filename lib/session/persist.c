/*
 * persist.c - a cache (and a session's state) to a file and back.
 *
 * The payload holds the cache sections (lib/kv/cache_file.c) and, for a saved session,
 * one SESS section after them:
 *
 *     u64 hash of the cache sections' bytes (ties the state to its cache)
 *     u32 positions n, u32 n_vocab
 *     i32 tokens[n]                the evaluated tokens (repetition penalty, prompt reuse)
 *     u32 has_logits, then n_vocab f32 logits of the last evaluated token when 1
 *     u64 generator state, f64 spare Gaussian, u32 has_spare   (tkv_rng)
 *     u64 seed the generator was started from, u32 started, u32 sampled since the last eval
 */
#include "session/persist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "base/status.h"
#include "kv/cache_file.h"

static void tkv_model_id_of(struct tkv_model *m, tkv_kv_model_id *id) {
    id->fingerprint = tkv_model_fingerprint(m);
    id->n_layer = m->hp.n_layer;
    id->n_head_kv = m->hp.n_head_kv;
    id->head_dim = m->hp.head_dim;
    id->n_vocab = m->hp.n_vocab;
    id->name = m->name;
    id->span = NULL; /* the writer reads the spans from the cache */
}

static void tkv_write_state(const struct tkv_session *s, uint64_t cache_hash, tkv_wbuf *w) {
    const uint32_t n = tkv_kv_n_tokens(&s->cache->kv), n_vocab = s->model->hp.n_vocab;
    const size_t at = tkv_wbuf_section_begin(w, TKV_KV_TAG_SESSION);
    tkv_wbuf_u64(w, cache_hash);
    tkv_wbuf_u32(w, n);
    tkv_wbuf_u32(w, n_vocab);
    for (uint32_t i = 0; i < n; i++) {
        tkv_wbuf_u32(w, (uint32_t)s->history[i]);
    }
    tkv_wbuf_u32(w, s->n_logits > 0 ? 1u : 0u);
    if (s->n_logits > 0) {
        const float *last = s->fs.logits + (size_t)(s->n_logits - 1) * n_vocab;
        for (uint32_t i = 0; i < n_vocab; i++) {
            tkv_wbuf_f32(w, last[i]);
        }
    }
    tkv_wbuf_u64(w, s->rng.state);
    tkv_wbuf_f64(w, s->rng.spare);
    tkv_wbuf_u32(w, s->rng.has_spare ? 1u : 0u);
    tkv_wbuf_u64(w, s->rng_seed);
    tkv_wbuf_u32(w, s->rng_seeded ? 1u : 0u);
    tkv_wbuf_u32(w, s->sampled_since_eval ? 1u : 0u);
    tkv_wbuf_section_end(w, at);
}

tkv_status tkv_persist_save(const struct tkv_cache *c, const struct tkv_session *s, const char *path) {
    tkv_kv_model_id id;
    tkv_model_id_of(c->model, &id);
    tkv_wbuf w = {0};
    tkv_kv_write(&c->kv, &id, c->sparse_v_threshold, &w);
    if (s && !w.failed) {
        tkv_write_state(s, tkv_hash64(w.data, w.len, 0), &w);
    }
    tkv_status st = tkv_kv_file_write(path, &w, id.fingerprint, s ? TKV_KV_FILE_HAS_SESSION : 0,
                                      tkv_kv_n_tokens(&c->kv));
    tkv_wbuf_release(&w);
    return st;
}

/* The header's fingerprint against the model's first: the plainest message for the
 * commonest mistake (the model section repeats the check with names). */
static tkv_status tkv_open_for(struct tkv_model *m, const char *path, tkv_kv_file *f,
                               tkv_kv_model_id *id) {
    tkv_model_id_of(m, id);
    return tkv_kv_file_open(path, f);
}

tkv_status tkv_persist_load_cache(struct tkv_model *m, const char *path, tkv_kv_cache *kv,
                                  float *sparse_v, uint64_t *hash) {
    tkv_kv_file f;
    tkv_kv_model_id id;
    memset(kv, 0, sizeof *kv);
    /* each layer's sliding window: the loaded cache gets the rings a new one would */
    uint32_t *span = calloc(m->hp.n_layer, sizeof *span);
    TKV_REQUIRE(span, TKV_ERR_OUT_OF_MEMORY, "loading cache '%s': out of memory", path);
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        span[l] = m->layers[l].sliding ? m->hp.n_swa : 0;
    }
    tkv_status st = tkv_open_for(m, path, &f, &id);
    if (st != TKV_OK) {
        free(span);
        return st;
    }
    id.span = span;
    tkv_rbuf payload = {f.payload, f.payload_size, 0, "payload"};
    st = tkv_kv_read(&payload, &id, f.fingerprint, f.version, kv, sparse_v);
    if (st == TKV_OK) {
        *hash = tkv_hash64(payload.data, payload.off, 0);
        if (f.flags & TKV_KV_FILE_HAS_SESSION) { /* present and well-formed, read later */
            tkv_rbuf sess;
            st = tkv_rbuf_section(&payload, TKV_KV_TAG_SESSION, "session section", &sess);
        }
        if (st == TKV_OK) {
            st = tkv_rbuf_done(&payload);
        }
        if (st == TKV_OK && tkv_kv_n_tokens(kv) != f.n_tokens) {
            st = tkv_fail(TKV_ERR_BAD_FORMAT, "the header says %u positions, the layers hold %u",
                          f.n_tokens, tkv_kv_n_tokens(kv));
        }
        if (st != TKV_OK) {
            tkv_kv_release(kv);
        }
    }
    tkv_kv_file_close(&f);
    free(span);
    if (st != TKV_OK) {
        tkv_error_prefix("loading cache '%s'", path);
    }
    return st;
}

static tkv_status tkv_read_state(tkv_rbuf *r, struct tkv_session *s, uint64_t cache_hash) {
    const uint32_t n_vocab = s->model->hp.n_vocab, have = tkv_kv_n_tokens(&s->cache->kv);
    uint64_t h, state, seed;
    uint32_t n, nv, has_logits, has_spare, seeded, sampled;
    double spare;
    TKV_TRY(tkv_rbuf_u64(r, "cache hash", &h));
    TKV_REQUIRE(h == cache_hash, TKV_ERR_BAD_FORMAT,
                "session section: saved with other cache contents than the file holds");
    TKV_REQUIRE(s->cache->loaded_hash == cache_hash, TKV_ERR_MISMATCH,
                "the session's cache is not the one saved with this state: load the cache from "
                "the same file (KVCache.load / tkv_cache_load) and restore the state before "
                "evaluating or truncating");
    TKV_TRY(tkv_rbuf_u32(r, "positions", &n));
    TKV_TRY(tkv_rbuf_u32(r, "n_vocab", &nv));
    TKV_REQUIRE(n == have && nv == n_vocab, TKV_ERR_BAD_FORMAT,
                "session section: %u positions and a vocabulary of %u, the cache holds %u and "
                "the model has %u", n, nv, have, n_vocab);
    const uint8_t *tok;
    TKV_TRY(tkv_rbuf_take(r, (uint64_t)n * 4, "tokens", &tok));
    for (uint32_t i = 0; i < n; i++) {
        const int32_t t = (int32_t)((uint32_t)tok[4 * i] | (uint32_t)tok[4 * i + 1] << 8 |
                                    (uint32_t)tok[4 * i + 2] << 16 | (uint32_t)tok[4 * i + 3] << 24);
        TKV_REQUIRE(t >= 0 && (uint32_t)t < n_vocab, TKV_ERR_BAD_FORMAT,
                    "session section: token %d at position %u outside the vocabulary", (int)t, i);
    }
    TKV_TRY(tkv_rbuf_u32(r, "has_logits", &has_logits));
    TKV_REQUIRE(has_logits <= 1, TKV_ERR_BAD_FORMAT, "session section: has_logits %u", has_logits);
    const uint8_t *logits = NULL;
    if (has_logits) {
        TKV_TRY(tkv_rbuf_take(r, (uint64_t)n_vocab * 4, "logits", &logits));
        for (uint32_t i = 0; i < n_vocab; i++) {
            float x;
            memcpy(&x, logits + 4 * (size_t)i, 4);
            TKV_REQUIRE(isfinite(x), TKV_ERR_BAD_FORMAT, "session section: logit %u is %g", i,
                        (double)x);
        }
    }
    TKV_TRY(tkv_rbuf_u64(r, "generator state", &state));
    TKV_TRY(tkv_rbuf_f64(r, "generator spare", &spare));
    TKV_TRY(tkv_rbuf_u32(r, "generator has_spare", &has_spare));
    TKV_TRY(tkv_rbuf_u64(r, "generator seed", &seed));
    TKV_TRY(tkv_rbuf_u32(r, "generator started", &seeded));
    TKV_TRY(tkv_rbuf_u32(r, "sampled since eval", &sampled));
    TKV_REQUIRE(isfinite(spare) && has_spare <= 1 && seeded <= 1 && sampled <= 1,
                TKV_ERR_BAD_FORMAT, "session section: sampler state out of range");
    TKV_TRY(tkv_rbuf_done(r));
    /* all checked: now change the session */
    for (uint32_t i = 0; i < n; i++) {
        memcpy(&s->history[i], tok + 4 * (size_t)i, 4);
    }
    if (has_logits) {
        memcpy(s->fs.logits, logits, (size_t)n_vocab * 4);
    }
    s->n_logits = has_logits;
    s->last_eval_n = 0;
    s->rng.state = state;
    s->rng.spare = spare;
    s->rng.has_spare = (int)has_spare;
    s->rng_seed = seed;
    s->rng_seeded = (int)seeded;
    s->sampled_since_eval = (int)sampled;
    return TKV_OK;
}

tkv_status tkv_persist_load_state(struct tkv_session *s, const char *path) {
    tkv_kv_file f;
    tkv_kv_model_id id;
    TKV_TRY(tkv_open_for((struct tkv_model *)s->model, path, &f, &id));
    tkv_status st = TKV_OK;
    if (!(f.flags & TKV_KV_FILE_HAS_SESSION)) {
        st = tkv_fail(TKV_ERR_INVALID_ARGUMENT,
                      "the file holds a cache without session state (saved with "
                      "tkv_cache_save, not tkv_session_save)");
    }
    tkv_rbuf payload = {f.payload, f.payload_size, 0, "payload"};
    tkv_rbuf sec;
    /* skip the cache sections (tkv_persist_load_cache checked them when the cache was
     * loaded; the hash below ties this state to them) */
    const uint32_t tags[3] = {TKV_KV_TAG_MODEL, TKV_KV_TAG_CODECS, TKV_KV_TAG_CONFIG};
    for (int i = 0; st == TKV_OK && i < 3; i++) {
        st = tkv_rbuf_section(&payload, tags[i], "cache section", &sec);
    }
    for (uint32_t l = 0; st == TKV_OK && l < id.n_layer; l++) {
        st = tkv_rbuf_section(&payload, TKV_KV_TAG_LAYER, "layer section", &sec);
    }
    if (st == TKV_OK) {
        const uint64_t cache_hash = tkv_hash64(payload.data, payload.off, 0);
        st = tkv_rbuf_section(&payload, TKV_KV_TAG_SESSION, "session section", &sec);
        if (st == TKV_OK) {
            st = tkv_read_state(&sec, s, cache_hash);
        }
    }
    tkv_kv_file_close(&f);
    if (st != TKV_OK) {
        tkv_error_prefix("restoring session state from '%s'", path);
    }
    return st;
}

void tkv_persist_copy_state(struct tkv_session *dst, const struct tkv_session *src) {
    const uint32_t n = tkv_kv_n_tokens(&src->cache->kv), n_vocab = src->model->hp.n_vocab;
    memcpy(dst->history, src->history, (size_t)n * sizeof *dst->history);
    if (src->n_logits > 0) {
        memcpy(dst->fs.logits, src->fs.logits + (size_t)(src->n_logits - 1) * n_vocab,
               (size_t)n_vocab * sizeof *dst->fs.logits);
    }
    dst->n_logits = src->n_logits > 0 ? 1 : 0;
    dst->last_eval_n = 0;
    dst->rng = src->rng;
    dst->rng_seed = src->rng_seed;
    dst->rng_seeded = src->rng_seeded;
    dst->sampled_since_eval = src->sampled_since_eval;
}
