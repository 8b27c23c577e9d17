/*
 * kernels_trellis_avx512.c - AVX-512 score / accumulate kernels of the trellis codecs.
 *
 * The table (256 or 512 floats) is read with in-register permutes instead of loads or
 * gathers: vpermt2ps picks 16 lanes out of a 32-float block by the low 5 bits of each
 * slot, one permute per block, then a tree of masked blends keyed on the higher slot bits
 * chooses among the blocks (8 permutes + 7 blends per 16 coordinates for 256 entries,
 * 16 + 15 for 512).  The windows of 16 coordinates come from four 32-bit loads of the
 * stream extended by its wrap-around bits (window j = bits [N j, N j + L) of ext).
 * These are the avx512 table's entries on CPUs without VBMI; with VBMI the entries at the
 * end of this file use the int8 kernels of kernels_trellis_avx512vbmi.c.
 * Tested against kernels_scalar.c (tests/c/test_kernels_codec.c).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/cpu.h"
#include "base/half.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"
#include "turbokv.h"

#define TKV_EXT_WORDS (1024 * 4 / 64 + 2)

/* ext (64-bit words) = the stream shifted up by P bits, its last P bits in front, zeros
 * after.  nb = d N / 8 bytes. */
static inline void tkv_trellis_ext(const uint8_t *s, uint32_t nb, uint32_t P, uint64_t *ext) {
    const uint32_t full = nb / 8;
    uint64_t prev = (uint64_t)(s[nb - 1] >> (8 - P)) << (64 - P); /* shifts into bit 0.. */
    for (uint32_t i = 0; i < full; i++) {
        uint64_t w;
        memcpy(&w, s + 8 * i, 8);
        ext[i] = (w << P) | (prev >> (64 - P));
        prev = w;
    }
    uint64_t tail = 0;
    for (uint32_t b = 8 * full; b < nb; b++) {
        tail |= (uint64_t)s[b] << (8 * (b - 8 * full));
    }
    ext[full] = (tail << P) | (prev >> (64 - P));
    ext[full + 1] = tail >> (64 - P);
    ext[full + 2] = 0;
}

static inline float tkv_dot512(const float *a, const float *b, uint32_t d) {
    __m512 acc = _mm512_setzero_ps();
    uint32_t j = 0;
    for (; j + 16 <= d; j += 16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), acc);
    }
    if (j < d) { /* d mod 16 == 8 */
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(0xff, a + j),
                              _mm512_maskz_loadu_ps(0xff, b + j), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static inline void tkv_axpy512(float w, const float *x, float *acc, uint32_t d) {
    const __m512 wv = _mm512_set1_ps(w);
    uint32_t j = 0;
    for (; j + 16 <= d; j += 16) {
        _mm512_storeu_ps(acc + j,
                         _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + j), _mm512_loadu_ps(acc + j)));
    }
    if (j < d) {
        _mm512_mask_storeu_ps(acc + j, 0xff,
                              _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(0xff, x + j),
                                              _mm512_maskz_loadu_ps(0xff, acc + j)));
    }
}

/*
 * 16 table values by slot (literal L: 8 or 9).  A 256-float table is passed in 16
 * registers (tb); a 512-float one would take all 32 and spill (measured 4x slower at
 * head_dim 128), so its blocks are read from memory (tab) as they are needed.
 */
static inline __attribute__((always_inline)) __m512 tkv_lut(const __m512 *tb, const float *tab,
                                                            __m512i slot, const uint32_t L) {
    __m512 r[16];
    const uint32_t blocks = 1u << (L - 5);
    for (uint32_t b = 0; b < blocks; b++) {
        const __m512 lo = L <= 8 ? tb[2 * b] : _mm512_loadu_ps(tab + 32 * b);
        const __m512 hi = L <= 8 ? tb[2 * b + 1] : _mm512_loadu_ps(tab + 32 * b + 16);
        r[b] = _mm512_permutex2var_ps(lo, slot, hi);
    }
    for (uint32_t bit = 5, n = blocks; bit < L; bit++, n /= 2) {
        const __mmask16 m = _mm512_test_epi32_mask(slot, _mm512_set1_epi32(1 << bit));
        for (uint32_t i = 0; i < n / 2; i++) {
            r[i] = _mm512_mask_blend_ps(m, r[2 * i], r[2 * i + 1]);
        }
    }
    return r[0];
}

