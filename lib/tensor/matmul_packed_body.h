/*
 * matmul_packed_body.h - the kernels on packed weights (layouts in matmul.h), one body for
 * the x86 ISAs, included by matmul_avx2.c and matmul_avx512.c once per variant after
 * defining TKV_FN(name), TKV_ATTR (as for matmul_x86_body.h) and
 *
 *   TKV_PK_512   1: a vector holds the 16 rows of a group (512 bits) and the 4-code dot
 *                product is vpdpbusd (any u8 code against s8 codes);
 *                0: a vector holds 8 rows (256 bits), the kernels walk a group's two row
 *                halves one after the other (the second from cache), and the dot product is
 *                vpmaddubsw + vpmaddwd, exact for u8 codes <= 128 against s8 codes >= -127
 *                (int16 pair sums <= 2 * 128 * 127); Q8_0's stored codes (code + 128) then
 *                go in as |code| against the activations with the code's sign.
 *
 * Every kernel computes whole vectors of rows against T tokens (a constant after inlining)
 * and stores the rows [rb, re) of the group the caller asked for; a row's result never
 * depends on rb / re, so the thread split changes no bits.
 */
#include <immintrin.h>

#include "tensor/matmul_x86_nx.h"

#define TKVP_INLINE static inline __attribute__((always_inline)) TKV_ATTR
#define TKVP_UNROLL _Pragma("GCC unroll 16")
/* Software prefetch distance: bytes ahead of the block being computed, into L2 (a T0
 * prefetch this far ahead evicts the L1 lines in use).  docs/SPEED_MATMUL.md has the
 * distances tried. */
#ifndef TKVP_PREFETCH
#define TKVP_PREFETCH 8192
#endif
/* Q6_K's, whose prefetches are spread over its block pairs (pk_q6k_t) */
#ifndef TKVP_PREFETCH_Q6K
#define TKVP_PREFETCH_Q6K 4096
#endif

#if TKV_PK_512
#define TKVP_RV 16 /* rows per vector */
#define TKVP_I __m512i
#define TKVP_F __m512
#define TKVP_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define TKVP_AND(a, b) _mm512_and_si512(a, b)
#define TKVP_SRLI16(a, n) _mm512_srli_epi16(a, n)
#define TKVP_SLLI16(a, n) _mm512_slli_epi16(a, n)
#define TKVP_ORAND(a, b, m) _mm512_ternarylogic_epi32(a, b, m, 0xF8) /* a | (b & m) */
#define TKVP_SET1_8(c) _mm512_set1_epi8(c)
#define TKVP_SET1_32(c) _mm512_set1_epi32(c)
#define TKVP_ZERO_I() _mm512_setzero_si512()
#define TKVP_ADD32(a, b) _mm512_add_epi32(a, b)
#define TKVP_SRLI32(a, n) _mm512_srli_epi32(a, n)
#define TKVP_DOT4(acc, c, x4) _mm512_dpbusd_epi32(acc, c, _mm512_set1_epi32(x4))
#define TKVP_DOT4_Q8 TKVP_DOT4
#define TKVP_DOT4X2(acc, c0, x0, c1, x1) TKVP_DOT4(TKVP_DOT4(acc, c0, x0), c1, x1)
#define TKVP_Q8_OFFSET (-128.0f) /* the + 128 of the stored codes leaves through the min */
#define TKVP_CVT(a) _mm512_cvtepi32_ps(a)
#define TKVP_FMADD(a, b, c) _mm512_fmadd_ps(a, b, c)
#define TKVP_FNMADD(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define TKVP_MUL(a, b) _mm512_mul_ps(a, b)
#define TKVP_ADD(a, b) _mm512_add_ps(a, b)
#define TKVP_SET1F(v) _mm512_set1_ps(v)
#define TKVP_ZERO_F() _mm512_setzero_ps()
#define TKVP_H16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define TKVP_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#define TKVP_S8(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#else
#define TKVP_RV 8
#define TKVP_I __m256i
#define TKVP_F __m256
#define TKVP_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define TKVP_AND(a, b) _mm256_and_si256(a, b)
#define TKVP_SRLI16(a, n) _mm256_srli_epi16(a, n)
#define TKVP_SLLI16(a, n) _mm256_slli_epi16(a, n)
#define TKVP_ORAND(a, b, m) _mm256_or_si256(a, _mm256_and_si256(b, m))
#define TKVP_SET1_8(c) _mm256_set1_epi8(c)
#define TKVP_SET1_32(c) _mm256_set1_epi32(c)
#define TKVP_ZERO_I() _mm256_setzero_si256()
#define TKVP_ADD32(a, b) _mm256_add_epi32(a, b)
#define TKVP_SRLI32(a, n) _mm256_srli_epi32(a, n)
#define TKVP_DOT4(acc, c, x4)                                                                      \
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, _mm256_set1_epi32(x4)),        \
                                            _mm256_set1_epi16(1)))
