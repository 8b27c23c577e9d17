/*
 * turbokv.h - the public C ABI of libturbokv.
 *
 * turbokv compresses the key/value cache of transformer language models with
 * TurboQuant-style codecs (random rotation + Lloyd-Max scalar codebooks) and
 * measures what the compression costs.  This is the only public header.
 *
 * ABI promise: within one major version, functions, enum values and struct
 * layouts only get added.  Params structs start with `struct_size` and end in a
 * zeroed `reserved` array; new fields take reserved space.  Codec ids and codec
 * names are part of the ABI and are never reused.
 *
 * Sections: version; export macros; status codes and errors; codecs (ids,
 * properties); codec handles and kernels; model; cache; session; utilities.
 */
#ifndef TURBOKV_H
#define TURBOKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==================================================================================
 * Version
 * ================================================================================== */

/* The project's one version: CMakeLists.txt and pyproject.toml read these three lines,
 * the Python package carries what pyproject read (turbokv.__version__). */
#define TKV_VERSION_MAJOR 0
#define TKV_VERSION_MINOR 7
#define TKV_VERSION_PATCH 0
#define TKV_VERSION_NUMBER (TKV_VERSION_MAJOR * 10000 + TKV_VERSION_MINOR * 100 + TKV_VERSION_PATCH)
#define TKV_VERSION_STR_(x) #x
#define TKV_VERSION_STR(x) TKV_VERSION_STR_(x)
#define TKV_VERSION_STRING                                                                         \
    TKV_VERSION_STR(TKV_VERSION_MAJOR)                                                             \
    "." TKV_VERSION_STR(TKV_VERSION_MINOR) "." TKV_VERSION_STR(TKV_VERSION_PATCH)

/* ==================================================================================
 * Export and deprecation macros
 * ================================================================================== */

#if defined(_WIN32)
#  if defined(TKV_BUILD)
#    define TKV_API __declspec(dllexport)
#  else
#    define TKV_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define TKV_API __attribute__((visibility("default")))
#else
#  define TKV_API
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define TKV_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#  define TKV_DEPRECATED(msg)
#endif

/*
 * Runtime version of the library, TKV_VERSION_NUMBER of the build that produced it.
 * Compare with the header's TKV_VERSION_NUMBER to detect a mismatched library.
 * Thread-safety: any thread.  Since 0.1.
 */
TKV_API uint32_t tkv_version_number(void);

/* Runtime version string, e.g. "0.1.0".  Static storage.  Since 0.1. */
TKV_API const char *tkv_version_string(void);

/* ==================================================================================
 * Status codes and errors
 *
 * Every function that can fail returns a tkv_status: TKV_OK (0) or a negative
 * TKV_ERR_* code.  Codes are appended, never renumbered.  The detailed message of
 * the last failure is kept per thread (thread-local) and read with tkv_last_error().
 * The library never prints, never calls exit() or abort() on bad input.
 * ================================================================================== */

typedef int32_t tkv_status;

#define TKV_OK 0
#define TKV_ERR_INVALID_ARGUMENT (-1) /* a NULL pointer, a size out of range, a bad name */
#define TKV_ERR_OUT_OF_MEMORY (-2)    /* an allocation failed */
#define TKV_ERR_IO (-3)               /* a file could not be opened, read or mapped */
#define TKV_ERR_BAD_FORMAT (-4)       /* a file or an encoded buffer is malformed */
#define TKV_ERR_UNSUPPORTED (-5)      /* valid, but not supported by this build */
#define TKV_ERR_BUFFER_TOO_SMALL (-6) /* an output buffer is too small */
#define TKV_ERR_CACHE_FULL (-7)       /* a KV cache reached its capacity */
#define TKV_ERR_ABI (-8)              /* struct_size or reserved words do not match */
#define TKV_ERR_INTERNAL (-9)         /* a bug: please report it */
#define TKV_ERR_MISMATCH (-10)        /* a saved cache or session belongs to another model,
                                         codec set or configuration (since 0.6) */

/*
 * Name of a status code ("TKV_OK", "TKV_ERR_INVALID_ARGUMENT", ...), or
 * "TKV_ERR_UNKNOWN" for a value that is no status.  Static storage.  Since 0.1.
 */
TKV_API const char *tkv_status_name(tkv_status status);

/*
 * Detailed message of the last failing call made by the calling thread, e.g.
 * "tkv_codec_create: head_dim 7 is odd (must be even, 2..1024)".
 * Returns "" when no call has failed on this thread yet.
 * Lifetime: valid until the next failing call on the same thread.  Since 0.1.
 */
TKV_API const char *tkv_last_error(void);

/* ==================================================================================
 * Codecs: ids, names and properties
 *
 * A codec turns one head vector (head_dim floats, any even head_dim from 2 to 1024;
 * the trellis codecs need a multiple of 8, at least 16) into a fixed number of bytes.
 * Ids and names are ABI.
 * All functions in this section are pure and may be called from any thread.
 * ================================================================================== */

