/*
 * loader.c - GGUF metadata and tensors -> tkv_model.
 *
 * Supported architectures: "llama" (SmolLM2, Llama 2/3, TinyLlama; RoPE on adjacent
 * pairs, as llama.cpp's converter permutes Q/K for it) and "qwen2" (Q/K/V biases,
 * RoPE on pairs (i, i + d/2)).  Every tensor's shape and type is checked against the
 * hyperparameters before use; norms and biases are converted to float once.
 */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/hash.h"
#include "base/status.h"
#include "tensor/formats.h"
#include "tensor/matmul.h"

static tkv_status tkv_meta_u32(const tkv_gguf *g, const char *arch, const char *suffix,
                               uint32_t *out, int required, uint32_t fallback) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (tkv_gguf_find_key(g, key) < 0) {
        TKV_REQUIRE(!required, TKV_ERR_BAD_FORMAT, "model: metadata key %s is missing", key);
        *out = fallback;
        return TKV_OK;
    }
    return tkv_gguf_get_u32(g, key, out);
}

static tkv_status tkv_meta_f32(const tkv_gguf *g, const char *arch, const char *suffix,
                               float *out, float fallback) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (tkv_gguf_find_key(g, key) < 0) {
        *out = fallback;
        return TKV_OK;
    }
    return tkv_gguf_get_f32(g, key, out);
}

static tkv_status tkv_find_weight(const struct tkv_model *m, const char *name, int64_t rows,
                                  int64_t cols, int required, tkv_weight *w) {
    memset(w, 0, sizeof *w);
    int64_t i = tkv_gguf_find_tensor(m->gguf, name);
    if (i < 0) {
        TKV_REQUIRE(!required, TKV_ERR_BAD_FORMAT, "model: tensor %s is missing", name);
        return TKV_OK;
    }
    const tkv_gguf_tensor *t = tkv_gguf_tensor_at(m->gguf, i);
    TKV_REQUIRE(t->n_dims <= 2 && t->dims[0] == cols && t->dims[1] == rows, TKV_ERR_BAD_FORMAT,
                "model: tensor %s has shape [%lld, %lld], expected [%lld, %lld]", name,
                (long long)t->dims[0], (long long)t->dims[1], (long long)cols, (long long)rows);
    TKV_REQUIRE(tkv_type_get(t->type) != NULL, TKV_ERR_UNSUPPORTED,
                "model: tensor %s has type %s, which turbokv cannot compute with", name,
                tkv_gguf_type_name(t->type));
    w->type = t->type;
    w->rows = rows;
    w->cols = cols;
    TKV_TRY(tkv_type_row_bytes(t->type, cols, &w->row_bytes));
    w->data = t->data;
    return TKV_OK;
}

/* A 1-D tensor of n elements as a new float array (NULL and OK when absent and optional). */
static tkv_status tkv_load_vector(const struct tkv_model *m, const char *name, int64_t n,
                                  int required, float **out) {
    tkv_weight w;
    *out = NULL;
    int64_t i = tkv_gguf_find_tensor(m->gguf, name);
    if (i < 0) {
        TKV_REQUIRE(!required, TKV_ERR_BAD_FORMAT, "model: tensor %s is missing", name);
        return TKV_OK;
    }
    const tkv_gguf_tensor *t = tkv_gguf_tensor_at(m->gguf, i);
    TKV_REQUIRE(t->n_elements == n && t->dims[0] == n, TKV_ERR_BAD_FORMAT,
                "model: tensor %s has %lld elements, expected %lld", name,
                (long long)t->n_elements, (long long)n);
    TKV_TRY(tkv_find_weight(m, name, 1, n, 1, &w));
    *out = malloc((size_t)n * sizeof(float));
    TKV_REQUIRE(*out, TKV_ERR_OUT_OF_MEMORY, "model: out of memory");
    tkv_dequantize_row(w.type, w.data, *out, n);
    for (int64_t j = 0; j < n; j++) {
        TKV_REQUIRE(isfinite((*out)[j]), TKV_ERR_BAD_FORMAT,
                    "model: tensor %s: element %lld is not finite (%g)", name, (long long)j,
                    (double)(*out)[j]);
    }
    return TKV_OK;
}