#define TKVP_DOT4_Q8(acc, c, x4) TKV_FN(pk_dot4_q8)(acc, c, x4)
/* two dot products of codes <= 63: their int16 pair sums add without overflow
 * (2 * 2 * 63 * 127 < 2^15) before one vpmaddwd */
#define TKVP_DOT4X2(acc, c0, x0, c1, x1)                                                           \
    _mm256_add_epi32(acc, _mm256_madd_epi16(                                                       \
                              _mm256_add_epi16(_mm256_maddubs_epi16(c0, _mm256_set1_epi32(x0)),    \
                                               _mm256_maddubs_epi16(c1, _mm256_set1_epi32(x1))),   \
                              _mm256_set1_epi16(1)))
#define TKVP_Q8_OFFSET 0.0f
#define TKVP_CVT(a) _mm256_cvtepi32_ps(a)
#define TKVP_FMADD(a, b, c) _mm256_fmadd_ps(a, b, c)
#define TKVP_FNMADD(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define TKVP_MUL(a, b) _mm256_mul_ps(a, b)
#define TKVP_ADD(a, b) _mm256_add_ps(a, b)
#define TKVP_SET1F(v) _mm256_set1_ps(v)
#define TKVP_ZERO_F() _mm256_setzero_ps()
#define TKVP_H16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define TKVP_U8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define TKVP_S8(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p)))

/* Q8_0's stored codes c = code + 128 against 4 activation codes: |code| x (x with the
 * code's sign), so maddubs' u8 operand stays <= 128. */
TKVP_INLINE __m256i TKV_FN(pk_dot4_q8)(__m256i acc, __m256i c, int32_t x4) {
    const __m256i w = _mm256_xor_si256(c, _mm256_set1_epi8(-128));
    const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(x4), w);
    return _mm256_add_epi32(
        acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), xs), _mm256_set1_epi16(1)));
}
#endif

/* Addresses inside a packed block p for the rows of vector `half` (rows half * TKVP_RV ..):
 * a lane array's k-th 64 bytes, an fp16 array [16], a byte array's j-th 16 bytes. */
#define TKVP_LANES(base, k, half) ((base) + 64 * (k) + 4 * TKVP_RV * (half))
#define TKVP_HALF16(base, half) ((base) + 2 * TKVP_RV * (half))
#define TKVP_BYTES(base, j, half) ((base) + 16 * (j) + TKVP_RV * (half))

/* The activation rows of T tokens: codes, block scales d_x and block sums ds_x. */
TKVP_INLINE void TKV_FN(pk_rows)(int64_t n, const void *x, size_t xs, const int T,
                                 const int8_t **xq, const float **xd, const float **xds) {
    TKVP_UNROLL for (int t = 0; t < T; t++) {
        const char *xt = (const char *)x + (size_t)t * xs;
        xq[t] = (const int8_t *)xt;
        xd[t] = (const float *)(xt + n);
        xds[t] = xd[t] + n / TKV_QK;
    }
}

/* What every packed kernel starts from: the T tokens' int8 rows and block scales (pk_rows)
 * in xq / xd / xds, and the zeroed accumulators of the scaled sums (acc) and of the min or
 * offset terms (macc). */
#define TKVP_BEGIN_ROWS                                                                            \
    const int8_t *xq[TKV_MM_NX];                                                                   \
    const float *xd[TKV_MM_NX], *xds[TKV_MM_NX];                                                   \
    TKVP_F acc[TKV_MM_NX], macc[TKV_MM_NX];                                                        \
    TKV_FN(pk_rows)(n, x, xs, T, xq, xd, xds);                                                     \
    TKVP_UNROLL for (int t = 0; t < T; t++) {                                                      \
        acc[t] = macc[t] = TKVP_ZERO_F();                                                          \
    }

/* The bytes `ahead` of p (the next groups follow in memory), into L2: spread over the
 * blocks, so the memory sees a steady stream of requests.  The kernels ask TKVP_PREFETCH
 * ahead in a group's first row half and one group ahead in its second (256-bit vectors),
 * which computes on lines the first brought in: the memory stays busy meanwhile. */
TKVP_INLINE void TKV_FN(pk_prefetch)(const uint8_t *p, const size_t bytes, const size_t ahead) {
    TKVP_UNROLL for (size_t c = 0; c < bytes; c += 64) {
        _mm_prefetch((const char *)p + ahead + c, _MM_HINT_T1);
    }
}

/* 4 activation codes as one int32 (the broadcast operand of a dot product). */
TKVP_INLINE int32_t TKV_FN(pk_x4)(const int8_t *xv) {
    int32_t v;
    memcpy(&v, xv, 4);
    return v;
}