#define TKV_CODEC_FP32 0            /* "fp32": 4 bytes per element */
#define TKV_CODEC_FP16 1            /* "fp16": IEEE half */
#define TKV_CODEC_BF16 2            /* "bf16": bfloat16, round to nearest even */
#define TKV_CODEC_Q8_0 3            /* "q8_0": 32-element blocks, fp16 scale + int8 */
#define TKV_CODEC_Q4_0 4            /* "q4_0": 32-element blocks, fp16 scale + 4-bit */
#define TKV_CODEC_Q8_0_ROT 5        /* "q8_0_rot": random rotation, then q8_0 */
#define TKV_CODEC_Q4_0_ROT 6        /* "q4_0_rot": random rotation, then q4_0 */
#define TKV_CODEC_TURBO_2B 7        /* "turbo_kv_2b": norm + rotation + 2-bit Lloyd-Max */
#define TKV_CODEC_TURBO_3B 8        /* "turbo_kv_3b" */
#define TKV_CODEC_TURBO_4B 9        /* "turbo_kv_4b" */
#define TKV_CODEC_TURBO_5B 10       /* "turbo_kv_5b" */
#define TKV_CODEC_TURBO_5B_FAST 11  /* "turbo_kv_5b_fast": 5-bit indices, one per byte */
#define TKV_CODEC_TURBO_3B_QJL 12   /* "turbo_kv_3b_qjl": 2-bit codebook + 1-bit QJL sketch */
#define TKV_CODEC_TURBO_4B_QJL 13   /* "turbo_kv_4b_qjl": 3-bit codebook + 1-bit QJL sketch */
/* Trellis-coded turbo codecs (since 0.3): the bytes of turbo_kv_Nb, trellis-coded symbols */
#define TKV_CODEC_TURBO_2B_TCQ 14   /* "turbo_kv_2b_tcq": norm + rotation + 2-bit trellis */
#define TKV_CODEC_TURBO_3B_TCQ 15   /* "turbo_kv_3b_tcq" */
#define TKV_CODEC_TURBO_4B_TCQ 16   /* "turbo_kv_4b_tcq" */
#define TKV_CODEC_COUNT 17          /* number of codec ids in this version (grows) */

/* Flags describing a codec (tkv_codec_flags). */
#define TKV_CODEC_FLAG_ROTATED (1u << 0)   /* vectors are randomly rotated before coding */
#define TKV_CODEC_FLAG_CODEBOOK (1u << 1)  /* Lloyd-Max codebook indices */
#define TKV_CODEC_FLAG_QJL (1u << 2)       /* carries a 1-bit QJL residual sketch */
#define TKV_CODEC_FLAG_BLOCK (1u << 3)     /* 32-element block quantization (q8_0/q4_0) */
#define TKV_CODEC_FLAG_FLOAT (1u << 4)     /* plain floating point (fp32/fp16/bf16) */
#define TKV_CODEC_FLAG_TRELLIS (1u << 5)   /* trellis symbols (head_dim % 8 == 0, >= 16); 0.3 */

/* Number of codec ids known to this library (ids are 0..count-1).  Since 0.1. */
TKV_API int32_t tkv_codec_count(void);

/* Name of a codec id ("turbo_kv_4b"), or NULL for an unknown id.  Static.  Since 0.1. */
TKV_API const char *tkv_codec_name(int32_t codec);

/*
 * Codec id of a name (exact, case-sensitive).
 * Returns TKV_OK, or TKV_ERR_INVALID_ARGUMENT for NULL or an unknown name
 * (the message lists the known names).  Since 0.1.
 */
TKV_API tkv_status tkv_codec_from_name(const char *name, int32_t *out_codec);

/* TKV_CODEC_FLAG_* bits of a codec, 0 for an unknown id.  Since 0.1. */
TKV_API uint32_t tkv_codec_flags(int32_t codec);

/*
 * Bytes one encoded head vector of head_dim elements takes, metadata included.
 * Returns TKV_OK, or TKV_ERR_INVALID_ARGUMENT for an unknown codec, an odd
 * head_dim or one outside 2..1024.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_bytes_per_vector(int32_t codec, uint32_t head_dim, size_t *out_bytes);

/* ==================================================================================
 * Codec handles and kernels
 *
 * A tkv_codec is a codec bound to a head_dim and a seed: it holds the rotation
 * (random signs + normalized Walsh-Hadamard transform for power-of-two head_dim, a
 * seeded random orthogonal matrix otherwise), the codebook and the QJL sketch
 * matrix.  The same (codec, head_dim, seed) gives the same bytes in every process
 * on the same ISA.
 *
 * Encoded data is a plain byte array: n vectors of tkv_codec_vector_bytes() bytes
 * each, back to back.  The layout of each codec's vector is documented at the top
 * of its source file (lib/codec/) and in docs/CODECS.md.
 *
 * Malformed codes: the functions that read codes (decode, scores, weighted_sum,
 * attention) never trust them.  Each vector is checked first, and one holding a value
 * the encoder never writes gives TKV_ERR_BAD_FORMAT: an inf/NaN scale or residual norm,
 * a negative norm, an inf/NaN fp32/fp16/bf16 element, a q8_0 value of -128, a
 * turbo_kv_5b_fast index >= 32, set padding bits (docs/CODECS.md, "Validation").
 *
 * Thread-safety: a tkv_codec is immutable after creation; any number of threads
 * may use one handle at the same time.  Kernels are reentrant.
 *
 * Usage:
 *     tkv_codec_params p = tkv_codec_default_params();
 *     p.codec = TKV_CODEC_TURBO_4B; p.head_dim = 128; p.seed = 42;
 *     tkv_codec *c;
 *     if (tkv_codec_create(&p, &c) != TKV_OK) puts(tkv_last_error());
 *     size_t need = tkv_codec_encoded_size(c, n);
 *     tkv_codec_encode(c, x, n, buf, need);
 *     tkv_codec_scores(c, q, buf, need, n, scores);
 *     tkv_codec_free(c);
 * ================================================================================== */

