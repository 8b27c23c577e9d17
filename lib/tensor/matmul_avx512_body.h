/*
 * matmul_avx512_body.h - 512-bit tile kernels for the 32-element block formats (Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1), included by matmul_avx512.c once per variant after defining
 *
 *   TKV_FN(name)      the variant's name for a kernel
 *   TKV_ATTR          function attributes (a target("...") for VNNI, or nothing)
 *   TKV_DP512(u, s)   16 int32 sums of 4 adjacent products of 64 u8 codes u and s8 codes s
 *   TKV_Q8_BIASED     1 if TKV_DP512 takes any u8 (dpbusd): Q8_0 weights then go in as
 *                     w + 128 (and Q4 high nibbles stay unshifted, see nib2x16);
 *                     w + 128 and the surplus 128 * sum(x) leaves through the min term;
 *                     0 on the maddubs path (int16 pair sums would saturate), which moves
 *                     the weight signs onto the activations instead
 *
 * A tile is R consecutive weight rows (row_bytes apart) against T activation rows; every
 * weight block is unpacked once per tile and every activation load serves R rows.
 *
 * One zmm holds two blocks: 64 weight codes against the 64 activation codes of blocks
 * b, b+1 (one aligned cache line of the Q8 row when b is even).  dpbusd leaves the block
 * sums in lanes 0..7 (block b) and 8..15 (block b+1); they are converted to float and
 * scaled per lane.  Scales are handled per group of 16 blocks: the 16 fp16 scales (and
 * mins) of a row are collected with in-register permutes (gathers are slow on the CPUs we
 * target), converted in one instruction and multiplied by the 16 activation scales, and a
 * lane permute spreads the products over the block pairs.  The min/offset term of a group
 * is one fma of 16 mins with the 16 activation sums ds.  Accumulators hold a mix of scaled
 * block sums and min terms; only their total is meaningful.
 */
#include <immintrin.h>

#include "tensor/matmul_x86_nx.h"

#define TKV5_INLINE static inline __attribute__((always_inline)) TKV_ATTR
#define TKV5_GROUP 16 /* blocks per scale group */
#define TKV5_MAX_R 4  /* weight rows per tile */
#ifndef TKV5_PF
#define TKV5_PF 2
#endif
#ifndef TKV5_HINT
#define TKV5_HINT _MM_HINT_T0
#endif
#define TKV5_UNROLL _Pragma("GCC unroll 16")

/* 16 dwords: lane i < ng holds in its low 16 bits the fp16 at byte 0 of block i of the
 * blocks of bb bytes at p (17 <= bb <= 34), and in its high 16 bits the next 2 bytes when
 * bb % 4 == 0 (the min of Q4_1/Q5_1); lanes >= ng are 0.  Each 64-byte load serves the
 * k = 1 + 62 / bb blocks whose fields it holds; reads only the ng blocks. */
TKV5_INLINE __m512i TKV_FN(fields16)(const uint8_t *p, const int bb, const int ng) {
    const int k = 1 + 62 / bb;
    int idx_[16], sh_[16];
    for (int i = 0; i < 16; i++) {
        idx_[i] = (i % k) * bb / 4;
        sh_[i] = ((i % k) * bb) % 4 ? 16 : 0;
    }
    const __m512i idx = _mm512_loadu_si512(idx_);
    __m512i r0 = _mm512_setzero_si512(), r1 = _mm512_setzero_si512();
    TKV5_UNROLL
    for (int j = 0; j * k < 16; j++) {
        const int avail = (ng - j * k) * bb; /* bytes of the group from this load on */
        if (avail <= 0) {
            break;
        }
        const __m512i v = avail >= 64 ? _mm512_loadu_si512(p + j * k * bb)
                                      : _mm512_maskz_loadu_epi8(
                                            (__mmask64)(~0ULL >> (64 - avail)), p + j * k * bb);
        const __mmask16 m = (__mmask16)(((1u << k) - 1u) << (j * k));
        if (j % 2) {
            r1 = _mm512_mask_permutexvar_epi32(r1, m, idx, v);
        } else {
            r0 = _mm512_mask_permutexvar_epi32(r0, m, idx, v);
        }
    }
    __m512i r = _mm512_maskz_mov_epi32((__mmask16)((1u << ng) - 1u), _mm512_or_si512(r0, r1));
    if (bb % 4 == 2) {
        r = _mm512_srlv_epi32(r, _mm512_loadu_si512(sh_));
    }
    return r;
}