/* Code widths, for the 256-bit dot products: how many vpmaddubsw results may be summed in
 * int16 before vpmaddwd (pair sums of u8 codes u against s8 codes |x| <= 127). */
#define TKVP_NARROW 0 /* u <= 31: four (4 * 2 * 31 * 127 < 2^15) */
#define TKVP_Q8 1     /* Q8_0's stored code + 128: one at a time, as |code| (TKVP_DOT4_Q8) */

/* acc + each row's dot product of the code registers c[0], c[st], c[2 st], c[3 st] with the
 * 4-code groups of xv at offsets 0, xo, 2 xo, 3 xo. */
TKVP_INLINE TKVP_I TKV_FN(pk_chain4)(TKVP_I acc, const TKVP_I *c, const int st, const int8_t *xv,
                                     const int xo, const int kind) {
#if TKV_PK_512
    (void)kind;
    TKVP_UNROLL for (int k = 0; k < 4; k++) {
        acc = TKVP_DOT4(acc, c[k * st], TKV_FN(pk_x4)(xv + k * xo));
    }
    return acc;
#else
    if (kind == TKVP_Q8) {
        TKVP_UNROLL for (int k = 0; k < 4; k++) {
            acc = TKVP_DOT4_Q8(acc, c[k * st], TKV_FN(pk_x4)(xv + k * xo));
        }
        return acc;
    }
    __m256i s16 = _mm256_setzero_si256();
    TKVP_UNROLL for (int k = 0; k < 4; k++) {
        s16 = _mm256_add_epi16(
            s16, _mm256_maddubs_epi16(c[k * st], _mm256_set1_epi32(TKV_FN(pk_x4)(xv + k * xo))));
    }
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
#endif
}

/* Each row's integer dot product with one activation block xv: register k holds codes
 * 4k .. 4k+3 of the rows; two chains (even and odd k) halve the latency. */
TKVP_INLINE TKVP_F TKV_FN(pk_block)(const TKVP_I c[8], const int8_t *xv, const int kind) {
    const TKVP_I s0 = TKV_FN(pk_chain4)(TKVP_ZERO_I(), c, 2, xv, 8, kind);
    const TKVP_I s1 = TKV_FN(pk_chain4)(TKVP_ZERO_I(), c + 1, 2, xv + 4, 8, kind);
    return TKVP_CVT(TKVP_ADD32(s0, s1));
}

/* y rows [rb, re) of the group that vector `half` holds: acc + macc of each token. */
TKVP_INLINE void TKV_FN(pk_store)(const TKVP_F *acc, const TKVP_F *macc, const int T, float *y,
                                  size_t ys, int rb, int re, const int half) {
    const int r0 = half * TKVP_RV;
#if TKV_PK_512
    (void)r0;
    const __mmask16 keep = (__mmask16)(((1u << re) - 1u) & ~((1u << rb) - 1u));
    TKVP_UNROLL for (int t = 0; t < T; t++) {
        _mm512_mask_storeu_ps(y + (size_t)t * ys, keep, _mm512_add_ps(acc[t], macc[t]));
    }
#else
    const __m256i lane =
        _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(r0));
    const __m256i keep = _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(rb - 1)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(re), lane));
    TKVP_UNROLL for (int t = 0; t < T; t++) {
        _mm256_maskstore_ps(y + (size_t)t * ys + r0, keep, _mm256_add_ps(acc[t], macc[t]));
    }
#endif
}

/* Q4_0 / Q4_1 / Q8_0 (fmt 0, 1, 2), the rows of vector `half` against T tokens.  Per block
 * the rows' codes are 8 registers of 4 codes per row (nibbles split in place); one float fma
 * per block scales the sums by d_w(row) * d_x, one adds the min / offset term m_w(row) *
 * ds_x (Q4_0: m = -8 d; Q8_0 on dpbusd: -128 d for the + 128 of the stored codes). */
