/*
 * loader.c - GGUF metadata and tensors -> tkv_model.
 *
 * Supported architectures (names and conventions as llama.cpp's converter writes them):
 *   llama   SmolLM2, Llama 2/3.x (rope_freqs), TinyLlama, Mistral; RoPE on adjacent pairs
 *           (the converter permutes Q/K for it)
 *   qwen2   Q/K/V biases;  qwen3  per-head RMSNorm of Q and K before RoPE
 *   phi3    fused attn_qkv and gate-up ffn_up; LongRoPE factors; partial RoPE
 *   gemma3  GeGLU (tanh GELU), embeddings times sqrt(n_embd), norms after attention and FFN,
 *           sliding-window local layers with their own RoPE base
 * every one but llama with RoPE on pairs (i, i + n_rot/2).  Every tensor's shape and type is
 * checked against the hyperparameters before use; norms and biases are converted to float
 * once.  Nothing that changes the math is ignored: an <arch>.* metadata key or a tensor the
 * forward pass does not implement is an error naming it.
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

/* The loader's state: the model being filled and which of the file's tensors it used (every
 * tensor must be used or known to be irrelevant, tkv_check_unused_tensors). */
typedef struct tkv_loader {
    struct tkv_model *m;
    uint8_t *used; /* (n_tensors) */
} tkv_loader;