/* low / high fp16 of every dword -> 16 floats */
TKV5_INLINE __m512 TKV_FN(h16lo)(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)); }
TKV5_INLINE __m512 TKV_FN(h16hi)(__m512i v) {
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
}

/* 16 bytes of nibbles of two blocks -> 64 codes in block element order: low nibbles then
 * high nibbles of q0, then of q1 (absent when !two: zeros). */
TKV5_INLINE __m512i TKV_FN(nib2)(const uint8_t *q0, const uint8_t *q1, const int two) {
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q0));
    v = _mm512_mask_broadcast_i32x4(
        v, 0xFF00, two ? _mm_loadu_si128((const __m128i *)q1) : _mm_setzero_si128());
    v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(v, _mm512_set1_epi8(15));
}

/* The same codes with the high nibbles left in place (16 x code) in lanes 4..7 and 12..15:
 * one instruction less than nib2; the scale of those lanes carries the 1/16. */
TKV5_INLINE __m512i TKV_FN(nib2x16)(const uint8_t *q0, const uint8_t *q1, const int two) {
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q0));
    v = _mm512_mask_broadcast_i32x4(
        v, 0xFF00, two ? _mm_loadu_si128((const __m128i *)q1) : _mm_setzero_si128());
    const long long lo = 0x0F0F0F0F0F0F0F0FLL, hi = (long long)0xF0F0F0F0F0F0F0F0ULL;
    return _mm512_and_si512(v, _mm512_setr_epi64(lo, lo, hi, hi, lo, lo, hi, hi));
}

/* Two Q5 blocks from their qh (4 bytes: bit j is the fifth bit of element j) followed by
 * their qs: 64 codes 0..31. */
TKV5_INLINE __m512i TKV_FN(nib5x2)(const uint8_t *h0, const uint8_t *h1, const int two) {
    uint32_t a, b = 0;
    memcpy(&a, h0, 4);
    if (two) {
        memcpy(&b, h1, 4);
    }
    const __m512i v = TKV_FN(nib2)(h0 + 4, h1 + 4, two);
    return _mm512_mask_add_epi8(v, _cvtu64_mask64((uint64_t)a | (uint64_t)b << 32), v,
                                _mm512_set1_epi8(16));
}

/* Per-format description, as macros of the block pointer `blk` (const uint8_t *):
 *   BB               block bytes
 *   MINS             0 (no min/offset term) or 1
 *   UNPACK2(b0, b1, two) -> __m512i u8 codes of the pair
 *   HI16             1 if UNPACK2 leaves lanes 4..7, 12..15 at 16 x code (nib2x16)
 *   MINF(dv, dmv)    16 mins from the 16 scales dv and the raw dwords dmv
 */
#define TKV5_Q4_0_BB 18
/* 16 x code needs the full u8 range of dpbusd; maddubs would saturate its int16 pair sums */
#if TKV_Q8_BIASED
#define TKV5_NIB2 TKV_FN(nib2x16)
#else
#define TKV5_NIB2 TKV_FN(nib2)
#endif
#define TKV5_Q4_0_UNPACK2(b0, b1, two) TKV5_NIB2((b0) + 2, (b1) + 2, two)
#define TKV5_Q4_0_HI16 TKV_Q8_BIASED
#define TKV5_Q4_0_MINF(dv, dmv) _mm512_mul_ps(dv, _mm512_set1_ps(-8.0f))