static tkv_status tkv_load_hparams(struct tkv_model *m) {
    const tkv_gguf *g = m->gguf;
    TKV_TRY(tkv_gguf_get_string_copy(g, "general.architecture", m->arch_name, sizeof m->arch_name));
    tkv_hparams *hp = &m->hp;
    const char *a = m->arch_name;
    if (strcmp(a, "llama") == 0) {
        hp->arch = TKV_ARCH_LLAMA;
    } else if (strcmp(a, "qwen2") == 0) {
        hp->arch = TKV_ARCH_QWEN2;
        hp->rope_neox = 1;
    } else {
        return tkv_fail(TKV_ERR_UNSUPPORTED, "model: architecture '%s' is not supported "
                        "(supported: llama, qwen2)", a);
    }
    if (tkv_gguf_find_key(g, "general.name") >= 0) {
        TKV_TRY(tkv_gguf_get_string_copy(g, "general.name", m->name, sizeof m->name));
    }
    TKV_TRY(tkv_meta_u32(g, a, "embedding_length", &hp->n_embd, 1, 0));
    TKV_TRY(tkv_meta_u32(g, a, "block_count", &hp->n_layer, 1, 0));
    TKV_TRY(tkv_meta_u32(g, a, "attention.head_count", &hp->n_head, 1, 0));
    TKV_TRY(tkv_meta_u32(g, a, "attention.head_count_kv", &hp->n_head_kv, 0, hp->n_head));
    TKV_TRY(tkv_meta_u32(g, a, "feed_forward_length", &hp->n_ff, 1, 0));
    TKV_TRY(tkv_meta_u32(g, a, "context_length", &hp->n_ctx_train, 0, 2048));
    TKV_REQUIRE(hp->n_embd > 0 && hp->n_layer > 0 && hp->n_head > 0 && hp->n_head_kv > 0 &&
                    hp->n_layer <= 1024 && hp->n_head <= 1024 && hp->n_ff > 0,
                TKV_ERR_BAD_FORMAT, "model: invalid hyperparameters (embd %u, layers %u, heads %u)",
                hp->n_embd, hp->n_layer, hp->n_head);
    TKV_REQUIRE(hp->n_embd % hp->n_head == 0 && hp->n_head % hp->n_head_kv == 0,
                TKV_ERR_BAD_FORMAT, "model: %u heads / %u KV heads do not divide embedding %u",
                hp->n_head, hp->n_head_kv, hp->n_embd);
    uint32_t head_dim = hp->n_embd / hp->n_head;
    TKV_TRY(tkv_meta_u32(g, a, "attention.key_length", &hp->head_dim, 0, head_dim));
    TKV_REQUIRE(hp->head_dim >= 2 && hp->head_dim <= 1024 && hp->head_dim % 2 == 0,
                TKV_ERR_UNSUPPORTED, "model: head_dim %u unsupported (even, 2..1024)", hp->head_dim);
    uint32_t value_dim;
    TKV_TRY(tkv_meta_u32(g, a, "attention.value_length", &value_dim, 0, hp->head_dim));
    TKV_REQUIRE(value_dim == hp->head_dim, TKV_ERR_UNSUPPORTED,
                "model: %s.attention.value_length %u differs from the key length %u", a, value_dim,
                hp->head_dim);
    uint32_t rope_dims;
    TKV_TRY(tkv_meta_u32(g, a, "rope.dimension_count", &rope_dims, 0, hp->head_dim));
    TKV_REQUIRE(rope_dims == hp->head_dim, TKV_ERR_UNSUPPORTED,
                "model: %s.rope.dimension_count %u: RoPE on part of the head (head_dim %u) is "
                "not supported",
                a, rope_dims, hp->head_dim);
    TKV_REQUIRE(hp->n_ctx_train >= 1, TKV_ERR_BAD_FORMAT, "model: %s.context_length is 0", a);
    TKV_TRY(tkv_meta_f32(g, a, "rope.freq_base", &hp->rope_theta, 10000.0f));
    TKV_REQUIRE(isfinite(hp->rope_theta) && hp->rope_theta > 0.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.rope.freq_base %g must be finite and > 0", a, (double)hp->rope_theta);
    TKV_TRY(tkv_meta_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps, 1e-5f));
    /* RMSNorm divides by sqrt(mean(x^2) + eps): eps must be a small positive number */
    TKV_REQUIRE(isfinite(hp->rms_eps) && hp->rms_eps > 0.0f && hp->rms_eps <= 0.1f,
                TKV_ERR_BAD_FORMAT,
                "model: %s.attention.layer_norm_rms_epsilon %g must be finite, in (0, 0.1]", a,
                (double)hp->rms_eps);
    float factor = 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (tkv_gguf_find_key(g, key) >= 0) {
        char kind[32];
        TKV_TRY(tkv_gguf_get_string_copy(g, key, kind, sizeof kind));
        if (strcmp(kind, "linear") == 0) {
            TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.factor", &factor, 1.0f));
        } else if (strcmp(kind, "none") != 0) {
            return tkv_fail(TKV_ERR_UNSUPPORTED, "model: rope scaling '%s' is not supported", kind);
        }
    }
    TKV_REQUIRE(isfinite(factor) && factor > 0.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.rope.scaling.factor %g must be finite and > 0", a, (double)factor);
    hp->rope_freq_scale = 1.0f / factor;
    return TKV_OK;
}

static tkv_status tkv_load_tokenizer(struct tkv_model *m) {
    const tkv_gguf *g = m->gguf;
    char model_name[32] = "", pre[64] = "";
    TKV_TRY(tkv_gguf_get_string_copy(g, "tokenizer.ggml.model", model_name, sizeof model_name));
    if (tkv_gguf_find_key(g, "tokenizer.ggml.pre") >= 0) {
        TKV_TRY(tkv_gguf_get_string_copy(g, "tokenizer.ggml.pre", pre, sizeof pre));
    }
    tkv_gguf_array toks, merges, scores, types;
    TKV_TRY(tkv_gguf_get_array(g, "tokenizer.ggml.tokens", &toks));
    TKV_REQUIRE(toks.strings && toks.count > 0 && toks.count < INT32_MAX, TKV_ERR_BAD_FORMAT,
                "model: tokenizer.ggml.tokens is not a non-empty string array");
    const int has_merges = tkv_gguf_find_key(g, "tokenizer.ggml.merges") >= 0;
    const int has_scores = tkv_gguf_find_key(g, "tokenizer.ggml.scores") >= 0;
    const int has_types = tkv_gguf_find_key(g, "tokenizer.ggml.token_type") >= 0;
    if (has_merges) {
        TKV_TRY(tkv_gguf_get_array(g, "tokenizer.ggml.merges", &merges));
        TKV_REQUIRE(merges.strings, TKV_ERR_BAD_FORMAT, "model: tokenizer.ggml.merges is not strings");
    }
    if (has_scores) {
        TKV_TRY(tkv_gguf_get_array(g, "tokenizer.ggml.scores", &scores));
        TKV_REQUIRE(scores.count == toks.count, TKV_ERR_BAD_FORMAT, "model: %llu scores for %llu tokens",
                    (unsigned long long)scores.count, (unsigned long long)toks.count);
    }
    if (has_types) {
        TKV_TRY(tkv_gguf_get_array(g, "tokenizer.ggml.token_type", &types));
        TKV_REQUIRE(types.count == toks.count, TKV_ERR_BAD_FORMAT, "model: %llu token types for %llu "
                    "tokens", (unsigned long long)types.count, (unsigned long long)toks.count);
    }
    const size_t n = (size_t)toks.count;
    const size_t nm = has_merges ? (size_t)merges.count : 0;
    const char **tok_ptr = calloc(n, sizeof *tok_ptr);
    size_t *tok_len = calloc(n, sizeof *tok_len);
    float *score_v = has_scores ? calloc(n, sizeof *score_v) : NULL;
    int32_t *type_v = has_types ? calloc(n, sizeof *type_v) : NULL;
    const char **merge_ptr = nm ? calloc(nm, sizeof *merge_ptr) : NULL;
    size_t *merge_len = nm ? calloc(nm, sizeof *merge_len) : NULL;
    tkv_status st = TKV_OK;
    if (!tok_ptr || !tok_len || (has_scores && !score_v) || (has_types && !type_v) ||
        (nm && (!merge_ptr || !merge_len))) {
        st = tkv_fail(TKV_ERR_OUT_OF_MEMORY, "model: out of memory for the vocabulary");
    }
    for (size_t i = 0; st == TKV_OK && i < n; i++) {
        tok_ptr[i] = toks.strings[i].ptr;
        tok_len[i] = toks.strings[i].len;
        if (has_scores) {
            st = tkv_gguf_array_f32(&scores, i, &score_v[i]);
        }
        if (st == TKV_OK && has_types) {
            st = tkv_gguf_array_i32(&types, i, &type_v[i]);
        }
    }
    for (size_t i = 0; st == TKV_OK && i < nm; i++) {
        merge_ptr[i] = merges.strings[i].ptr;
        merge_len[i] = merges.strings[i].len;
    }
    if (st == TKV_OK) {
        tkv_tokenizer_desc desc;
        tkv_tokenizer_desc_init(&desc);
        desc.model = model_name;
        desc.pre = pre;
        desc.n_tokens = n;
        desc.tokens = tok_ptr;
        desc.token_lens = tok_len;
        desc.scores = score_v;
        desc.token_types = type_v;
        desc.n_merges = nm;
        desc.merges = merge_ptr;
        desc.merge_lens = merge_len;
        const char *ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                             "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                             "tokenizer.ggml.eot_token_id"};
        int32_t *dst[] = {&desc.bos_id, &desc.eos_id, &desc.unk_id, &desc.pad_id, &desc.eot_id};
        for (int k = 0; k < 5 && st == TKV_OK; k++) {
            uint32_t v;
            if (tkv_gguf_find_key(g, ids[k]) >= 0) {
                st = tkv_gguf_get_u32(g, ids[k], &v);
                if (st == TKV_OK) {
                    *dst[k] = v < n ? (int32_t)v : -1;
                }
            }
        }
        int flag;
        if (st == TKV_OK && tkv_gguf_find_key(g, "tokenizer.ggml.add_bos_token") >= 0 &&
            tkv_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag) == TKV_OK) {
            desc.add_bos = flag;
        }
        if (st == TKV_OK && tkv_gguf_find_key(g, "tokenizer.ggml.add_space_prefix") >= 0 &&
            tkv_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &flag) == TKV_OK) {
            desc.add_space_prefix = flag;
        }
        if (st == TKV_OK) {
            st = tkv_tokenizer_create(&desc, &m->tokenizer);
        }
    }
    free(tok_ptr);
    free(tok_len);
    free(score_v);
    free(type_v);
    free(merge_ptr);
    free(merge_len);
    return st;
}

