/*
 * api_model.c - public model, cache and session functions: argument and ABI checks,
 * then one call into the model / kv / session layers (which trust what was checked
 * here: the generate loop does not re-check each token it feeds back).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "codec/codec.h"
#include "session/session.h"
#include "turbokv.h"

#define TKV_CHECK_PARAMS(fn, p)                                                               \
    do {                                                                                     \
        TKV_REQUIRE((p), TKV_ERR_INVALID_ARGUMENT, "%s: params is NULL", fn);                \
        TKV_REQUIRE((p)->struct_size == sizeof *(p), TKV_ERR_ABI,                            \
                    "%s: struct_size is %u, this library expects %u (start from the "        \
                    "*_default_params() function)", fn, (p)->struct_size,                    \
                    (unsigned)sizeof *(p));                                                  \
        for (size_t i_ = 0; i_ < sizeof (p)->reserved / sizeof (p)->reserved[0]; i_++) {     \
            TKV_REQUIRE((p)->reserved[i_] == 0, TKV_ERR_ABI, "%s: reserved[%zu] is not zero", \
                        fn, i_);                                                             \
        }                                                                                    \
    } while (0)

/* ---- model ------------------------------------------------------------------------------ */

tkv_model_params tkv_model_default_params(void) {
    tkv_model_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    return p;
}

tkv_status tkv_model_load(const char *path, const tkv_model_params *params, tkv_model **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_model_load: out is NULL");
    *out = NULL;
    TKV_REQUIRE(path, TKV_ERR_INVALID_ARGUMENT, "tkv_model_load: path is NULL");
    TKV_CHECK_PARAMS("tkv_model_load", params);
    TKV_REQUIRE(params->flags == 0, TKV_ERR_INVALID_ARGUMENT, "tkv_model_load: flags must be 0");
    return tkv_model_open(path, out);
}

static void tkv_model_unref(tkv_model *m) {
    if (atomic_fetch_sub(&m->refs, 1u) == 1u) {
        tkv_model_close(m);
    }
}

void tkv_model_free(tkv_model *model) {
    if (model) {
        tkv_model_unref(model);
    }
}

uint32_t tkv_model_n_layer(const tkv_model *m) { return m ? m->hp.n_layer : 0; }
uint32_t tkv_model_n_head(const tkv_model *m) { return m ? m->hp.n_head : 0; }
uint32_t tkv_model_n_head_kv(const tkv_model *m) { return m ? m->hp.n_head_kv : 0; }
uint32_t tkv_model_head_dim(const tkv_model *m) { return m ? m->hp.head_dim : 0; }
uint32_t tkv_model_n_embd(const tkv_model *m) { return m ? m->hp.n_embd : 0; }
uint32_t tkv_model_n_vocab(const tkv_model *m) { return m ? m->hp.n_vocab : 0; }
uint32_t tkv_model_n_ctx_train(const tkv_model *m) { return m ? m->hp.n_ctx_train : 0; }
uint64_t tkv_model_bytes_mapped(const tkv_model *m) { return m ? tkv_gguf_file_size(m->gguf) : 0; }
uint64_t tkv_model_bytes_packed(const tkv_model *m) { return m ? m->packed_bytes : 0; }
const char *tkv_model_arch(const tkv_model *m) { return m ? m->arch_name : ""; }
const char *tkv_model_name(const tkv_model *m) { return m ? m->name : ""; }
int32_t tkv_model_token_bos(const tkv_model *m) { return m ? tkv_tokenizer_bos(m->tokenizer) : -1; }
int32_t tkv_model_token_eos(const tkv_model *m) { return m ? tkv_tokenizer_eos(m->tokenizer) : -1; }
int32_t tkv_model_token_is_end(const tkv_model *m, int32_t token) {
    return m ? tkv_tokenizer_is_end(m->tokenizer, token) : 0;
}

int32_t tkv_model_token_find(const tkv_model *m, const char *text) {
    if (!m || !text) {
        return -1;
    }
    return tkv_tokenizer_find(m->tokenizer, text, strlen(text));
}