TKVP_INLINE void TKV_FN(pk_q32_t)(int64_t n, const void *wg, const void *x, size_t xs, const int T,
                                  float *y, size_t ys, int rb, int re, const int fmt,
                                  const int half) {
    const int R = TKV_MM_PACK_ROWS;
    const int64_t nb = n / TKV_QK;
    const size_t bbytes = (size_t)R * (fmt == 0 ? 18 : fmt == 1 ? 20 : 34);
    const size_t coff = fmt == 1 ? 4 * R : 2 * R;
    const int mins = fmt != 2 || TKVP_Q8_OFFSET != 0.0f;
    TKVP_BEGIN_ROWS
    const TKVP_I m4 = TKVP_SET1_8(15);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = (const uint8_t *)wg + (size_t)b * bbytes;
        TKV_FN(pk_prefetch)(p, bbytes, half == 0 ? TKVP_PREFETCH : (size_t)nb * bbytes);
        const TKVP_F dw = TKVP_H16(TKVP_HALF16(p, half));
        const TKVP_F mw = fmt == 1 ? TKVP_H16(TKVP_HALF16(p + 2 * R, half))
                                   : TKVP_MUL(dw, TKVP_SET1F(fmt == 0 ? -8.0f : TKVP_Q8_OFFSET));
        TKVP_I c[8]; /* register k: elements 4k .. 4k+3 */
        if (fmt < 2) {
            TKVP_UNROLL for (int k = 0; k < 4; k++) {
                const TKVP_I z = TKVP_LOAD(TKVP_LANES(p + coff, k, half));
                c[k] = TKVP_AND(z, m4);
                c[4 + k] = TKVP_AND(TKVP_SRLI16(z, 4), m4);
            }
        } else {
            TKVP_UNROLL for (int k = 0; k < 8; k++) {
                c[k] = TKVP_LOAD(TKVP_LANES(p + coff, k, half));
            }
        }
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            const TKVP_F sum =
                TKV_FN(pk_block)(c, xq[t] + b * TKV_QK, fmt == 2 ? TKVP_Q8 : TKVP_NARROW);
            acc[t] = TKVP_FMADD(sum, TKVP_MUL(dw, TKVP_SET1F(xd[t][b])), acc[t]);
            if (mins) {
                macc[t] = TKVP_FMADD(mw, TKVP_SET1F(xds[t][b]), macc[t]);
            }
        }
    }
    TKV_FN(pk_store)(acc, macc, T, y, ys, rb, re, half);
}

/* Q4_K / Q5_K (fmt 0, 1), the rows of vector `half` against T tokens.  Per sub-block pair c
 * the rows' codes are 8 registers of 4 bytes per row, sub-block 2c in their low nibbles and
 * 2c + 1 in their high ones (Q5_K: the fifth bit of sub-block j is bit j of the qh bytes of
 * the same elements, moved to bit 4).  Within a super-block the sums are scaled by sc_j *
 * d_x(j) and the mins m_j by ds_x(j); the row's d and -d_min multiply the two totals once
 * per super-block. */
TKVP_INLINE void TKV_FN(pk_q45k_t)(int64_t n, const void *wg, const void *x, size_t xs, const int T,
                                   float *y, size_t ys, int rb, int re, const int five,
                                   const int half) {
    const int R = TKV_MM_PACK_ROWS;
    const int64_t nsb = n / TKV_QK_K;
    const size_t sbytes = (size_t)R * (five ? 180 : 148);
    const size_t qs_off = (size_t)(five ? 52 : 20) * R; /* after d, dmin, sc, m (and qh) */
    TKVP_BEGIN_ROWS
    const TKVP_I m4 = TKVP_SET1_8(15), bit4 = TKVP_SET1_8(16);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *p = (const uint8_t *)wg + (size_t)i * sbytes;
        TKV_FN(pk_prefetch)(p, sbytes, half == 0 ? TKVP_PREFETCH : (size_t)nsb * sbytes);
        TKVP_F sacc[TKV_MM_NX], sm[TKV_MM_NX]; /* this super-block's scaled sums and mins */
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            sacc[t] = sm[t] = TKVP_ZERO_F();
        }
        TKVP_UNROLL for (int c = 0; c < 4; c++) {
            const uint8_t *q = p + qs_off + (size_t)c * 8 * 4 * R;
            TKVP_I lo[8], hi[8];
            TKVP_UNROLL for (int k = 0; k < 8; k++) {
                const TKVP_I z = TKVP_LOAD(TKVP_LANES(q, k, half));
                lo[k] = TKVP_AND(z, m4);
                hi[k] = TKVP_AND(TKVP_SRLI16(z, 4), m4);
                if (five) { /* bit 2c (2c + 1) of each qh byte to bit 4 */
                    const TKVP_I h = TKVP_LOAD(TKVP_LANES(p + 20 * R, k, half));
                    const TKVP_I h_lo =
                        2 * c <= 4 ? TKVP_SLLI16(h, 4 - 2 * c) : TKVP_SRLI16(h, 2 * c - 4);
                    const TKVP_I h_hi =
                        2 * c + 1 <= 4 ? TKVP_SLLI16(h, 3 - 2 * c) : TKVP_SRLI16(h, 2 * c - 3);
                    lo[k] = TKVP_ORAND(lo[k], h_lo, bit4);
                    hi[k] = TKVP_ORAND(hi[k], h_hi, bit4);
                }
            }
            TKVP_UNROLL for (int u = 0; u < 2; u++) {
                const int j = 2 * c + u;
                const TKVP_F scf = TKVP_CVT(TKVP_U8(TKVP_BYTES(p + 4 * R, j, half)));
                const TKVP_F mf = TKVP_CVT(TKVP_U8(TKVP_BYTES(p + 12 * R, j, half)));
                const int64_t xb = 8 * i + j; /* activation block */
                TKVP_UNROLL for (int t = 0; t < T; t++) {
                    const TKVP_F sum =
                        TKV_FN(pk_block)(u ? hi : lo, xq[t] + xb * TKV_QK, TKVP_NARROW);
                    sacc[t] = TKVP_FMADD(sum, TKVP_MUL(scf, TKVP_SET1F(xd[t][xb])), sacc[t]);
                    sm[t] = TKVP_FMADD(mf, TKVP_SET1F(xds[t][xb]), sm[t]);
                }
            }
        }
        const TKVP_F d = TKVP_H16(TKVP_HALF16(p, half));
        const TKVP_F dmin = TKVP_H16(TKVP_HALF16(p + 2 * R, half));
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            acc[t] = TKVP_FMADD(d, sacc[t], acc[t]);
            macc[t] = TKVP_FNMADD(dmin, sm[t], macc[t]);
        }
    }
    TKV_FN(pk_store)(acc, macc, T, y, ys, rb, re, half);
}