typedef struct tkv_codec tkv_codec;

typedef struct tkv_codec_params {
    uint32_t struct_size;  /* sizeof(tkv_codec_params); set by tkv_codec_default_params */
    int32_t codec;         /* TKV_CODEC_* id; default TKV_CODEC_TURBO_4B */
    uint32_t head_dim;     /* elements per vector: even, 2..1024; default 128 */
    uint32_t flags;        /* reserved for codec options, must be 0 */
    uint64_t seed;         /* rotation / sketch seed; default 0 */
    uint32_t reserved[8];  /* must be zero */
} tkv_codec_params;

/* Defaults: turbo_kv_4b, head_dim 128, seed 0.  Since 0.1. */
TKV_API tkv_codec_params tkv_codec_default_params(void);

/*
 * Create a codec handle.
 * Returns TKV_OK and *out set, or TKV_ERR_ABI (struct_size / reserved words),
 * TKV_ERR_INVALID_ARGUMENT (unknown codec, bad head_dim, NULL), TKV_ERR_OUT_OF_MEMORY;
 * *out is NULL on failure.  Free with tkv_codec_free.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_create(const tkv_codec_params *params, tkv_codec **out);

/* Free a codec handle; NULL is a no-op.  Since 0.1. */
TKV_API void tkv_codec_free(tkv_codec *codec);

/* Codec id / head_dim / seed of a handle (-1 / 0 / 0 for NULL).  Since 0.1. */
TKV_API int32_t tkv_codec_id(const tkv_codec *codec);
TKV_API uint32_t tkv_codec_head_dim(const tkv_codec *codec);
TKV_API uint64_t tkv_codec_seed(const tkv_codec *codec);

/* Bytes of one encoded vector (0 for NULL).  Since 0.1. */
TKV_API size_t tkv_codec_vector_bytes(const tkv_codec *codec);

/* Bytes of n encoded vectors (0 for NULL, negative n, or overflow).  Since 0.1. */
TKV_API size_t tkv_codec_encoded_size(const tkv_codec *codec, int64_t n);

/*
 * Encode n vectors x (n, head_dim) float32, row-major, into codes.
 * Returns TKV_OK; TKV_ERR_BUFFER_TOO_SMALL when codes_size is below
 * tkv_codec_encoded_size(codec, n); TKV_ERR_INVALID_ARGUMENT for non-finite inputs and
 * for a vector the codec cannot represent (a norm or block scale beyond its fp16 field,
 * a value beyond the fp16 / bf16 range), the message naming the vector and the reason.
 * Vectors too small for the fp16 scale code as zeros.  Codes written before a failing
 * vector are valid; the rest of codes is unspecified.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_encode(const tkv_codec *codec, const float *x, int64_t n,
                                    void *codes, size_t codes_size);

/*
 * Decode n vectors from codes into out (n, head_dim) float32.
 * Returns TKV_OK, or TKV_ERR_BAD_FORMAT when a vector holds a value the encoder never
 * writes (see "Malformed codes" above); the message names the vector, the field and its
 * byte offset.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_decode(const tkv_codec *codec, const void *codes, size_t codes_size,
                                    int64_t n, float *out);

/*
 * Attention scores of one query q (head_dim floats) against n encoded keys:
 * scores[i] = <q, decode(key i)>, computed on the codes without decoding the keys
 * (the query is rotated once, then codebook lookups + FMA).  Returns TKV_OK, or
 * TKV_ERR_BAD_FORMAT for malformed codes, as tkv_codec_decode.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_scores(const tkv_codec *codec, const float *q, const void *codes,
                                    size_t codes_size, int64_t n, float *scores);

/*
 * Weighted sum of n encoded values: out = sum_i w[i] * decode(value i), accumulated
 * in the rotated domain and rotated back once.  Rows whose |w[i]| < threshold are
 * skipped (sparse V; 0 keeps every row).  out has head_dim floats.  Returns TKV_OK, or
 * TKV_ERR_BAD_FORMAT for malformed codes (every row is checked, skipped or not), as
 * tkv_codec_decode.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_weighted_sum(const tkv_codec *codec, const float *w,
                                          const void *codes, size_t codes_size, int64_t n,
                                          float threshold, float *out);

/*
 * One decode-time attention step for one query over n cached positions:
 * s = scale * scores(k_codec, q, k_codes), p = softmax(s),
 * out = weighted_sum(v_codec, p, v_codes, threshold).  k_codec and v_codec must have
 * the same head_dim.  scale 0 means 1/sqrt(head_dim).  Allocates a scratch of n
 * floats per call.  Returns TKV_OK, or TKV_ERR_BAD_FORMAT for malformed key or value
 * codes (the message says which), as tkv_codec_decode.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_attention(const tkv_codec *k_codec, const tkv_codec *v_codec,
                                       const float *q, const void *k_codes, size_t k_codes_size,
                                       const void *v_codes, size_t v_codes_size, int64_t n,
                                       float scale, float threshold, float *out);

/*
 * Lloyd-Max codebook of the standard normal distribution at `bits` (1..5): the 2^bits
 * centroids in increasing order.  Computed once by Lloyd iteration to convergence.
 * n_out is the capacity of out in floats; TKV_ERR_BUFFER_TOO_SMALL (and *n_needed)
 * when it is too small.  Since 0.1.
 */
