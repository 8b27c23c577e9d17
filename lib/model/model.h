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

typedef enum tkv_arch { TKV_ARCH_LLAMA = 0, TKV_ARCH_QWEN2 = 1 } tkv_arch;

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
    float rope_theta;
    float rope_freq_scale;  /* 1 / linear scaling factor */
    int rope_neox;          /* rotate pairs (i, i + d/2) instead of (2i, 2i + 1) */
    float rms_eps;
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
    float *attn_norm;   /* (n_embd) */
    float *ffn_norm;    /* (n_embd) */
    tkv_weight wq;      /* (n_head * head_dim, n_embd) */
    tkv_weight wk;      /* (n_head_kv * head_dim, n_embd) */
    tkv_weight wv;      /* (n_head_kv * head_dim, n_embd) */
    tkv_weight wo;      /* (n_embd, n_head * head_dim) */
    float *bq, *bk, *bv; /* optional biases (Qwen2), NULL when absent */
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
    tkv_layer_weights *layers;
    tkv_tokenizer *tokenizer;
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