/* The K-quants with 16-element sub-blocks and 2- or 3-bit codes */
#define TKVP_Q2_K 0
#define TKVP_Q3_K 1

/* The sums of the 16 activation codes of each sub-block j (elements 16j ..) of a
 * super-block (xv: its 256 codes). */
TKVP_INLINE void TKV_FN(pk_xsums16)(const int8_t *xv, int32_t out[16]) {
#if TKV_PK_512
    /* dpbusd with ones sums 4 codes per lane; two rounds of even + odd lanes of two
     * registers sum 16 (lane j: sub-block j) */
    const __m512i ones = _mm512_set1_epi8(1);
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __m512i q[4], p[2];
    TKVP_UNROLL for (int k = 0; k < 4; k++) {
        q[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(xv + 64 * k));
    }
    TKVP_UNROLL for (int k = 0; k < 2; k++) {
        p[k] = _mm512_add_epi32(_mm512_permutex2var_epi32(q[2 * k], even, q[2 * k + 1]),
                                _mm512_permutex2var_epi32(q[2 * k], odd, q[2 * k + 1]));
    }
    _mm512_storeu_si512(out, _mm512_add_epi32(_mm512_permutex2var_epi32(p[0], even, p[1]),
                                              _mm512_permutex2var_epi32(p[0], odd, p[1])));
#else
    /* maddubs + madd with ones sum 4 codes per lane; two rounds of hadd sum 16, leaving
     * sub-blocks 0, 2, 4, 6 | 1, 3, 5, 7 of each 128 codes, which a permute puts in order */
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    TKVP_UNROLL for (int h = 0; h < 2; h++) {
        __m256i v[4];
        TKVP_UNROLL for (int k = 0; k < 4; k++) {
            const __m256i xk = _mm256_loadu_si256((const __m256i *)(xv + 128 * h + 32 * k));
            v[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, xk), ones16);
        }
        const __m256i s =
            _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(out + 8 * h), _mm256_permutevar8x32_epi32(s, order));
    }
#endif
}

/* The rows' unsigned codes u of activation block b = 4h + s of the super-block at p: 8
 * registers of 4 codes per row (registers 0..3: sub-block 2b, 4..7: 2b + 1).  Q2_K: u = q
 * (0..3); Q3_K: u = q + 4 (0..7: the low 2 bits and the hmask bit at bit 2).  The offset (4)
 * leaves the integer sums (pk_k16_t).  16-bit shifts: the bits kept never cross a byte. */
TKVP_INLINE void TKV_FN(pk_k16_codes)(const uint8_t *p, const int fmt, const int h, const int s,
                                      const int half, TKVP_I c[8]) {
    const int R = TKV_MM_PACK_ROWS;
    const uint8_t *q = p + (fmt == TKVP_Q3_K ? 50 : 20) * R + (size_t)32 * R * h;
    const TKVP_I m3 = TKVP_SET1_8(3), b2 = TKVP_SET1_8(4);
    const int hbit = 4 * h + s; /* Q3_K: the hmask bit of these elements, moved to bit 2 */
    TKVP_UNROLL for (int k = 0; k < 8; k++) {
        const TKVP_I z = TKVP_LOAD(TKVP_LANES(q, k, half));
        c[k] = TKVP_AND(s ? TKVP_SRLI16(z, 2 * s) : z, m3);
        if (fmt == TKVP_Q3_K) {
            const TKVP_I hm = TKVP_LOAD(TKVP_LANES(p + 18 * R, k, half));
            const TKVP_I hs = hbit < 2   ? TKVP_SLLI16(hm, 2 - hbit)
                              : hbit > 2 ? TKVP_SRLI16(hm, hbit - 2)
                                         : hm;
            c[k] = TKVP_ORAND(c[k], hs, b2);
        }
    }
}