TKV_API tkv_status tkv_codebook_centroids(uint32_t bits, float *out, size_t n_out,
                                          size_t *n_needed);

/* ==================================================================================
 * Model
 *
 * A tkv_model is a GGUF model loaded for inference (architectures "llama", "qwen2",
 * "qwen3", "gemma3" and "phi3"; weights F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q2_K/Q3_K/
 * Q4_K/Q5_K/Q6_K).  The file stays memory-mapped read-only; the weight matrices this
 * CPU's matrix-vector kernels read faster in an interleaved layout are copied into it
 * once at load (tkv_model_bytes_packed).  A model is immutable after loading and may be
 * shared by any number of threads; freeing it while caches made from it live defers the
 * release to the last of them (tkv_model_free).
 * ================================================================================== */

typedef struct tkv_model tkv_model;

typedef struct tkv_model_params {
    uint32_t struct_size;  /* sizeof(tkv_model_params) */
    uint32_t flags;        /* reserved for loading options, must be 0 */
    uint32_t reserved[8];  /* must be zero */
} tkv_model_params;

/* Defaults for tkv_model_load.  Since 0.1. */
TKV_API tkv_model_params tkv_model_default_params(void);

/*
 * Load a GGUF model file.  Returns TKV_OK, TKV_ERR_IO (cannot open/map),
 * TKV_ERR_BAD_FORMAT (malformed file, with the offending key/tensor in the message;
 * also metadata out of range: a non-finite or non-positive RMS epsilon, RoPE base or
 * scaling factor, non-finite norm weights, a vocab_size that disagrees with the
 * tokenizer), TKV_ERR_UNSUPPORTED (architecture, tensor type, or a feature the forward
 * pass does not implement, e.g. partial RoPE or rope_freqs).  A path that is not a
 * regular file (directory, pipe, device) is TKV_ERR_IO without blocking.
 * *out is NULL on failure.
 * Since 0.1.
 */
TKV_API tkv_status tkv_model_load(const char *path, const tkv_model_params *params,
                                  tkv_model **out);

/* Free a model (NULL is a no-op).  Free its caches first; a model freed while caches made
 * from it live is released when the last of them is freed (since 0.5; the handle must
 * not be used after this call either way).  Since 0.1. */
TKV_API void tkv_model_free(tkv_model *model);

/* Hyperparameters (0 for NULL).  Since 0.1. */
TKV_API uint32_t tkv_model_n_layer(const tkv_model *model);
TKV_API uint32_t tkv_model_n_head(const tkv_model *model);
TKV_API uint32_t tkv_model_n_head_kv(const tkv_model *model);
TKV_API uint32_t tkv_model_head_dim(const tkv_model *model);
TKV_API uint32_t tkv_model_n_embd(const tkv_model *model);
TKV_API uint32_t tkv_model_n_vocab(const tkv_model *model);
TKV_API uint32_t tkv_model_n_ctx_train(const tkv_model *model);

/* Memory of a loaded model (0 for NULL): the GGUF file's bytes, mapped read-only (the
 * pages the weights are read from stay the file's: the system may share or drop them),
 * and the bytes of the copies of weight matrices the library allocated, repacked at load
 * for the matrix-vector kernels of this CPU (0 where the kernels read the file's layout).
 * Since 0.7. */
TKV_API uint64_t tkv_model_bytes_mapped(const tkv_model *model);
TKV_API uint64_t tkv_model_bytes_packed(const tkv_model *model);

/* Architecture ("llama") and general.name; "" for NULL.  Valid until the model is freed. */
TKV_API const char *tkv_model_arch(const tkv_model *model);
TKV_API const char *tkv_model_name(const tkv_model *model);

/*
 * A string metadata value of the GGUF file (e.g. "tokenizer.chat_template"), copied
 * with a terminating NUL into buf.  Two-call protocol: *n_out gets the byte length
 * without the NUL; TKV_ERR_BUFFER_TOO_SMALL when cap <= that length (buf may be NULL
 * only with cap 0); TKV_ERR_INVALID_ARGUMENT when the key is absent or not a string, or
 * buf is NULL with cap > 0.  Since 0.1.
 */
TKV_API tkv_status tkv_model_meta_string(const tkv_model *model, const char *key, char *buf,
                                         size_t cap, size_t *n_out);

/* Special token ids (-1 when the model has none).  Since 0.1. */
TKV_API int32_t tkv_model_token_bos(const tkv_model *model);
TKV_API int32_t tkv_model_token_eos(const tkv_model *model);
/* Id of the token whose text is exactly `text` (e.g. "<|im_end|>"), -1 if none. */
TKV_API int32_t tkv_model_token_find(const tkv_model *model, const char *text);
/*
 * 1 when generation ends at `token`, else 0 (also for a NULL model or an id out of range):
 * EOS, the end-of-turn token of the metadata (tokenizer.ggml.eot_token_id), and the
 * end-of-turn markers "<|im_end|>" (ChatML), "<|eot_id|>" (Llama 3) and "<|endoftext|>"
 * when the vocabulary has them.  tkv_session_generate stops by this rule.  Since 0.5.
 */
TKV_API int32_t tkv_model_token_is_end(const tkv_model *model, int32_t token);

#define TKV_TOKENIZE_ADD_BOS (1u << 0)       /* prepend BOS when the model asks for it */
#define TKV_TOKENIZE_PARSE_SPECIAL (1u << 1) /* match control tokens like <|im_start|> */

