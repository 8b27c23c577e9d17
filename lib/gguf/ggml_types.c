/* ggml_types.c - the table of GGML tensor types: names and block layouts. */
#include "gguf/ggml_types.h"

#include "base/alloc.h"
#include "base/status.h"

typedef struct ggml_type_info {
    const char *name;    /* NULL: the id is not a type we know */
    uint32_t block_size; /* elements per block */
    uint32_t type_size;  /* bytes per block */
} ggml_type_info;

/* Indexed by type id.  Sizes follow the block structs of the GGML quant formats, e.g.
 * Q4_0 = fp16 scale + 32 nibbles = 2 + 16 bytes; Q4_K = 2 fp16 + 12 scale bytes + 128. */
static const ggml_type_info ggml_types[] = {
    [TKV_GGML_F32] = {"f32", 1, 4},       [TKV_GGML_F16] = {"f16", 1, 2},
    [TKV_GGML_Q4_0] = {"q4_0", 32, 18},   [TKV_GGML_Q4_1] = {"q4_1", 32, 20},
    [TKV_GGML_Q5_0] = {"q5_0", 32, 22},   [TKV_GGML_Q5_1] = {"q5_1", 32, 24},
    [TKV_GGML_Q8_0] = {"q8_0", 32, 34},   [TKV_GGML_Q8_1] = {"q8_1", 32, 36},
    [TKV_GGML_Q2_K] = {"q2_k", 256, 84},  [TKV_GGML_Q3_K] = {"q3_k", 256, 110},
    [TKV_GGML_Q4_K] = {"q4_k", 256, 144}, [TKV_GGML_Q5_K] = {"q5_k", 256, 176},
    [TKV_GGML_Q6_K] = {"q6_k", 256, 210}, [TKV_GGML_Q8_K] = {"q8_k", 256, 292},
    [TKV_GGML_I8] = {"i8", 1, 1},         [TKV_GGML_I16] = {"i16", 1, 2},
    [TKV_GGML_I32] = {"i32", 1, 4},       [TKV_GGML_I64] = {"i64", 1, 8},
    [TKV_GGML_F64] = {"f64", 1, 8},       [TKV_GGML_BF16] = {"bf16", 1, 2},
};

static const ggml_type_info *lookup(int32_t type) {
    if (type < 0 || (size_t)type >= sizeof ggml_types / sizeof ggml_types[0]) {
        return NULL;
    }
    const ggml_type_info *info = &ggml_types[type];
    return info->name ? info : NULL;
}

const char *tkv_ggml_type_name(int32_t type) {
    const ggml_type_info *info = lookup(type);
    return info ? info->name : "unknown";
}

uint32_t tkv_ggml_block_size(int32_t type) {
    const ggml_type_info *info = lookup(type);
    return info ? info->block_size : 0;
}

size_t tkv_ggml_type_size(int32_t type) {
    const ggml_type_info *info = lookup(type);
    return info ? info->type_size : 0;
}

tkv_status tkv_ggml_row_size(int32_t type, int64_t n, size_t *out_bytes) {
    const ggml_type_info *info = lookup(type);
    TKV_REQUIRE(info, TKV_ERR_UNSUPPORTED, "unknown ggml type %d", (int)type);
    TKV_REQUIRE(n > 0, TKV_ERR_BAD_FORMAT, "%s row of %lld elements", info->name, (long long)n);
    TKV_REQUIRE(n % info->block_size == 0, TKV_ERR_BAD_FORMAT,
                "%s row of %lld elements is not a multiple of the block size %u", info->name,
                (long long)n, info->block_size);
    /* on 32-bit hosts the block count itself may not fit in size_t */
    uint64_t blocks = (uint64_t)n / info->block_size;
    TKV_REQUIRE(blocks == (uint64_t)(size_t)blocks &&
                    tkv_mul_size((size_t)blocks, info->type_size, out_bytes) == 0,
                TKV_ERR_BAD_FORMAT, "%s row of %lld elements: size overflows", info->name,
                (long long)n);
    return TKV_OK;
}
