/*
 * api_persist.c - public save / load of caches and session state: argument checks, then
 * lib/session/persist.c.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "session/persist.h"
#include "turbokv.h"

tkv_status tkv_cache_save(const tkv_cache *cache, const char *path) {
    TKV_REQUIRE(cache && path, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_save: cache and path must not be NULL");
    return tkv_persist_save(cache, NULL, path);
}

tkv_status tkv_cache_load(const tkv_model *model, const char *path, tkv_cache **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_load: out is NULL");
    *out = NULL;
    TKV_REQUIRE(model && path, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_load: model and path must not be NULL");
    tkv_cache *c = calloc(1, sizeof *c);
    TKV_REQUIRE(c, TKV_ERR_OUT_OF_MEMORY, "tkv_cache_load: out of memory");
    c->model = (tkv_model *)model; /* the reference count is the one mutable field */
    tkv_status st = tkv_persist_load_cache(c->model, path, &c->kv, &c->sparse_v_threshold,
                                           &c->loaded_hash);
    if (st != TKV_OK) {
        free(c);
        return st;
    }
    atomic_init(&c->refs, 1u);
    atomic_fetch_add(&c->model->refs, 1u);
    *out = c;
    return TKV_OK;
}

tkv_status tkv_session_save(const tkv_session *session, const char *path) {
    TKV_REQUIRE(session && path, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_save: session and path must not be NULL");
    return tkv_persist_save(session->cache, session, path);
}

tkv_status tkv_session_load_state(tkv_session *session, const char *path) {
    TKV_REQUIRE(session && path, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_load_state: session and path must not be NULL");
    return tkv_persist_load_state(session, path);
}

tkv_status tkv_session_tokens(const tkv_session *session, int32_t *tokens, size_t cap,
                              size_t *n_out) {
    TKV_REQUIRE(session && n_out, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_tokens: session and n_out must not be NULL");
    TKV_REQUIRE(tokens || cap == 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_tokens: tokens is NULL with cap %zu", cap);
    const size_t n = tkv_kv_n_tokens(&session->cache->kv);
    *n_out = n;
    TKV_REQUIRE(cap >= n, TKV_ERR_BUFFER_TOO_SMALL, "tkv_session_tokens: %zu tokens, room for %zu",
                n, cap);
    if (n) {
        memcpy(tokens, session->history, n * sizeof *tokens);
    }
    return TKV_OK;
}

/* ---- what a cache is (a loaded one included) ------------------------------------------------ */

tkv_status tkv_cache_layer_codecs(const tkv_cache *cache, uint32_t layer, int32_t *k_codec,
                                  int32_t *v_codec) {
    TKV_REQUIRE(cache && k_codec && v_codec, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_layer_codecs: cache, k_codec and v_codec must not be NULL");
    TKV_REQUIRE(layer < cache->kv.n_layer, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_layer_codecs: layer %u outside 0..%u", layer, cache->kv.n_layer - 1);
    *k_codec = cache->kv.layers[layer].k_codec_id;
    *v_codec = cache->kv.layers[layer].v_codec_id;
    return TKV_OK;
}

tkv_status tkv_cache_get_params(const tkv_cache *cache, tkv_cache_params *out) {
    TKV_REQUIRE(cache && out, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_get_params: cache and out must not be NULL");
    TKV_REQUIRE(out->struct_size == sizeof *out, TKV_ERR_ABI,
                "tkv_cache_get_params: struct_size is %u, this library expects %u (start from "
                "tkv_cache_default_params())", out->struct_size, (unsigned)sizeof *out);
    const tkv_kv_cache *kv = &cache->kv;
    *out = tkv_cache_default_params();
    /* the codecs of most layers (the others are per-layer overrides) */
    uint32_t best = 0, best_count = 0;
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        uint32_t count = 0;
        for (uint32_t j = 0; j < kv->n_layer; j++) {
            count += kv->layers[j].k_codec_id == kv->layers[l].k_codec_id &&
                     kv->layers[j].v_codec_id == kv->layers[l].v_codec_id;
        }
        if (count > best_count) {
            best = l;
            best_count = count;
        }
    }
    out->k_codec = kv->layers[best].k_codec_id;
    out->v_codec = kv->layers[best].v_codec_id;
    out->n_ctx = kv->capacity;
    out->fp16_window = kv->window;
    out->flags = (kv->calib.p.center_keys ? TKV_CACHE_FLAG_CENTER_KEYS : 0u) |
                 (kv->calib.p.smooth_keys ? TKV_CACHE_FLAG_SMOOTH_KEYS : 0u);
    out->seed = kv->seed;
    out->sparse_v_threshold = cache->sparse_v_threshold;
    out->key_smoothing = kv->calib.p.smooth_keys ? kv->calib.p.smooth_alpha : 0.0f;
    out->sink_tokens = kv->n_sink;
    out->calibration_block = kv->calib.p.block;
    return TKV_OK;
}

/* ---- fork ------------------------------------------------------------------------------------ */

tkv_status tkv_cache_fork(tkv_cache *cache, tkv_cache **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_fork: out is NULL");
    *out = NULL;
    TKV_REQUIRE(cache, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_fork: cache is NULL");
    tkv_cache *c = calloc(1, sizeof *c);
    TKV_REQUIRE(c, TKV_ERR_OUT_OF_MEMORY, "tkv_cache_fork: out of memory");
    c->model = cache->model;
    c->sparse_v_threshold = cache->sparse_v_threshold;
    c->loaded_hash = cache->loaded_hash;
    tkv_status st = tkv_kv_fork(&cache->kv, &c->kv);
    if (st != TKV_OK) {
        free(c);
        return st;
    }
    atomic_init(&c->refs, 1u);
    atomic_fetch_add(&c->model->refs, 1u);
    *out = c;
    return TKV_OK;
}

tkv_status tkv_session_copy_state(tkv_session *dst, const tkv_session *src) {
    TKV_REQUIRE(dst && src, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_copy_state: dst and src must not be NULL");
    const uint32_t n = tkv_kv_n_tokens(&src->cache->kv);
    TKV_REQUIRE(src->model == dst->model && n == tkv_kv_n_tokens(&dst->cache->kv) &&
                    (src->cache == dst->cache || n == 0 ||
                     tkv_kv_shares_prefix(&src->cache->kv, &dst->cache->kv)),
                TKV_ERR_MISMATCH,
                "tkv_session_copy_state: the destination's cache (%u tokens) is not a fork of the "
                "source's (%u tokens) made at its current position",
                tkv_kv_n_tokens(&dst->cache->kv), n);
    tkv_persist_copy_state(dst, src);
    return TKV_OK;
}