#define TKV5_Q4_1_BB 20
#define TKV5_Q4_1_UNPACK2(b0, b1, two) TKV5_NIB2((b0) + 4, (b1) + 4, two)
#define TKV5_Q4_1_HI16 TKV_Q8_BIASED
#define TKV5_Q4_1_MINF(dv, dmv) TKV_FN(h16hi)(dmv)

#define TKV5_Q5_0_BB 22
#define TKV5_Q5_0_UNPACK2(b0, b1, two) TKV_FN(nib5x2)((b0) + 2, (b1) + 2, two)
#define TKV5_Q5_0_HI16 0
#define TKV5_Q5_0_MINF(dv, dmv) _mm512_mul_ps(dv, _mm512_set1_ps(-16.0f))

#define TKV5_Q5_1_BB 24
#define TKV5_Q5_1_UNPACK2(b0, b1, two) TKV_FN(nib5x2)((b0) + 4, (b1) + 4, two)
#define TKV5_Q5_1_HI16 0
#define TKV5_Q5_1_MINF(dv, dmv) TKV_FN(h16hi)(dmv)

#define TKV5_Q8_0_BB 34
#define TKV5_Q8_0_HI16 0
#if TKV_Q8_BIASED
#define TKV5_Q8_0_UNPACK2(b0, b1, two)                                                        \
    _mm512_xor_si512(TKV_FN(q8x2)((b0) + 2, (b1) + 2, two), _mm512_set1_epi8(-128))
#define TKV5_Q8_0_MINF(dv, dmv) _mm512_mul_ps(dv, _mm512_set1_ps(-128.0f))
#else
#define TKV5_Q8_0_UNPACK2(b0, b1, two) TKV_FN(q8x2)((b0) + 2, (b1) + 2, two)
#define TKV5_Q8_0_MINF(dv, dmv) _mm512_setzero_ps()
#endif

/* The 64 signed codes of two Q8_0 blocks (the second absent when !two: zeros). */
TKV5_INLINE __m512i TKV_FN(q8x2)(const uint8_t *q0, const uint8_t *q1, const int two) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)q0);
    const __m256i b = two ? _mm256_loadu_si256((const __m256i *)q1) : _mm256_setzero_si256();
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* The products of a weight pair wv with activation codes xv, as int32 lane sums.  Signed
 * Q8_0 codes on the maddubs path: |w| against x with w's sign. */
#define TKV5_DOT_PLAIN(wv, xv) TKV_DP512(wv, xv)
#define TKV5_DOT_SIGNED(wv, xv)                                                               \
    TKV_DP512(_mm512_abs_epi8(wv),                                                             \
              _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(wv), _mm512_setzero_si512(), xv))
#if TKV_Q8_BIASED
#define TKV5_Q8_0_DOT TKV5_DOT_PLAIN
#else
#define TKV5_Q8_0_DOT TKV5_DOT_SIGNED
#endif
#define TKV5_Q4_0_DOT TKV5_DOT_PLAIN
#define TKV5_Q4_1_DOT TKV5_DOT_PLAIN
#define TKV5_Q5_0_DOT TKV5_DOT_PLAIN
#define TKV5_Q5_1_DOT TKV5_DOT_PLAIN

/*
 * The tile kernel of one format F, for R rows and T tokens known at compile time.
 * Group scales: sc[r][t] lane i = d_w(row r, block g+i) * d_x(token t, block g+i).
 */
