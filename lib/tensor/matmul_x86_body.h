/*
 * matmul_x86_body.h - 256-bit kernels for every format, included by the x86 ISA files
 * (matmul_avx2.c, matmul_avx512.c) only; each includes it once per variant after defining
 *
 *   TKV_FN(name)     the variant's name for a kernel (tkv_<name>_avx2, ...)
 *   TKV_ATTR         function attributes (a target("...") for VNNI, or nothing)
 *   TKV_MULSUM(u, s) 8 int32 sums of 4 adjacent products of 32 u8 codes u and s8 codes s
 *                    (maddubs + madd, or one dpbusd); |u| <= 128 on the maddubs path
 * and optionally TKV_X86_SKIP_KQUANTS (leave out the K-quant kernels).
 *
 * Every kernel handles one weight row against 1..TKV_MM_NX activation rows; the row loop
 * is written once per row count (always_inline + constant nx, matmul_x86_nx.h) so
 * accumulators stay in registers.  Integer sums of a block are exact; scales are applied in float
 * per block.
 */
#include <immintrin.h>

#include "tensor/matmul_x86_nx.h"

#define TKV_XQ(x) ((const int8_t *)(x))
#define TKV_XD(x, n) ((const float *)((const char *)(x) + (n)))
#define TKV_XDS(x, n) (TKV_XD(x, n) + (n) / TKV_QK)
#define TKV_INLINE static inline __attribute__((always_inline)) TKV_ATTR

TKV_INLINE float TKV_FN(hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TKV_INLINE float TKV_FN(h2f)(uint16_t h) { return _cvtsh_ss(h); }

/* 16 bytes of nibbles -> 32 codes: element j < 16 from the low nibble of byte j, j + 16
 * from its high nibble. */
TKV_INLINE __m256i TKV_FN(nibbles)(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(v, m4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* The 32 fifth bits of Q5_0/Q5_1 (bit j of the u32 at qh) as 0x10 in byte j. */
TKV_INLINE __m256i TKV_FN(bits5)(const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i bytes = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)h),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                         3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* ---- activation quantization (bit-identical to the scalar reference) ------------------- */

static TKV_ATTR void TKV_FN(quantize_q8)(const float *x, int64_t n, void *xq) {
    int8_t *q = xq;
    float *d = (float *)((char *)xq + n);
    float *ds = d + n / TKV_QK;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / TKV_QK; b++) {
        const float *xb = x + b * TKV_QK;
        __m256 v[4];
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            mx = _mm256_max_ps(mx, _mm256_and_ps(v[k], absmask));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i iv[4];
        for (int k = 0; k < 4; k++) {
            iv[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], id),
                                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]),
                                               _mm256_add_epi32(iv[2], iv[3]));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum32), _mm256_extracti128_si256(sum32, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
        /* packs interleave 128-bit lanes; the permute restores element order */
        const __m256i p16a = _mm256_packs_epi32(iv[0], iv[1]);
        const __m256i p16b = _mm256_packs_epi32(iv[2], iv[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b),
                                                       _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + b * TKV_QK), p8);
        d[b] = amax / 127.0f;
        ds[b] = d[b] * (float)_mm_cvtsi128_si32(s);
    }
}

/* ---- float weights ----------------------------------------------------------------------- */

