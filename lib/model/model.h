/*
 * model.h - a loaded llama-family model: hyperparameters from GGUF metadata and
 * weights that stay in their GGUF format inside the mapping.
 */
#ifndef TKV_MODEL_MODEL_H
#define TKV_MODEL_MODEL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "tok/tokenizer.h"
#include "turbokv.h"

typedef enum tkv_arch {
    TKV_ARCH_LLAMA = 0,
    TKV_ARCH_QWEN2 = 1,
    TKV_ARCH_QWEN3 = 2,
    TKV_ARCH_PHI3 = 3,
    TKV_ARCH_GEMMA3 = 4
} tkv_arch;

typedef enum tkv_ffn_act { TKV_FFN_SILU = 0, TKV_FFN_GELU_TANH = 1 } tkv_ffn_act;

/* RoPE of one kind of layer (global or sliding-window), in ggml's terms: the angle of pair i
 * at position p is p * theta_i with theta_i = base^(-2i/n_rot) / factor_i, mixed with
 * freq_scale * theta_i by YaRN's ramp when ext_factor != 0; cos and sin are multiplied by
 * mscale (which scales the rotated dimensions). */
typedef struct tkv_rope_params {
    float base;       /* rope.freq_base (rope.freq_base_swa for sliding-window layers) */
    float freq_scale; /* 1 / rope.scaling.factor for linear and YaRN scaling, else 1 */
    float ext_factor; /* YaRN extrapolation mix: 1 when rope.scaling.type is yarn, else 0 */
    float mscale;     /* magnitude factor of cos and sin */
} tkv_rope_params;

typedef struct tkv_hparams {
    tkv_arch arch;
    uint32_t n_vocab;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint32_t n_ff;
    uint32_t n_ctx_train;
    uint32_t n_rot;           /* leading dimensions of each head that RoPE rotates (even) */
    int rope_neox;            /* rotate pairs (i, i + n_rot/2) instead of (2i, 2i + 1) */
    tkv_rope_params rope;     /* global layers */
    tkv_rope_params rope_swa; /* sliding-window layers */
    uint32_t n_ctx_orig;      /* rope.scaling.original_context_length (YaRN, long/short factors) */
    float yarn_beta_fast, yarn_beta_slow; /* YaRN ramp bounds, in rotations */
    float rms_eps;
    float attn_scale;    /* multiplies q.k: 1/sqrt(head_dim) unless the architecture says */
    float embd_scale;    /* multiplies the token embeddings (Gemma: sqrt(n_embd)), else 1 */
    float final_softcap; /* logits = c * tanh(logits / c) when > 0 */
    tkv_ffn_act ffn_act; /* gate activation of the gated FFN */
    uint32_t n_swa;      /* sliding window: a query at p sees keys (p - n_swa, p]; 0 = off */
} tkv_hparams;

/* A weight matrix of `rows` rows of `cols` elements in GGML type `type`. */
typedef struct tkv_weight {
    int32_t type;
    int64_t rows;
    int64_t cols;
    size_t row_bytes;
    const void *data; /* inside the mapping */
    void *packed;     /* owned copy in the matmul kernels' packed layout (tensor/matmul.h),
                         made at load when the chosen kernels have one; NULL otherwise */
} tkv_weight;

typedef struct tkv_layer_weights {
    int sliding;        /* attention over the last n_swa positions only, RoPE of rope_swa */
    float *attn_norm;   /* (n_embd) */
    float *ffn_norm;    /* (n_embd) */
    float *attn_q_norm, *attn_k_norm;      /* (head_dim) per-head RMSNorm before RoPE, or NULL */
    float *attn_post_norm, *ffn_post_norm; /* (n_embd) norms of the block outputs, or NULL */
    tkv_weight wq;      /* (n_head * head_dim, n_embd) */
    tkv_weight wk;      /* (n_head_kv * head_dim, n_embd) */
    tkv_weight wv;      /* (n_head_kv * head_dim, n_embd) */
    tkv_weight wo;      /* (n_embd, n_head * head_dim) */
    float *bq, *bk, *bv; /* optional biases (Qwen2), NULL when absent */
    /* fused tensors (Phi-3) are split into row ranges: wq/wk/wv of attn_qkv and
     * w_gate/w_up of ffn_up point into the same matrix */
    tkv_weight w_gate;  /* (n_ff, n_embd) */
    tkv_weight w_up;    /* (n_ff, n_embd) */
    tkv_weight w_down;  /* (n_embd, n_ff) */
} tkv_layer_weights;

struct tkv_model {
    /* References to this handle: the caller's (dropped by tkv_model_free) plus one per
     * cache made from it, so freeing a model with live caches defers the release to the
     * last cache instead of leaving them reading freed weights (lib/api owns the count;
     * the one field of a loaded model that changes). */
    atomic_uint refs;
    tkv_gguf *gguf;
    tkv_hparams hp;
    tkv_weight tok_embd;     /* (n_vocab, n_embd) */
    tkv_weight output;       /* (n_vocab, n_embd); the embedding when tied */
    float *output_norm;      /* (n_embd) */
    /* RoPE frequency factors (theta_i divided by factor_i), NULL when absent: Llama 3.1+
     * rope_freqs, or Phi-3's long / short LongRoPE factors chosen by the context length */
    float *rope_freqs;             /* (n_rot / 2) */
    float *rope_long, *rope_short; /* (n_rot / 2) */
    tkv_layer_weights *layers;
    tkv_tokenizer *tokenizer;
    size_t packed_bytes;     /* the weights' packed copies (tkv_weight.packed), all of them */
    char name[256];
    char arch_name[32];
    /* XXH64 of the GGUF file, computed on first use (tkv_model_fingerprint); 0 = not yet.
     * Threads racing to set it store the same value. */
    _Atomic uint64_t fingerprint;
};

tkv_status tkv_model_open(const char *path, struct tkv_model **out);
/* The same from a caller-owned GGUF image (not copied: it must outlive the model).  For
 * tests and fuzzing; no public entry. */
tkv_status tkv_model_open_memory(const void *data, size_t size, struct tkv_model **out);
void tkv_model_close(struct tkv_model *m);
/* Identity of the model's weights and metadata for saved caches: XXH64 of the whole GGUF
 * file (never 0), hashed once per model on first use (~10 ms per 100 MB). */
uint64_t tkv_model_fingerprint(struct tkv_model *m);

#endif
