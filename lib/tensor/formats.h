/*
 * formats.h - weight tensor formats (GGML type ids): sizes, reference dequantize and
 * reference quantize of one row.  Byte layouts are documented at the top of formats.c.
 *
 * All functions are reentrant.  Rows are whole blocks: n elements must be a multiple of
 * the type's block size (checked by tkv_type_row_bytes; the other functions trust it).
 */
#ifndef TKV_TENSOR_FORMATS_H
#define TKV_TENSOR_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "turbokv.h"

/* GGML type ids, as stored in GGUF tensor infos. */
#define TKV_TYPE_F32 0
#define TKV_TYPE_F16 1
#define TKV_TYPE_Q4_0 2
#define TKV_TYPE_Q4_1 3
#define TKV_TYPE_Q5_0 6
#define TKV_TYPE_Q5_1 7
#define TKV_TYPE_Q8_0 8
#define TKV_TYPE_Q2_K 10
#define TKV_TYPE_Q3_K 11
#define TKV_TYPE_Q4_K 12
#define TKV_TYPE_Q5_K 13
#define TKV_TYPE_Q6_K 14
#define TKV_TYPE_BF16 30
#define TKV_TYPE_COUNT 31 /* one past the largest id; for tables indexed by type */

#define TKV_QK 32   /* elements per block of Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 */
#define TKV_QK_K 256 /* elements per super-block of the K-quants */

/* Block structs: packed by construction (every member naturally aligned, no padding). */
typedef struct {
    uint16_t d; /* fp16 scale */
    int8_t qs[TKV_QK];
} tkv_block_q8_0; /* 34 bytes */

typedef struct {
    uint16_t d;
    uint8_t qs[TKV_QK / 2];
} tkv_block_q4_0; /* 18 bytes */

typedef struct {
    uint16_t d, m;
    uint8_t qs[TKV_QK / 2];
} tkv_block_q4_1; /* 20 bytes */

typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[TKV_QK / 2];
} tkv_block_q5_0; /* 22 bytes */

typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[TKV_QK / 2];
} tkv_block_q5_1; /* 24 bytes */

typedef struct {
    uint8_t scales[TKV_QK_K / 16]; /* low nibble: scale, high nibble: min, per 16 elements */
    uint8_t qs[TKV_QK_K / 4];      /* 2-bit codes */
    uint16_t d, dmin;
} tkv_block_q2_k; /* 84 bytes */

typedef struct {
    uint8_t hmask[TKV_QK_K / 8]; /* third bit of each code */
    uint8_t qs[TKV_QK_K / 4];    /* low 2 bits of each code */
    uint8_t scales[12];          /* 16 six-bit scales (offset 32), packed */
    uint16_t d;
} tkv_block_q3_k; /* 110 bytes */

typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[TKV_QK_K / 2];
} tkv_block_q4_k; /* 144 bytes */

typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[TKV_QK_K / 8];
    uint8_t qs[TKV_QK_K / 2];
} tkv_block_q5_k; /* 176 bytes */

typedef struct {
    uint8_t ql[TKV_QK_K / 2];
    uint8_t qh[TKV_QK_K / 4];
    int8_t scales[TKV_QK_K / 16];
    uint16_t d;
} tkv_block_q6_k; /* 210 bytes */

typedef struct {
    int32_t type;        /* TKV_TYPE_* */
    const char *name;    /* "q4_1", ... */
    int32_t block_elems; /* elements per block (1 for float types) */
    int32_t block_bytes; /* bytes per block */
} tkv_type_info;

/* Info of a supported type, or NULL for an unknown or unsupported id. */
const tkv_type_info *tkv_type_get(int32_t type);

/* Bytes of one row of n elements: TKV_OK, TKV_ERR_UNSUPPORTED (type), or
 * TKV_ERR_INVALID_ARGUMENT (n < 0 or not a multiple of the block size). Sets the message. */
tkv_status tkv_type_row_bytes(int32_t type, int64_t n, size_t *out);

/* Unpack the K-quant 6-bit scale j (0..7) and min j from the 12 packed bytes (layout in
 * formats.c).  Inline: the kernels call it per sub-block. */
static inline void tkv_q_k_scale_min(const uint8_t *scales, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (uint8_t)((scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4));
        *m = (uint8_t)((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
    }
}

/* The low-bit K-quants (layout in formats.c): the 2-bit code of element e (0..255) of a
 * Q2_K / Q3_K super-block, Q3_K's signed 3-bit value (-4..3), and Q3_K's signed 6-bit
 * scale j (0..15).  Inline: the matmul reference calls them per element. */
static inline int tkv_q23_k_low2(const uint8_t *qs, int e) {
    return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}
static inline int tkv_q3_k_value(const tkv_block_q3_k *b, int e) {
    return tkv_q23_k_low2(b->qs, e) - (((b->hmask[e % 32] >> (e / 32)) & 1) ? 0 : 4);
}
static inline int tkv_q3_k_scale(const uint8_t *scales, int j) {
    const int lo = j < 8 ? (scales[j] & 15) : (scales[j - 8] >> 4);
    const int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

/* Reference dequantization of one row of n elements (type supported, n whole blocks). */
void tkv_dequantize_row(int32_t type, const void *src, float *dst, int64_t n);

/* Reference quantization of one row of n elements into dst (tkv_type_row_bytes bytes).
 * Round-to-nearest quantizers, not error-optimized searches; the K-quant ones pick
 * per-sub-block scales from min/max.  Inputs must be finite. */
void tkv_quantize_row(int32_t type, const float *src, void *dst, int64_t n);

/* Dequantize row `index` of a (n_rows, n_cols) matrix whose rows are row_bytes apart:
 * the token-embedding lookup.  index must be in [0, n_rows). */
void tkv_embedding_row(int32_t type, const void *W, size_t row_bytes, int64_t n_cols,
                       int64_t index, float *out);

#endif
