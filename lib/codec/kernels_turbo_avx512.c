/*
 * kernels_turbo_avx512.c - int8 scores of 4-bit turbo codes with AVX-512 VNNI (vpdpbusd
 * in its 256-bit form: on this project's machines a 512-bit operation costs two 256-bit
 * ones, and 32 code bytes are exactly one key at head_dim 64); see
 * kernels_turbo_i8_body.h.  The VNNI instructions are enabled per function, so the file
 * keeps the flags CMake gives every *_avx512.c; dispatch.c installs these entries only on
 * CPUs with VNNI.  Other layouts go to the fp32 kernels of kernels_avx512.c.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "codec/kernels.h"
#include "codec/kernels_common.h"

#define TKV_I8_VNNI 1
#define TKV_I8_ATTR __attribute__((target("avx512vnni")))
#define TKV_I8_NAME(x) tkv_i8_vnni_##x
#include "codec/kernels_turbo_i8_body.h"

TKV_I8_ATTR void tkv_scores_turbo_i8_vnni(const tkv_code_layout *L, const float *q,
                                          const uint8_t *codes, size_t n, float *out) {
    if (!tkv_i8_vnni_supported(L)) {
        tkv_codec_kernels_avx512.scores[TKV_FMT_TURBO](L, q, codes, n, out);
        return;
    }
    tkv_i8_vnni_run(L, &q, 1, codes, n, &out);
}

TKV_I8_ATTR void tkv_scores_turbo_multi_i8_vnni(const tkv_code_layout *L, const float *const *qs,
                                                int nq, const uint8_t *codes, size_t n,
                                                float *const *outs) {
    if (!tkv_i8_vnni_supported(L)) {
        tkv_codec_kernels_avx512.scores_multi[TKV_FMT_TURBO](L, qs, nq, codes, n, outs);
        return;
    }
    tkv_i8_vnni_run(L, qs, nq, codes, n, outs);
}
