/*
 * matmul_avx2.c - AVX2 + FMA + F16C kernels (256-bit; u8 x s8 products with maddubs).
 * The kernel bodies live in matmul_x86_body.h and matmul_packed_body.h (packed weights, 8
 * rows per register), shared with the AVX-512 variants.
 */
#include <string.h>

#include "base/half.h"
#include "tensor/matmul.h"

#define TKV_FN(name) tkv_##name##_avx2
#define TKV_ATTR
#define TKV_MULSUM(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
#define TKV_PK_512 0
#include "tensor/matmul_x86_body.h"
#include "tensor/matmul_packed_body.h"

const tkv_matmul_kernels tkv_matmul_kernels_avx2 = {
    .isa = "avx2",
    .quantize_q8 = tkv_quantize_q8_avx2,
    .dot = {
        [TKV_TYPE_F32] = tkv_dot_f32_avx2,
        [TKV_TYPE_F16] = tkv_dot_f16_avx2,
        [TKV_TYPE_BF16] = tkv_dot_bf16_avx2,
        [TKV_TYPE_Q8_0] = tkv_dot_q8_0_avx2,
        [TKV_TYPE_Q4_0] = tkv_dot_q4_0_avx2,
        [TKV_TYPE_Q4_1] = tkv_dot_q4_1_avx2,
        [TKV_TYPE_Q5_0] = tkv_dot_q5_0_avx2,
        [TKV_TYPE_Q5_1] = tkv_dot_q5_1_avx2,
        [TKV_TYPE_Q4_K] = tkv_dot_q4_k_avx2,
        [TKV_TYPE_Q5_K] = tkv_dot_q5_k_avx2,
        [TKV_TYPE_Q6_K] = tkv_dot_q6_k_avx2,
    },
    .packed = {
        [TKV_TYPE_Q4_0] = tkv_pk_q4_0_avx2,
        [TKV_TYPE_Q4_1] = tkv_pk_q4_1_avx2,
        [TKV_TYPE_Q8_0] = tkv_pk_q8_0_avx2,
        [TKV_TYPE_Q2_K] = tkv_pk_q2_k_avx2,
        [TKV_TYPE_Q3_K] = tkv_pk_q3_k_avx2,
        [TKV_TYPE_Q4_K] = tkv_pk_q4_k_avx2,
        [TKV_TYPE_Q5_K] = tkv_pk_q5_k_avx2,
        [TKV_TYPE_Q6_K] = tkv_pk_q6_k_avx2,
    },
};