/* Q2_K / Q3_K, the rows of vector `half` against T tokens.  Per activation block the
 * integer sums of its two sub-blocks (two chains of 4 dot products) are scaled by the
 * sub-block scales sc_j and the block's d_x, and the row's d once per super-block.  The code
 * offset of Q3_K (4) leaves the integer sums exactly, as offset x (the sum of the sub-block's
 * 16 activation codes, once per super-block and token).  Q2_K's min term is m_j times d_x
 * times that sum, scaled by the row's dmin once per super-block. */
TKVP_INLINE void TKV_FN(pk_k16_t)(int64_t n, const void *wg, const void *x, size_t xs, const int T,
                                  float *y, size_t ys, int rb, int re, const int fmt,
                                  const int half) {
    const int R = TKV_MM_PACK_ROWS;
    const int64_t nsb = n / TKV_QK_K;
    const size_t sbytes = (size_t)R * (fmt == TKVP_Q2_K ? 84 : 114);
    const size_t sc_off = (size_t)(fmt == TKVP_Q2_K ? 4 : 2) * R;
    TKVP_BEGIN_ROWS
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *p = (const uint8_t *)wg + (size_t)i * sbytes;
        TKV_FN(pk_prefetch)(p, sbytes, half == 0 ? TKVP_PREFETCH : (size_t)nsb * sbytes);
        int32_t xsum[TKV_MM_NX][16];
        TKVP_F sacc[TKV_MM_NX], sm[TKV_MM_NX];
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            TKV_FN(pk_xsums16)(xq[t] + i * TKV_QK_K, xsum[t]);
            sacc[t] = sm[t] = TKVP_ZERO_F();
        }
        TKVP_UNROLL for (int h = 0; h < 2; h++) {
            TKVP_UNROLL for (int s = 0; s < 4; s++) {
                const int b = 4 * h + s; /* activation block in the super-block */
                TKVP_I c[8];
                TKV_FN(pk_k16_codes)(p, fmt, h, s, half, c);
                TKVP_F scf[2], mf[2] = {TKVP_ZERO_F(), TKVP_ZERO_F()};
                TKVP_UNROLL for (int u = 0; u < 2; u++) {
                    const uint8_t *sc = TKVP_BYTES(p + sc_off, 2 * b + u, half);
                    if (fmt == TKVP_Q2_K) {
                        const TKVP_I v = TKVP_U8(sc);
                        scf[u] = TKVP_CVT(TKVP_AND(v, TKVP_SET1_32(15)));
                        mf[u] = TKVP_CVT(TKVP_SRLI32(v, 4));
                    } else {
                        scf[u] = TKVP_CVT(TKVP_S8(sc));
                    }
                }
                TKVP_UNROLL for (int t = 0; t < T; t++) {
                    const int8_t *xv = xq[t] + (8 * i + b) * TKV_QK;
                    /* the code offset's share, subtracted in int32 (exact) */
                    const int off = fmt == TKVP_Q3_K ? 4 : 0;
                    const TKVP_I a0 = TKV_FN(pk_chain4)(TKVP_SET1_32(-off * xsum[t][2 * b]), c,
                                                        1, xv, 4, TKVP_NARROW);
                    const TKVP_I a1 = TKV_FN(pk_chain4)(TKVP_SET1_32(-off * xsum[t][2 * b + 1]),
                                                        c + 4, 1, xv + 16, 4, TKVP_NARROW);
                    const TKVP_F v =
                        TKVP_FMADD(TKVP_CVT(a0), scf[0], TKVP_MUL(TKVP_CVT(a1), scf[1]));
                    const float dx = xd[t][8 * i + b];
                    sacc[t] = TKVP_FMADD(v, TKVP_SET1F(dx), sacc[t]);
                    if (fmt == TKVP_Q2_K) {
                        sm[t] = TKVP_FMADD(mf[0], TKVP_SET1F(dx * (float)xsum[t][2 * b]), sm[t]);
                        sm[t] =
                            TKVP_FMADD(mf[1], TKVP_SET1F(dx * (float)xsum[t][2 * b + 1]), sm[t]);
                    }
                }
            }
        }
        const TKVP_F d = TKVP_H16(TKVP_HALF16(p, half));
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            acc[t] = TKVP_FMADD(d, sacc[t], acc[t]);
            if (fmt == TKVP_Q2_K) {
                macc[t] = TKVP_FNMADD(TKVP_H16(TKVP_HALF16(p + 2 * R, half)), sm[t], macc[t]);
            }
        }
    }
    TKV_FN(pk_store)(acc, macc, T, y, ys, rb, re, half);
}