/*
 * Every kernel for literal N and P: decode each code (unscaled) into x, then either dot
 * it with the nq queries (accumulate = 0) or add it, weighted, to the nq accumulators.
 * A 256-float table is loaded into registers once per call.
 */
static inline __attribute__((always_inline)) void
tkv_trellis_run_n(const tkv_code_layout *Lay, const uint8_t *codes, size_t n, int nq,
                  const float *const *qs, float *const *outs, const float *const *ws,
                  float threshold, float *const *accs, const int accumulate, const uint32_t N,
                  const uint32_t P) {
    const uint32_t L = N + P, d = Lay->d;
    const float *tab = Lay->trellis->table;
    __m512 tb[16];
    for (uint32_t b = 0; L <= 8 && b < 16; b++) {
        tb[b] = _mm512_loadu_ps(tab + 16 * b);
    }
    /* lanes 4k..4k+3 read the 32-bit word at byte (4 k N) / 8 of the group */
    const __m512i shifts = _mm512_setr_epi32(
        0, (int)N, (int)(2 * N), (int)(3 * N), (int)((4 * N) & 7), (int)(((4 * N) & 7) + N),
        (int)(((4 * N) & 7) + 2 * N), (int)(((4 * N) & 7) + 3 * N), (int)((8 * N) & 7),
        (int)(((8 * N) & 7) + N), (int)(((8 * N) & 7) + 2 * N), (int)(((8 * N) & 7) + 3 * N),
        (int)((12 * N) & 7), (int)(((12 * N) & 7) + N), (int)(((12 * N) & 7) + 2 * N),
        (int)(((12 * N) & 7) + 3 * N));
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i wmask = _mm512_set1_epi32((int)((1u << L) - 1u));
    const __m512i amask = _mm512_set1_epi32((int)((1u << N) - 1u));
    float x[1024 + 16];
    uint64_t ext[TKV_EXT_WORDS];
    for (size_t i = 0; i < n; i++) {
        if (accumulate) {
            if (!tkv_kc_row_needed(ws, nq, i, threshold)) {
                continue;
            }
        }
        const uint8_t *code = codes + i * Lay->stride;
        tkv_trellis_ext(code + Lay->payload_off, d * N / 8, P, ext);
        const uint8_t *e = (const uint8_t *)ext;
        for (uint32_t j0 = 0; j0 < d; j0 += 16) {
            const uint8_t *p = e + (size_t)N * j0 / 8; /* bit N j0: a byte boundary */
            uint32_t w0, w1, w2, w3;
            memcpy(&w0, p, 4);
            memcpy(&w1, p + ((4 * N) >> 3), 4);
            memcpy(&w2, p + ((8 * N) >> 3), 4);
            memcpy(&w3, p + ((12 * N) >> 3), 4);
            const __m512i v = _mm512_permutexvar_epi32(
                spread, _mm512_castsi128_si512(_mm_setr_epi32((int)w0, (int)w1, (int)w2, (int)w3)));
            const __m512i win = _mm512_and_si512(_mm512_srlv_epi32(v, shifts), wmask);
            const __m512i slot = _mm512_or_si512(
                _mm512_srli_epi32(win, N), _mm512_slli_epi32(_mm512_and_si512(win, amask), P));
            _mm512_storeu_ps(x + j0, tkv_lut(tb, tab, slot, L)); /* x has room past d */
        }
        const float scale = tkv_fp16_to_f32(tkv_kc_u16(code + Lay->scale_off));
        for (int k = 0; k < nq; k++) {
            if (!accumulate) {
                outs[k][i] = scale * tkv_dot512(qs[k], x, d);
            } else if (fabsf(ws[k][i]) >= threshold) {
                tkv_axpy512(ws[k][i] * scale, x, accs[k], d);
            }
        }
    }
}