static tkv_status tkv_find_weight(tkv_loader *ld, const char *name, int64_t rows, int64_t cols,
                                  int required, tkv_weight *w) {
    memset(w, 0, sizeof *w);
    int64_t i = tkv_gguf_find_tensor(ld->m->gguf, name);
    if (i < 0) {
        TKV_REQUIRE(!required, TKV_ERR_BAD_FORMAT, "model: tensor %s is missing", name);
        return TKV_OK;
    }
    ld->used[i] = 1;
    const tkv_gguf_tensor *t = tkv_gguf_tensor_at(ld->m->gguf, i);
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

/* Rows [r0, r0 + n) of w: fused tensors (attn_qkv, Phi-3's gate-up ffn_up) are row blocks. */
static tkv_weight tkv_weight_rows(const tkv_weight *w, int64_t r0, int64_t n) {
    tkv_weight v = *w;
    v.rows = n;
    v.data = (const uint8_t *)w->data + (size_t)r0 * w->row_bytes;
    return v;
}

/* A 1-D tensor of n elements as a new float array (NULL and OK when absent and optional). */
static tkv_status tkv_load_vector(tkv_loader *ld, const char *name, int64_t n, int required,
                                  float **out) {
    tkv_weight w;
    *out = NULL;
    int64_t i = tkv_gguf_find_tensor(ld->m->gguf, name);
    if (i < 0) {
        TKV_REQUIRE(!required, TKV_ERR_BAD_FORMAT, "model: tensor %s is missing", name);
        return TKV_OK;
    }
    const tkv_gguf_tensor *t = tkv_gguf_tensor_at(ld->m->gguf, i);
    TKV_REQUIRE(t->n_elements == n && t->dims[0] == n, TKV_ERR_BAD_FORMAT,
                "model: tensor %s has %lld elements, expected %lld", name,
                (long long)t->n_elements, (long long)n);
    TKV_TRY(tkv_find_weight(ld, name, 1, n, 1, &w));
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

/* ---- metadata ---------------------------------------------------------------------------- */

enum {
    TKV_A_LLAMA = 1 << TKV_ARCH_LLAMA,
    TKV_A_QWEN2 = 1 << TKV_ARCH_QWEN2,
    TKV_A_QWEN3 = 1 << TKV_ARCH_QWEN3,
    TKV_A_PHI3 = 1 << TKV_ARCH_PHI3,
    TKV_A_GEMMA3 = 1 << TKV_ARCH_GEMMA3,
    TKV_A_ALL = 0x1f
};

static const char *const tkv_arch_names[] = {"llama", "qwen2", "qwen3", "phi3", "gemma3"};

/* The <arch>.* metadata keys this loader implements, per architecture, and the ones known not
 * to change the logits.  Any other <arch>.* key is refused by name: it may change the math
 * (llama.cpp reads keys per architecture, and a key it reads for one may mean something for
 * another), and computing without it would be silently wrong. */
static const struct {
    const char *suffix;
    unsigned archs;
} tkv_known_keys[] = {
    {"context_length", TKV_A_ALL},
    {"embedding_length", TKV_A_ALL},
    {"block_count", TKV_A_ALL},
    {"feed_forward_length", TKV_A_ALL},
    {"vocab_size", TKV_A_ALL},
    {"attention.head_count", TKV_A_ALL},
    {"attention.head_count_kv", TKV_A_ALL},
    {"attention.key_length", TKV_A_ALL},
    {"attention.value_length", TKV_A_ALL},
    {"attention.layer_norm_rms_epsilon", TKV_A_ALL},
    {"attention.sliding_window", TKV_A_ALL},
    {"attention.scale", TKV_A_ALL},
    {"rope.dimension_count", TKV_A_ALL},
    {"rope.freq_base", TKV_A_ALL},
    {"rope.scaling.type", TKV_A_ALL},
    {"rope.scaling.factor", TKV_A_ALL},
    {"rope.scaling.original_context_length", TKV_A_ALL},
    {"rope.scaling.attn_factor", TKV_A_ALL},
    {"rope.scaling.yarn_ext_factor", TKV_A_ALL},
    {"rope.scaling.yarn_beta_fast", TKV_A_ALL},
    {"rope.scaling.yarn_beta_slow", TKV_A_ALL},
    {"rope.scaling.yarn_log_multiplier", TKV_A_ALL},
    {"expert_count", TKV_A_ALL},      /* must be 0 (checked) */
    {"expert_used_count", TKV_A_ALL}, /* must be 0 (checked) */
    {"rope.freq_base_swa", TKV_A_GEMMA3},
    {"attention.sliding_window_pattern", TKV_A_GEMMA3},
    {"final_logit_softcapping", TKV_A_GEMMA3},
    /* known not to change the logits */
    {"rope.scaling.finetuned", TKV_A_ALL}, /* a note on how the model was trained */
    {"pooling_type", TKV_A_ALL},           /* embedding extraction, not next-token logits */
};

static tkv_status tkv_check_known_keys(const struct tkv_model *m) {
    const tkv_gguf *g = m->gguf;
    const size_t alen = strlen(m->arch_name);
    for (int64_t i = 0; i < tkv_gguf_n_kv(g); i++) {
        const char *key = tkv_gguf_key_name(g, i);
        if (strncmp(key, m->arch_name, alen) != 0 || key[alen] != '.') {
            continue; /* general.*, tokenizer.*, quantize.*: not the model's math */
        }
        int known = 0;
        for (size_t k = 0; k < sizeof tkv_known_keys / sizeof tkv_known_keys[0] && !known; k++) {
            known = strcmp(key + alen + 1, tkv_known_keys[k].suffix) == 0 &&
                    (tkv_known_keys[k].archs & (1u << m->hp.arch));
        }
        TKV_REQUIRE(known, TKV_ERR_UNSUPPORTED,
                    "model: metadata key %s is not implemented for %s (computing without it "
                    "could give wrong logits)",
                    key, m->arch_name);
    }
    return TKV_OK;
}

static int tkv_has_key(const tkv_gguf *g, const char *arch, const char *suffix) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return tkv_gguf_find_key(g, key) >= 0;
}

/* llama.cpp's YaRN magnitude: 1 + 0.1 * mscale * ln(scale) for scale > 1. */
static float tkv_yarn_get_mscale(float scale, float mscale) {
    return scale <= 1.0f ? 1.0f : 0.1f * mscale * logf(scale) + 1.0f;
}

/* RoPE: rope.* keys, as llama.cpp reads them (llama_model::load_hparams and the context's
 * YaRN attention factor): scaling type "linear" unless given, factor 1 / freq_scale, YaRN
 * with ext_factor 1 and beta_fast 32, beta_slow 1 unless given, cos and sin multiplied by
 * rope.scaling.attn_factor and, under YaRN, by the magnitude correction. */
static tkv_status tkv_load_rope(struct tkv_model *m) {
    const tkv_gguf *g = m->gguf;
    tkv_hparams *hp = &m->hp;
    const char *a = m->arch_name;
    TKV_TRY(tkv_meta_u32(g, a, "rope.dimension_count", &hp->n_rot, 0, hp->head_dim));
    TKV_REQUIRE(hp->n_rot >= 2 && hp->n_rot <= hp->head_dim && hp->n_rot % 2 == 0,
                TKV_ERR_BAD_FORMAT, "model: %s.rope.dimension_count %u must be even, in 2..%u", a,
                hp->n_rot, hp->head_dim);
    TKV_REQUIRE(hp->arch != TKV_ARCH_LLAMA || hp->n_rot == hp->head_dim, TKV_ERR_BAD_FORMAT,
                "model: %s.rope.dimension_count %u differs from the head size %u", a, hp->n_rot,
                hp->head_dim);
    float base, factor, attn_factor, log_mul;
    TKV_TRY(tkv_meta_f32(g, a, "rope.freq_base", &base, 10000.0f));
    TKV_REQUIRE(isfinite(base) && base > 0.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.rope.freq_base %g must be finite and > 0", a, (double)base);
    TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.factor", &factor, 0.0f));
    TKV_REQUIRE(isfinite(factor) && factor >= 0.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.rope.scaling.factor %g must be finite and >= 0", a, (double)factor);
    TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.attn_factor", &attn_factor, 1.0f));
    TKV_REQUIRE(isfinite(attn_factor) && attn_factor > 0.0f && attn_factor < 100.0f,
                TKV_ERR_BAD_FORMAT, "model: %s.rope.scaling.attn_factor %g must be in (0, 100)", a,
                (double)attn_factor);
    TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.yarn_log_multiplier", &log_mul, 0.0f));
    TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.yarn_beta_fast", &hp->yarn_beta_fast, 32.0f));
    TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.yarn_beta_slow", &hp->yarn_beta_slow, 1.0f));
    TKV_TRY(tkv_meta_u32(g, a, "rope.scaling.original_context_length", &hp->n_ctx_orig, 0,
                         hp->n_ctx_train));
    TKV_REQUIRE(hp->n_ctx_orig >= 1 && isfinite(log_mul) && isfinite(hp->yarn_beta_fast) &&
                    isfinite(hp->yarn_beta_slow) && hp->yarn_beta_fast > 0.0f &&
                    hp->yarn_beta_slow > 0.0f,
                TKV_ERR_BAD_FORMAT, "model: %s.rope.scaling YaRN parameters out of range", a);
    char kind[32] = "linear";
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (tkv_gguf_find_key(g, key) >= 0) {
        TKV_TRY(tkv_gguf_get_string_copy(g, key, kind, sizeof kind));
    }
    const int yarn = strcmp(kind, "yarn") == 0;
    TKV_REQUIRE(!yarn || base > 1.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.rope.freq_base %g must be > 1 with YaRN scaling", a, (double)base);
    TKV_REQUIRE(yarn || strcmp(kind, "linear") == 0 || strcmp(kind, "none") == 0 ||
                    strcmp(kind, "longrope") == 0,
                TKV_ERR_UNSUPPORTED,
                "model: %s.rope.scaling.type '%s' is not supported (linear, yarn, longrope, none)",
                a, kind);
    hp->rope.base = base;
    hp->rope.freq_scale = factor == 0.0f || strcmp(kind, "none") == 0 ? 1.0f : 1.0f / factor;
    hp->rope.ext_factor = 0.0f;
    if (yarn) {
        TKV_TRY(tkv_meta_f32(g, a, "rope.scaling.yarn_ext_factor", &hp->rope.ext_factor, 1.0f));
        TKV_REQUIRE(isfinite(hp->rope.ext_factor) && hp->rope.ext_factor >= 0.0f &&
                        hp->rope.ext_factor <= 1.0f,
                    TKV_ERR_BAD_FORMAT, "model: %s.rope.scaling.yarn_ext_factor %g not in [0, 1]",
                    a, (double)hp->rope.ext_factor);
    }
    /* the context's attention factor (llama.cpp's cparams.yarn_attn_factor): under YaRN the
     * magnitude correction 1 + 0.1 ln(factor), or its ratio form with yarn_log_multiplier,
     * divided by the correction ggml's rope applies itself */
    float ctx_attn = 1.0f;
    if (hp->rope.ext_factor != 0.0f) {
        const float f = 1.0f / hp->rope.freq_scale;
        ctx_attn = log_mul != 0.0f ? tkv_yarn_get_mscale(f, 1.0f) / tkv_yarn_get_mscale(f, log_mul)
                                   : tkv_yarn_get_mscale(f, 1.0f);
        ctx_attn *= 1.0f / (1.0f + 0.1f * logf(f));
    }
    ctx_attn *= attn_factor;
    hp->rope_swa = hp->rope;
    if (hp->arch == TKV_ARCH_GEMMA3) { /* local layers: their own base, never scaled */
        TKV_TRY(tkv_meta_f32(g, a, "rope.freq_base_swa", &hp->rope_swa.base, 10000.0f));
        TKV_REQUIRE(isfinite(hp->rope_swa.base) && hp->rope_swa.base > 0.0f, TKV_ERR_BAD_FORMAT,
                    "model: %s.rope.freq_base_swa %g must be finite and > 0", a,
                    (double)hp->rope_swa.base);
        hp->rope_swa.freq_scale = 1.0f;
    }
    /* ggml's rope multiplies cos and sin by 1 + 0.1 ln(1 / freq_scale) when ext_factor != 0 */
    tkv_rope_params *tables[2] = {&hp->rope, &hp->rope_swa};
    for (int t = 0; t < 2; t++) {
        tables[t]->mscale = ctx_attn * (tables[t]->ext_factor != 0.0f
                                            ? 1.0f + 0.1f * logf(1.0f / tables[t]->freq_scale)
                                            : 1.0f);
    }
    return TKV_OK;
}

/* Sliding-window attention: <arch>.attention.sliding_window positions (the query's own
 * included, llama.cpp's LLAMA_SWA_TYPE_STANDARD).  Gemma 3 alternates local and global
 * layers (attention.sliding_window_pattern: a period n, where layer l is local when
 * l % n < n - 1, or one bool per layer; 6 when absent, as llama.cpp); Mistral-style
 * llama and phi3 files apply it to every layer.  Qwen's HF configs carry a window with
 * use_sliding_window false and GGUF cannot say which, so a qwen window shorter than the
 * training context is refused. */
static tkv_status tkv_load_sliding_window(struct tkv_model *m) {
    const tkv_gguf *g = m->gguf;
    tkv_hparams *hp = &m->hp;
    const char *a = m->arch_name;
    TKV_TRY(tkv_meta_u32(g, a, "attention.sliding_window", &hp->n_swa, 0, 0));
    if (hp->n_swa == 0) {
        return TKV_OK;
    }
    if (hp->arch == TKV_ARCH_QWEN2 || hp->arch == TKV_ARCH_QWEN3) {
        TKV_REQUIRE(hp->n_swa >= hp->n_ctx_train, TKV_ERR_UNSUPPORTED,
                    "model: %s.attention.sliding_window %u is shorter than the context %u: "
                    "whether the model uses it is not recorded in GGUF",
                    a, hp->n_swa, hp->n_ctx_train);
        hp->n_swa = 0;
        return TKV_OK;
    }
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        m->layers[l].sliding = 1;
    }
    if (hp->arch != TKV_ARCH_GEMMA3) {
        return TKV_OK;
    }
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", a);
    uint32_t period = 6;
    if (tkv_gguf_find_key(g, key) >= 0 &&
        tkv_gguf_kv_type(g, tkv_gguf_find_key(g, key)) == TKV_GGUF_ARRAY) {
        tkv_gguf_array arr;
        TKV_TRY(tkv_gguf_get_array(g, key, &arr));
        TKV_REQUIRE(arr.elem_type == TKV_GGUF_BOOL && arr.count == hp->n_layer, TKV_ERR_BAD_FORMAT,
                    "model: %s must be one bool per layer (%u)", key, hp->n_layer);
        for (uint32_t l = 0; l < hp->n_layer; l++) {
            m->layers[l].sliding = ((const uint8_t *)arr.data)[l] != 0;
        }
        return TKV_OK;
    }
    TKV_TRY(tkv_meta_u32(g, a, "attention.sliding_window_pattern", &period, 0, 6));
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        m->layers[l].sliding = period == 0 || l % period < period - 1;
    }
    return TKV_OK;
}

static tkv_status tkv_load_hparams(struct tkv_model *m) {
    const tkv_gguf *g = m->gguf;
    TKV_TRY(tkv_gguf_get_string_copy(g, "general.architecture", m->arch_name, sizeof m->arch_name));
    tkv_hparams *hp = &m->hp;
    const char *a = m->arch_name;
    int found = 0;
    for (int i = 0; i < (int)(sizeof tkv_arch_names / sizeof tkv_arch_names[0]) && !found; i++) {
        if (strcmp(a, tkv_arch_names[i]) == 0) {
            hp->arch = (tkv_arch)i;
            found = 1;
        }
    }
    TKV_REQUIRE(found, TKV_ERR_UNSUPPORTED,
                "model: architecture '%s' is not supported (supported: llama, qwen2, qwen3, "
                "phi3, gemma3)",
                a);
    /* NeoX-order RoPE for every architecture but llama, whose converter permutes Q/K */
    hp->rope_neox = hp->arch != TKV_ARCH_LLAMA;
    hp->ffn_act = hp->arch == TKV_ARCH_GEMMA3 ? TKV_FFN_GELU_TANH : TKV_FFN_SILU;
    TKV_TRY(tkv_check_known_keys(m));
    if (tkv_gguf_find_key(g, "general.name") >= 0) {
        TKV_TRY(tkv_gguf_get_string_copy(g, "general.name", m->name, sizeof m->name));
    }
    uint32_t n_expert, n_expert_used;
    TKV_TRY(tkv_meta_u32(g, a, "expert_count", &n_expert, 0, 0));
    TKV_TRY(tkv_meta_u32(g, a, "expert_used_count", &n_expert_used, 0, 0));
    TKV_REQUIRE(n_expert == 0 && n_expert_used == 0, TKV_ERR_UNSUPPORTED,
                "model: %s.expert_count %u: mixture-of-experts models are not supported", a,
                n_expert);
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
    TKV_REQUIRE(hp->n_head % hp->n_head_kv == 0, TKV_ERR_BAD_FORMAT,
                "model: %u heads are not a multiple of %u KV heads", hp->n_head, hp->n_head_kv);
    TKV_REQUIRE(tkv_has_key(g, a, "attention.key_length") || hp->n_embd % hp->n_head == 0,
                TKV_ERR_BAD_FORMAT, "model: %u heads do not divide embedding %u", hp->n_head,
                hp->n_embd);
    TKV_TRY(tkv_meta_u32(g, a, "attention.key_length", &hp->head_dim, 0, hp->n_embd / hp->n_head));
    TKV_REQUIRE(hp->head_dim >= 2 && hp->head_dim <= 1024 && hp->head_dim % 2 == 0,
                TKV_ERR_UNSUPPORTED, "model: head_dim %u unsupported (even, 2..1024)", hp->head_dim);
    uint32_t value_dim;
    TKV_TRY(tkv_meta_u32(g, a, "attention.value_length", &value_dim, 0, hp->head_dim));
    TKV_REQUIRE(value_dim == hp->head_dim, TKV_ERR_UNSUPPORTED,
                "model: %s.attention.value_length %u differs from the key length %u", a, value_dim,
                hp->head_dim);
    TKV_REQUIRE(hp->n_ctx_train >= 1, TKV_ERR_BAD_FORMAT, "model: %s.context_length is 0", a);
    TKV_TRY(tkv_meta_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps, 1e-5f));
    /* RMSNorm divides by sqrt(mean(x^2) + eps): eps must be a small positive number */
    TKV_REQUIRE(isfinite(hp->rms_eps) && hp->rms_eps > 0.0f && hp->rms_eps <= 0.1f,
                TKV_ERR_BAD_FORMAT,
                "model: %s.attention.layer_norm_rms_epsilon %g must be finite, in (0, 0.1]", a,
                (double)hp->rms_eps);
    TKV_TRY(tkv_load_rope(m));
    /* the query scaling: attention.scale when given; Gemma 3 otherwise follows its reference
     * (1/sqrt(n_embd / n_head) for the 62-layer 27B, else 1/sqrt(head_dim), as llama.cpp) */
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (hp->arch == TKV_ARCH_GEMMA3 && hp->n_layer == 62) {
        hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
    }
    float scale;
    TKV_TRY(tkv_meta_f32(g, a, "attention.scale", &scale, 0.0f));
    TKV_REQUIRE(isfinite(scale) && scale >= 0.0f && scale < 100.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.attention.scale %g must be in [0, 100)", a, (double)scale);
    if (scale > 0.0f) {
        hp->attn_scale = scale;
    }
    hp->embd_scale = hp->arch == TKV_ARCH_GEMMA3 ? sqrtf((float)hp->n_embd) : 1.0f;
    TKV_TRY(tkv_meta_f32(g, a, "final_logit_softcapping", &hp->final_softcap, 0.0f));
    TKV_REQUIRE(isfinite(hp->final_softcap) && hp->final_softcap >= 0.0f, TKV_ERR_BAD_FORMAT,
                "model: %s.final_logit_softcapping %g must be finite and >= 0", a,
                (double)hp->final_softcap);
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

/* RoPE frequency factors: positive and finite (theta_i is divided by them). */
static tkv_status tkv_load_rope_factors(tkv_loader *ld, const char *name, float **out) {
    const uint32_t n = ld->m->hp.n_rot / 2;
    TKV_TRY(tkv_load_vector(ld, name, n, 0, out));
    for (uint32_t i = 0; *out && i < n; i++) {
        TKV_REQUIRE((*out)[i] > 0.0f, TKV_ERR_BAD_FORMAT,
                    "model: tensor %s: factor %u is %g, must be > 0", name, i, (double)(*out)[i]);
    }
    return TKV_OK;
}

static tkv_status tkv_load_weights(tkv_loader *ld) {
    struct tkv_model *m = ld->m;
    const tkv_hparams *hp = &m->hp;
    const tkv_arch arch = hp->arch;
    const int64_t E = hp->n_embd, F = hp->n_ff, V = hp->n_vocab, D = hp->head_dim;
    const int64_t QD = (int64_t)hp->n_head * hp->head_dim, KD = (int64_t)hp->n_head_kv * hp->head_dim;
    TKV_TRY(tkv_find_weight(ld, "token_embd.weight", V, E, 1, &m->tok_embd));
    TKV_TRY(tkv_find_weight(ld, "output.weight", V, E, 0, &m->output));
    if (!m->output.data) {
        m->output = m->tok_embd; /* tied embeddings */
    }
    TKV_TRY(tkv_load_vector(ld, "output_norm.weight", E, 1, &m->output_norm));
    TKV_TRY(tkv_load_rope_factors(ld, "rope_freqs.weight", &m->rope_freqs));
    TKV_TRY(tkv_load_rope_factors(ld, "rope_factors_long.weight", &m->rope_long));
    TKV_TRY(tkv_load_rope_factors(ld, "rope_factors_short.weight", &m->rope_short));
    TKV_REQUIRE(!m->rope_freqs || (!m->rope_long && !m->rope_short), TKV_ERR_BAD_FORMAT,
                "model: both rope_freqs and rope_factors_long/short: which applies is ambiguous");
    TKV_REQUIRE(!m->rope_long == !m->rope_short, TKV_ERR_BAD_FORMAT,
                "model: rope_factors_long and rope_factors_short come in pairs");
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    TKV_REQUIRE(m->layers, TKV_ERR_OUT_OF_MEMORY, "model: out of memory");
    const int qk_norm = arch == TKV_ARCH_QWEN3 || arch == TKV_ARCH_GEMMA3;
    const int post_norms = arch == TKV_ARCH_GEMMA3;
    char name[96];
#define TKV_NAME(suffix) (snprintf(name, sizeof name, "blk.%u.%s", l, suffix), name)
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        tkv_layer_weights *L = &m->layers[l];
        TKV_TRY(tkv_load_vector(ld, TKV_NAME("attn_norm.weight"), E, 1, &L->attn_norm));
        TKV_TRY(tkv_load_vector(ld, TKV_NAME("ffn_norm.weight"), E, 1, &L->ffn_norm));
        /* Q, K, V as three tensors or one fused attn_qkv (rows Q | K | V) */
        tkv_weight qkv;
        TKV_TRY(tkv_find_weight(ld, TKV_NAME("attn_qkv.weight"), QD + 2 * KD, E, 0, &qkv));
        if (qkv.data) {
            L->wq = tkv_weight_rows(&qkv, 0, QD);
            L->wk = tkv_weight_rows(&qkv, QD, KD);
            L->wv = tkv_weight_rows(&qkv, QD + KD, KD);
        } else {
            TKV_TRY(tkv_find_weight(ld, TKV_NAME("attn_q.weight"), QD, E, 1, &L->wq));
            TKV_TRY(tkv_find_weight(ld, TKV_NAME("attn_k.weight"), KD, E, 1, &L->wk));
            TKV_TRY(tkv_find_weight(ld, TKV_NAME("attn_v.weight"), KD, E, 1, &L->wv));
        }
        TKV_TRY(tkv_find_weight(ld, TKV_NAME("attn_output.weight"), E, QD, 1, &L->wo));
        TKV_TRY(tkv_load_vector(ld, TKV_NAME("attn_q.bias"), QD, 0, &L->bq));
        TKV_TRY(tkv_load_vector(ld, TKV_NAME("attn_k.bias"), KD, 0, &L->bk));
        TKV_TRY(tkv_load_vector(ld, TKV_NAME("attn_v.bias"), KD, 0, &L->bv));
        if (qk_norm) {
            TKV_TRY(tkv_load_vector(ld, TKV_NAME("attn_q_norm.weight"), D, 1, &L->attn_q_norm));
            TKV_TRY(tkv_load_vector(ld, TKV_NAME("attn_k_norm.weight"), D, 1, &L->attn_k_norm));
        }
        if (post_norms) {
            TKV_TRY(tkv_load_vector(ld, TKV_NAME("post_attention_norm.weight"), E, 1,
                                    &L->attn_post_norm));
            TKV_TRY(tkv_load_vector(ld, TKV_NAME("post_ffw_norm.weight"), E, 1, &L->ffn_post_norm));
        }
        if (arch == TKV_ARCH_PHI3) { /* gate and up fused: rows gate | up */
            tkv_weight gu;
            TKV_TRY(tkv_find_weight(ld, TKV_NAME("ffn_up.weight"), 2 * F, E, 1, &gu));
            L->w_gate = tkv_weight_rows(&gu, 0, F);
            L->w_up = tkv_weight_rows(&gu, F, F);
        } else {
            TKV_TRY(tkv_find_weight(ld, TKV_NAME("ffn_gate.weight"), F, E, 1, &L->w_gate));
            TKV_TRY(tkv_find_weight(ld, TKV_NAME("ffn_up.weight"), F, E, 1, &L->w_up));
        }
        TKV_TRY(tkv_find_weight(ld, TKV_NAME("ffn_down.weight"), E, F, 1, &L->w_down));
    }
#undef TKV_NAME
    return TKV_OK;
}

/* Tensors a file may carry that do not change the logits: older converters stored each
 * layer's RoPE inverse frequencies (recomputed here from the metadata). */
static int tkv_tensor_is_irrelevant(const char *name) {
    unsigned l;
    int end = 0;
    return sscanf(name, "blk.%u.attn_rot_embd%n", &l, &end) == 1 && name[end] == '\0';
}

/* Every tensor of the file is used by the forward pass or known to be irrelevant: any other
 * (an output bias, a MoE router, an extra norm) changes the math, and computing without it
 * would give wrong logits without an error. */
static tkv_status tkv_check_unused_tensors(const tkv_loader *ld) {
    const tkv_gguf *g = ld->m->gguf;
    for (int64_t i = 0; i < tkv_gguf_n_tensors(g); i++) {
        const char *name = tkv_gguf_tensor_at(g, i)->name;
        TKV_REQUIRE(ld->used[i] || tkv_tensor_is_irrelevant(name), TKV_ERR_UNSUPPORTED,
                    "model: tensor %s is not implemented for %s (computing without it would "
                    "give wrong logits)",
                    name, ld->m->arch_name);
    }
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

/* Shared by the file and the memory entries: m->gguf is open (or st says why not). */
/* The packed copy of a weight for the chosen matmul kernels (tensor/matmul.h), when they
 * have one for its type and shape.  The products read only the copy afterwards; the file's
 * pages of the matrix are read once here.  The copy is an optimization: without memory for
 * it the weight stays unpacked (same results up to float summation order). */
static void tkv_pack_weight(struct tkv_model *m, tkv_weight *w) {
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    const size_t bytes = tkv_matmul_packed_bytes(k, w->type, w->rows, w->cols);
    if (bytes == 0 || (w->packed = tkv_calloc_aligned(bytes, 1)) == NULL) {
        return;
    }
    tkv_matmul_pack(w->type, w->data, w->row_bytes, w->rows, w->cols, w->packed);
    m->packed_bytes += bytes;
}

static void tkv_pack_weights(struct tkv_model *m) {
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        tkv_layer_weights *L = &m->layers[l];
        tkv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            tkv_pack_weight(m, ws[i]);
        }
    }
    tkv_pack_weight(m, &m->output); /* not tok_embd: the embedding lookup reads the file */
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
    tkv_loader ld = {m, NULL};
    if (st == TKV_OK) {
        ld.used = calloc((size_t)tkv_gguf_n_tensors(m->gguf) + 1, 1);
        st = ld.used ? TKV_OK : tkv_fail(TKV_ERR_OUT_OF_MEMORY, "model: out of memory");
    }
    if (st == TKV_OK) {
        st = tkv_load_weights(&ld);
    }
    if (st == TKV_OK) {
        st = tkv_check_unused_tensors(&ld);
    }
    if (st == TKV_OK) {
        st = tkv_load_sliding_window(m);
    }
    free(ld.used);
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
            free(L->attn_q_norm);
            free(L->attn_k_norm);
            free(L->attn_post_norm);
            free(L->ffn_post_norm);
            tkv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
                tkv_free_aligned(ws[i]->packed);
            }
        }
    }
    tkv_free_aligned(m->output.packed);
    free(m->layers);
    free(m->output_norm);
    free(m->rope_freqs);
    free(m->rope_long);
    free(m->rope_short);
    tkv_tokenizer_free(m->tokenizer);
    tkv_gguf_close(m->gguf);
    free(m);
}