/* Q6_K, the rows of vector `half` against T tokens.  Half h of a super-block (activation
 * blocks 4h .. 4h + 3) has in ql lane k the low 4 bits of elements 4k .. 4k + 3 of block 4h + s
 * (lanes 0..7: s = 0 in the low nibbles, 2 in the high ones; lanes 8..15: s = 1, 3) and in qh
 * lane k their top 2 bits (bits 2s, 2s + 1).  So per block pair (s, s + 2) each ql and qh lane
 * is loaded once and gives the codes u = q + 32 (0..63) of both blocks, and the pair's four
 * sub-block sums are four independent dot-product chains.  The offset leaves each sum in int32,
 * exactly: a chain starts at -32 x (its 16 activation codes).  The sums are scaled by sc_j and
 * d_x, and by the row's d once per super-block.  The prefetch is spread over the four block
 * pairs (TKVP_PREFETCH_Q6K ahead): a super-block's 53 cache lines requested at once stall the
 * loads behind them (docs/SPEED_MATMUL.md has the variants measured). */
TKVP_INLINE void TKV_FN(pk_q6k_t)(int64_t n, const void *wg, const void *x, size_t xs, const int T,
                                  float *y, size_t ys, int rb, int re, const int fmt,
                                  const int half) {
    (void)fmt;
    const int R = TKV_MM_PACK_ROWS;
    const int64_t nsb = n / TKV_QK_K;
    const size_t sbytes = (size_t)R * 210;
    TKVP_BEGIN_ROWS
    const TKVP_I m4 = TKVP_SET1_8(15), m30 = TKVP_SET1_8(0x30);
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *p = (const uint8_t *)wg + (size_t)i * sbytes;
        int32_t xoff[TKV_MM_NX][16]; /* -32 x (sum of sub-block j's 16 activation codes) */
        TKVP_F sacc[TKV_MM_NX];
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            TKV_FN(pk_xsums16)(xq[t] + i * TKV_QK_K, xoff[t]);
            TKVP_UNROLL for (int j = 0; j < 16; j++) {
                xoff[t][j] *= -32;
            }
            sacc[t] = TKVP_ZERO_F();
        }
        TKVP_UNROLL for (int h = 0; h < 2; h++) {
            const uint8_t *ql = p + 18 * R + (size_t)64 * R * h;
            const uint8_t *qh = p + 146 * R + (size_t)32 * R * h;
            TKVP_UNROLL for (int pr = 0; pr < 2; pr++) { /* blocks 4h + pr, 4h + pr + 2 */
                { /* a quarter of the super-block per block pair; the second row half (256-bit
                   * vectors) asks for the next group's, so the memory stays busy while it
                   * computes on lines the first half brought in */
                    const int qt = 2 * h + pr;
                    const size_t c0 = (sbytes * (size_t)qt / 4) & ~(size_t)63;
                    const size_t c1 = qt == 3 ? sbytes : (sbytes * (size_t)(qt + 1) / 4) & ~(size_t)63;
                    TKV_FN(pk_prefetch)(p + c0, c1 - c0,
                                        half == 0 ? TKVP_PREFETCH_Q6K : (size_t)nsb * sbytes);
                }
                const int bA = 4 * h + pr, bB = bA + 2;
                TKVP_I a[TKV_MM_NX][4]; /* block A sub-blocks 0, 1; block B sub-blocks 0, 1 */
                TKVP_UNROLL for (int t = 0; t < T; t++) {
                    a[t][0] = TKVP_SET1_32(xoff[t][2 * bA]);
                    a[t][1] = TKVP_SET1_32(xoff[t][2 * bA + 1]);
                    a[t][2] = TKVP_SET1_32(xoff[t][2 * bB]);
                    a[t][3] = TKVP_SET1_32(xoff[t][2 * bB + 1]);
                }
                TKVP_UNROLL for (int k = 0; k < 8; k += 2) { /* two lanes: one sub-block */
                    TKVP_I cA[2], cB[2];
                    TKVP_UNROLL for (int v = 0; v < 2; v++) {
                        const TKVP_I l = TKVP_LOAD(TKVP_LANES(ql, 8 * pr + k + v, half));
                        const TKVP_I hb = TKVP_LOAD(TKVP_LANES(qh, k + v, half));
                        /* qh bits 2s, 2s + 1 to bits 4, 5 (16-bit shifts: kept bits never
                         * cross a byte) */
                        cA[v] = TKVP_ORAND(TKVP_AND(l, m4), TKVP_SLLI16(hb, 4 - 2 * pr), m30);
                        cB[v] = TKVP_ORAND(TKVP_AND(TKVP_SRLI16(l, 4), m4),
                                           pr ? TKVP_SRLI16(hb, 2) : hb, m30);
                    }
                    const int u = k / 4, e = 4 * k; /* sub-block, first element in the block */
                    TKVP_UNROLL for (int t = 0; t < T; t++) {
                        const int8_t *xa = xq[t] + (8 * i + bA) * TKV_QK + e;
                        const int8_t *xb = xq[t] + (8 * i + bB) * TKV_QK + e;
                        a[t][u] = TKVP_DOT4X2(a[t][u], cA[0], TKV_FN(pk_x4)(xa), cA[1],
                                              TKV_FN(pk_x4)(xa + 4));
                        a[t][2 + u] = TKVP_DOT4X2(a[t][2 + u], cB[0], TKV_FN(pk_x4)(xb), cB[1],
                                                  TKV_FN(pk_x4)(xb + 4));
                    }
                }
                TKVP_UNROLL for (int ab = 0; ab < 2; ab++) {
                    const int b = ab ? bB : bA;
                    const TKVP_F sc0 = TKVP_CVT(TKVP_S8(TKVP_BYTES(p + 2 * R, 2 * b, half)));
                    const TKVP_F sc1 = TKVP_CVT(TKVP_S8(TKVP_BYTES(p + 2 * R, 2 * b + 1, half)));
                    TKVP_UNROLL for (int t = 0; t < T; t++) {
                        const TKVP_F v = TKVP_FMADD(TKVP_CVT(a[t][2 * ab]), sc0,
                                                    TKVP_MUL(TKVP_CVT(a[t][2 * ab + 1]), sc1));
                        sacc[t] = TKVP_FMADD(v, TKVP_SET1F(xd[t][8 * i + b]), sacc[t]);
                    }
                }
            }
        }
        const TKVP_F d = TKVP_H16(TKVP_HALF16(p, half));
        TKVP_UNROLL for (int t = 0; t < T; t++) {
            acc[t] = TKVP_FMADD(d, sacc[t], acc[t]);
        }
    }
    TKV_FN(pk_store)(acc, macc, T, y, ys, rb, re, half);
}