/* One body for F32/F16/BF16: `load8` converts 8 weights at element i to floats. */
#define TKV_FLOAT_KERNEL(name, wtype, load8, scalar1)                                              \
    TKV_INLINE void TKV_FN(name##_n)(int64_t n, const void *w, const void *x, size_t xs,           \
                                     const int nx, float *y, size_t ys, const int fmt) {           \
        (void)fmt;                                                                                 \
        const wtype *wp = w;                                                                       \
        const float *xr[TKV_MM_NX];                                                                \
        __m256 acc[TKV_MM_NX][2];                                                                  \
        for (int t = 0; t < nx; t++) {                                                             \
            xr[t] = (const float *)((const char *)x + (size_t)t * xs);                             \
            acc[t][0] = acc[t][1] = _mm256_setzero_ps();                                           \
        }                                                                                          \
        int64_t i = 0;                                                                             \
        for (; i + 16 <= n; i += 16) {                                                             \
            const __m256 w0 = load8(wp + i), w1 = load8(wp + i + 8);                               \
            for (int t = 0; t < nx; t++) {                                                         \
                acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr[t] + i), acc[t][0]);            \
                acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr[t] + i + 8), acc[t][1]);        \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < nx; t++) {                                                             \
            float s = TKV_FN(hsum)(_mm256_add_ps(acc[t][0], acc[t][1]));                           \
            for (int64_t k = i; k < n; k++) {                                                      \
                s += scalar1(wp[k]) * xr[t][k];                                                    \
            }                                                                                      \
            y[(size_t)t * ys] = s;                                                                 \
        }                                                                                          \
    }                                                                                              \
    TKV_NX_DISPATCH(name, name##_n, 0)

#define TKV_LOAD_F32(p) _mm256_loadu_ps(p)
#define TKV_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define TKV_LOAD_BF16(p)                                                                      \
    _mm256_castsi256_ps(                                                                      \
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define TKV_ID_F32(v) (v)
#define TKV_CVT_F16(v) _cvtsh_ss(v)
#define TKV_CVT_BF16(v) tkv_bf16_to_f32(v)

TKV_FLOAT_KERNEL(dot_f32, float, TKV_LOAD_F32, TKV_ID_F32)
TKV_FLOAT_KERNEL(dot_f16, uint16_t, TKV_LOAD_F16, TKV_CVT_F16)
TKV_FLOAT_KERNEL(dot_bf16, uint16_t, TKV_LOAD_BF16, TKV_CVT_BF16)

/* ---- 32-element block formats ------------------------------------------------------------ */

/* Body shared by Q8_0/Q4_0/Q4_1/Q5_0/Q5_1.  UNPACK yields `wu` (u8 codes, or |w| for Q8_0)
 * and per-block floats dw, mw; the offset term mw * ds goes to a scalar accumulator. */
#define TKV_Q32_KERNEL(name, btype, UNPACK, SIGNED)                                                \
    TKV_INLINE void TKV_FN(name##_blk)(const btype *blk, const int8_t *const *xq,                  \
                                       const float *const *xd, const float *const *xds, int64_t b, \
                                       const int nx, __m256 *acc, float *macc) {                   \
        __m256i wu, wsgn;                                                                          \
        float dw, mw;                                                                              \
        UNPACK(blk);                                                                               \
        (void)wsgn;                                                                                \
        for (int t = 0; t < nx; t++) {                                                             \
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq[t] + b * TKV_QK));                \
            if (SIGNED) {                                                                          \
                xv = _mm256_sign_epi8(xv, wsgn);                                                   \
            }                                                                                      \
            const __m256 p = _mm256_cvtepi32_ps(TKV_MULSUM(wu, xv));                               \
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[t][b]), p, acc[t]);                    \
            macc[t] += mw * xds[t][b];                                                             \
        }                                                                                          \
    }                                                                                              \
    TKV_INLINE void TKV_FN(name##_n)(int64_t n, const void *w, const void *x, size_t xs,           \
                                     const int nx, float *y, size_t ys, const int fmt) {           \
        (void)fmt;                                                                                 \
        const btype *wb = w;                                                                       \
        const int8_t *xq[TKV_MM_NX];                                                               \
        const float *xd[TKV_MM_NX], *xds[TKV_MM_NX];                                               \
        /* two accumulator sets (even/odd blocks) halve the fma latency chain */                   \
        __m256 acc0[TKV_MM_NX], acc1[TKV_MM_NX];                                                   \
        float macc0[TKV_MM_NX], macc1[TKV_MM_NX];                                                  \
        for (int t = 0; t < nx; t++) {                                                             \
            const void *xt = (const char *)x + (size_t)t * xs;                                     \
            xq[t] = TKV_XQ(xt);                                                                    \
            xd[t] = TKV_XD(xt, n);                                                                 \
            xds[t] = TKV_XDS(xt, n);                                                               \
            acc0[t] = acc1[t] = _mm256_setzero_ps();                                               \
            macc0[t] = macc1[t] = 0.0f;                                                            \
        }                                                                                          \
        const int64_t nb = n / TKV_QK;                                                             \
        int64_t b = 0;                                                                             \
        for (; b + 2 <= nb; b += 2) {                                                              \
            TKV_FN(name##_blk)(wb + b, xq, xd, xds, b, nx, acc0, macc0);                           \
            TKV_FN(name##_blk)(wb + b + 1, xq, xd, xds, b + 1, nx, acc1, macc1);                   \
        }                                                                                          \
        if (b < nb) {                                                                              \
            TKV_FN(name##_blk)(wb + b, xq, xd, xds, b, nx, acc0, macc0);                           \
        }                                                                                          \
        for (int t = 0; t < nx; t++) {                                                             \
            y[(size_t)t * ys] =                                                                    \
                TKV_FN(hsum)(_mm256_add_ps(acc0[t], acc1[t])) + (macc0[t] + macc1[t]);             \
        }                                                                                          \
    }                                                                                              \
    TKV_NX_DISPATCH(name, name##_n, 0)

#define TKV_UNPACK_Q8_0(blk)                                                                  \
    wsgn = _mm256_loadu_si256((const __m256i *)(blk)->qs);                                    \
    wu = _mm256_sign_epi8(wsgn, wsgn);                                                        \
    dw = TKV_FN(h2f)((blk)->d);                                                               \
    mw = 0.0f;
#define TKV_UNPACK_Q4_0(blk)                                                                  \
    wu = TKV_FN(nibbles)((blk)->qs);                                                          \
    dw = TKV_FN(h2f)((blk)->d);                                                               \
    mw = -8.0f * dw;
#define TKV_UNPACK_Q4_1(blk)                                                                  \
    wu = TKV_FN(nibbles)((blk)->qs);                                                          \
    dw = TKV_FN(h2f)((blk)->d);                                                               \
    mw = TKV_FN(h2f)((blk)->m);
#define TKV_UNPACK_Q5_0(blk)                                                                  \
    wu = _mm256_or_si256(TKV_FN(nibbles)((blk)->qs), TKV_FN(bits5)((blk)->qh));               \
    dw = TKV_FN(h2f)((blk)->d);                                                               \
    mw = -16.0f * dw;
#define TKV_UNPACK_Q5_1(blk)                                                                  \
    wu = _mm256_or_si256(TKV_FN(nibbles)((blk)->qs), TKV_FN(bits5)((blk)->qh));               \
    dw = TKV_FN(h2f)((blk)->d);                                                               \
    mw = TKV_FN(h2f)((blk)->m);

TKV_Q32_KERNEL(dot_q8_0, tkv_block_q8_0, TKV_UNPACK_Q8_0, 1)
TKV_Q32_KERNEL(dot_q4_0, tkv_block_q4_0, TKV_UNPACK_Q4_0, 0)
TKV_Q32_KERNEL(dot_q4_1, tkv_block_q4_1, TKV_UNPACK_Q4_1, 0)
TKV_Q32_KERNEL(dot_q5_0, tkv_block_q5_0, TKV_UNPACK_Q5_0, 0)
TKV_Q32_KERNEL(dot_q5_1, tkv_block_q5_1, TKV_UNPACK_Q5_1, 0)

/* ---- K-quants ---------------------------------------------------------------------------- */

/* (the AVX-512 files define TKV_X86_SKIP_KQUANTS: matmul_avx512_body.h has 512-bit ones) */
#if !defined(TKV_X86_SKIP_KQUANTS)

/* Q4_K/Q5_K: chunk c of 64 elements is sub-blocks 2c (low nibbles) and 2c+1 (high). */
TKV_INLINE void TKV_FN(dot_qk_asym_n)(int64_t n, const void *w, const void *x, size_t xs,
                                      const int nx, float *y, size_t ys, const int five) {
    const int8_t *xq[TKV_MM_NX];
    const float *xd[TKV_MM_NX], *xds[TKV_MM_NX];
    __m256 acc[TKV_MM_NX];
    float macc[TKV_MM_NX];
    for (int t = 0; t < nx; t++) {
        const void *xt = (const char *)x + (size_t)t * xs;
        xq[t] = TKV_XQ(xt);
        xd[t] = TKV_XD(xt, n);
        xds[t] = TKV_XDS(xt, n);
        acc[t] = _mm256_setzero_ps();
        macc[t] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < n / TKV_QK_K; i++) {
        const uint8_t *scales, *qs, *qhp = NULL;
        uint16_t dh, dminh;
        if (five) {
            const tkv_block_q5_k *b = (const tkv_block_q5_k *)w + i;
            dh = b->d, dminh = b->dmin, scales = b->scales, qs = b->qs, qhp = b->qh;
        } else {
            const tkv_block_q4_k *b = (const tkv_block_q4_k *)w + i;
            dh = b->d, dminh = b->dmin, scales = b->scales, qs = b->qs;
        }
        const float d = TKV_FN(h2f)(dh), dmin = TKV_FN(h2f)(dminh);
        const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)qhp) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            for (int half = 0; half < 2; half++) {
                const int j = 2 * c + half;
                __m256i wu = half ? _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)
                                  : _mm256_and_si256(v, m4);
                if (five) { /* bit j of every qh byte, moved to 0x10 */
                    const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qh, j), one);
                    wu = _mm256_or_si256(wu, _mm256_slli_epi16(hb, 4));
                }
                uint8_t sc, m;
                tkv_q_k_scale_min(scales, j, &sc, &m);
                const float dsc = d * (float)sc, dm = dmin * (float)m;
                const int64_t xb = i * 8 + j;
                for (int t = 0; t < nx; t++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq[t] + xb * TKV_QK));
                    const __m256 p = _mm256_cvtepi32_ps(TKV_MULSUM(wu, xv));
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dsc * xd[t][xb]), p, acc[t]);
                    macc[t] += dm * xds[t][xb];
                }
            }
        }
    }
    for (int t = 0; t < nx; t++) {
        y[(size_t)t * ys] = TKV_FN(hsum)(acc[t]) - macc[t];
    }
}