static tkv_status tkv_load_weights(struct tkv_model *m) {
    const tkv_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff, V = hp->n_vocab;
    const int64_t QD = (int64_t)hp->n_head * hp->head_dim, KD = (int64_t)hp->n_head_kv * hp->head_dim;
    TKV_TRY(tkv_find_weight(m, "token_embd.weight", V, E, 1, &m->tok_embd));
    TKV_TRY(tkv_find_weight(m, "output.weight", V, E, 0, &m->output));
    if (!m->output.data) {
        m->output = m->tok_embd; /* tied embeddings */
    }
    TKV_TRY(tkv_load_vector(m, "output_norm.weight", E, 1, &m->output_norm));
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    TKV_REQUIRE(m->layers, TKV_ERR_OUT_OF_MEMORY, "model: out of memory");
    char name[96];
#define TKV_NAME(suffix) (snprintf(name, sizeof name, "blk.%u.%s", l, suffix), name)
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        tkv_layer_weights *L = &m->layers[l];
        TKV_TRY(tkv_load_vector(m, TKV_NAME("attn_norm.weight"), E, 1, &L->attn_norm));
        TKV_TRY(tkv_load_vector(m, TKV_NAME("ffn_norm.weight"), E, 1, &L->ffn_norm));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("attn_q.weight"), QD, E, 1, &L->wq));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("attn_k.weight"), KD, E, 1, &L->wk));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("attn_v.weight"), KD, E, 1, &L->wv));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("attn_output.weight"), E, QD, 1, &L->wo));
        TKV_TRY(tkv_load_vector(m, TKV_NAME("attn_q.bias"), QD, 0, &L->bq));
        TKV_TRY(tkv_load_vector(m, TKV_NAME("attn_k.bias"), KD, 0, &L->bk));
        TKV_TRY(tkv_load_vector(m, TKV_NAME("attn_v.bias"), KD, 0, &L->bv));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("ffn_gate.weight"), F, E, 1, &L->w_gate));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("ffn_up.weight"), F, E, 1, &L->w_up));
        TKV_TRY(tkv_find_weight(m, TKV_NAME("ffn_down.weight"), E, F, 1, &L->w_down));
    }