#define TKV5_TILE(F, name)                                                                     \
    TKV5_INLINE void TKV_FN(name##_pair)(const uint8_t *const *wr, const int8_t *const *xq,    \
                                         int64_t b, const int two, __m512i idx,               \
                                         __m512 sc[][TKV_MM_NX], __m512 sc16[][TKV_MM_NX],   \
                                         const int R, const int T,                            \
                                         __m512 acc[][TKV_MM_NX]) {                           \
        __m512i wv[TKV5_MAX_R];                                                               \
        TKV5_UNROLL for (int r = 0; r < R; r++) {                                                         \
            const uint8_t *b0 = wr[r] + b * TKV5_##F##_BB;                                    \
            wv[r] = TKV5_##F##_UNPACK2(b0, b0 + TKV5_##F##_BB, two);                          \
        }                                                                                     \
        const __mmask64 xm = two ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;                   \
        TKV5_UNROLL for (int t = 0; t < T; t++) {                                                         \
            const __m512i xv = two ? _mm512_loadu_si512(xq[t] + b * TKV_QK)                   \
                                   : _mm512_maskz_loadu_epi8(xm, xq[t] + b * TKV_QK);         \
            TKV5_UNROLL for (int r = 0; r < R; r++) {                                                     \
                const __m512 p = _mm512_cvtepi32_ps(TKV5_##F##_DOT(wv[r], xv));                \
                const __m512 s_ = TKV5_##F##_HI16                                             \
                                      ? _mm512_permutex2var_ps(sc[r][t], idx, sc16[r][t])     \
                                      : _mm512_permutexvar_ps(idx, sc[r][t]);                 \
                acc[r][t] = _mm512_fmadd_ps(p, s_, acc[r][t]);                                \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    TKV5_INLINE void TKV_FN(name##_tile)(int64_t n, const void *w, size_t rb, const int R,     \
                                         const void *x, size_t xs, const int T, float *y,     \
                                         size_t ys) {                                         \
        const uint8_t *wr[TKV5_MAX_R];                                                        \
        const int8_t *xq[TKV_MM_NX];                                                          \
        const float *xd[TKV_MM_NX], *xds[TKV_MM_NX];                                          \
        __m512 acc[TKV5_MAX_R][TKV_MM_NX];                                                    \
        TKV5_UNROLL for (int r = 0; r < R; r++) {                                                         \
            wr[r] = (const uint8_t *)w + (size_t)r * rb;                                      \
            TKV5_UNROLL for (int t = 0; t < T; t++) {                                                     \
                acc[r][t] = _mm512_setzero_ps();                                              \
            }                                                                                 \
        }                                                                                     \
        TKV5_UNROLL for (int t = 0; t < T; t++) {                                                         \
            const char *xt = (const char *)x + (size_t)t * xs;                                \
            xq[t] = (const int8_t *)xt;                                                       \
            xd[t] = (const float *)(xt + n);                                                  \
            xds[t] = xd[t] + n / TKV_QK;                                                      \
        }                                                                                     \
        const int64_t nb = n / TKV_QK;                                                        \
        /* lane -> scale: block b of the pair in lanes 0..7, b+1 in 8..15; with HI16 lanes */ \
        /* 4..7 and 12..15 take sc16 (index + 16) */                                          \
        const __m512i idx0 = TKV5_##F##_HI16                                                  \
                                 ? _mm512_setr_epi32(0, 0, 0, 0, 16, 16, 16, 16, 1, 1, 1, 1, 17, \
                                                     17, 17, 17)                              \
                                 : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, \
                                                     1);                                      \
        const __m512i two_i = _mm512_set1_epi32(2);                                           \
        for (int64_t g = 0; g < nb; g += TKV5_GROUP) {                                        \
            const int ng = nb - g < TKV5_GROUP ? (int)(nb - g) : TKV5_GROUP;                  \
            const __mmask16 gm = (__mmask16)((1u << ng) - 1u);                                \
            __m512 dw[TKV5_MAX_R], mw[TKV5_MAX_R];                                            \
            TKV5_UNROLL for (int r = 0; r < R; r++) {                                                     \
                const uint8_t *gb = wr[r] + g * TKV5_##F##_BB;                                \
                /* the same group two tiles ahead: decode streams W from DRAM */             \
                TKV5_UNROLL for (int c = 0; c < TKV5_GROUP * TKV5_##F##_BB; c += 64) {        \
                    _mm_prefetch((const char *)gb + TKV5_PF * R * rb + c, TKV5_HINT);              \
                }                                                                             \
                const __m512i dm = ng == TKV5_GROUP                                           \
                                       ? TKV_FN(fields16)(gb, TKV5_##F##_BB, TKV5_GROUP)      \
                                       : TKV_FN(fields16)(gb, TKV5_##F##_BB, ng);             \
                dw[r] = TKV_FN(h16lo)(dm);                                                    \
                mw[r] = TKV5_##F##_MINF(dw[r], dm);                                           \
            }                                                                                 \
            __m512 sc[TKV5_MAX_R][TKV_MM_NX], sc16[TKV5_MAX_R][TKV_MM_NX];                    \
            TKV5_UNROLL for (int t = 0; t < T; t++) {                                                     \
                const __m512 dx = _mm512_maskz_loadu_ps(gm, xd[t] + g);                       \
                const __m512 sx = _mm512_maskz_loadu_ps(gm, xds[t] + g);                      \
                TKV5_UNROLL for (int r = 0; r < R; r++) {                                                 \
                    sc[r][t] = _mm512_mul_ps(dw[r], dx);                                      \
                    sc16[r][t] = _mm512_mul_ps(sc[r][t], _mm512_set1_ps(1.0f / 16.0f));       \
                    acc[r][t] = _mm512_fmadd_ps(mw[r], sx, acc[r][t]);                        \
                }                                                                             \
            }                                                                                 \
            __m512i idx = idx0;                                                               \
            if (ng == TKV5_GROUP) {                                                           \
                for (int i = 0; i < TKV5_GROUP; i += 2) {                                     \
                    TKV_FN(name##_pair)(wr, xq, g + i, 1, idx, sc, sc16, R, T, acc);                \
                    idx = _mm512_add_epi32(idx, two_i);                                       \
                }                                                                             \
            } else {                                                                          \
                for (int i = 0; i < ng; i += 2) {                                             \
                    TKV_FN(name##_pair)(wr, xq, g + i, i + 1 < ng, idx, sc, sc16, R, T, acc);       \
                    idx = _mm512_add_epi32(idx, two_i);                                       \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        TKV5_UNROLL for (int t = 0; t < T; t++) {                                                         \
            TKV5_UNROLL for (int r = 0; r < R; r++) {                                                     \
                y[(size_t)t * ys + (size_t)r] = _mm512_reduce_add_ps(acc[r][t]);              \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    TKV5_INLINE void TKV_FN(name##_rows)(int64_t n, const void *w, size_t rb, const int R,     \
                                         const void *x, size_t xs, int nx, float *y,           \
                                         size_t ys) {                                          \
        switch (nx) {                                                                         \
        case 1: TKV_FN(name##_tile)(n, w, rb, R, x, xs, 1, y, ys); break;                     \
        case 2: TKV_FN(name##_tile)(n, w, rb, R, x, xs, 2, y, ys); break;                     \
        case 3: TKV_FN(name##_tile)(n, w, rb, R, x, xs, 3, y, ys); break;                     \
        default: TKV_FN(name##_tile)(n, w, rb, R, x, xs, 4, y, ys); break;                    \
        }                                                                                     \
    }                                                                                         \
    static TKV_ATTR void TKV_FN(name)(int64_t n, const void *w, size_t rb, int nw,             \
                                      const void *x, size_t xs, int nx, float *y, size_t ys) { \
        int r = 0;                                                                            \
        for (; r + TKV5_MAX_R <= nw; r += TKV5_MAX_R) {                                       \
            TKV_FN(name##_rows)(n, (const char *)w + (size_t)r * rb, rb, TKV5_MAX_R, x, xs,   \
                                nx, y + r, ys);                                               \
        }                                                                                     \
        for (; r < nw; r++) {                                                                 \
            TKV_FN(name##_rows)(n, (const char *)w + (size_t)r * rb, rb, 1, x, xs, nx, y + r, \
                                ys);                                                          \
        }                                                                                     \
    }

TKV5_TILE(Q8_0, tile_q8_0)
TKV5_TILE(Q4_0, tile_q4_0)
TKV5_TILE(Q4_1, tile_q4_1)
TKV5_TILE(Q5_0, tile_q5_0)
TKV5_TILE(Q5_1, tile_q5_1)

/* ---- K-quants, 512-bit: one row against 1..TKV_MM_NX activation rows -------------------- */

/* The 8 six-bit scales (low 8 bytes) and 8 mins (high 8 bytes) of a Q4_K/Q5_K super-block
 * from its 12 packed bytes (layout in formats.c), as 16 bytes. */
TKV5_INLINE __m128i TKV_FN(qk_scales)(const uint8_t *s) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4);
    memcpy(&u1, s + 4, 4);
    memcpy(&u2, s + 8, 4);
    const uint32_t sc_lo = u0 & 0x3f3f3f3fu, m_lo = u1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi);
}

/* Q4_K / Q5_K.  Chunk c (0..3) of a super-block is 32 bytes of qs: low nibbles are sub-block
 * 2c, high nibbles sub-block 2c+1, which sit next to each other in the activations.  The 32
 * bytes are broadcast to both halves of a zmm; the low half keeps the low nibbles, the high
 * half the high ones: with dpbusd left in place (16 x code, exact in int32; the lane scale
 * carries the 1/16), otherwise shifted down (maddubs would saturate).  Q5_K adds the fifth
 * bit (bit j of qh[l] for element 32 j + l) with a masked byte add.  Lane sums 0..7 belong
 * to sub-block 2c, 8..15 to 2c+1; a lane permute spreads the 8 sub-block scales
 * d * sc_j * d_x(j) over them.  The min term is 8 mins against the 8 activation sums. */
TKV5_INLINE void TKV_FN(qk5_t)(int64_t n, const void *w, const void *x, size_t xs, const int T,
                               float *y, size_t ys, const int five) {
    const int in_place = TKV_Q8_BIASED && !five;
    const int8_t *xq[TKV_MM_NX];
    const float *xd[TKV_MM_NX], *xds[TKV_MM_NX];
    __m512 acc0[TKV_MM_NX], acc1[TKV_MM_NX];
    __m256 macc[TKV_MM_NX];
    TKV5_UNROLL for (int t = 0; t < T; t++) {
        const char *xt = (const char *)x + (size_t)t * xs;
        xq[t] = (const int8_t *)xt;
        xd[t] = (const float *)(xt + n);
        xds[t] = xd[t] + n / TKV_QK;
        acc0[t] = acc1[t] = _mm512_setzero_ps();
        macc[t] = _mm256_setzero_ps();
    }
    const long long lo = 0x0F0F0F0F0F0F0F0FLL, hi = (long long)0xF0F0F0F0F0F0F0F0ULL;
    const __m512i nib_mask = in_place ? _mm512_setr_epi64(lo, lo, lo, lo, hi, hi, hi, hi)
                                      : _mm512_set1_epi8(15);
    const __m512i nib_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    const float hi_scale = in_place ? 1.0f / 16.0f : 1.0f;
    const size_t bb = five ? sizeof(tkv_block_q5_k) : sizeof(tkv_block_q4_k);
    const int64_t nsb = n / TKV_QK_K;
    for (int64_t i = 0; i < nsb; i++) {
        const uint8_t *b = (const uint8_t *)w + (size_t)i * bb;
        const uint8_t *qs = b + 16 + (five ? 32 : 0);
        uint16_t dh, dmh;
        memcpy(&dh, b, 2);
        memcpy(&dmh, b + 2, 2);
        const __m128i scm = TKV_FN(qk_scales)(b + 4);
        const __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scm));
        const __m256 mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8)));
        const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(dh)), scf);
        const __m256 dm = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(dmh)), mf);
        __m512 S[TKV_MM_NX];
        TKV5_UNROLL for (int t = 0; t < T; t++) {
            const __m256 s8 = _mm256_mul_ps(dsc, _mm256_loadu_ps(xd[t] + 8 * i));
            S[t] = _mm512_insertf32x8(_mm512_castps256_ps512(s8),
                                      _mm256_mul_ps(s8, _mm256_set1_ps(hi_scale)), 1);
            macc[t] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(xds[t] + 8 * i), macc[t]);
        }
        __m512i qh = _mm512_setzero_si512();
        if (five) {
            qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)));
        }
        TKV5_UNROLL for (int c = 0; c < 4; c++) {
            __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
            if (!in_place) {
                v = _mm512_srlv_epi64(v, nib_shift);
            }
            v = _mm512_and_si512(v, nib_mask);
            if (five) {
                /* shifted unsigned: bit 7 of each byte would overflow a signed shift */
                const long long bit_lo = (long long)(0x0101010101010101ULL << (2 * c));
                const long long bit_hi = (long long)(0x0101010101010101ULL << (2 * c + 1));
                const __m512i bit =
                    _mm512_setr_epi64(bit_lo, bit_lo, bit_lo, bit_lo, bit_hi, bit_hi, bit_hi, bit_hi);
                v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(qh, bit), v,
                                         _mm512_set1_epi8(16));
            }
            const __m512i idx = _mm512_setr_epi32(2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c,
                                                  2 * c, 9 + 2 * c, 9 + 2 * c, 9 + 2 * c, 9 + 2 * c,
                                                  9 + 2 * c, 9 + 2 * c, 9 + 2 * c, 9 + 2 * c);
            TKV5_UNROLL for (int t = 0; t < T; t++) {
                const __m512i xv = _mm512_loadu_si512(xq[t] + (8 * i + 2 * c) * TKV_QK);
                const __m512 p = _mm512_cvtepi32_ps(TKV_DP512(v, xv));
                const __m512 sc = _mm512_permutexvar_ps(idx, S[t]);
                if (c & 1) {
                    acc1[t] = _mm512_fmadd_ps(p, sc, acc1[t]);
                } else {
                    acc0[t] = _mm512_fmadd_ps(p, sc, acc0[t]);
                }
            }
        }
    }
    TKV5_UNROLL for (int t = 0; t < T; t++) {
        const __m256 m = macc[t];
        __m128 m4 = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_add_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_add_ss(m4, _mm_movehdup_ps(m4));
        y[(size_t)t * ys] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])) -
                            _mm_cvtss_f32(m4);
    }
}
TKV_NX_DISPATCH(dot5_q4_k, qk5_t, 0)
TKV_NX_DISPATCH(dot5_q5_k, qk5_t, 1)

