/*
 * kernels_turbo_avx512.c - int8 scores and value sums of turbo codes with AVX-512 VNNI
 * (the scores and value-sum passes in 512-bit registers, two halves of a chunk or two keys
 * per register: on Sapphire Rapids a 512-bit vpdpbusd costs about what a 256-bit one
 * does; on Zen 4 it costs two, where the pass has about as many 256-bit operations as the
 * 256-bit one, in fewer instructions); see kernels_turbo_i8_body.h.  The VNNI instructions are enabled per function, so the file
 * keeps the flags CMake gives every *_avx512.c; dispatch.c installs these entries only on
 * CPUs with VNNI.  Other layouts go to the fp32 kernels of kernels_avx512.c.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

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

TKV_I8_ATTR void tkv_accum_turbo_i8_vnni(const tkv_code_layout *L, const float *w, float threshold,
                                         const uint8_t *codes, size_t n, float *acc) {
    if (!tkv_i8_vnni_supported(L)) {
        tkv_codec_kernels_avx512.accum[TKV_FMT_TURBO](L, w, threshold, codes, n, acc);
        return;
    }
    tkv_i8_vnni_accum_run(L, &w, 1, threshold, codes, n, &acc);
}

TKV_I8_ATTR void tkv_accum_turbo_multi_i8_vnni(const tkv_code_layout *L, const float *const *ws,
                                               int nq, float threshold, const uint8_t *codes,
                                               size_t n, float *const *accs) {
    if (!tkv_i8_vnni_supported(L)) {
        tkv_codec_kernels_avx512.accum_multi[TKV_FMT_TURBO](L, ws, nq, threshold, codes, n, accs);
        return;
    }
    tkv_i8_vnni_accum_run(L, ws, nq, threshold, codes, n, accs);
}

/* ---------------------------------------------------------------------------------
 * Weighted value sums of 4-bit codes with bf16 dot products (AVX512_BF16, vdpbf16ps: 32
 * multiply-adds per instruction where an fp32 FMA does 16).  The value sum is FMA-bound
 * once a key's lookups serve several queries (GQA), so keys go in pairs: for a pair (A, B)
 * and a P4 group of 32 elements, the two keys' 16 code bytes are interleaved (vpunpck*bw)
 * and widened to 32 words A0 B0 A1 B1 ..., whose low / high nibbles index a bf16 copy of
 * the codebook (vpermw); each query adds (w_A, w_B) . (c_Aj, c_Bj) into lane j, for 16
 * elements per instruction.  Weights (times each key's fp16 scale) and centroids are
 * rounded to bf16 (relative error <= 2^-9 each), products and sums stay fp32 up to the
 * instruction's own rounding: |error| <= 2^-7 sum_i |w_i x_ij| (kernels.h).  Eight kept keys per pass; each
 * accumulator register is loaded and stored once per pass.
 * --------------------------------------------------------------------------------- */

#define TKV_BF_ATTR __attribute__((target("avx512bf16")))
#define TKV_BF_PAIRS 8 /* key pairs per pass */

static inline uint16_t tkv_bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* accs[k] += the npairs key pairs of code[] weighted by wp[k][p] = (bf16 w_A, bf16 w_B).
 * Pairs alternate between two partial sums per register (two dependency chains). */