#undef TKV_NAME
    return TKV_OK;
}

/* <arch>.vocab_size, when present, must agree with the tokenizer (whose size the
 * embedding and output shapes are checked against). */
static tkv_status tkv_check_vocab_size(const struct tkv_model *m) {
    uint32_t n;
    TKV_TRY(tkv_meta_u32(m->gguf, m->arch_name, "vocab_size", &n, 0, m->hp.n_vocab));
    TKV_REQUIRE(n == m->hp.n_vocab, TKV_ERR_BAD_FORMAT,
                "model: %s.vocab_size %u disagrees with the %u tokens of the tokenizer",
                m->arch_name, n, m->hp.n_vocab);
    return TKV_OK;
}

/* Tensors that change the math of these architectures and that the forward pass does not
 * implement: loading would silently compute something else. */
static tkv_status tkv_check_unsupported_tensors(const struct tkv_model *m) {
    static const char *const unsupported[] = {
        "rope_freqs.weight", /* Llama 3.1+ RoPE frequency scaling */
    };
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        TKV_REQUIRE(tkv_gguf_find_tensor(m->gguf, unsupported[i]) < 0, TKV_ERR_UNSUPPORTED,
                    "model: tensor %s is not supported by this version (the model would "
                    "run with the wrong math)",
                    unsupported[i]);
    }
    return TKV_OK;
}