/*
 * Tokenize len bytes of UTF-8 text.  Two-call protocol: *n_out gets the number of
 * tokens; TKV_ERR_BUFFER_TOO_SMALL when cap is smaller.  Text with PARSE_SPECIAL may
 * contain control tokens; pass user-supplied text without it.  Bytes that are not valid
 * UTF-8 are encoded byte by byte when the vocabulary has a token for the byte (all
 * SentencePiece byte-fallback vocabularies, most byte-level BPE ones); a byte it lacks is
 * TKV_ERR_INVALID_ARGUMENT naming the byte and its offset (since 0.5).  Since 0.1.
 */
TKV_API tkv_status tkv_model_tokenize(const tkv_model *model, const char *text, size_t len,
                                      uint32_t flags, int32_t *tokens, size_t cap, size_t *n_out);

/*
 * Bytes of a token sequence (special tokens rendered when render_special).  Two-call
 * protocol on bytes (no NUL is written).  Since 0.1.
 */
TKV_API tkv_status tkv_model_detokenize(const tkv_model *model, const int32_t *tokens, size_t n,
                                        int32_t render_special, char *buf, size_t cap,
                                        size_t *n_out);

/* ==================================================================================
 * Cache
 *
 * A tkv_cache holds the keys and values of one sequence for one model, compressed
 * with a K codec and a V codec (per-layer overrides allowed before the first token).
 * Storage grows in blocks as tokens arrive.  Use from one thread at a time; it must
 * not outlive its model, and its sessions must be freed first.
 * ================================================================================== */

typedef struct tkv_cache tkv_cache;

/*
 * Cache levers.  Each keeps attention unchanged in exact arithmetic and changes what the
 * codecs must carry; on an exact cache (fp32 keys and values, no fp16 window) they change
 * only rounding.  Centering and smoothing are calibrated per block of calibration_block
 * positions: block 0 on the first batch, every later block on the keys and queries of the
 * block before it; each block's offsets and scales are stored in fp16 (2 * head_dim bytes
 * per block, KV head and lever, counted in tkv_cache_bytes_used).
 *
 * TKV_CACHE_FLAG_CENTER_KEYS: subtract the block's mean key (per layer and KV head) from
 * every key before it is stored; attention adds the difference between blocks back.
 */
#define TKV_CACHE_FLAG_CENTER_KEYS (1u << 0)

/*
 * TKV_CACHE_FLAG_SMOOTH_KEYS: divide every key and multiply every query by per-channel
 * scales s_j = (rms k_j / rms q_j)^alpha of the block (alpha = key_smoothing), normalized to
 * geometric mean 1; a block calibrated on fewer than 8 positions keeps s = 1.  Since 0.2.
 */
#define TKV_CACHE_FLAG_SMOOTH_KEYS (1u << 1)

typedef struct tkv_cache_params {
    uint32_t struct_size;       /* sizeof(tkv_cache_params) */
    int32_t k_codec;            /* TKV_CODEC_* of keys; default TKV_CODEC_TURBO_4B */
    int32_t v_codec;            /* TKV_CODEC_* of values; default TKV_CODEC_TURBO_4B */
    uint32_t n_ctx;             /* capacity in tokens, 1..16777216; 0 = the model's training
                                   context (the default) */
    uint32_t fp16_window;       /* most recent tokens kept in fp16 before they are compressed,
                                   0..n_ctx; 0 = off (the default) */
    uint32_t flags;             /* TKV_CACHE_FLAG_*; default CENTER_KEYS | SMOOTH_KEYS */
    uint64_t seed;              /* rotation seeds derive from it per (layer, head); default 0 */
    float sparse_v_threshold;   /* values whose softmax weight is below it are skipped,
                                   [0, 1); 0 = off (the default) */
    float key_smoothing;        /* alpha of TKV_CACHE_FLAG_SMOOTH_KEYS, (0, 1]; 0 = 0.35;
                                   default 0.35.  Since 0.2. */
    uint32_t sink_tokens;       /* first positions stored exactly (fp32 keys and values, never
                                   compressed), 0..64; default 1.  Since 0.2. */
    uint32_t calibration_block; /* positions per calibration block of centering and smoothing,
                                   64..16777216, or TKV_CALIBRATION_ONCE (one calibration, on
                                   the first batch, for the whole sequence); 0 = 256; default
                                   256.  Since 0.4. */
    uint32_t reserved[6];       /* must be zero */
} tkv_cache_params;

/* tkv_cache_params.calibration_block: calibrate once, on the first batch, for the whole
 * sequence.  Since 0.4. */
#define TKV_CALIBRATION_ONCE 0xFFFFFFFFu

/* Defaults: turbo_kv_4b keys and values, n_ctx 0 (the model's), no fp16 window, seed 0,
 * no sparse V, key centering and key smoothing on (alpha 0.35) per block of 256 positions,
 * 1 sink token.  The levers are the defaults of a lossy cache; on an exact one they may be
 * cleared (they change only rounding there).  Since 0.1. */
TKV_API tkv_cache_params tkv_cache_default_params(void);

/*
 * Check cache parameters without a model: every check of tkv_cache_create except those
 * that need the model (n_ctx 0 resolved to its training context).  Returns TKV_OK, or
 * TKV_ERR_ABI / TKV_ERR_INVALID_ARGUMENT with the message tkv_cache_create would give.
 * Lets a program reject bad settings before it loads a model.  Since 0.5.
 */