static inline __attribute__((always_inline)) TKV_BF_ATTR void
tkv_bf_batch(const int NQ, uint32_t d, uint32_t po, __m512i tab, const uint8_t *const *code,
             const uint32_t wp[TKV_MAX_QUERIES][TKV_BF_PAIRS], int npairs, float *const *accs) {
    const __m512i m15 = _mm512_set1_epi16(15);
    for (uint32_t g = 0; g < d; g += 32) {
        __m512 lo[TKV_MAX_QUERIES][2], hi[TKV_MAX_QUERIES][2];
        for (int k = 0; k < NQ; k++) {
            lo[k][0] = _mm512_loadu_ps(accs[k] + g);
            hi[k][0] = _mm512_loadu_ps(accs[k] + g + 16);
            lo[k][1] = hi[k][1] = _mm512_setzero_ps();
        }
        for (int p = 0; p < npairs; p++) {
            const __m128i xa = _mm_loadu_si128((const __m128i *)(code[2 * p] + po + g / 2));
            const __m128i xb = _mm_loadu_si128((const __m128i *)(code[2 * p + 1] + po + g / 2));
            const __m256i y =
                _mm256_set_m128i(_mm_unpackhi_epi8(xa, xb), _mm_unpacklo_epi8(xa, xb));
            const __m512i v = _mm512_cvtepu8_epi16(y);
            const __m512i clo = _mm512_permutexvar_epi16(_mm512_and_si512(v, m15), tab);
            const __m512i chi = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), tab);
            for (int k = 0; k < NQ; k++) {
                const __m512i w = _mm512_set1_epi32((int)wp[k][p]);
                lo[k][p & 1] = _mm512_dpbf16_ps(lo[k][p & 1], (__m512bh)clo, (__m512bh)w);
                hi[k][p & 1] = _mm512_dpbf16_ps(hi[k][p & 1], (__m512bh)chi, (__m512bh)w);
            }
        }
        for (int k = 0; k < NQ; k++) {
            _mm512_storeu_ps(accs[k] + g, _mm512_add_ps(lo[k][0], lo[k][1]));
            _mm512_storeu_ps(accs[k] + g + 16, _mm512_add_ps(hi[k][0], hi[k][1]));
        }
    }
}

/* Weights are prepared 16 keys at a time in vectors: the keys' fp16 scales (one gather),
 * w * scale with the rows a query skips set to 0, rounded to bf16 (vcvtneps2bf16), whose
 * 32-bit words are then the pairs' weights.  A block every row of which some query keeps
 * (always, at threshold 0) goes in one pass; otherwise its kept rows are collected into
 * pairs one by one. */
static inline __attribute__((always_inline)) TKV_BF_ATTR void
tkv_bf_run(const int NQ, const tkv_code_layout *L, const float *const *w, float threshold,
           const uint8_t *codes, size_t n, float *const *accs) {
    uint16_t t16[32] = {0};
    for (int i = 0; i < 16; i++) {
        t16[i] = tkv_bf16_rne(L->centroids[i]);
    }
    const __m512i tab = _mm512_loadu_si512(t16);
    const uint32_t stride = L->stride, po = L->payload_off;
    const __m512i offs =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)stride));
    const __m512 thr = _mm512_set1_ps(threshold);
    const uint8_t *code[2 * TKV_BF_PAIRS];
    uint32_t wp[TKV_MAX_QUERIES][TKV_BF_PAIRS];
    const uint8_t *pend[2 * TKV_BF_PAIRS]; /* rows collected one by one */
    uint16_t pw[TKV_MAX_QUERIES][2 * TKV_BF_PAIRS];
    int np = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint8_t *blk = codes + i * stride;
        /* 4 bytes at each scale: stride >= 4 and the scale sits first in a turbo vector */
        const __m512i h = _mm512_i32gather_epi32(offs, blk + L->scale_off, 1);
        const __m512 sc = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
        __m256bh wb[TKV_MAX_QUERIES];
        __mmask16 need = 0;
        for (int k = 0; k < NQ; k++) {
            const __m512 wv = _mm512_loadu_ps(w[k] + i);
            const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_abs_ps(wv), thr, _CMP_GE_OQ);
            need |= keep;
            wb[k] = _mm512_cvtneps_pbh(_mm512_maskz_mul_ps(keep, wv, sc));
        }
        if (need == 0xFFFF) {
            for (int r = 0; r < 16; r++) {
                code[r] = blk + (size_t)r * stride;
            }
            for (int k = 0; k < NQ; k++) {
                _mm256_storeu_si256((__m256i *)wp[k], (__m256i)wb[k]);
            }
            tkv_bf_batch(NQ, L->d, po, tab, code, wp, TKV_BF_PAIRS, accs);
            continue;
        }
        uint16_t wr[TKV_MAX_QUERIES][16];
        for (int k = 0; k < NQ; k++) {
            _mm256_storeu_si256((__m256i *)wr[k], (__m256i)wb[k]);
        }
        for (int r = 0; r < 16; r++) {
            if (!((need >> r) & 1)) {
                continue;
            }
            pend[np] = blk + (size_t)r * stride;
            for (int k = 0; k < NQ; k++) {
                pw[k][np] = wr[k][r];
            }
            if (++np == 2 * TKV_BF_PAIRS) {
                for (int k = 0; k < NQ; k++) {
                    memcpy(wp[k], pw[k], sizeof wp[k]);
                }
                tkv_bf_batch(NQ, L->d, po, tab, pend, wp, TKV_BF_PAIRS, accs);
                np = 0;
            }
        }
    }
    for (; i < n; i++) { /* the last n % 16 rows, one by one */
        if (!tkv_kc_row_needed(w, NQ, i, threshold)) {
            continue;
        }
        pend[np] = codes + i * stride;
        const float scale = _cvtsh_ss(tkv_kc_u16(pend[np] + L->scale_off));
        for (int k = 0; k < NQ; k++) {
            /* a weight of 0 stands for a row this query skips (0 * centroid adds nothing) */
            pw[k][np] = tkv_bf16_rne(fabsf(w[k][i]) >= threshold ? w[k][i] * scale : 0.0f);
        }
        if (++np == 2 * TKV_BF_PAIRS) {
            for (int k = 0; k < NQ; k++) {
                memcpy(wp[k], pw[k], sizeof wp[k]);
            }
            tkv_bf_batch(NQ, L->d, po, tab, pend, wp, TKV_BF_PAIRS, accs);
            np = 0;
        }
    }
    if (np > 0) {
        if (np & 1) { /* pad the last pair with a zero-weight copy of its key */
            pend[np] = pend[np - 1];
            for (int k = 0; k < NQ; k++) {
                pw[k][np] = 0;
            }
            np++;
        }
        for (int k = 0; k < NQ; k++) {
            memcpy(wp[k], pw[k], (size_t)np * sizeof pw[k][0]);
        }
        tkv_bf_batch(NQ, L->d, po, tab, pend, wp, np / 2, accs);
    }
}

