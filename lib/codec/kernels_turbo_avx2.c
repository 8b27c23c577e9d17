/*
 * kernels_turbo_avx2.c - turbo scores on int8 queries and value sums with int8 weights,
 * AVX2 (vpshufb lookups, vpmaddubsw + vpmaddwd products); see kernels_turbo_i8_body.h.
 * Other layouts go to the fp32 kernels of kernels_avx2.c.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "codec/kernels.h"
#include "codec/kernels_common.h"

#define TKV_I8_VNNI 0
#define TKV_I8_ATTR
#define TKV_I8_NAME(x) tkv_i8_avx2_##x
#include "codec/kernels_turbo_i8_body.h"

void tkv_scores_turbo_i8_avx2(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                              size_t n, float *out) {
    if (!tkv_i8_avx2_supported(L)) {
        tkv_codec_kernels_avx2.scores[TKV_FMT_TURBO](L, q, codes, n, out);
        return;
    }
    tkv_i8_avx2_run(L, &q, 1, codes, n, &out);
}

void tkv_scores_turbo_multi_i8_avx2(const tkv_code_layout *L, const float *const *qs, int nq,
                                    const uint8_t *codes, size_t n, float *const *outs) {
    if (!tkv_i8_avx2_supported(L)) {
        tkv_codec_kernels_avx2.scores_multi[TKV_FMT_TURBO](L, qs, nq, codes, n, outs);
        return;
    }
    tkv_i8_avx2_run(L, qs, nq, codes, n, outs);
}

void tkv_accum_turbo_i8_avx2(const tkv_code_layout *L, const float *w, float threshold,
                             const uint8_t *codes, size_t n, float *acc) {
    if (!tkv_i8_avx2_supported(L)) {
        tkv_codec_kernels_avx2.accum[TKV_FMT_TURBO](L, w, threshold, codes, n, acc);
        return;
    }
    tkv_i8_avx2_accum_run(L, &w, 1, threshold, codes, n, &acc);
}

void tkv_accum_turbo_multi_i8_avx2(const tkv_code_layout *L, const float *const *ws, int nq,
                                   float threshold, const uint8_t *codes, size_t n,
                                   float *const *accs) {
    if (!tkv_i8_avx2_supported(L)) {
        tkv_codec_kernels_avx2.accum_multi[TKV_FMT_TURBO](L, ws, nq, threshold, codes, n, accs);
        return;
    }
    tkv_i8_avx2_accum_run(L, ws, nq, threshold, codes, n, accs);
}