TKV_API tkv_status tkv_cache_params_check(const tkv_cache_params *params);

/* Create a cache for a model.  *out is NULL on failure.  Since 0.1. */
TKV_API tkv_status tkv_cache_create(const tkv_model *model, const tkv_cache_params *params,
                                    tkv_cache **out);

/* Free a cache (NULL is a no-op).  Free its sessions first; a cache freed while sessions
 * on it live is released when the last of them is freed (since 0.5; the handle must not
 * be used after this call either way).  Since 0.1. */
TKV_API void tkv_cache_free(tkv_cache *cache);

/*
 * Give one layer its own codecs (e.g. the first and last layers at higher precision).
 * Only before the first token is stored; TKV_ERR_INVALID_ARGUMENT after.  Since 0.1.
 */
TKV_API tkv_status tkv_cache_set_layer_codecs(tkv_cache *cache, uint32_t layer, int32_t k_codec,
                                              int32_t v_codec);

/* Tokens stored, capacity in tokens (0 for NULL).  Since 0.1. */
TKV_API uint32_t tkv_cache_n_tokens(const tkv_cache *cache);
TKV_API uint32_t tkv_cache_capacity(const tkv_cache *cache);

/* Bytes the stored tokens take; bytes one compressed token takes over all layers and
 * heads (K + V); bytes currently allocated.  0 for NULL.  Since 0.1. */
TKV_API size_t tkv_cache_bytes_used(const tkv_cache *cache);
TKV_API size_t tkv_cache_bytes_per_token(const tkv_cache *cache);
TKV_API size_t tkv_cache_bytes_allocated(const tkv_cache *cache);

/* Drop every token at position >= n_tokens (no-op when n_tokens >= the count).  Since 0.1.
 * A model with sliding-window layers (Gemma 3, Mistral) keeps only their last
 * window - 1 + 256 positions: a cut below the first position whose window they still hold
 * is TKV_ERR_INVALID_ARGUMENT naming the least allowed count (0 is always allowed). */
TKV_API tkv_status tkv_cache_truncate(tkv_cache *cache, uint32_t n_tokens);

/* ==================================================================================
 * Session: evaluate, sample, generate
 *
 * A tkv_session runs the model over its cache: tkv_session_eval appends tokens and
 * computes logits; tkv_session_sample picks the next token.  It owns a thread pool and
 * every buffer it needs (nothing is allocated per token).  Use from one thread at a
 * time; free it before its cache.
 *
 *     tkv_session_eval(s, prompt, n, 0);            // prefill
 *     for (;;) { tkv_session_sample(s, &sp, &tok);
 *                if (tkv_model_token_is_end(model, tok)) break;
 *                tkv_session_eval(s, &tok, 1, 0); }  // decode
 * ================================================================================== */

typedef struct tkv_session tkv_session;

typedef struct tkv_session_params {
    uint32_t struct_size;  /* sizeof(tkv_session_params) */
    uint32_t n_threads;    /* 0 = every available core */
    uint32_t n_batch;      /* tokens per forward pass; longer inputs are split; 0 = 256 */
    uint32_t flags;        /* reserved, must be 0 */
    uint32_t reserved[8];  /* must be zero */
} tkv_session_params;

typedef struct tkv_sampler_params {
    uint32_t struct_size;   /* sizeof(tkv_sampler_params) */
    float temperature;      /* 0 = greedy; default 0.8 */
    int32_t top_k;          /* 0 = off; default 40 */
    float top_p;            /* 1 = off; default 0.95 */
    float min_p;            /* 0 = off; default 0.05 */
    float repeat_penalty;   /* 1 = off; default 1.0 */
    int32_t repeat_last_n;  /* tokens the penalty looks back; default 64 */
    uint64_t seed;          /* default 0 */
    uint32_t reserved[8];   /* must be zero */
} tkv_sampler_params;

/* Per-phase wall time and token counts since the session was created or reset. */
typedef struct tkv_timings {
    uint32_t struct_size;
    uint32_t reserved0;
    int64_t prefill_tokens;   /* tokens of prompts: every eval but the decode steps */
    int64_t decode_tokens;    /* decode steps: 1-token evals right after a sample (since
                                 0.5) */
    double prefill_seconds;
    double decode_seconds;
    double matmul_seconds;    /* of both phases */
    double attention_seconds;
    double other_seconds;
    double sample_seconds;
    uint32_t reserved[8];
} tkv_timings;

#define TKV_EVAL_LOGITS_ALL (1u << 0) /* keep logits of every evaluated token */

TKV_API tkv_session_params tkv_session_default_params(void);
TKV_API tkv_sampler_params tkv_sampler_default_params(void);

/* Create a session on a cache (sequence continues at the cache's length).  Since 0.1. */
TKV_API tkv_status tkv_session_create(tkv_cache *cache, const tkv_session_params *params,
                                      tkv_session **out);
/* Free a session (NULL is a no-op).  Since 0.1. */
TKV_API void tkv_session_free(tkv_session *session);

/*
 * Evaluate n tokens at the end of the cache.  Logits of the last token (or of every
 * token with TKV_EVAL_LOGITS_ALL) are kept until the next eval.  Returns
 * TKV_ERR_CACHE_FULL when the tokens do not fit (nothing is appended then),
 * TKV_ERR_INVALID_ARGUMENT for token ids outside the vocabulary, TKV_ERR_BAD_FORMAT when
 * the model produces a non-finite logit (weights out of range; since 0.5): the cache is
 * left as it was before the call on every error, except that a model with sliding-window
 * layers whose failed call appended more than 256 positions before failing empties the
 * cache (the message says so): its layers no longer hold the earlier windows.  Since 0.1.
 */