tkv_status tkv_model_meta_string(const tkv_model *m, const char *key, char *buf, size_t cap,
                                 size_t *n_out) {
    TKV_REQUIRE(m && key && n_out, TKV_ERR_INVALID_ARGUMENT,
                "tkv_model_meta_string: model, key and n_out must not be NULL");
    TKV_REQUIRE(buf || cap == 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_model_meta_string: buf is NULL with cap %zu (pass cap 0 to query the length)",
                cap);
    const int64_t index = tkv_gguf_find_key(m->gguf, key);
    TKV_REQUIRE(index >= 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_model_meta_string: the model has no metadata key '%.128s'", key);
    const int32_t type = tkv_gguf_kv_type(m->gguf, index);
    TKV_REQUIRE(type == TKV_GGUF_STRING, TKV_ERR_INVALID_ARGUMENT,
                "tkv_model_meta_string: metadata key '%.128s' holds %s, not a string", key,
                tkv_gguf_type_name(type));
    tkv_gguf_str str;
    TKV_TRY(tkv_gguf_get_string(m->gguf, key, &str));
    *n_out = str.len;
    TKV_REQUIRE(buf && cap > str.len, TKV_ERR_BUFFER_TOO_SMALL,
                "tkv_model_meta_string: '%.128s' needs %zu bytes with its NUL, got %zu", key,
                str.len + 1, cap);
    memcpy(buf, str.ptr, str.len);
    buf[str.len] = '\0';
    return TKV_OK;
}

tkv_status tkv_model_tokenize(const tkv_model *m, const char *text, size_t len, uint32_t flags,
                              int32_t *tokens, size_t cap, size_t *n_out) {
    TKV_REQUIRE(m && n_out && (text || len == 0), TKV_ERR_INVALID_ARGUMENT,
                "tkv_model_tokenize: model, text and n_out must not be NULL");
    TKV_REQUIRE(tokens || cap == 0, TKV_ERR_INVALID_ARGUMENT, "tkv_model_tokenize: tokens is NULL");
    TKV_REQUIRE((flags & ~(TKV_TOKENIZE_ADD_BOS | TKV_TOKENIZE_PARSE_SPECIAL)) == 0,
                TKV_ERR_INVALID_ARGUMENT, "tkv_model_tokenize: unknown flags 0x%x", flags);
    const int32_t bos = tkv_tokenizer_bos(m->tokenizer);
    const size_t prefix = (flags & TKV_TOKENIZE_ADD_BOS) && tkv_tokenizer_add_bos(m->tokenizer) &&
                          bos >= 0 ? 1 : 0;
    size_t n = 0;
    tkv_status st = tkv_tokenizer_encode(m->tokenizer, text ? text : "", len,
                                         (flags & TKV_TOKENIZE_PARSE_SPECIAL) != 0,
                                         tokens ? tokens + (cap >= prefix ? prefix : 0) : NULL,
                                         cap >= prefix ? cap - prefix : 0, &n);
    *n_out = n + prefix;
    if (st != TKV_OK && st != TKV_ERR_BUFFER_TOO_SMALL) {
        return st;
    }
    if (prefix && cap >= 1) {
        tokens[0] = bos;
    }
    TKV_REQUIRE(*n_out <= cap, TKV_ERR_BUFFER_TOO_SMALL,
                "tkv_model_tokenize: %zu tokens do not fit in %zu", *n_out, cap);
    return TKV_OK;
}

tkv_status tkv_model_detokenize(const tkv_model *m, const int32_t *tokens, size_t n,
                                int32_t render_special, char *buf, size_t cap, size_t *n_out) {
    TKV_REQUIRE(m && n_out && (tokens || n == 0), TKV_ERR_INVALID_ARGUMENT,
                "tkv_model_detokenize: model, tokens and n_out must not be NULL");
    TKV_REQUIRE(buf || cap == 0, TKV_ERR_INVALID_ARGUMENT, "tkv_model_detokenize: buf is NULL");
    return tkv_tokenizer_decode(m->tokenizer, tokens, n, render_special != 0, buf, cap, n_out);
}

/* ---- cache ------------------------------------------------------------------------------- */

tkv_cache_params tkv_cache_default_params(void) {
    tkv_cache_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.k_codec = TKV_CODEC_TURBO_4B;
    p.v_codec = TKV_CODEC_TURBO_4B;
    p.flags = TKV_CACHE_FLAG_CENTER_KEYS | TKV_CACHE_FLAG_SMOOTH_KEYS;
    p.key_smoothing = TKV_DEFAULT_KEY_SMOOTHING;
    p.sink_tokens = TKV_DEFAULT_SINK_TOKENS;
    p.calibration_block = TKV_DEFAULT_CALIB_BLOCK;
    return p;
}

static tkv_status tkv_check_codec_id(const char *fn, const char *what, int32_t id) {
    TKV_REQUIRE(tkv_codec_desc_get(id), TKV_ERR_INVALID_ARGUMENT, "%s: unknown %s codec id %d", fn,
                what, (int)id);
    return TKV_OK;
}

/* Every check of the cache parameters that needs no model, in the words of `fn`: the
 * levers' ranges are checked here and nowhere below (lib/kv trusts them).  *calib gets
 * the calibration levers with 0 resolved to the defaults (kv/calib.h). */
static tkv_status tkv_check_cache_params(const char *fn, const tkv_cache_params *params,
                                         tkv_calib_params *calib) {
    TKV_CHECK_PARAMS(fn, params);
    TKV_TRY(tkv_check_codec_id(fn, "K", params->k_codec));
    TKV_TRY(tkv_check_codec_id(fn, "V", params->v_codec));
    const uint32_t known_flags = TKV_CACHE_FLAG_CENTER_KEYS | TKV_CACHE_FLAG_SMOOTH_KEYS;
    TKV_REQUIRE((params->flags & ~known_flags) == 0, TKV_ERR_INVALID_ARGUMENT,
                "%s: unknown flags 0x%x", fn, params->flags & ~known_flags);
    TKV_REQUIRE(isfinite(params->key_smoothing) && params->key_smoothing >= 0.0f &&
                    params->key_smoothing <= 1.0f,
                TKV_ERR_INVALID_ARGUMENT, "%s: key_smoothing %g outside [0, 1]", fn,
                (double)params->key_smoothing);
    TKV_REQUIRE(isfinite(params->sparse_v_threshold) && params->sparse_v_threshold >= 0.0f &&
                    params->sparse_v_threshold < 1.0f,
                TKV_ERR_INVALID_ARGUMENT, "%s: sparse_v_threshold %g outside [0, 1)", fn,
                (double)params->sparse_v_threshold);
    TKV_REQUIRE(params->n_ctx <= (1u << 24), TKV_ERR_INVALID_ARGUMENT,
                "%s: n_ctx %u outside 1..16777216 (0 = the model's training context)", fn,
                params->n_ctx);
    TKV_REQUIRE(params->n_ctx == 0 || params->fp16_window <= params->n_ctx,
                TKV_ERR_INVALID_ARGUMENT, "%s: fp16_window %u exceeds n_ctx %u", fn,
                params->fp16_window, params->n_ctx);
    TKV_REQUIRE(params->sink_tokens <= TKV_KV_MAX_SINK, TKV_ERR_INVALID_ARGUMENT,
                "%s: %u sink tokens, at most %u", fn, params->sink_tokens, TKV_KV_MAX_SINK);
    const uint32_t block =
        params->calibration_block ? params->calibration_block : TKV_DEFAULT_CALIB_BLOCK;
    TKV_REQUIRE(block == TKV_CALIBRATION_ONCE ||
                    (block >= TKV_KV_MIN_CALIB_BLOCK && block <= TKV_KV_MAX_CALIB_BLOCK),
                TKV_ERR_INVALID_ARGUMENT,
                "%s: calibration_block of %u positions outside %u..%u (or TKV_CALIBRATION_ONCE)",
                fn, block, TKV_KV_MIN_CALIB_BLOCK, TKV_KV_MAX_CALIB_BLOCK);
    *calib = (tkv_calib_params){
        .center_keys = (params->flags & TKV_CACHE_FLAG_CENTER_KEYS) != 0,
        .smooth_keys = (params->flags & TKV_CACHE_FLAG_SMOOTH_KEYS) != 0,
        .smooth_alpha =
            params->key_smoothing > 0.0f ? params->key_smoothing : TKV_DEFAULT_KEY_SMOOTHING,
        .block = block,
        .n_sink = params->sink_tokens,
    };
    return TKV_OK;
}

tkv_status tkv_cache_params_check(const tkv_cache_params *params) {
    tkv_calib_params calib;
    return tkv_check_cache_params("tkv_cache_params_check", params, &calib);
}

tkv_status tkv_cache_create(const tkv_model *model, const tkv_cache_params *params,
                            tkv_cache **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_create: out is NULL");
    *out = NULL;
    TKV_REQUIRE(model, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_create: model is NULL");
    tkv_calib_params calib;
    TKV_TRY(tkv_check_cache_params("tkv_cache_create", params, &calib));
    const uint32_t n_ctx = params->n_ctx ? params->n_ctx : model->hp.n_ctx_train;
    TKV_REQUIRE(n_ctx >= 1 && n_ctx <= (1u << 24), TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_create: n_ctx %u outside 1..16777216", n_ctx);
    TKV_REQUIRE(params->fp16_window <= n_ctx, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_create: fp16_window %u exceeds n_ctx %u", params->fp16_window, n_ctx);
    tkv_cache *c = calloc(1, sizeof *c);
    TKV_REQUIRE(c, TKV_ERR_OUT_OF_MEMORY, "tkv_cache_create: out of memory");
    c->model = (tkv_model *)model; /* the reference count is the one mutable field */
    c->sparse_v_threshold = params->sparse_v_threshold;
    tkv_status st =
        tkv_kv_init(&c->kv, model->hp.n_layer, model->hp.n_head_kv, model->hp.head_dim, n_ctx,
                    params->k_codec, params->v_codec, params->fp16_window, params->seed);
    if (st == TKV_OK) {
        st = tkv_kv_set_levers(&c->kv, params->sink_tokens, &calib);
    }
    /* sliding-window layers keep only their window (and the batch being appended) */
    for (uint32_t l = 0; st == TKV_OK && l < model->hp.n_layer; l++) {
        if (model->layers[l].sliding) {
            st = tkv_kv_set_layer_span(&c->kv, l, model->hp.n_swa, TKV_KV_SLIDING_BATCH);
        }
    }
    if (st != TKV_OK) {
        tkv_kv_release(&c->kv);
        free(c);
        return st;
    }
    atomic_init(&c->refs, 1u);
    atomic_fetch_add(&c->model->refs, 1u);
    *out = c;
    return TKV_OK;
}

static void tkv_cache_unref(tkv_cache *c) {
    if (atomic_fetch_sub(&c->refs, 1u) == 1u) {
        tkv_model *model = c->model;
        tkv_kv_release(&c->kv);
        free(c);
        tkv_model_unref(model);
    }
}

void tkv_cache_free(tkv_cache *cache) {
    if (cache) {
        tkv_cache_unref(cache);
    }
}

tkv_status tkv_cache_set_layer_codecs(tkv_cache *cache, uint32_t layer, int32_t k_codec,
                                      int32_t v_codec) {
    TKV_REQUIRE(cache, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_set_layer_codecs: cache is NULL");
    TKV_REQUIRE(layer < cache->kv.n_layer, TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_set_layer_codecs: layer %u outside 0..%u", layer, cache->kv.n_layer - 1);
    TKV_TRY(tkv_check_codec_id("tkv_cache_set_layer_codecs", "K", k_codec));
    TKV_TRY(tkv_check_codec_id("tkv_cache_set_layer_codecs", "V", v_codec));
    return tkv_kv_set_layer_codecs(&cache->kv, layer, k_codec, v_codec);
}

uint32_t tkv_cache_n_tokens(const tkv_cache *c) { return c ? tkv_kv_n_tokens(&c->kv) : 0; }
uint32_t tkv_cache_capacity(const tkv_cache *c) { return c ? c->kv.capacity : 0; }
size_t tkv_cache_bytes_used(const tkv_cache *c) { return c ? tkv_kv_bytes_used(&c->kv) : 0; }
size_t tkv_cache_bytes_per_token(const tkv_cache *c) { return c ? tkv_kv_bytes_per_token(&c->kv) : 0; }
size_t tkv_cache_bytes_allocated(const tkv_cache *c) { return c ? tkv_kv_bytes_allocated(&c->kv) : 0; }

tkv_status tkv_cache_truncate(tkv_cache *cache, uint32_t n_tokens) {
    TKV_REQUIRE(cache, TKV_ERR_INVALID_ARGUMENT, "tkv_cache_truncate: cache is NULL");
    const uint32_t floor = tkv_kv_truncate_floor(&cache->kv);
    TKV_REQUIRE(n_tokens == 0 || n_tokens >= tkv_kv_n_tokens(&cache->kv) || n_tokens >= floor,
                TKV_ERR_INVALID_ARGUMENT,
                "tkv_cache_truncate: %u tokens: the sliding-window layers keep only their last "
                "positions and can be cut back to %u at the least (or to 0)",
                n_tokens, floor);
    if (n_tokens < tkv_kv_n_tokens(&cache->kv)) {
        cache->loaded_hash = 0; /* no longer what was loaded */
    }
    tkv_kv_truncate(&cache->kv, n_tokens);
    return TKV_OK;
}

/* ---- session ------------------------------------------------------------------------------ */

tkv_session_params tkv_session_default_params(void) {
    tkv_session_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    return p;
}

tkv_sampler_params tkv_sampler_default_params(void) {
    tkv_sampler_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    return p;
}

tkv_status tkv_session_create(tkv_cache *cache, const tkv_session_params *params,
                              tkv_session **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_session_create: out is NULL");
    *out = NULL;
    TKV_REQUIRE(cache, TKV_ERR_INVALID_ARGUMENT, "tkv_session_create: cache is NULL");
    TKV_CHECK_PARAMS("tkv_session_create", params);
    TKV_REQUIRE(params->flags == 0, TKV_ERR_INVALID_ARGUMENT, "tkv_session_create: flags must be 0");
    TKV_REQUIRE(params->n_threads <= 1024 && params->n_batch <= 65536, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_create: n_threads %u (max 1024) or n_batch %u (max 65536) too large",
                params->n_threads, params->n_batch);
    tkv_session *s = calloc(1, sizeof *s);
    TKV_REQUIRE(s, TKV_ERR_OUT_OF_MEMORY, "tkv_session_create: out of memory");
    s->cache = cache;
    s->model = cache->model;
    const uint32_t threads = params->n_threads ? params->n_threads : (uint32_t)tkv_cpu_count();
    uint32_t batch = params->n_batch ? params->n_batch : 256;
    if (batch > cache->kv.capacity) {
        batch = cache->kv.capacity;
    }
    const uint32_t n_vocab = s->model->hp.n_vocab;
    tkv_status st = tkv_pool_create((int)threads, &s->pool);
    if (st == TKV_OK) {
        st = tkv_forward_state_init(&s->fs, s->model, batch, threads, cache->kv.capacity);
    }
    if (st == TKV_OK) {
        s->history = calloc(cache->kv.capacity, sizeof *s->history);
        s->sample_probs = calloc(n_vocab, sizeof *s->sample_probs);
        s->sample_ids = calloc(n_vocab, sizeof *s->sample_ids);
        if (!s->history || !s->sample_probs || !s->sample_ids) {
            st = tkv_fail(TKV_ERR_OUT_OF_MEMORY, "tkv_session_create: out of memory");
        }
    }
    if (st != TKV_OK) {
        s->cache = NULL; /* holds no reference yet */
        tkv_session_free(s);
        return st;
    }
    atomic_fetch_add(&cache->refs, 1u);
    *out = s;
    return TKV_OK;
}

void tkv_session_free(tkv_session *s) {
    if (!s) {
        return;
    }
    tkv_cache *cache = s->cache;
    if (s->fs.x) {
        tkv_forward_state_release(&s->fs);
    }
    tkv_pool_free(s->pool);
    free(s->history);
    free(s->sample_probs);
    free(s->sample_ids);
    free(s);
    if (cache) {
        tkv_cache_unref(cache); /* last: it may release the cache and then the model */
    }
}

tkv_status tkv_session_eval(tkv_session *s, const int32_t *tokens, int64_t n, uint32_t flags) {
    TKV_REQUIRE(s, TKV_ERR_INVALID_ARGUMENT, "tkv_session_eval: session is NULL");
    TKV_REQUIRE(n > 0 && tokens, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_eval: need at least one token (n = %lld)", (long long)n);
    TKV_REQUIRE((flags & ~TKV_EVAL_LOGITS_ALL) == 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_eval: unknown flags 0x%x", flags);
    const int all = (flags & TKV_EVAL_LOGITS_ALL) != 0;
    TKV_REQUIRE(!all || n <= s->fs.n_batch, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_eval: %lld tokens with TKV_EVAL_LOGITS_ALL exceed n_batch %u "
                "(evaluate them in pieces)", (long long)n, s->fs.n_batch);
    const int32_t n_vocab = (int32_t)s->model->hp.n_vocab;
    for (int64_t i = 0; i < n; i++) {
        TKV_REQUIRE(tokens[i] >= 0 && tokens[i] < n_vocab, TKV_ERR_INVALID_ARGUMENT,
                    "tkv_session_eval: token %d at index %lld outside the vocabulary (0..%d)",
                    (int)tokens[i], (long long)i, n_vocab - 1);
    }
    tkv_status st = tkv_session_eval_tokens(s, tokens, n, all);
    if (st == TKV_ERR_CACHE_FULL) {
        tkv_error_prefix("tkv_session_eval");
    }
    return st;
}

const float *tkv_session_logits(const tkv_session *s, int64_t i) {
    if (!s || s->n_logits == 0) {
        return NULL;
    }
    if (i == -1) {
        i = s->n_logits - 1;
    }
    if (i < 0 || i >= s->n_logits) {
        return NULL;
    }
    return s->fs.logits + (size_t)i * s->model->hp.n_vocab;
}

static tkv_status tkv_check_sampler(const tkv_sampler_params *p) {
    TKV_CHECK_PARAMS("tkv_session_sample", p);
    TKV_REQUIRE(isfinite(p->temperature) && p->temperature >= 0.0f && p->top_k >= 0 &&
                    p->top_p > 0.0f && p->top_p <= 1.0f && p->min_p >= 0.0f && p->min_p < 1.0f &&
                    isfinite(p->repeat_penalty) && p->repeat_penalty > 0.0f &&
                    p->repeat_last_n >= 0,
                TKV_ERR_INVALID_ARGUMENT,
                "sampler: temperature %g (>= 0), top_k %d (>= 0), top_p %g (0, 1], min_p %g [0, 1), "
                "repeat_penalty %g (> 0), repeat_last_n %d (>= 0)", (double)p->temperature,
                (int)p->top_k, (double)p->top_p, (double)p->min_p, (double)p->repeat_penalty,
                (int)p->repeat_last_n);
    return TKV_OK;
}

/* The sampler settings of the session layer, from checked public params. */
static tkv_sampling tkv_sampling_of(const tkv_sampler_params *p) {
    tkv_sampling sp = {p->temperature, p->top_k, p->top_p, p->min_p, p->repeat_penalty,
                       p->repeat_last_n};
    return sp;
}

tkv_status tkv_session_sample(tkv_session *s, const tkv_sampler_params *params, int32_t *out) {
    TKV_REQUIRE(s && params && out, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_sample: session, params and out must not be NULL");
    TKV_TRY(tkv_check_sampler(params));
    TKV_REQUIRE(s->n_logits > 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_sample: no logits: evaluate tokens first");
    const tkv_sampling sp = tkv_sampling_of(params);
    *out = tkv_session_sample_next(s, &sp, params->seed);
    return TKV_OK;
}

tkv_status tkv_session_generate(tkv_session *s, const tkv_sampler_params *params,
                                int64_t max_tokens, tkv_token_callback callback, void *user_data,
                                int64_t *n_generated) {
    if (n_generated) {
        *n_generated = 0;
    }
    TKV_REQUIRE(s && params, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_generate: session and params must not be NULL");
    TKV_TRY(tkv_check_sampler(params));
    TKV_REQUIRE(max_tokens >= 0, TKV_ERR_INVALID_ARGUMENT, "tkv_session_generate: max_tokens < 0");
    TKV_REQUIRE(s->n_logits > 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_generate: evaluate the prompt first");
    const tkv_sampling sp = tkv_sampling_of(params);
    int64_t n = 0;
    tkv_status st =
        tkv_session_generate_tokens(s, &sp, params->seed, max_tokens, callback, user_data, &n);
    if (n_generated) {
        *n_generated = n;
    }
    return st;
}

tkv_status tkv_session_timings(const tkv_session *s, tkv_timings *out) {
    TKV_REQUIRE(s && out, TKV_ERR_INVALID_ARGUMENT, "tkv_session_timings: NULL argument");
    tkv_session_get_timings(s, out);
    return TKV_OK;
}

void tkv_session_reset_timings(tkv_session *s) {
    if (s) {
        tkv_session_clear_timings(s);
    }
}

uint32_t tkv_session_n_tokens(const tkv_session *s) {
    return s ? tkv_kv_n_tokens(&s->cache->kv) : 0;
}

tkv_status tkv_session_eval_capture(tkv_session *s, const int32_t *tokens, int64_t n,
                                    uint32_t flags, float *q, float *k, float *v) {
    TKV_REQUIRE(s && q && k && v, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_eval_capture: session, q, k and v must not be NULL");
    TKV_REQUIRE(n > 0 && n <= s->fs.n_batch, TKV_ERR_INVALID_ARGUMENT,
                "tkv_session_eval_capture: n = %lld must be in 1..n_batch (%u)", (long long)n,
                s->fs.n_batch);
    s->fs.capture_q = q;
    s->fs.capture_k = k;
    s->fs.capture_v = v;
    tkv_status st = tkv_session_eval(s, tokens, n, flags);
    s->fs.capture_q = s->fs.capture_k = s->fs.capture_v = NULL;
    return st;
}

tkv_status tkv_cache_calibrate_keys(const tkv_cache_params *params, uint32_t head_dim,
                                    uint32_t group, const float *keys, const float *queries,
                                    int64_t n, float *mu, float *scales, size_t cap,
                                    size_t *n_blocks) {
    const char *fn = "tkv_cache_calibrate_keys";
    TKV_REQUIRE(keys && queries && n_blocks, TKV_ERR_INVALID_ARGUMENT,
                "%s: keys, queries and n_blocks must not be NULL", fn);
    TKV_REQUIRE((mu && scales) || cap == 0, TKV_ERR_INVALID_ARGUMENT,
                "%s: mu or scales is NULL with cap %zu (pass cap 0 to query the count)", fn, cap);
    tkv_calib_params p;
    TKV_TRY(tkv_check_cache_params(fn, params, &p));
    TKV_REQUIRE(head_dim >= 1 && head_dim <= TKV_HEAD_DIM_MAX, TKV_ERR_INVALID_ARGUMENT,
                "%s: head_dim %u outside 1..%u", fn, head_dim, TKV_HEAD_DIM_MAX);
    TKV_REQUIRE(group >= 1 && group <= 256, TKV_ERR_INVALID_ARGUMENT, "%s: group %u outside 1..256",
                fn, group);
    TKV_REQUIRE(n >= 1 && n <= (1 << 24), TKV_ERR_INVALID_ARGUMENT,
                "%s: n = %lld outside 1..16777216", fn, (long long)n);
    tkv_calib c;
    TKV_TRY(tkv_calib_init(&c, 1, 1, head_dim));
    c.p = p;
    *n_blocks = (size_t)tkv_calib_block_of(&c, (uint32_t)n - 1) + 1;
    tkv_status st = *n_blocks <= cap ? TKV_OK
                                     : tkv_fail(TKV_ERR_BUFFER_TOO_SMALL,
                                                "%s: %zu calibration blocks do not fit in %zu", fn,
                                                *n_blocks, cap);
    int set_first = 0;
    if (st == TKV_OK) { /* reserved whether the levers are on or off: mu = 0, s = 1 */
        st = tkv_calib_reserve(&c, 0, (uint32_t)*n_blocks);
    }
    if (st == TKV_OK) {
        st = tkv_calib_observe(&c, 0, 0, queries, group, keys, (uint32_t)n, &set_first);
    }
    for (size_t b = 0; st == TKV_OK && b < *n_blocks; b++) {
        tkv_calib_block(&c, 0, 0, (uint32_t)b, mu + b * head_dim, scales + b * head_dim);
    }
    tkv_calib_release(&c);
    return st;
}
