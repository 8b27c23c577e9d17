/*
 * kernels_trellis_avx2.c - AVX2 score / accumulate kernels of the trellis codecs.
 *
 * A vector is decoded with table loads (tkv_kc_trellis_decode: 8 windows per 64-bit
 * load, constant shifts), then dotted / accumulated 8 lanes at a time.  AVX2 gathers
 * were measured 3x slower for the decode on this project's x86 machines (~30 cycles
 * per 8-lane gather).  The AVX-512 table uses these kernels too.
 * Tested against kernels_scalar.c (tests/c/test_kernels_codec.c).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"

/* Unscaled decode of one trellis vector (kernels_common.h: no gathers). */
static void tkv_trellis_decode_avx2(const tkv_code_layout *L, const uint8_t *code, float *out) {
    tkv_kc_trellis_decode(L->trellis, code + L->payload_off, L->d, out);
}

/* The step for literal N and P (S = 2^P states, a multiple of 8). */
static inline __attribute__((always_inline)) void
tkv_trellis_step_n(const float *tab, float x, const float *cost, float *next, uint8_t *back,
                   const uint32_t N, const uint32_t P) {
    const uint32_t S = 1u << P, K = 1u << N;
    const uint32_t R = S > K ? S / K : 1; /* the predecessor of s depends on s mod R */
    /* pred[a R + r]: cost of the predecessor of the states s = r (mod R), dropped symbol a */
    float pred[64];
    for (uint32_t a = 0; a < K; a++) {
        for (uint32_t r = 0; r < R; r++) {
            pred[a * R + r] = cost[((r << N) | a) & (S - 1)];
        }
    }
    const __m256 xv = _mm256_set1_ps(x);
    for (uint32_t s0 = 0; s0 < S; s0 += 8) {
        __m256 best = _mm256_setzero_ps();
        __m256i arg = _mm256_setzero_si256();
        for (uint32_t a = 0; a < K; a++) {
            const __m256 pv = R == 1 ? _mm256_set1_ps(pred[a]) : _mm256_loadu_ps(pred + a * R + s0 % R);
            const __m256 e = _mm256_sub_ps(xv, _mm256_loadu_ps(tab + (size_t)a * S + s0));
            const __m256 c = _mm256_add_ps(pv, _mm256_mul_ps(e, e));
            if (a == 0) {
                best = c;
            } else {
                const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(c, best, _CMP_LT_OQ));
                best = _mm256_min_ps(c, best); /* c < best ? c : best */
                arg = _mm256_blendv_epi8(arg, _mm256_set1_epi32((int)a), lt);
            }
        }
        _mm256_storeu_ps(next + s0, best);
        const __m128i a16 = _mm_packus_epi32(_mm256_castsi256_si128(arg),
                                             _mm256_extracti128_si256(arg, 1));
        _mm_storel_epi64((__m128i *)(back + s0), _mm_packus_epi16(a16, a16));
    }
}

void tkv_trellis_step_avx2(const tkv_trellis *t, float x, const float *cost, float *next,
                           uint8_t *back) {
    switch (t->bits) {
    case 2: tkv_trellis_step_n(t->table, x, cost, next, back, 2, 2 * (TKV_TRELLIS_WINDOW_2 - 1)); break;
    case 3: tkv_trellis_step_n(t->table, x, cost, next, back, 3, 3 * (TKV_TRELLIS_WINDOW_3 - 1)); break;
    case 4: tkv_trellis_step_n(t->table, x, cost, next, back, 4, 4 * (TKV_TRELLIS_WINDOW_4 - 1)); break;
    default: tkv_trellis_step_scalar(t, x, cost, next, back); break;
    }
}

static inline float tkv_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float tkv_dot_avx2(const float *a, const float *b, uint32_t d) {
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t j = 0; j < d; j += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc);
    }
    return tkv_hsum256(acc);
}

static inline void tkv_axpy_avx2(float w, const float *x, float *acc, uint32_t d) {
    const __m256 wv = _mm256_set1_ps(w);
    for (uint32_t j = 0; j < d; j += 8) {
        _mm256_storeu_ps(acc + j,
                         _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j), _mm256_loadu_ps(acc + j)));
    }
}

void tkv_scores_trellis_multi_avx2(const tkv_code_layout *L, const float *const *qs, int nq,
                                   const uint8_t *codes, size_t n, float *const *outs) {
    float x[1024];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *code = codes + i * L->stride;
        tkv_trellis_decode_avx2(L, code, x);
        const float scale = tkv_fp16_to_f32(tkv_kc_u16(code + L->scale_off));
        for (int k = 0; k < nq; k++) {
            outs[k][i] = scale * tkv_dot_avx2(qs[k], x, L->d);
        }
    }
}

void tkv_scores_trellis_avx2(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                             size_t n, float *out) {
    tkv_scores_trellis_multi_avx2(L, &q, 1, codes, n, &out);
}

void tkv_accum_trellis_multi_avx2(const tkv_code_layout *L, const float *const *ws, int nq,
                                  float threshold, const uint8_t *codes, size_t n,
                                  float *const *accs) {
    float x[1024];
    for (size_t i = 0; i < n; i++) {
        int any = 0;
        for (int k = 0; k < nq; k++) {
            any |= fabsf(ws[k][i]) >= threshold;
        }
        if (!any) {
            continue;
        }
        const uint8_t *code = codes + i * L->stride;
        tkv_trellis_decode_avx2(L, code, x);
        const float scale = tkv_fp16_to_f32(tkv_kc_u16(code + L->scale_off));
        for (int k = 0; k < nq; k++) {
            if (fabsf(ws[k][i]) >= threshold) {
                tkv_axpy_avx2(ws[k][i] * scale, x, accs[k], L->d);
            }
        }
    }
}

void tkv_accum_trellis_avx2(const tkv_code_layout *L, const float *w, float threshold,
                            const uint8_t *codes, size_t n, float *acc) {
    tkv_accum_trellis_multi_avx2(L, &w, 1, threshold, codes, n, &acc);
}