TKV_API tkv_status tkv_session_eval(tkv_session *session, const int32_t *tokens, int64_t n,
                                    uint32_t flags);

/*
 * Logits (n_vocab floats) of token i of the last eval (i = -1: its last token).
 * NULL when i is out of range (any other negative i included) or logits were not kept
 * for it.
 * Valid until the next eval on this session.  Since 0.1.
 */
TKV_API const float *tkv_session_logits(const tkv_session *session, int64_t i);

/* Sample the next token from the last eval's last logits.  Since 0.1. */
TKV_API tkv_status tkv_session_sample(tkv_session *session, const tkv_sampler_params *params,
                                      int32_t *out_token);

/* Called with each generated token; return non-zero to stop. */
typedef int32_t (*tkv_token_callback)(int32_t token, void *user_data);

/*
 * Generate up to max_tokens tokens after the evaluated ones: sample, call back, eval,
 * until an end token (tkv_model_token_is_end; not passed to the callback; before 0.5 EOS
 * only), the callback asks to stop, or the cache is full: TKV_ERR_CACHE_FULL then, after
 * the token sampled at the last position was passed to the callback (it is not
 * evaluated).  The last of max_tokens tokens is not evaluated either.  The prompt must
 * have been evaluated first.  *n_generated (may be NULL) counts tokens passed to the
 * callback.  Since 0.1.
 */
TKV_API tkv_status tkv_session_generate(tkv_session *session, const tkv_sampler_params *params,
                                        int64_t max_tokens, tkv_token_callback callback,
                                        void *user_data, int64_t *n_generated);

/* Timings since creation or the last tkv_session_reset_timings.  Since 0.1. */
TKV_API tkv_status tkv_session_timings(const tkv_session *session, tkv_timings *out);
TKV_API void tkv_session_reset_timings(tkv_session *session);

/* Tokens in the session's cache (its position).  Since 0.1. */
TKV_API uint32_t tkv_session_n_tokens(const tkv_session *session);

/* ==================================================================================
 * Persistence: saved caches and session state
 *
 * A cache saves to one file (format: docs/PERSISTENCE.md) holding everything it reads
 * again: codes, fp32 sink rows, the fp16 window, per-block key offsets and scales and
 * the running statistics of the block being filled, per-layer codecs, seeds and
 * settings.  Loading it for the same model (checked by a fingerprint of the GGUF file)
 * gives a cache that continues exactly as the saved one would have: the same logits,
 * bit for bit, on the same kernel ISA (TKV_ISA) and library version.  A session file
 * adds the evaluated tokens, the last logits and the sampler's generator.
 *
 * Bad files never crash and never load garbage: TKV_ERR_IO (cannot be read),
 * TKV_ERR_BAD_FORMAT (not a cache file, truncated, damaged: checksums over the header
 * and the payload; malformed sections), TKV_ERR_UNSUPPORTED (a newer file version),
 * TKV_ERR_MISMATCH (saved for another model or with another codec set); the message
 * names the problem.  Files are written to a temporary name and renamed, so a reader
 * never sees half a file.
 *
 *     tkv_session_save(s, "doc.tkv");                       // after evaluating a prompt
 *     ...                                                   // later, in any process
 *     tkv_cache_load(model, "doc.tkv", &cache);
 *     tkv_session_create(cache, &sp, &s2);
 *     tkv_session_load_state(s2, "doc.tkv");                // tokens, logits, generator
 *     tkv_session_sample(s2, &smp, &tok);                   // as s would have
 * ================================================================================== */

/*
 * The settings a cache was made with (a loaded one's are the saved cache's): n_ctx is
 * the capacity, k_codec / v_codec those of most layers (tkv_cache_layer_codecs gives
 * every layer's), key_smoothing 0 when smoothing is off.  out->struct_size must be set
 * (start from tkv_cache_default_params()).  Since 0.6.
 */
TKV_API tkv_status tkv_cache_get_params(const tkv_cache *cache, tkv_cache_params *out);

/* K and V codec ids of one layer.  Since 0.6. */
TKV_API tkv_status tkv_cache_layer_codecs(const tkv_cache *cache, uint32_t layer,
                                          int32_t *k_codec, int32_t *v_codec);

/* Save a cache (any number of tokens) to path.  Returns TKV_OK, TKV_ERR_IO,
 * TKV_ERR_OUT_OF_MEMORY (the file is built in memory first).  Since 0.6. */
TKV_API tkv_status tkv_cache_save(const tkv_cache *cache, const char *path);

/*
 * Load a cache saved by tkv_cache_save or tkv_session_save for this model.  The file is
 * memory-mapped while it is read; the cache owns copies of its arrays and grows as
 * usual.  *out is NULL on failure (errors in the section's comment).  Free with
 * tkv_cache_free; it must not outlive its model.  Since 0.6.
 */
TKV_API tkv_status tkv_cache_load(const tkv_model *model, const char *path, tkv_cache **out);

/* Save the session's cache and its state (evaluated tokens, last logits, sampler
 * generator).  Since 0.6. */
TKV_API tkv_status tkv_session_save(const tkv_session *session, const char *path);