/* The encoder's Viterbi steps (kernels_trellis_step_body.h). */
#define TKV_STEP(name) tkv_##name##_avx512
/* (c & ~low) | a: ternary logic B ? C : A (A = c, B = low, C = a) is table 0xb8 */
#define TKV_KEY(c, low, a) _mm256_ternarylogic_epi32(c, low, a, 0xb8)
#include "codec/kernels_trellis_step_body.h"

#define TKV_TRELLIS_RUN(...)                                                                       \
    do {                                                                                           \
        switch (L->trellis->bits) {                                                                \
        case 2:                                                                                    \
            tkv_trellis_run_n(__VA_ARGS__, 2, 2 * (TKV_TRELLIS_WINDOW_2 - 1));                     \
            break;                                                                                 \
        case 3:                                                                                    \
            tkv_trellis_run_n(__VA_ARGS__, 3, 3 * (TKV_TRELLIS_WINDOW_3 - 1));                     \
            break;                                                                                 \
        default:                                                                                   \
            tkv_trellis_run_n(__VA_ARGS__, 4, 4 * (TKV_TRELLIS_WINDOW_4 - 1));                     \
            break;                                                                                 \
        }                                                                                          \
    } while (0)

void tkv_scores_trellis_multi_avx512f(const tkv_code_layout *L, const float *const *qs, int nq,
                                     const uint8_t *codes, size_t n, float *const *outs) {
    TKV_TRELLIS_RUN(L, codes, n, nq, qs, outs, NULL, 0.0f, NULL, 0);
}

void tkv_scores_trellis_avx512f(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                               size_t n, float *out) {
    tkv_scores_trellis_multi_avx512f(L, &q, 1, codes, n, &out);
}

void tkv_accum_trellis_multi_avx512f(const tkv_code_layout *L, const float *const *ws, int nq,
                                    float threshold, const uint8_t *codes, size_t n,
                                    float *const *accs) {
    TKV_TRELLIS_RUN(L, codes, n, nq, NULL, NULL, ws, threshold, accs, 1);
}

void tkv_accum_trellis_avx512f(const tkv_code_layout *L, const float *w, float threshold,
                              const uint8_t *codes, size_t n, float *acc) {
    tkv_accum_trellis_multi_avx512f(L, &w, 1, threshold, codes, n, &acc);
}

/* The avx512 table's entries: the VBMI kernels where the CPU has VBMI and VNNI. */
static int tkv_trellis_vbmi(void) {
    const uint32_t want = TKV_CPU_AVX512VBMI | TKV_CPU_AVX512VNNI;
    return (tkv_cpu_detect() & want) == want;
}

int tkv_trellis_vbmi_active(const tkv_codec_kernels *K) {
    return K->scores_multi[TKV_FMT_TRELLIS] == tkv_scores_trellis_multi_avx512 &&
           tkv_trellis_vbmi();
}

void tkv_scores_trellis_multi_avx512(const tkv_code_layout *L, const float *const *qs, int nq,
                                     const uint8_t *codes, size_t n, float *const *outs) {
    if (tkv_trellis_vbmi()) {
        tkv_scores_trellis_multi_avx512vbmi(L, qs, nq, codes, n, outs);
    } else {
        tkv_scores_trellis_multi_avx512f(L, qs, nq, codes, n, outs);
    }
}

void tkv_scores_trellis_avx512(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                               size_t n, float *out) {
    tkv_scores_trellis_multi_avx512(L, &q, 1, codes, n, &out);
}

void tkv_accum_trellis_multi_avx512(const tkv_code_layout *L, const float *const *ws, int nq,
                                    float threshold, const uint8_t *codes, size_t n,
                                    float *const *accs) {
    if (tkv_trellis_vbmi()) {
        tkv_accum_trellis_multi_avx512vbmi(L, ws, nq, threshold, codes, n, accs);
    } else {
        tkv_accum_trellis_multi_avx512f(L, ws, nq, threshold, codes, n, accs);
    }
}

void tkv_accum_trellis_avx512(const tkv_code_layout *L, const float *w, float threshold,
                              const uint8_t *codes, size_t n, float *acc) {
    tkv_accum_trellis_multi_avx512(L, &w, 1, threshold, codes, n, &acc);
}