TKV_NX_DISPATCH(dot_q4_k, dot_qk_asym_n, 0)
TKV_NX_DISPATCH(dot_q5_k, dot_qk_asym_n, 1)

/* Q6_K: codes q in 0..63 (value q - 32).  Pair sums maddubs(q, x) - maddubs(32, x) are
 * exact in int16 (|.| <= 2*63*127); madd with the two int16 sub-block scales of the
 * 32-element group (low 128-bit lane: elements 0..15) gives exact int32 sums. */
TKV_INLINE void TKV_FN(dot_q6_k_n)(int64_t n, const void *w, const void *x, size_t xs, const int nx,
                                   float *y, size_t ys, const int fmt) {
    (void)fmt;
    const int8_t *xq[TKV_MM_NX];
    const float *xd[TKV_MM_NX];
    __m256 acc[TKV_MM_NX];
    for (int t = 0; t < nx; t++) {
        const void *xt = (const char *)x + (size_t)t * xs;
        xq[t] = TKV_XQ(xt);
        xd[t] = TKV_XD(xt, n);
        acc[t] = _mm256_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const __m256i c32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < n / TKV_QK_K; i++) {
        const tkv_block_q6_k *b = (const tkv_block_q6_k *)w + i;
        const float d = TKV_FN(h2f)(b->d);
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
            for (int g = 0; g < 4; g++) {
                const __m256i ql = (g & 1) ? ql1 : ql0;
                const __m256i lo = g < 2 ? _mm256_and_si256(ql, m4)
                                         : _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m3);
                const __m256i q = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
                const int k = 8 * h + 2 * g; /* scale index of the first 16 elements */
                const __m256i scv = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_set1_epi16(b->scales[k])),
                    _mm_set1_epi16(b->scales[k + 1]), 1);
                const int64_t xb = i * 8 + 4 * h + g;
                for (int t = 0; t < nx; t++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq[t] + xb * TKV_QK));
                    const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q, xv),
                                                         _mm256_maddubs_epi16(c32, xv));
                    const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, scv));
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[t][xb]), p, acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < nx; t++) {
        y[(size_t)t * ys] = TKV_FN(hsum)(acc[t]);
    }
}
TKV_NX_DISPATCH(dot_q6_k, dot_q6_k_n, 0)
#endif

#undef TKV_XQ
#undef TKV_XD
#undef TKV_XDS
#undef TKV_INLINE
#undef TKV_FLOAT_KERNEL
#undef TKV_Q32_KERNEL
#undef TKV_LOAD_F32
#undef TKV_LOAD_F16
#undef TKV_LOAD_BF16
#undef TKV_ID_F32
#undef TKV_CVT_F16
#undef TKV_CVT_BF16
#undef TKV_UNPACK_Q8_0
#undef TKV_UNPACK_Q4_0
#undef TKV_UNPACK_Q4_1
#undef TKV_UNPACK_Q5_0
#undef TKV_UNPACK_Q5_1