/*
 * Restore the state saved by tkv_session_save onto a session whose cache was loaded
 * from the same file (tkv_cache_load) and not changed since.  Returns
 * TKV_ERR_INVALID_ARGUMENT when the file holds no session state, TKV_ERR_MISMATCH when
 * the cache is another one (or was evaluated or truncated since it was loaded), and the
 * file errors of the section; the session is unchanged on any error.  Since 0.6.
 */
TKV_API tkv_status tkv_session_load_state(tkv_session *session, const char *path);

/*
 * The tokens evaluated into the session's cache, position by position (after a
 * tkv_session_load_state, those of the saved session).  Two-call protocol: *n_out gets
 * the count, TKV_ERR_BUFFER_TOO_SMALL when cap is smaller.  Positions evaluated by another
 * session on the same cache read as 0.  Since 0.6.
 */
TKV_API tkv_status tkv_session_tokens(const tkv_session *session, int32_t *tokens, size_t cap,
                                      size_t *n_out);

/*
 * Fork a cache: *out holds the same positions and settings and continues exactly as the
 * original would, but shares its compressed positions with it instead of copying them
 * (one document, many questions: N forks cost one prefix plus N tails, sinks, fp16
 * windows and calibration blocks).  Both may then be evaluated, truncated and freed
 * independently; the shared prefix is freed with the last cache that reads it.  The
 * attention of a cache whose positions span a shared prefix and its own codes sums
 * values in two kernel calls, so with the SIMD kernels its logits round differently from
 * an unforked cache's (like another batch split; identical with TKV_ISA=scalar, and forks
 * of one cache agree exactly).  Since 0.6.
 */
TKV_API tkv_status tkv_cache_fork(tkv_cache *cache, tkv_cache **out);

/*
 * Give session dst the state of src (evaluated tokens, last logits, sampler generator),
 * so that a session on a fork of src's cache continues as src would.  dst's cache must be
 * src's cache or a fork of it made at its current position: TKV_ERR_MISMATCH otherwise.
 *
 *     tkv_cache_fork(cache, &c2); tkv_session_create(c2, &sp, &s2);
 *     tkv_session_copy_state(s2, s);     // s2 answers another question after the document
 *
 * Since 0.6.
 */
TKV_API tkv_status tkv_session_copy_state(tkv_session *dst, const tkv_session *src);

/* ==================================================================================
 * Utilities: CPU features and kernel selection
 *
 * Kernels are chosen once per process from the CPU features (checking that the OS
 * saves the vector state).  The environment variable TKV_ISA=scalar|avx2|avx512
 * overrides the choice downwards (a request the CPU cannot run falls back to the
 * best available one).
 * ================================================================================== */

#define TKV_CPU_AVX2 (1u << 0)      /* AVX2 + FMA + F16C, OS-enabled */
#define TKV_CPU_AVX512 (1u << 1)    /* AVX-512 F/BW/VL/DQ, OS-enabled */
#define TKV_CPU_AVX512VNNI (1u << 2)
#define TKV_CPU_AVX512VBMI (1u << 3)
#define TKV_CPU_NEON (1u << 4)

/* TKV_CPU_* bits of this machine.  Since 0.1. */
TKV_API uint32_t tkv_cpu_features(void);

/* Name of the kernel set in use: "scalar", "avx2", "avx512" or "neon".  Since 0.1. */
TKV_API const char *tkv_kernel_isa(void);

/* ==================================================================================
 * [EXPERIMENTAL] Research hooks
 *
 * Outside the ABI promise: these may change or disappear in any release.  Python
 * exposes them only under turbokv.experimental.
 * ================================================================================== */

/*
 * [EXPERIMENTAL] tkv_session_eval, and copy every evaluated token's post-RoPE query,
 * key and value vectors of every layer (before they enter the cache):
 * q (n, n_layer, n_head, head_dim), k and v (n, n_layer, n_head_kv, head_dim) floats.
 * n must not exceed the session's n_batch.  Since 0.1.
 */
TKV_API tkv_status tkv_session_eval_capture(tkv_session *session, const int32_t *tokens, int64_t n,
                                            uint32_t flags, float *q, float *k, float *v);

/*
 * [EXPERIMENTAL] The key calibration a cache with `params` sets for one (layer, KV head)
 * whose n positions arrive as one batch: keys (n, head_dim), the queries of its GQA group
 * (n, group, head_dim).  Writes the key offsets mu and scales s of every calibration
 * block, (n_blocks, head_dim) each, as the cache uses them (fp16-rounded; mu = 0 without
 * TKV_CACHE_FLAG_CENTER_KEYS, s = 1 without TKV_CACHE_FLAG_SMOOTH_KEYS): the cache stores
 * a key of block b as (k - mu_b) / s_b.  Two-call protocol on blocks: *n_blocks gets
 * the count (at most n), TKV_ERR_BUFFER_TOO_SMALL when it exceeds cap (cap 0 with mu and
 * scales NULL queries it).  The levers of params are checked as tkv_cache_create checks
 * them; codecs, n_ctx and the window are ignored.  Since 0.5.
 */
TKV_API tkv_status tkv_cache_calibrate_keys(const tkv_cache_params *params, uint32_t head_dim,
                                            uint32_t group, const float *keys, const float *queries,
                                            int64_t n, float *mu, float *scales, size_t cap,
                                            size_t *n_blocks);

#ifdef __cplusplus
}
#endif

#endif /* TURBOKV_H */