static int tkv_bf_supported(const tkv_code_layout *L) {
    return L->bits == 4 && !L->has_qjl && L->d % 32 == 0;
}

TKV_BF_ATTR void tkv_accum_turbo_bf16(const tkv_code_layout *L, const float *w, float threshold,
                                      const uint8_t *codes, size_t n, float *acc) {
    if (!tkv_bf_supported(L)) {
        tkv_codec_kernels_avx512.accum[TKV_FMT_TURBO](L, w, threshold, codes, n, acc);
        return;
    }
    tkv_bf_run(1, L, &w, threshold, codes, n, &acc);
}

TKV_BF_ATTR void tkv_accum_turbo_multi_bf16(const tkv_code_layout *L, const float *const *ws,
                                            int nq, float threshold, const uint8_t *codes, size_t n,
                                            float *const *accs) {
    if (!tkv_bf_supported(L)) {
        tkv_codec_kernels_avx512.accum_multi[TKV_FMT_TURBO](L, ws, nq, threshold, codes, n, accs);
        return;
    }
    switch (nq) {
    case 1:
        tkv_bf_run(1, L, ws, threshold, codes, n, accs);
        break;
    case 2:
        tkv_bf_run(2, L, ws, threshold, codes, n, accs);
        break;
    case 3:
        tkv_bf_run(3, L, ws, threshold, codes, n, accs);
        break;
    default:
        tkv_bf_run(4, L, ws, threshold, codes, n, accs);
        break;
    }
}

/* int8 value sums where they apply (kernels_turbo_i8_body.h), bf16 ones for the other
 * layouts they cover (d % 32 == 0 at 4 bits): the entries of CPUs with VNNI and BF16. */
TKV_I8_ATTR TKV_BF_ATTR void tkv_accum_turbo_i8_bf16(const tkv_code_layout *L, const float *w,
                                                     float threshold, const uint8_t *codes,
                                                     size_t n, float *acc) {
    if (tkv_i8_vnni_supported(L)) {
        tkv_i8_vnni_accum_run(L, &w, 1, threshold, codes, n, &acc);
    } else {
        tkv_accum_turbo_bf16(L, w, threshold, codes, n, acc);
    }
}

TKV_I8_ATTR TKV_BF_ATTR void tkv_accum_turbo_multi_i8_bf16(const tkv_code_layout *L,
                                                           const float *const *ws, int nq,
                                                           float threshold, const uint8_t *codes,
                                                           size_t n, float *const *accs) {
    if (tkv_i8_vnni_supported(L)) {
        tkv_i8_vnni_accum_run(L, ws, nq, threshold, codes, n, accs);
    } else {
        tkv_accum_turbo_multi_bf16(L, ws, nq, threshold, codes, n, accs);
    }
}