/* Q6_K.  Half h (128 elements) of a super-block has 64 bytes of ql and 32 of qh; sub-blocks
 * (g, g+1) = (0, 1) are the low nibbles of those 64 bytes, (2, 3) the high ones, and the two
 * high bits of element l of sub-block g are bits 2g, 2g+1 of qh[l].  Codes q in 0..63 stand
 * for q - 32: the lane sums are dot(q, x) - dot(32, x), exact in int32.  Scales are int8 per
 * 16 elements, i.e. per 4 lanes: one vector of the 16 floats d * sc_k * d_x(k / 2) per
 * super-block and token, spread over the lanes by a permute. */
TKV5_INLINE void TKV_FN(dot5_q6_k_t)(int64_t n, const void *w, const void *x, size_t xs,
                                     const int T, float *y, size_t ys, const int fmt) {
    (void)fmt;
    const int8_t *xq[TKV_MM_NX];
    const float *xd[TKV_MM_NX];
    __m512 acc0[TKV_MM_NX], acc1[TKV_MM_NX];
    TKV5_UNROLL for (int t = 0; t < T; t++) {
        const char *xt = (const char *)x + (size_t)t * xs;
        xq[t] = (const int8_t *)xt;
        xd[t] = (const float *)(xt + n);
        acc0[t] = acc1[t] = _mm512_setzero_ps();
    }
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i c32 = _mm512_set1_epi8(32);
    /* d_x of sub-block k / 2 for scale k */
    const __m512i dx_idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const int64_t nsb = n / TKV_QK_K;
    for (int64_t i = 0; i < nsb; i++) {
        const tkv_block_q6_k *b = (const tkv_block_q6_k *)w + i;
        const __m512 dsc = _mm512_mul_ps(
            _mm512_set1_ps(_cvtsh_ss(b->d)),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->scales))));
        __m512 S[TKV_MM_NX];
        TKV5_UNROLL for (int t = 0; t < T; t++) {
            const __m512 dx = _mm512_permutexvar_ps(
                dx_idx, _mm512_castps256_ps512(_mm256_loadu_ps(xd[t] + 8 * i)));
            S[t] = _mm512_mul_ps(dsc, dx);
        }
        TKV5_UNROLL for (int h = 0; h < 2; h++) {
            const __m512i ql = _mm512_loadu_si512(b->ql + 64 * h);
            const __m512i qh =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
            TKV5_UNROLL for (int gp = 0; gp < 2; gp++) { /* sub-blocks g = 2gp, 2gp + 1 */
                const __m512i low = gp ? _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4)
                                       : _mm512_and_si512(ql, m4);
                /* bits 2g, 2g+1 of qh moved to bits 4, 5 */
                const long long s0 = 4 * gp, s1 = 4 * gp + 2;
                const __m512i hb = _mm512_and_si512(
                    _mm512_sllv_epi64(
                        _mm512_srlv_epi64(qh, _mm512_setr_epi64(s0, s0, s0, s0, s1, s1, s1, s1)),
                        _mm512_set1_epi64(4)),
                    m30);
                const __m512i q = _mm512_or_si512(low, hb);
                const int j = 4 * h + 2 * gp; /* first sub-block of the pair */
                /* lanes 4k..4k+3 take scale 2j + k */
                const __m512i idx = _mm512_setr_epi32(
                    2 * j, 2 * j, 2 * j, 2 * j, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1,
                    2 * j + 2, 2 * j + 2, 2 * j + 2, 2 * j + 2, 2 * j + 3, 2 * j + 3, 2 * j + 3,
                    2 * j + 3);
                TKV5_UNROLL for (int t = 0; t < T; t++) {
                    const __m512i xv = _mm512_loadu_si512(xq[t] + (8 * i + j) * TKV_QK);
                    const __m512i p = _mm512_sub_epi32(TKV_DP512(q, xv), TKV_DP512(c32, xv));
                    const __m512 sc = _mm512_permutexvar_ps(idx, S[t]);
                    if (gp) {
                        acc1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, acc1[t]);
                    } else {
                        acc0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, acc0[t]);
                    }
                }
            }
        }
    }
    TKV5_UNROLL for (int t = 0; t < T; t++) {
        y[(size_t)t * ys] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
    }
}
TKV_NX_DISPATCH(dot5_q6_k, dot5_q6_k_t, 0)

