/*
 * ggml_types.h - GGML tensor type ids as stored in GGUF files, with their block layout.
 *
 * A quantized type packs block_size consecutive elements of a row into type_size bytes;
 * plain types (F32, F16, I32...) have block_size 1.  Type ids are fixed by the GGUF format
 * (ids 4, 5 and 16..23 belong to types this build does not know).
 */
#ifndef TKV_GGUF_GGML_TYPES_H
#define TKV_GGUF_GGML_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "turbokv.h"

enum {
    TKV_GGML_F32 = 0,
    TKV_GGML_F16 = 1,
    TKV_GGML_Q4_0 = 2,
    TKV_GGML_Q4_1 = 3,
    TKV_GGML_Q5_0 = 6,
    TKV_GGML_Q5_1 = 7,
    TKV_GGML_Q8_0 = 8,
    TKV_GGML_Q8_1 = 9,
    TKV_GGML_Q2_K = 10,
    TKV_GGML_Q3_K = 11,
    TKV_GGML_Q4_K = 12,
    TKV_GGML_Q5_K = 13,
    TKV_GGML_Q6_K = 14,
    TKV_GGML_Q8_K = 15,
    TKV_GGML_I8 = 24,
    TKV_GGML_I16 = 25,
    TKV_GGML_I32 = 26,
    TKV_GGML_I64 = 27,
    TKV_GGML_F64 = 28,
    TKV_GGML_BF16 = 30,
};

/* "f32", "q4_k", ...; "unknown" for an id this build does not know.  Static storage. */
const char *tkv_ggml_type_name(int32_t type);

/* Elements per block (1 for plain types); 0 for an unknown id, so 0 means "unknown". */
uint32_t tkv_ggml_block_size(int32_t type);

/* Bytes per block; 0 for an unknown id. */
size_t tkv_ggml_type_size(int32_t type);

/*
 * Bytes of a row of n elements in *out_bytes.  Returns TKV_OK, TKV_ERR_UNSUPPORTED for an
 * unknown type, or TKV_ERR_BAD_FORMAT when n is not positive or not a multiple of the block
 * size, or the size overflows size_t (messages name the type and n).
 */
tkv_status tkv_ggml_row_size(int32_t type, int64_t n, size_t *out_bytes);

#endif
