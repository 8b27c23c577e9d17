/*
 * matmul_avx512.c - AVX-512 kernels in two variants: "avx512" (F/BW/VL/DQ: maddubs) and
 * "avx512vnni" (dpbusd: u8 x s8 products summed straight into int32).  The 256-bit bodies
 * of matmul_x86_body.h serve the float and 32-element formats' row kernels; the tile kernels
 * and the K-quant kernels are 512-bit (matmul_avx512_body.h); the packed-weight kernels
 * (matmul_packed_body.h) are 512-bit with dpbusd in the VNNI variant, 256-bit with maddubs
 * (as avx2's) in the other.
 */
#include <string.h>

#include "base/half.h"
#include "tensor/matmul.h"

#define TKV_X86_SKIP_KQUANTS /* 512-bit K-quant kernels in matmul_avx512_body.h */

#define TKV_FN(name) tkv_##name##_avx512
#define TKV_ATTR
#define TKV_MULSUM(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
#define TKV_DP512(u, s) _mm512_madd_epi16(_mm512_maddubs_epi16((u), (s)), _mm512_set1_epi16(1))
#define TKV_Q8_BIASED 0
#define TKV_PK_512 0
#include "tensor/matmul_x86_body.h"
#include "tensor/matmul_avx512_body.h"
#include "tensor/matmul_packed_body.h"
#undef TKV_PK_512
#undef TKV_FN
#undef TKV_ATTR
#undef TKV_MULSUM
#undef TKV_DP512
#undef TKV_Q8_BIASED

/* The VNNI instructions are enabled per function, so this file keeps the flags CMake
 * gives every *_avx512.c and the dispatcher only picks these on CPUs with VNNI. */
#define TKV_FN(name) tkv_##name##_avx512vnni
#define TKV_ATTR __attribute__((target("avx512vnni")))
#define TKV_MULSUM(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s))
#define TKV_DP512(u, s) _mm512_dpbusd_epi32(_mm512_setzero_si512(), (u), (s))
#define TKV_Q8_BIASED 1
#define TKV_PK_512 1
#include "tensor/matmul_x86_body.h"
#include "tensor/matmul_avx512_body.h"
#include "tensor/matmul_packed_body.h"
#undef TKV_PK_512
#undef TKV_FN
#undef TKV_ATTR
#undef TKV_MULSUM
#undef TKV_DP512
#undef TKV_Q8_BIASED

#define TKV_PACKED(suffix)                                       \
    {                                                            \
        [TKV_TYPE_Q4_0] = tkv_pk_q4_0_##suffix,                  \
        [TKV_TYPE_Q4_1] = tkv_pk_q4_1_##suffix,                  \
        [TKV_TYPE_Q8_0] = tkv_pk_q8_0_##suffix,                  \
        [TKV_TYPE_Q2_K] = tkv_pk_q2_k_##suffix,                  \
        [TKV_TYPE_Q3_K] = tkv_pk_q3_k_##suffix,                  \
        [TKV_TYPE_Q4_K] = tkv_pk_q4_k_##suffix,                  \
        [TKV_TYPE_Q5_K] = tkv_pk_q5_k_##suffix,                  \
        [TKV_TYPE_Q6_K] = tkv_pk_q6_k_##suffix,                  \
    }

#define TKV_TABLE(suffix, name, packed_kernels)                  \
    {                                                            \
        .isa = name,                                             \
        .quantize_q8 = tkv_quantize_q8_##suffix,                 \
        .dot = {                                                 \
            [TKV_TYPE_F32] = tkv_dot_f32_##suffix,               \
            [TKV_TYPE_F16] = tkv_dot_f16_##suffix,               \
            [TKV_TYPE_BF16] = tkv_dot_bf16_##suffix,             \
            [TKV_TYPE_Q8_0] = tkv_dot_q8_0_##suffix,             \
            [TKV_TYPE_Q4_0] = tkv_dot_q4_0_##suffix,             \
            [TKV_TYPE_Q4_1] = tkv_dot_q4_1_##suffix,             \
            [TKV_TYPE_Q5_0] = tkv_dot_q5_0_##suffix,             \
            [TKV_TYPE_Q5_1] = tkv_dot_q5_1_##suffix,             \
            [TKV_TYPE_Q4_K] = tkv_dot5_q4_k_##suffix,            \
            [TKV_TYPE_Q5_K] = tkv_dot5_q5_k_##suffix,            \
            [TKV_TYPE_Q6_K] = tkv_dot5_q6_k_##suffix,            \
        },                                                       \
        .tile = {                                                \
            [TKV_TYPE_Q8_0] = tkv_tile_q8_0_##suffix,            \
            [TKV_TYPE_Q4_0] = tkv_tile_q4_0_##suffix,            \
            [TKV_TYPE_Q4_1] = tkv_tile_q4_1_##suffix,            \
            [TKV_TYPE_Q5_0] = tkv_tile_q5_0_##suffix,            \
            [TKV_TYPE_Q5_1] = tkv_tile_q5_1_##suffix,            \
        },                                                       \
        .packed = packed_kernels,                                \
    }

const tkv_matmul_kernels tkv_matmul_kernels_avx512 = TKV_TABLE(avx512, "avx512", TKV_PACKED(avx512));
const tkv_matmul_kernels tkv_matmul_kernels_avx512vnni = TKV_TABLE(avx512vnni, "avx512vnni", TKV_PACKED(avx512vnni));