#undef TKV5_INLINE
#undef TKV5_GROUP
#undef TKV5_MAX_R
#undef TKV5_TILE
#undef TKV5_DOT_PLAIN
#undef TKV5_DOT_SIGNED
#undef TKV5_Q4_0_BB
#undef TKV5_Q4_0_UNPACK2
#undef TKV5_Q4_0_MINF
#undef TKV5_Q4_0_DOT
#undef TKV5_Q4_0_HI16
#undef TKV5_NIB2
#undef TKV5_Q4_1_BB
#undef TKV5_Q4_1_UNPACK2
#undef TKV5_Q4_1_MINF
#undef TKV5_Q4_1_DOT
#undef TKV5_Q4_1_HI16
#undef TKV5_Q5_0_BB
#undef TKV5_Q5_0_UNPACK2
#undef TKV5_Q5_0_MINF
#undef TKV5_Q5_0_DOT
#undef TKV5_Q5_0_HI16
#undef TKV5_Q5_1_BB
#undef TKV5_Q5_1_UNPACK2
#undef TKV5_Q5_1_MINF
#undef TKV5_Q5_1_DOT
#undef TKV5_Q5_1_HI16
#undef TKV5_Q8_0_BB
#undef TKV5_Q8_0_UNPACK2
#undef TKV5_Q8_0_MINF
#undef TKV5_Q8_0_DOT
#undef TKV5_Q8_0_HI16