/* Shared by the file and the memory entries: m->gguf is open (or st says why not). */
/* The packed copy of a weight for the chosen matmul kernels (tensor/matmul.h), when they
 * have one for its type and shape.  The products read only the copy afterwards; the file's
 * pages of the matrix are read once here.  The copy is an optimization: without memory for
 * it the weight stays unpacked (same results up to float summation order). */
static void tkv_pack_weight(tkv_weight *w) {
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    const size_t bytes = tkv_matmul_packed_bytes(k, w->type, w->rows, w->cols);
    if (bytes == 0 || (w->packed = tkv_calloc_aligned(bytes, 1)) == NULL) {
        return;
    }
    tkv_matmul_pack(w->type, w->data, w->row_bytes, w->rows, w->cols, w->packed);
}

static void tkv_pack_weights(struct tkv_model *m) {
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        tkv_layer_weights *L = &m->layers[l];
        tkv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            tkv_pack_weight(ws[i]);
        }
    }
    tkv_pack_weight(&m->output); /* not tok_embd: the embedding lookup reads the file */
}

static tkv_status tkv_model_finish(struct tkv_model *m, tkv_status st, struct tkv_model **out) {
    if (st == TKV_OK) {
        st = tkv_load_hparams(m);
    }
    if (st == TKV_OK) {
        st = tkv_load_tokenizer(m);
    }
    if (st == TKV_OK) {
        m->hp.n_vocab = (uint32_t)tkv_tokenizer_n_vocab(m->tokenizer);
        st = tkv_check_vocab_size(m);
    }
    if (st == TKV_OK) {
        st = tkv_check_unsupported_tensors(m);
    }
    if (st == TKV_OK) {
        st = tkv_load_weights(m);
    }
    if (st == TKV_OK) {
        tkv_pack_weights(m);
    }
    if (st != TKV_OK) {
        tkv_model_close(m);
        return st;
    }
    atomic_init(&m->refs, 1u); /* the caller's reference (lib/api counts the caches) */
    *out = m;
    return TKV_OK;
}

tkv_status tkv_model_open(const char *path, struct tkv_model **out) {
    *out = NULL;
    struct tkv_model *m = calloc(1, sizeof *m);
    TKV_REQUIRE(m, TKV_ERR_OUT_OF_MEMORY, "model: out of memory");
    return tkv_model_finish(m, tkv_gguf_open(path, &m->gguf), out);
}

tkv_status tkv_model_open_memory(const void *data, size_t size, struct tkv_model **out) {
    *out = NULL;
    struct tkv_model *m = calloc(1, sizeof *m);
    TKV_REQUIRE(m, TKV_ERR_OUT_OF_MEMORY, "model: out of memory");
    return tkv_model_finish(m, tkv_gguf_open_memory(data, size, &m->gguf), out);
}

uint64_t tkv_model_fingerprint(struct tkv_model *m) {
    uint64_t fp = atomic_load(&m->fingerprint);
    if (fp == 0) {
        fp = tkv_hash64(tkv_gguf_file_data(m->gguf), tkv_gguf_file_size(m->gguf), 0);
        fp = fp ? fp : 1; /* 0 means "not computed yet" */
        atomic_store(&m->fingerprint, fp);
    }
    return fp;
}

void tkv_model_close(struct tkv_model *m) {
    if (!m) {
        return;
    }
    if (m->layers) {
        for (uint32_t l = 0; l < m->hp.n_layer; l++) {
            tkv_layer_weights *L = &m->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->bq);
            free(L->bk);
            free(L->bv);
            tkv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
                tkv_free_aligned(ws[i]->packed);
            }
        }
    }
    tkv_free_aligned(m->output.packed);
    free(m->layers);
    free(m->output_norm);
    tkv_tokenizer_free(m->tokenizer);
    tkv_gguf_close(m->gguf);
    free(m);
}
