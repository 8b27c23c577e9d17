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
 * properties); codec handles and kernels; utilities (CPU features).
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

#define TKV_VERSION_MAJOR 0
#define TKV_VERSION_MINOR 1
#define TKV_VERSION_PATCH 0
#define TKV_VERSION_NUMBER (TKV_VERSION_MAJOR * 10000 + TKV_VERSION_MINOR * 100 + TKV_VERSION_PATCH)
#define TKV_VERSION_STRING "0.1.0"

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
 * A codec turns one head vector (head_dim floats, any even head_dim from 2 to 1024)
 * into a fixed number of bytes.  Ids and names are ABI.
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
#define TKV_CODEC_COUNT 14          /* number of codec ids in this version (grows) */

/* Flags describing a codec (tkv_codec_flags). */
#define TKV_CODEC_FLAG_ROTATED (1u << 0)   /* vectors are randomly rotated before coding */
#define TKV_CODEC_FLAG_CODEBOOK (1u << 1)  /* Lloyd-Max codebook indices */
#define TKV_CODEC_FLAG_QJL (1u << 2)       /* carries a 1-bit QJL residual sketch */
#define TKV_CODEC_FLAG_BLOCK (1u << 3)     /* 32-element block quantization (q8_0/q4_0) */
#define TKV_CODEC_FLAG_FLOAT (1u << 4)     /* plain floating point (fp32/fp16/bf16) */

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
 * codes_size must be at least tkv_codec_encoded_size(codec, n), else
 * TKV_ERR_BUFFER_TOO_SMALL.  Non-finite inputs give TKV_ERR_INVALID_ARGUMENT.
 * Since 0.1.
 */
TKV_API tkv_status tkv_codec_encode(const tkv_codec *codec, const float *x, int64_t n,
                                    void *codes, size_t codes_size);

/* Decode n vectors from codes into out (n, head_dim) float32.  Since 0.1. */
TKV_API tkv_status tkv_codec_decode(const tkv_codec *codec, const void *codes, size_t codes_size,
                                    int64_t n, float *out);

/*
 * Attention scores of one query q (head_dim floats) against n encoded keys:
 * scores[i] = <q, decode(key i)>, computed on the codes without decoding the keys
 * (the query is rotated once, then codebook lookups + FMA).  Since 0.1.
 */
TKV_API tkv_status tkv_codec_scores(const tkv_codec *codec, const float *q, const void *codes,
                                    size_t codes_size, int64_t n, float *scores);

/*
 * Weighted sum of n encoded values: out = sum_i w[i] * decode(value i), accumulated
 * in the rotated domain and rotated back once.  Rows whose |w[i]| < threshold are
 * skipped (sparse V; 0 keeps every row).  out has head_dim floats.  Since 0.1.
 */
TKV_API tkv_status tkv_codec_weighted_sum(const tkv_codec *codec, const float *w,
                                          const void *codes, size_t codes_size, int64_t n,
                                          float threshold, float *out);

/*
 * One decode-time attention step for one query over n cached positions:
 * s = scale * scores(k_codec, q, k_codes), p = softmax(s),
 * out = weighted_sum(v_codec, p, v_codes, threshold).  k_codec and v_codec must have
 * the same head_dim.  scale 0 means 1/sqrt(head_dim).  Allocates a scratch of n
 * floats per call.  Since 0.1.
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

#ifdef __cplusplus
}
#endif

#endif /* TURBOKV_H */