/* A format's kernel over the group: each vector of rows that holds rows of [rb, re). */
#define TKVP_GROUP(name, body, fmt)                                                                \
    TKVP_INLINE void TKV_FN(name##_g)(int64_t n, const void *wg, const void *x, size_t xs,         \
                                      const int T, float *y, size_t ys, int rb, int re,            \
                                      const int fmt_) {                                            \
        TKVP_UNROLL for (int half = 0; half < TKV_MM_PACK_ROWS / TKVP_RV; half++) {                \
            if (rb < (half + 1) * TKVP_RV && re > half * TKVP_RV) {                                \
                TKV_FN(body)(n, wg, x, xs, T, y, ys, rb, re, fmt_, half);                          \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    TKV_PK_DISPATCH(name, name##_g, fmt)

TKVP_GROUP(pk_q4_0, pk_q32_t, 0)
TKVP_GROUP(pk_q4_1, pk_q32_t, 1)
TKVP_GROUP(pk_q8_0, pk_q32_t, 2)
TKVP_GROUP(pk_q4_k, pk_q45k_t, 0)
TKVP_GROUP(pk_q5_k, pk_q45k_t, 1)
TKVP_GROUP(pk_q2_k, pk_k16_t, TKVP_Q2_K)
TKVP_GROUP(pk_q3_k, pk_k16_t, TKVP_Q3_K)
TKVP_GROUP(pk_q6_k, pk_q6k_t, 0)

#undef TKVP_INLINE
#undef TKVP_UNROLL
#undef TKVP_BEGIN_ROWS
#undef TKVP_RV
#undef TKVP_I
#undef TKVP_F
#undef TKVP_LOAD
#undef TKVP_AND
#undef TKVP_SRLI16
#undef TKVP_SLLI16
#undef TKVP_ORAND
#undef TKVP_SET1_8
#undef TKVP_SET1_32
#undef TKVP_ZERO_I
#undef TKVP_ADD32
#undef TKVP_SRLI32
#undef TKVP_DOT4
#undef TKVP_DOT4_Q8
#undef TKVP_DOT4X2
#undef TKVP_Q8_OFFSET
#undef TKVP_CVT
#undef TKVP_FMADD
#undef TKVP_FNMADD
#undef TKVP_MUL
#undef TKVP_ADD
#undef TKVP_SET1F
#undef TKVP_ZERO_F
#undef TKVP_H16
#undef TKVP_U8
#undef TKVP_S8
#undef TKVP_LANES
#undef TKVP_HALF16
#undef TKVP_BYTES
#undef TKVP_GROUP
#undef TKVP_Q2_K
#undef TKVP_Q3_K
#undef TKVP_NARROW
#undef TKVP_Q8
