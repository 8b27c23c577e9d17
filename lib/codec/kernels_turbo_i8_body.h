/*
 * kernels_turbo_i8_body.h - turbo attention kernels on int8 codebook values: scores against
 * int8 queries and weighted value sums with int8 weights.  The body is shared by
 * kernels_turbo_avx2.c and kernels_turbo_avx512.c, included once by each with
 *   TKV_I8_VNNI    1: dot products by vpdpbusd (AVX-512 VNNI; scores and value sums pair
 *                  two 256-bit halves in 512-bit registers: score_pairs_512, span_sums_512);
 *                  0: vpmaddubsw + vpmaddwd (AVX2)
 *   TKV_I8_ATTR    function attributes (a target("...") or nothing)
 *   TKV_I8_NAME(x) the per-ISA name of x
 *
 * Attention on codes reads 2 + d b / 8 bytes per key and per value; the fp32 kernels spend
 * several vector instructions per 16 elements on unpacking and table lookups, and the
 * grouped-query path multiplies the arithmetic (not the bytes) by the group size.  Here a
 * key's 64-element chunk becomes two registers of 32 int8 codebook values ("halves") in
 * a few instructions, whatever the width:
 *   4 bits (P4, pack.h): the chunk's 32 bytes, masked / shifted: byte b of half 0 is element
 *       (b / 16) 32 + b % 16 of the chunk, of half 1 that + 16;
 *   5 bits: the same, with bit 4 from the P1 plane selecting between two 16-entry tables
 *       (AVX-512: the plane's bits are a mask register for a masked vpshufb; AVX2: they
 *       are expanded to byte masks for vpblendvb);
 *   2 bits (P2): the chunk's 16 bytes in both 128-bit lanes, shifted per lane (vpsrlvd by
 *       0 / 2 for half 0, 4 / 6 for half 1) and masked: byte b of half h is element 32 h + b;
 *   3 bits: the same, bit 2 from the P1 plane (a masked vpaddb, or byte masks);
 * and then one vpshufb in an int8 copy of the codebook (16 entries per register).
 *
 * Scores: each query is quantized once per call to int8 (q8 = round(q * 127 / max|q|)) and
 * stored in the halves' element order; the int8 products are summed in int32 lanes by
 * vpdpbusd (or vpmaddubsw + vpmaddwd), every query of a group on each unpacked register,
 * keys eight (or four) at a time with one transposing reduction per query, by unpacks and
 * adds.  At 4 bits two keys share a register (one per 128-bit lane, 16 code bytes each), so
 * 8 keys need 4 accumulators per query.  vpdpbusd multiplies unsigned by signed bytes: the
 * scores table holds cb8 + 128 and 128 sum(q8) is subtracted once per key.  vpmaddubsw
 * takes |cb8| and sign(cb8) q8 (vpsignb): |products| <= 127 * 127, so a pair never
 * saturates.  Rows TKV_I8_AHEAD keys on are prefetched.
 *
 * Value sums: keys go in blocks of TKV_I8_BLOCK; per block and query the weights w_i times
 * the keys' fp16 scales are quantized to int8 on the block's largest magnitude (step =
 * max |w s| / 127), four keys' values are interleaved byte by byte (vpunpck*bw / *wd) so
 * that an int32 lane holds one element of four keys, and the four int8 weights broadcast
 * in every lane multiply them; each block's int32 sums are converted and added in fp32
 * times its step.  Softmax weights are >= 0: then (span_weights_nonneg, the common path)
 * the weights are the unsigned operand and the codebook the signed one (vpdpbusd or
 * vpmaddubsw, no correction term, no sign games), and 4-bit codes are interleaved before
 * their lookups (a code byte holds an element of each half).  Weights of either sign take
 * vpdpbusd on cb8 + 128 with the block's 128 sum(w8) subtracted, or vpmaddubsw on |cb8|
 * and sign(cb8) w8.  Blocks of TKV_I8_SPAN keys are walked once per half, so their codes
 * are read from L1 after the first walk; the next span's rows are prefetched meanwhile.
 * head_dim 64 is instantiated as a constant at 4 bits (the accumulators then stay in
 * registers).
 *
 * Exactness (kernels.h states the bounds the tests hold every ISA to): scores differ from
 * the fp32 score by the rounding of q and of the codebook to 8 bits; value sums by the
 * rounding of the codebook and of each weight to 8 bits (steps 1/254 of the largest |c|
 * and of the block's largest |w s|).
 *
 * Shapes: codes of 2..5 bits without QJL, d a multiple of 64 (every head_dim of the
 * supported models); other layouts go to the fp32 kernels of the same ISA.
 */

#include "base/prefetch.h"

#define TKV_I8_MAX_D 1024
#define TKV_I8_BLOCK 32 /* value sums: keys per weight quantization step */
#define TKV_I8_SPAN 256 /* value sums: keys per walk of the halves (L1-resident codes) */
/* scores: keys between a row's prefetch and its use */
#define TKV_I8_AHEAD (TKV_I8_VNNI ? 384 : 192)
/* With VNNI, prefetches fill L2 (prefetcht1), not L1: each code byte is read once, a
 * prefetch into L1 holds one of its few miss buffers until the line arrives (the profile had
 * samples piling up on the prefetch instructions), and a load that finds its line in L2
 * waits a few cycles, which the out-of-order window covers; the rows are far enough ahead
 * for a page walk and a DRAM access to finish first.  The AVX2 kernels, which spend more
 * time per key, keep 192 keys into L1: the VNNI settings measured no faster there
 * (docs/SPEED.md, "The walk, round 2"). */
#define TKV_I8_PF_LOCALITY (TKV_I8_VNNI ? 2 : 3)

/* Round to nearest, halves away from zero (lrintf is a libm call in this build: it showed
 * in the decode profile, as fmaxf did). */
static inline int TKV_I8_NAME(round)(float x) {
    return (int)(x + (x >= 0.0f ? 0.5f : -0.5f));
}

/* Element (of the chunk) of byte b of half h, for the width's unpacking (top of file). */
static inline uint32_t TKV_I8_NAME(elem)(uint32_t bits, uint32_t h, uint32_t b) {
    return bits <= 3 ? 32 * h + b : (b / 16) * 32 + b % 16 + 16 * h;
}

/* The int8 codebook: scores (VNNI: cb8 + 128, unsigned) and value sums share its steps. */
typedef struct {
    __m256i lo, hi; /* entries 0..15, 16..31 in both 128-bit lanes */
    float step;     /* codebook step: centroid = step * cb8 */
} tkv_i8_tab;

static TKV_I8_ATTR void TKV_I8_NAME(make_tab)(const tkv_code_layout *L, int offset128,
                                              tkv_i8_tab *T) {
    const uint32_t nc = 1u << L->bits;
    float cmax = 0.0f;
    for (uint32_t i = 0; i < nc; i++) {
        const float a = fabsf(L->centroids[i]);
        cmax = a > cmax ? a : cmax;
    }
    T->step = cmax > 0.0f ? cmax / 127.0f : 1.0f;
    uint8_t tab[32] = {0};
    for (uint32_t i = 0; i < nc; i++) {
        const int v = TKV_I8_NAME(round)(L->centroids[i] / T->step);
        tab[i] = (uint8_t)(offset128 ? v + 128 : v & 255);
    }
    T->lo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tab));
    T->hi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tab + 16)));
}

#if !TKV_I8_VNNI
/* Byte masks (0xFF where set) of the P1 bits of half h of the chunk at element c. */
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(p1_mask)(uint32_t bits, const uint8_t *p1, uint32_t c,
                                                       uint32_t h) {
    const __m256i bit =
        _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16,
                         32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    __m256i src, sel;
    if (bits == 3) { /* half h: elements c + 32 h + b, bits of 4 bytes */
        int32_t w;
        memcpy(&w, p1 + c / 8 + 4 * h, 4);
        src = _mm256_set1_epi32(w);
        sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                               2, 3, 3, 3, 3, 3, 3, 3, 3);
    } else { /* 5 bits: lane 0 elements c + 16 h + b, lane 1 c + 32 + 16 h + b */
        int64_t w;
        memcpy(&w, p1 + c / 8, 8);
        src = _mm256_set1_epi64x(w);
        const char o = (char)(2 * h);
        sel = _mm256_setr_epi8(
            o, o, o, o, o, o, o, o, (char)(o + 1), (char)(o + 1), (char)(o + 1), (char)(o + 1),
            (char)(o + 1), (char)(o + 1), (char)(o + 1), (char)(o + 1), (char)(o + 4),
            (char)(o + 4), (char)(o + 4), (char)(o + 4), (char)(o + 4), (char)(o + 4),
            (char)(o + 4), (char)(o + 4), (char)(o + 5), (char)(o + 5), (char)(o + 5),
            (char)(o + 5), (char)(o + 5), (char)(o + 5), (char)(o + 5), (char)(o + 5));
    }
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(src, sel), bit), bit);
}
#else
/* The P1 bits of half h of the chunk at element c as a mask of the half's bytes (bit b for
 * byte b): with AVX-512BW a mask register does what p1_mask builds in five vector
 * instructions.  3 bits: 32 consecutive bits; 5 bits: two runs of 16 (lane 0, lane 1). */
static inline TKV_I8_ATTR __mmask32 TKV_I8_NAME(p1_k)(uint32_t bits, const uint8_t *p1, uint32_t c,
                                                      uint32_t h) {
    if (bits == 3) {
        uint32_t w;
        memcpy(&w, p1 + c / 8 + 4 * h, 4);
        return _cvtu32_mask32(w);
    }
    uint64_t w;
    memcpy(&w, p1 + c / 8, 8);
    const uint32_t lane0 = (uint32_t)(w >> (16 * h)) & 0xFFFFu;
    const uint32_t lane1 = (uint32_t)(w >> (32 + 16 * h)) & 0xFFFFu;
    return _cvtu32_mask32(lane0 | lane1 << 16);
}
#endif

/* The 32 int8 codebook values of half h of the 64-element chunk at element c of the turbo
 * index planes pl (d elements), from table T. */
static inline __attribute__((always_inline)) TKV_I8_ATTR __m256i
TKV_I8_NAME(half)(const uint32_t bits, uint32_t d, const uint8_t *pl, uint32_t c, uint32_t h,
                  const tkv_i8_tab *T) {
    const __m256i m15 = _mm256_set1_epi8(15);
    if (bits >= 4) {
        const __m256i b = _mm256_loadu_si256((const __m256i *)(pl + c / 2));
        const __m256i idx = _mm256_and_si256(h ? _mm256_srli_epi16(b, 4) : b, m15);
        const __m256i v = _mm256_shuffle_epi8(T->lo, idx);
        if (bits == 4) {
            return v;
        }
#if TKV_I8_VNNI
        return _mm256_mask_shuffle_epi8(v, TKV_I8_NAME(p1_k)(5, pl + d / 2, c, h), T->hi, idx);
#else
        return _mm256_blendv_epi8(v, _mm256_shuffle_epi8(T->hi, idx),
                                  TKV_I8_NAME(p1_mask)(5, pl + d / 2, c, h));
#endif
    }
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(pl + c / 4)));
    const __m256i sh =
        h ? _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6) : _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(b, sh), _mm256_set1_epi8(3));
    if (bits == 3) {
#if TKV_I8_VNNI
        idx = _mm256_mask_add_epi8(idx, TKV_I8_NAME(p1_k)(3, pl + (d / 64) * 16, c, h), idx,
                                   _mm256_set1_epi8(4));
#else
        const __m256i m = TKV_I8_NAME(p1_mask)(3, pl + (d / 64) * 16, c, h);
        idx = _mm256_or_si256(idx, _mm256_and_si256(m, _mm256_set1_epi8(4)));
#endif
    }
    return _mm256_shuffle_epi8(T->lo, idx);
}

static inline TKV_I8_ATTR float TKV_I8_NAME(h2f)(const uint8_t *p) {
    return _cvtsh_ss(tkv_kc_u16(p));
}

/* ---- scores ------------------------------------------------------------------------ */

typedef struct {
    int8_t q8[TKV_MAX_QUERIES][TKV_I8_MAX_D]; /* per chunk: half 0's 32 bytes, then half 1's */
    /* 4 bits without VNNI, two keys per register (score_pairs4): per chunk four rows of 32
     * bytes, each 16 bytes of q8 twice (one per 128-bit lane): half 0 bytes 0-15, half 1
     * bytes 0-15, half 0 bytes 16-31, half 1 bytes 16-31 */
    int8_t q8p[TKV_MAX_QUERIES][2 * TKV_I8_MAX_D];
    float mul[TKV_MAX_QUERIES];               /* q step * codebook step */
    int32_t corr[TKV_MAX_QUERIES];            /* VNNI: 128 * sum(q8); else 0 */
    tkv_i8_tab tab;
} tkv_i8_query;

/* Horizontal max / sum of 8 lanes. */
static inline TKV_I8_ATTR float TKV_I8_NAME(hmax)(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
static inline TKV_I8_ATTR int32_t TKV_I8_NAME(hsum)(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}

/* The 8 int32 of round(x * inv) (halves away from zero, as TKV_I8_NAME(round)). */
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(round8)(const float *x, __m256 inv) {
    const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x), inv);
    const __m256 ge0 = _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GE_OQ);
    const __m256 half = _mm256_blendv_ps(_mm256_set1_ps(-0.5f), _mm256_set1_ps(0.5f), ge0);
    return _mm256_cvttps_epi32(_mm256_add_ps(y, half));
}

/* The 32 int8 of round(x[0..31] * inv) in element order; *sum += them. */
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(round32)(const float *x, __m256 inv, __m256i *sum) {
    const __m256i r0 = TKV_I8_NAME(round8)(x, inv), r1 = TKV_I8_NAME(round8)(x + 8, inv);
    const __m256i r2 = TKV_I8_NAME(round8)(x + 16, inv), r3 = TKV_I8_NAME(round8)(x + 24, inv);
    *sum = _mm256_add_epi32(*sum,
                            _mm256_add_epi32(_mm256_add_epi32(r0, r1), _mm256_add_epi32(r2, r3)));
    /* |r| <= 127, so the packs do not saturate; they leave 4-byte groups interleaved per
     * lane, which the permute puts back in order */
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Quantize the codebook and the nq queries (d a multiple of 64: supported()). */
static TKV_I8_ATTR void TKV_I8_NAME(prepare)(const tkv_code_layout *L, const float *const *qs,
                                             int nq, tkv_i8_query *P) {
    const uint32_t d = L->d;
    TKV_I8_NAME(make_tab)(L, TKV_I8_VNNI, &P->tab);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int k = 0; k < nq; k++) {
        const float *q = qs[k];
        __m256 m = _mm256_setzero_ps();
        for (uint32_t j = 0; j < d; j += 8) {
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(q + j), absmask));
        }
        const float qmax = TKV_I8_NAME(hmax)(m);
        const float qstep = qmax > 0.0f ? qmax / 127.0f : 1.0f, inv = 1.0f / qstep;
        const __m256 vinv = _mm256_set1_ps(inv);
        __m256i sum = _mm256_setzero_si256();
        for (uint32_t c = 0; c < d; c += 64) {
            const __m256i e0 = TKV_I8_NAME(round32)(q + c, vinv, &sum);      /* elements 0..31 */
            const __m256i e1 = TKV_I8_NAME(round32)(q + c + 32, vinv, &sum); /* 32..63 */
            __m256i *h = (__m256i *)(P->q8[k] + c); /* the two halves (elem()) */
            if (L->bits >= 4) {
                _mm256_storeu_si256(h, _mm256_permute2x128_si256(e0, e1, 0x20));
                _mm256_storeu_si256(h + 1, _mm256_permute2x128_si256(e0, e1, 0x31));
            } else {
                _mm256_storeu_si256(h, e0);
                _mm256_storeu_si256(h + 1, e1);
            }
            if (!TKV_I8_VNNI && L->bits == 4) { /* score_pairs4's rows (tkv_i8_query) */
                __m256i *p = (__m256i *)(P->q8p[k] + 2 * c);
                _mm256_storeu_si256(p, _mm256_permute2x128_si256(e0, e0, 0x00));
                _mm256_storeu_si256(p + 1, _mm256_permute2x128_si256(e0, e0, 0x11));
                _mm256_storeu_si256(p + 2, _mm256_permute2x128_si256(e1, e1, 0x00));
                _mm256_storeu_si256(p + 3, _mm256_permute2x128_si256(e1, e1, 0x11));
            }
        }
        P->mul[k] = qstep * P->tab.step;
        P->corr[k] = TKV_I8_VNNI ? 128 * TKV_I8_NAME(hsum)(sum) : 0;
    }
}

/* acc += the products of the 32 codebook values v with 32 query bytes q8. */
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(dot32)(__m256i acc, __m256i v, const int8_t *q8) {
    const __m256i q = _mm256_loadu_si256((const __m256i *)q8);
#if TKV_I8_VNNI
    return _mm256_dpbusd_epi32(acc, v, q);
#else
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(q, v));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/* Four rows' bytes interleaved: each int32 lane of X[0..3] holds the same byte of rows a, b, c
 * and d (in that order), the bytes in the order of the unpacks (the value sums' lane order). */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(interleave4)(__m256i a, __m256i b, __m256i c, __m256i d, __m256i *X) {
    const __m256i ab0 = _mm256_unpacklo_epi8(a, b), ab1 = _mm256_unpackhi_epi8(a, b);
    const __m256i cd0 = _mm256_unpacklo_epi8(c, d), cd1 = _mm256_unpackhi_epi8(c, d);
    X[0] = _mm256_unpacklo_epi16(ab0, cd0);
    X[1] = _mm256_unpackhi_epi16(ab0, cd0);
    X[2] = _mm256_unpacklo_epi16(ab1, cd1);
    X[3] = _mm256_unpackhi_epi16(ab1, cd1);
}

/* A[r] += the products of the 4 weight bytes at w8, broadcast as the unsigned operand (weights
 * >= 0), with the signed bytes of X[r], summed by 4 into int32 lanes, for r = 0..3. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void TKV_I8_NAME(wdot4)(
    __m256i *A, const int8_t *w8, const __m256i *X) {
    int32_t wq;
    memcpy(&wq, w8, 4);
    const __m256i wv = _mm256_set1_epi32(wq);
    for (int r = 0; r < 4; r++) {
#if TKV_I8_VNNI
        A[r] = _mm256_dpbusd_epi32(A[r], wv, X[r]);
#else /* |pair sums| <= 2 * 127 * 127: no saturation */
        A[r] = _mm256_add_epi32(
            A[r], _mm256_madd_epi16(_mm256_maddubs_epi16(wv, X[r]), _mm256_set1_epi16(1)));
#endif
    }
}

/* Sums of int32 lanes by unpacks and adds (vphaddd decodes into several operations, an
 * unpack is one).  sum2: per 128-bit lane [x0 + x2, y0 + y2, x1 + x3, y1 + y3]; sum4: per
 * 128-bit lane [a, b, c, d], each the sum of that lane's four. */
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(sum2)(__m256i x, __m256i y) {
    return _mm256_add_epi32(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y));
}
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(sum4)(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = TKV_I8_NAME(sum2)(a, b), cd = TKV_I8_NAME(sum2)(c, d);
    return _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
}

/* [sum a[0], ..., sum a[keys - 1]] (keys 4 or 8) of registers of int32 lanes, in the low
 * 128 bits for 4. */
static inline __attribute__((always_inline)) TKV_I8_ATTR __m256i
TKV_I8_NAME(reduce)(const int keys, const __m256i *a) {
    const __m256i s0 = TKV_I8_NAME(sum4)(a[0], a[1], a[2], a[3]);
    if (keys == 4) {
        return _mm256_castsi128_si256(
            _mm_add_epi32(_mm256_castsi256_si128(s0), _mm256_extracti128_si256(s0, 1)));
    }
    const __m256i s1 = TKV_I8_NAME(sum4)(a[4], a[5], a[6], a[7]);
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20),
                            _mm256_permute2x128_si256(s0, s1, 0x31));
}

/* The fp16 scales of four keys `stride` bytes apart, as one 64-bit word (integer loads and
 * shifts: inserting them one by one would cost vector instructions). */
static inline uint64_t TKV_I8_NAME(scales4)(const uint8_t *p, size_t stride) {
    return (uint64_t)tkv_kc_u16(p) | (uint64_t)tkv_kc_u16(p + stride) << 16 |
           (uint64_t)tkv_kc_u16(p + 2 * stride) << 32 | (uint64_t)tkv_kc_u16(p + 3 * stride) << 48;
}

/* outs[k][i..i + keys) for the keys codes at c0: each key's halves are unpacked once and
 * multiplied with every query's bytes, one accumulator per (query, key), then one
 * transposing reduction per query. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(score_keys)(const int NQ, const uint32_t BITS, const uint32_t D, const int keys,
                        const tkv_code_layout *L, const tkv_i8_query *P, const uint8_t *c0,
                        size_t i, float *const *outs) {
    const uint32_t d = D ? D : L->d, stride = L->stride, po = L->payload_off;
    __m256i acc[TKV_MAX_QUERIES][8];
    for (int k = 0; k < NQ; k++) {
        for (int r = 0; r < keys; r++) {
            acc[k][r] = _mm256_setzero_si256();
        }
    }
    for (uint32_t c = 0; c < d; c += 64) {
        for (uint32_t h = 0; h < 2; h++) {
            for (int r = 0; r < keys; r++) {
                const __m256i v =
                    TKV_I8_NAME(half)(BITS, d, c0 + (size_t)r * stride + po, c, h, &P->tab);
                for (int k = 0; k < NQ; k++) {
                    acc[k][r] = TKV_I8_NAME(dot32)(acc[k][r], v, P->q8[k] + c + 32 * h);
                }
            }
        }
    }
    const uint8_t *sp = c0 + L->scale_off;
    if (keys == 8) {
        const __m256 scales = _mm256_cvtph_ps(
            _mm_set_epi64x((long long)TKV_I8_NAME(scales4)(sp + 4 * (size_t)stride, stride),
                           (long long)TKV_I8_NAME(scales4)(sp, stride)));
        for (int k = 0; k < NQ; k++) {
            const __m256i s =
                _mm256_sub_epi32(TKV_I8_NAME(reduce)(8, acc[k]), _mm256_set1_epi32(P->corr[k]));
            _mm256_storeu_ps(outs[k] + i,
                             _mm256_mul_ps(_mm256_mul_ps(scales, _mm256_set1_ps(P->mul[k])),
                                           _mm256_cvtepi32_ps(s)));
        }
    } else {
        const __m128 scales =
            _mm_cvtph_ps(_mm_cvtsi64_si128((long long)TKV_I8_NAME(scales4)(sp, stride)));
        for (int k = 0; k < NQ; k++) {
            const __m128i s = _mm_sub_epi32(_mm256_castsi256_si128(TKV_I8_NAME(reduce)(4, acc[k])),
                                            _mm_set1_epi32(P->corr[k]));
            _mm_storeu_ps(outs[k] + i, _mm_mul_ps(_mm_mul_ps(scales, _mm_set1_ps(P->mul[k])),
                                                  _mm_cvtepi32_ps(s)));
        }
    }
}

/* score_keys for 8 keys of 4-bit codes: keys r and r + 4 share the registers (one per
 * 128-bit lane, 16 code bytes each: the low nibbles are elements of half 0, the high ones of
 * half 1), so that a query needs 4 accumulators for 8 keys and one reduction gives the 8
 * scores in order. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(score_pairs4)(const int NQ, const uint32_t D, const tkv_code_layout *L,
                          const tkv_i8_query *P, const uint8_t *c0, size_t i, float *const *outs) {
    const uint32_t d = D ? D : L->d, stride = L->stride, po = L->payload_off;
    const __m256i m15 = _mm256_set1_epi8(15);
    __m256i acc[TKV_MAX_QUERIES][4];
    for (int k = 0; k < NQ; k++) {
        for (int r = 0; r < 4; r++) {
            acc[k][r] = _mm256_setzero_si256();
        }
    }
    for (uint32_t c = 0; c < d; c += 64) {
        for (int r = 0; r < 4; r++) {
            const uint8_t *a = c0 + (size_t)r * stride + po + c / 2, *b = a + 4 * (size_t)stride;
            for (int z = 0; z < 2; z++) {
                const __m256i y = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a + 16 * z))),
                    _mm_loadu_si128((const __m128i *)(b + 16 * z)), 1);
                const __m256i v0 = _mm256_shuffle_epi8(P->tab.lo, _mm256_and_si256(y, m15));
                const __m256i v1 =
                    _mm256_shuffle_epi8(P->tab.lo, _mm256_and_si256(_mm256_srli_epi16(y, 4), m15));
                for (int k = 0; k < NQ; k++) {
                    const int8_t *q = P->q8p[k] + 2 * c + 64 * z;
                    acc[k][r] = TKV_I8_NAME(dot32)(acc[k][r], v0, q);
                    acc[k][r] = TKV_I8_NAME(dot32)(acc[k][r], v1, q + 32);
                }
            }
        }
    }
    const uint8_t *sp = c0 + L->scale_off;
    const __m256 scales = _mm256_cvtph_ps(
        _mm_set_epi64x((long long)TKV_I8_NAME(scales4)(sp + 4 * (size_t)stride, stride),
                       (long long)TKV_I8_NAME(scales4)(sp, stride)));
    for (int k = 0; k < NQ; k++) {
        const __m256i s =
            _mm256_sub_epi32(TKV_I8_NAME(sum4)(acc[k][0], acc[k][1], acc[k][2], acc[k][3]),
                             _mm256_set1_epi32(P->corr[k]));
        _mm256_storeu_ps(
            outs[k] + i,
            _mm256_mul_ps(_mm256_mul_ps(scales, _mm256_set1_ps(P->mul[k])), _mm256_cvtepi32_ps(s)));
    }
}

#if TKV_I8_VNNI
/* The VNNI scores pass (score_pairs4's pairing in 512-bit registers): keys r and r + 4 fill
 * the two 256-bit halves of a register with half 0 of their chunk, another with half 1 (at 4
 * bits both from one load of the 32 code bytes each: low nibbles, high nibbles), and every
 * query's halves of q8 are broadcast to both 256-bit halves, so that each vpdpbusd covers
 * two keys and 8 keys need 4 accumulators per query.  On CPUs where a 512-bit vpdpbusd costs
 * what a 256-bit one does, that halves the multiplies of score_pairs4 / score_keys.  Integer
 * sums are exact and the scaling is theirs: the same bits. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(score_pairs_512)(const int NQ, const uint32_t BITS, const uint32_t D,
                             const tkv_code_layout *L, const tkv_i8_query *P, const uint8_t *c0,
                             size_t i, float *const *outs) {
    const uint32_t d = D ? D : L->d, stride = L->stride, po = L->payload_off;
    const __m512i m15 = _mm512_set1_epi8(15);
    const __m512i tab = _mm512_broadcast_i32x4(_mm256_castsi256_si128(P->tab.lo));
    __m512i acc[TKV_MAX_QUERIES][4];
    for (int k = 0; k < NQ; k++) {
        for (int r = 0; r < 4; r++) {
            acc[k][r] = _mm512_setzero_si512();
        }
    }
    for (uint32_t c = 0; c < d; c += 64) {
        __m512i q[TKV_MAX_QUERIES][2];
        for (int k = 0; k < NQ; k++) {
            for (int h = 0; h < 2; h++) {
                q[k][h] = _mm512_broadcast_i64x4(
                    _mm256_loadu_si256((const __m256i *)(P->q8[k] + c + 32 * h)));
            }
        }
        for (int r = 0; r < 4; r++) {
            __m512i v0, v1; /* half 0 / half 1 of keys r | r + 4 */
            if (BITS == 4) {
                const uint8_t *a = c0 + (size_t)r * stride + po + c / 2,
                              *b = a + 4 * (size_t)stride;
                const __m512i y = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                    _mm256_loadu_si256((const __m256i *)b), 1);
                v0 = _mm512_shuffle_epi8(tab, _mm512_and_si512(y, m15));
                v1 = _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srli_epi16(y, 4), m15));
            } else {
                const uint8_t *a = c0 + (size_t)r * stride + po, *b = a + 4 * (size_t)stride;
                v0 = _mm512_inserti64x4(
                    _mm512_castsi256_si512(TKV_I8_NAME(half)(BITS, d, a, c, 0, &P->tab)),
                    TKV_I8_NAME(half)(BITS, d, b, c, 0, &P->tab), 1);
                v1 = _mm512_inserti64x4(
                    _mm512_castsi256_si512(TKV_I8_NAME(half)(BITS, d, a, c, 1, &P->tab)),
                    TKV_I8_NAME(half)(BITS, d, b, c, 1, &P->tab), 1);
            }
            for (int k = 0; k < NQ; k++) {
                acc[k][r] = _mm512_dpbusd_epi32(acc[k][r], v0, q[k][0]);
                acc[k][r] = _mm512_dpbusd_epi32(acc[k][r], v1, q[k][1]);
            }
        }
    }
    const uint8_t *sp = c0 + L->scale_off;
    const __m256 scales = _mm256_cvtph_ps(
        _mm_set_epi64x((long long)TKV_I8_NAME(scales4)(sp + 4 * (size_t)stride, stride),
                       (long long)TKV_I8_NAME(scales4)(sp, stride)));
    for (int k = 0; k < NQ; k++) {
        /* per 128-bit lane l: the lane's sums of the 4 registers; keys r < 4 are lanes 0 + 1,
         * keys r + 4 lanes 2 + 3 */
        const __m512i x01 = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[k][0], acc[k][1]),
                                             _mm512_unpackhi_epi32(acc[k][0], acc[k][1]));
        const __m512i x23 = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[k][2], acc[k][3]),
                                             _mm512_unpackhi_epi32(acc[k][2], acc[k][3]));
        const __m512i s4 = _mm512_add_epi32(_mm512_unpacklo_epi64(x01, x23),
                                            _mm512_unpackhi_epi64(x01, x23));
        const __m512i s = _mm512_shuffle_i64x2(s4, s4, _MM_SHUFFLE(3, 1, 2, 0));
        const __m256i s8 = _mm256_sub_epi32(
            _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1)),
            _mm256_set1_epi32(P->corr[k]));
        _mm256_storeu_ps(outs[k] + i, _mm256_mul_ps(_mm256_mul_ps(scales, _mm256_set1_ps(P->mul[k])),
                                                    _mm256_cvtepi32_ps(s8)));
    }
}
#endif

/* Keys per pass of the scores: 8 while their accumulators fit the registers (32 with
 * AVX-512, 16 with AVX2) next to the unpacking, else 4 (score_pairs_512 needs 4 per query
 * for 8 keys). */
#define TKV_I8_SCORE_KEYS(BITS, NQ) ((BITS) == 4 || (NQ)*8 <= (TKV_I8_VNNI ? 32 : 8) ? 8 : 4)
/* VNNI scores by score_pairs_512: at 4 bits, and at other widths for several queries (one
 * query saves one vpdpbusd per half and key, which the insert that pairs the halves costs
 * back, on the shuffle port that the unpacking already loads). */
#define TKV_I8_PAIRS_512(BITS, NQ) ((BITS) == 4 || (NQ) > 1)

/* outs[k][i] for nq (1..4) queries; NQ and BITS are compile-time constants in each instance. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(scores_nq)(const int NQ, const uint32_t BITS, const uint32_t D,
                       const tkv_code_layout *L, const tkv_i8_query *P, const uint8_t *codes,
                       size_t n, float *const *outs) {
    const uint32_t d = D ? D : L->d, stride = L->stride, po = L->payload_off;
    const int keys = TKV_I8_SCORE_KEYS(BITS, NQ);
    size_t i = 0;
    for (; i + (size_t)keys <= n; i += (size_t)keys) {
        /* rows TKV_I8_AHEAD on: the hardware prefetchers stop at page boundaries.  Also
         * past the run's end: the cache cuts a head's keys into runs at every calibration
         * block (256 positions) and the rows after a run are the next run's, so a bound
         * here would leave most of each run unprefetched; a prefetch never faults (the
         * address is computed as an integer: it may lie outside the array). */
        TKV_PREFETCH_BYTES((uintptr_t)codes + (i + TKV_I8_AHEAD) * stride, (size_t)keys * stride,
                           TKV_I8_PF_LOCALITY);
#if TKV_I8_VNNI
        if (TKV_I8_PAIRS_512(BITS, NQ)) {
            TKV_I8_NAME(score_pairs_512)(NQ, BITS, D, L, P, codes + i * stride, i, outs);
        } else {
            TKV_I8_NAME(score_keys)(NQ, BITS, D, keys, L, P, codes + i * stride, i, outs);
        }
#else
        if (BITS == 4) {
            TKV_I8_NAME(score_pairs4)(NQ, D, L, P, codes + i * stride, i, outs);
        } else {
            TKV_I8_NAME(score_keys)(NQ, BITS, D, keys, L, P, codes + i * stride, i, outs);
        }
#endif
    }
    if (keys == 8 && i + 4 <= n) {
        TKV_I8_NAME(score_keys)(NQ, BITS, D, 4, L, P, codes + i * stride, i, outs);
        i += 4;
    }
    for (; i < n; i++) {
        const uint8_t *code = codes + i * stride;
        __m256i acc[TKV_MAX_QUERIES];
        for (int k = 0; k < NQ; k++) {
            acc[k] = _mm256_setzero_si256();
        }
        for (uint32_t c = 0; c < d; c += 64) {
            for (uint32_t h = 0; h < 2; h++) {
                const __m256i v = TKV_I8_NAME(half)(BITS, d, code + po, c, h, &P->tab);
                for (int k = 0; k < NQ; k++) {
                    acc[k] = TKV_I8_NAME(dot32)(acc[k], v, P->q8[k] + c + 32 * h);
                }
            }
        }
        const float scale = TKV_I8_NAME(h2f)(code + L->scale_off);
        for (int k = 0; k < NQ; k++) {
            const __m256i a4[4] = {acc[k], acc[k], acc[k], acc[k]};
            const __m256i s = TKV_I8_NAME(reduce)(4, a4);
            outs[k][i] = scale * P->mul[k] *
                         (float)(_mm_cvtsi128_si32(_mm256_castsi256_si128(s)) - P->corr[k]);
        }
    }
}

/* 1 if the layout is one these kernels handle. */
static int TKV_I8_NAME(supported)(const tkv_code_layout *L) {
    return L->bits >= 2 && L->bits <= 5 && !L->has_qjl && L->d % 64 == 0 && L->d <= TKV_I8_MAX_D;
}

#define TKV_I8_BITS_NQ(F, bits, nq, ...)                                                           \
    do {                                                                                           \
        switch ((bits)*8 + (nq)) {                                                                 \
        case 17:                                                                                   \
            F(1, 2, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 18:                                                                                   \
            F(2, 2, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 19:                                                                                   \
            F(3, 2, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 20:                                                                                   \
            F(4, 2, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 25:                                                                                   \
            F(1, 3, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 26:                                                                                   \
            F(2, 3, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 27:                                                                                   \
            F(3, 3, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 28:                                                                                   \
            F(4, 3, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 33:                                                                                   \
            F(1, 4, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 34:                                                                                   \
            F(2, 4, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 35:                                                                                   \
            F(3, 4, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 36:                                                                                   \
            F(4, 4, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 41:                                                                                   \
            F(1, 5, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 42:                                                                                   \
            F(2, 5, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        case 43:                                                                                   \
            F(3, 5, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        default:                                                                                   \
            F(4, 5, __VA_ARGS__);                                                                  \
            break;                                                                                 \
        }                                                                                          \
    } while (0)

/* Every (queries, width) instance as a function of its own, so that no function holds all of
 * them (compile time grows faster than linearly with a function's size).  head_dim 64 (one
 * chunk) is a constant for 4 bits, the default codec: its accumulators then stay in
 * registers. */
#define TKV_I8_FOR_EACH(G)                                                                         \
    G(1, 2)                                                                                        \
    G(2, 2) G(3, 2) G(4, 2) G(1, 3) G(2, 3) G(3, 3) G(4, 3) G(1, 4) G(2, 4) G(3, 4) G(4, 4)        \
        G(1, 5) G(2, 5) G(3, 5) G(4, 5)

#define TKV_I8_DEF_SCORES(NQ, BITS)                                                                \
    static __attribute__((noinline)) TKV_I8_ATTR void TKV_I8_NAME(scores_##NQ##_##BITS)(           \
        const tkv_code_layout *L, const tkv_i8_query *P, const uint8_t *codes, size_t n,           \
        float *const *outs) {                                                                      \
        if ((BITS) == 4 && L->d == 64) {                                                           \
            TKV_I8_NAME(scores_nq)(NQ, BITS, 64, L, P, codes, n, outs);                            \
        } else {                                                                                   \
            TKV_I8_NAME(scores_nq)(NQ, BITS, 0, L, P, codes, n, outs);                             \
        }                                                                                          \
    }
TKV_I8_FOR_EACH(TKV_I8_DEF_SCORES)

#define TKV_I8_SCORES(NQ, BITS, L, P, codes, n, outs)                                              \
    TKV_I8_NAME(scores_##NQ##_##BITS)(L, P, codes, n, outs)

static TKV_I8_ATTR void TKV_I8_NAME(run)(const tkv_code_layout *L, const float *const *qs, int nq,
                                         const uint8_t *codes, size_t n, float *const *outs) {
    tkv_i8_query P;
    TKV_I8_NAME(prepare)(L, qs, nq, &P);
    TKV_I8_BITS_NQ(TKV_I8_SCORES, L->bits, nq, L, &P, codes, n, outs);
}

/* ---- value sums -------------------------------------------------------------------- */

/* One span (<= TKV_I8_SPAN keys) of quantized weights: per query and key the int8 weight,
 * per query and block the step and (VNNI) 128 * sum(w8). */
typedef struct {
    int8_t w8[TKV_MAX_QUERIES][TKV_I8_SPAN];
    float step[TKV_MAX_QUERIES][TKV_I8_SPAN / TKV_I8_BLOCK];
    int32_t corr[TKV_MAX_QUERIES][TKV_I8_SPAN / TKV_I8_BLOCK];
    const uint8_t *code[TKV_I8_SPAN]; /* rows past the span's end repeat its last row */
    int nonneg;                       /* every w8 >= 0 (softmax weights always are) */
} tkv_i8_span;

/* The int8 weights of the whole blocks (nb) of a span whose weights are all >= 0, with
 * threshold <= 0 (every row kept): per 8 rows a product, a max and a sign OR; no
 * correction sums (the unsigned-weight path needs none).  Returns 0, with S half written,
 * if some w * scale is negative (or -0, or NaN: it rounds to -128); the caller then takes
 * the general path. */
static TKV_I8_ATTR int TKV_I8_NAME(span_weights_nonneg)(const float *const *w, int nq,
                                                        const float *scale, size_t nb,
                                                        tkv_i8_span *S) {
    __m256 sign = _mm256_setzero_ps();
    __m256i neg = _mm256_setzero_si256();
    float v[TKV_I8_SPAN];
    for (int k = 0; k < nq; k++) {
        for (size_t b = 0; b < nb; b++) {
            const size_t b0 = b * TKV_I8_BLOCK;
            __m256 m = _mm256_setzero_ps();
            for (int r = 0; r < 4; r++) {
                const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(w[k] + b0 + 8 * r),
                                               _mm256_loadu_ps(scale + b0 + 8 * r));
                _mm256_storeu_ps(v + b0 + 8 * r, x);
                m = _mm256_max_ps(m, x);
                sign = _mm256_or_ps(sign, x);
            }
            const float mx = TKV_I8_NAME(hmax)(m);
            const float step = mx > 0.0f ? mx / 127.0f : 1.0f;
            const __m256 inv = _mm256_set1_ps(1.0f / step);
            __m256i q[4];
            for (int r = 0; r < 4; r++) {
                q[r] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + b0 + 8 * r), inv));
            }
            const __m256i p =
                _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            neg = _mm256_or_si256(neg, p);
            _mm256_storeu_si256(
                (__m256i *)(S->w8[k] + b0),
                _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            S->step[k][b] = step;
        }
    }
    return !_mm256_movemask_ps(sign) && !_mm256_movemask_epi8(neg);
}

static TKV_I8_ATTR void TKV_I8_NAME(span_weights)(const tkv_code_layout *L, const float *const *w,
                                                  int nq, float threshold, const uint8_t *codes,
                                                  size_t ns, tkv_i8_span *S) {
    float scale[TKV_I8_SPAN];
    uint16_t h16[TKV_I8_SPAN];
    for (size_t i = 0; i < ns; i++) {
        S->code[i] = codes + i * L->stride;
        h16[i] = tkv_kc_u16(S->code[i] + L->scale_off);
    }
    size_t i8 = 0;
    for (; i8 + 8 <= ns; i8 += 8) {
        _mm256_storeu_ps(scale + i8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h16 + i8))));
    }
    for (; i8 < ns; i8++) {
        scale[i8] = TKV_I8_NAME(h2f)(S->code[i8] + L->scale_off);
    }
    const size_t padded = (ns + 3) & ~(size_t)3;
    for (size_t i = ns; i < padded; i++) {
        S->code[i] = S->code[ns - 1];
    }
    const size_t nb = ns / TKV_I8_BLOCK;
    /* the span's partial last block, in scalar code */
    int negtail = 0;
    if (nb * TKV_I8_BLOCK < ns) {
        const size_t b0 = nb * TKV_I8_BLOCK;
        for (int k = 0; k < nq; k++) {
            float ws[TKV_I8_BLOCK], m = 0.0f;
            for (size_t i = b0; i < ns; i++) {
                const float x = w[k][i];
                const float v = (x >= threshold || -x >= threshold) ? x * scale[i] : 0.0f;
                ws[i - b0] = v;
                const float a = fabsf(v);
                m = a > m ? a : m;
            }
            const float step = m > 0.0f ? m / 127.0f : 1.0f, inv = 1.0f / step;
            int32_t sum = 0;
            for (size_t i = b0; i < ns; i++) {
                const int v = TKV_I8_NAME(round)(ws[i - b0] * inv);
                S->w8[k][i] = (int8_t)v;
                sum += v;
                negtail |= v < 0;
            }
            for (size_t i = ns; i < padded; i++) {
                S->w8[k][i] = 0;
            }
            S->step[k][nb] = step;
            S->corr[k][nb] = TKV_I8_VNNI ? 128 * sum : 0;
        }
    }
    if (!negtail && threshold <= 0.0f && TKV_I8_NAME(span_weights_nonneg)(w, nq, scale, nb, S)) {
        S->nonneg = 1;
        return;
    }
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 thr = _mm256_set1_ps(threshold);
    __m256i neg = _mm256_setzero_si256(); /* OR of the w8 */
    for (int k = 0; k < nq; k++) {
        for (size_t b0 = 0; b0 < nb * TKV_I8_BLOCK; b0 += TKV_I8_BLOCK) {
            __m256 v[4], m = _mm256_setzero_ps();
            for (int r = 0; r < 4; r++) {
                const __m256 x = _mm256_loadu_ps(w[k] + b0 + 8 * r);
                const __m256 keep = _mm256_cmp_ps(_mm256_and_ps(x, absmask), thr, _CMP_GE_OQ);
                v[r] = _mm256_and_ps(keep, _mm256_mul_ps(x, _mm256_loadu_ps(scale + b0 + 8 * r)));
                m = _mm256_max_ps(m, _mm256_and_ps(v[r], absmask));
            }
            const float mx = TKV_I8_NAME(hmax)(m);
            const float step = mx > 0.0f ? mx / 127.0f : 1.0f;
            const __m256 inv = _mm256_set1_ps(1.0f / step);
            __m256i q[4];
            for (int r = 0; r < 4; r++) { /* |v| * inv <= 127 up to rounding: no clamp needed */
                q[r] = _mm256_cvtps_epi32(_mm256_mul_ps(v[r], inv));
            }
            const __m256i s =
                _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            const __m256i p =
                _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            neg = _mm256_or_si256(neg, p);
            _mm256_storeu_si256(
                (__m256i *)(S->w8[k] + b0),
                _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            S->step[k][b0 / TKV_I8_BLOCK] = step;
            S->corr[k][b0 / TKV_I8_BLOCK] = TKV_I8_VNNI ? 128 * TKV_I8_NAME(hsum)(s) : 0;
        }
    }
    S->nonneg = !negtail && !_mm256_movemask_epi8(neg);
}

/* Prefetch rows i..i+3 of the npf rows at pf (the next span), if i + 3 < npf. */
static inline void TKV_I8_NAME(prefetch4)(const uint8_t *pf, size_t npf, size_t stride, size_t i) {
    if (i + 4 <= npf) {
        TKV_PREFETCH_BYTES((uintptr_t)pf + i * stride, 4 * stride, TKV_I8_PF_LOCALITY);
    }
}

/* Where the value sums of half h, register r of chunk c live in fsum (8 floats from there):
 * [c + 32 h + 8 r], or with VNNI, whose 512-bit value sums (span_sums_512) hold both halves
 * of register r in one accumulator, [c + 16 r + 8 h]; within the 8, the lane order of the
 * interleave.  The signed-weight path uses the same layout. */
#define TKV_I8_FPOS(c, h, r) (TKV_I8_VNNI ? (c) + 16 * (r) + 8 * (h) : (c) + 32 * (h) + 8 * (r))

/* span_sums of 4-bit codes with weights >= 0 (signed table T): the four keys' code bytes
 * are interleaved before the lookups (a code byte holds one element of each half), and a
 * block's sums go to fsum as soon as it ends, so that only 4 accumulators per query are
 * live (more spill to the stack at 3 queries). */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(span_sums4)(const int NQ, const uint32_t D, const tkv_code_layout *L,
                        const tkv_i8_tab *T, const tkv_i8_span *S, size_t ns, const uint8_t *pf,
                        size_t npf, float *const *fsum) {
    const uint32_t d = D ? D : L->d, po = L->payload_off;
    const __m256i m15 = _mm256_set1_epi8(15);
    for (uint32_t c = 0; c < d; c += 64) {
        for (size_t b0 = 0; b0 < ns; b0 += TKV_I8_BLOCK) {
            const size_t b1 = b0 + TKV_I8_BLOCK < ns ? b0 + TKV_I8_BLOCK : ns;
            for (int h = 0; h < 2; h++) {
                __m256i A[TKV_MAX_QUERIES][4];
                for (int k = 0; k < NQ; k++) {
                    for (int r = 0; r < 4; r++) {
                        A[k][r] = _mm256_setzero_si256();
                    }
                }
                for (size_t i = b0; i < b1; i += 4) {
                    if (c == 0 && h == 0) {
                        TKV_I8_NAME(prefetch4)(pf, npf, L->stride, i);
                    }
                    const uint8_t *const *cp = S->code + i;
                    const __m256i ra = _mm256_loadu_si256((const __m256i *)(cp[0] + po + c / 2));
                    const __m256i rb = _mm256_loadu_si256((const __m256i *)(cp[1] + po + c / 2));
                    const __m256i rc = _mm256_loadu_si256((const __m256i *)(cp[2] + po + c / 2));
                    const __m256i rd = _mm256_loadu_si256((const __m256i *)(cp[3] + po + c / 2));
                    __m256i X[4];
                    TKV_I8_NAME(interleave4)(ra, rb, rc, rd, X);
                    for (int r = 0; r < 4; r++) {
                        const __m256i x = h ? _mm256_srli_epi16(X[r], 4) : X[r];
                        X[r] = _mm256_shuffle_epi8(T->lo, _mm256_and_si256(x, m15));
                    }
                    for (int k = 0; k < NQ; k++) {
                        TKV_I8_NAME(wdot4)(A[k], S->w8[k] + i, X);
                    }
                }
                for (int k = 0; k < NQ; k++) {
                    const __m256 st = _mm256_set1_ps(S->step[k][b0 / TKV_I8_BLOCK]);
                    for (int r = 0; r < 4; r++) {
                        float *f = fsum[k] + TKV_I8_FPOS(c, h, r);
                        _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(A[k][r]), st,
                                                            _mm256_loadu_ps(f)));
                    }
                }
            }
        }
    }
}

#if TKV_I8_VNNI
/* The VNNI value sums (weights >= 0) in 512-bit registers: each key's chunk fills both
 * 256-bit halves of a register (4 bits: its 32 code bytes twice, one broadcast load; other
 * widths: its half 0 and half 1 values), so one interleave of four keys serves both halves
 * of the chunk (at 4 bits the low 256 bits then look up the low nibbles, the high 256 bits
 * the high ones), and each vpdpbusd adds the four weights into both.  The 256-bit path
 * (span_sums4, span_sums) interleaves every key once per half.  Integer sums per block and
 * the fp32 steps per element are theirs, in the same order: the same bits. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(span_sums_512)(const int NQ, const uint32_t BITS, const uint32_t D,
                           const tkv_code_layout *L, const tkv_i8_tab *T, const tkv_i8_span *S,
                           size_t ns, const uint8_t *pf, size_t npf, float *const *fsum) {
    const uint32_t d = D ? D : L->d, po = L->payload_off;
    const __m512i m15 = _mm512_set1_epi8(15);
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i tab = _mm512_broadcast_i32x4(_mm256_castsi256_si128(T->lo));
    for (uint32_t c = 0; c < d; c += 64) {
        for (size_t b0 = 0; b0 < ns; b0 += TKV_I8_BLOCK) {
            const size_t b1 = b0 + TKV_I8_BLOCK < ns ? b0 + TKV_I8_BLOCK : ns;
            __m512i A[TKV_MAX_QUERIES][4];
            for (int k = 0; k < NQ; k++) {
                for (int r = 0; r < 4; r++) {
                    A[k][r] = _mm512_setzero_si512();
                }
            }
            for (size_t i = b0; i < b1; i += 4) {
                if (c == 0) {
                    TKV_I8_NAME(prefetch4)(pf, npf, L->stride, i);
                }
                const uint8_t *const *cp = S->code + i;
                __m512i R[4]; /* 4 bits: codes in both halves; else values of half 0 | half 1 */
                for (int j = 0; j < 4; j++) {
                    R[j] = BITS == 4 ? _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                           (const __m256i *)(cp[j] + po + c / 2)))
                                     : _mm512_inserti64x4(
                                           _mm512_castsi256_si512(TKV_I8_NAME(half)(
                                               BITS, d, cp[j] + po, c, 0, T)),
                                           TKV_I8_NAME(half)(BITS, d, cp[j] + po, c, 1, T), 1);
                }
                const __m512i ab0 = _mm512_unpacklo_epi8(R[0], R[1]);
                const __m512i ab1 = _mm512_unpackhi_epi8(R[0], R[1]);
                const __m512i cd0 = _mm512_unpacklo_epi8(R[2], R[3]);
                const __m512i cd1 = _mm512_unpackhi_epi8(R[2], R[3]);
                __m512i X[4] = {_mm512_unpacklo_epi16(ab0, cd0), _mm512_unpackhi_epi16(ab0, cd0),
                                _mm512_unpacklo_epi16(ab1, cd1), _mm512_unpackhi_epi16(ab1, cd1)};
                for (int r = 0; BITS == 4 && r < 4; r++) {
                    X[r] = _mm512_shuffle_epi8(
                        tab, _mm512_and_si512(_mm512_srlv_epi16(X[r], shift), m15));
                }
                for (int k = 0; k < NQ; k++) {
                    int32_t wq;
                    memcpy(&wq, S->w8[k] + i, 4);
                    const __m512i wv = _mm512_set1_epi32(wq);
                    for (int r = 0; r < 4; r++) {
                        A[k][r] = _mm512_dpbusd_epi32(A[k][r], wv, X[r]);
                    }
                }
            }
            for (int k = 0; k < NQ; k++) {
                const __m512 st = _mm512_set1_ps(S->step[k][b0 / TKV_I8_BLOCK]);
                for (int r = 0; r < 4; r++) {
                    float *f = fsum[k] + TKV_I8_FPOS(c, 0, r);
                    _mm512_storeu_ps(
                        f, _mm512_fmadd_ps(_mm512_cvtepi32_ps(A[k][r]), st, _mm512_loadu_ps(f)));
                }
            }
        }
    }
}
#endif

/* fsum[k][c + 32 h + 8 r + l] += the weighted sums of the span for half h of chunk c, in the
 * lane order of the interleave: register r lane l is byte 4 r + l (l < 4) or 16 + 4 r + l - 4
 * of the half. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(span_sums)(const int NQ, const uint32_t BITS, const uint32_t D, const int UNS,
                       const tkv_code_layout *L, const tkv_i8_tab *T, const tkv_i8_span *S,
                       size_t ns, const uint8_t *pf, size_t npf, float *const *fsum) {
#if TKV_I8_VNNI
    if (UNS) {
        TKV_I8_NAME(span_sums_512)(NQ, BITS, D, L, T, S, ns, pf, npf, fsum);
        return;
    }
#else
    if (BITS == 4 && UNS) {
        TKV_I8_NAME(span_sums4)(NQ, D, L, T, S, ns, pf, npf, fsum);
        return;
    }
#endif
    const uint32_t d = D ? D : L->d, po = L->payload_off;
    for (uint32_t c = 0; c < d; c += 64) {
        for (uint32_t h = 0; h < 2; h++) {
            __m256 F[TKV_MAX_QUERIES][4];
            for (int k = 0; k < NQ; k++) {
                for (int r = 0; r < 4; r++) {
                    F[k][r] = _mm256_loadu_ps(fsum[k] + TKV_I8_FPOS(c, h, r));
                }
            }
            for (size_t b0 = 0; b0 < ns; b0 += TKV_I8_BLOCK) {
                const size_t b1 = b0 + TKV_I8_BLOCK < ns ? b0 + TKV_I8_BLOCK : ns;
                __m256i A[TKV_MAX_QUERIES][4];
                for (int k = 0; k < NQ; k++) {
                    for (int r = 0; r < 4; r++) {
                        A[k][r] = _mm256_setzero_si256();
                    }
                }
                for (size_t i = b0; i < b1; i += 4) {
                    if (c == 0 && h == 0) {
                        TKV_I8_NAME(prefetch4)(pf, npf, L->stride, i);
                    }
                    const __m256i va = TKV_I8_NAME(half)(BITS, d, S->code[i] + po, c, h, T);
                    const __m256i vb = TKV_I8_NAME(half)(BITS, d, S->code[i + 1] + po, c, h, T);
                    const __m256i vc = TKV_I8_NAME(half)(BITS, d, S->code[i + 2] + po, c, h, T);
                    const __m256i vd = TKV_I8_NAME(half)(BITS, d, S->code[i + 3] + po, c, h, T);
                    __m256i X[4];
                    TKV_I8_NAME(interleave4)(va, vb, vc, vd, X);
                    if (UNS) { /* weights >= 0 are the unsigned operand, T is signed */
                        for (int k = 0; k < NQ; k++) {
                            TKV_I8_NAME(wdot4)(A[k], S->w8[k] + i, X);
                        }
                        continue;
                    }
#if !TKV_I8_VNNI
                    for (int r = 0; r < 4; r++) { /* |c| here, its sign moves to the weights */
                        const __m256i sgn = X[r];
                        X[r] = _mm256_abs_epi8(sgn);
                        for (int k = 0; k < NQ; k++) {
                            int32_t wq;
                            memcpy(&wq, S->w8[k] + i, 4);
                            const __m256i p = _mm256_maddubs_epi16(
                                X[r], _mm256_sign_epi8(_mm256_set1_epi32(wq), sgn));
                            A[k][r] = _mm256_add_epi32(A[k][r],
                                                       _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                        }
                    }
#else
                    for (int k = 0; k < NQ; k++) {
                        int32_t wq;
                        memcpy(&wq, S->w8[k] + i, 4);
                        const __m256i wv = _mm256_set1_epi32(wq);
                        for (int r = 0; r < 4; r++) {
                            A[k][r] = _mm256_dpbusd_epi32(A[k][r], X[r], wv);
                        }
                    }
#endif
                }
                for (int k = 0; k < NQ; k++) {
                    const __m256 st = _mm256_set1_ps(S->step[k][b0 / TKV_I8_BLOCK]);
                    const __m256i corr = _mm256_set1_epi32(S->corr[k][b0 / TKV_I8_BLOCK]);
                    for (int r = 0; r < 4; r++) {
                        const __m256i a = UNS ? A[k][r] : _mm256_sub_epi32(A[k][r], corr);
                        F[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), st, F[k][r]);
                    }
                }
            }
            for (int k = 0; k < NQ; k++) {
                for (int r = 0; r < 4; r++) {
                    _mm256_storeu_ps(fsum[k] + TKV_I8_FPOS(c, h, r), F[k][r]);
                }
            }
        }
    }
}

/* The unsigned-weight path (signed codebook Ts) where the span's weights allow it; one
 * function per (queries, width) as for the scores. */
#define TKV_I8_DEF_SUMS(NQ, BITS)                                                                  \
    static __attribute__((noinline)) TKV_I8_ATTR void TKV_I8_NAME(sums_##NQ##_##BITS)(             \
        const tkv_code_layout *L, const tkv_i8_tab *T, const tkv_i8_tab *Ts, const tkv_i8_span *S, \
        size_t ns, const uint8_t *pf, size_t npf, float *const *fsum) {                            \
        if (S->nonneg && (BITS) == 4 && L->d == 64) {                                              \
            TKV_I8_NAME(span_sums)(NQ, BITS, 64, 1, L, Ts, S, ns, pf, npf, fsum);                  \
        } else if (S->nonneg) {                                                                    \
            TKV_I8_NAME(span_sums)(NQ, BITS, 0, 1, L, Ts, S, ns, pf, npf, fsum);                   \
        } else {                                                                                   \
            TKV_I8_NAME(span_sums)(NQ, BITS, 0, 0, L, T, S, ns, pf, npf, fsum);                    \
        }                                                                                          \
    }
TKV_I8_FOR_EACH(TKV_I8_DEF_SUMS)

#define TKV_I8_SUMS(NQ, BITS, L, T, Ts, S, ns, pf, npf, fsum)                                      \
    TKV_I8_NAME(sums_##NQ##_##BITS)(L, T, Ts, S, ns, pf, npf, fsum)

static TKV_I8_ATTR void TKV_I8_NAME(accum_run)(const tkv_code_layout *L, const float *const *w,
                                               int nq, float threshold, const uint8_t *codes,
                                               size_t n, float *const *accs) {
    const uint32_t d = L->d;
    tkv_i8_tab T, Ts; /* the codebook as the unsigned (VNNI: + 128) / signed operand */
    TKV_I8_NAME(make_tab)(L, TKV_I8_VNNI, &T);
    TKV_I8_NAME(make_tab)(L, 0, &Ts);
    float fbuf[TKV_MAX_QUERIES][TKV_I8_MAX_D];
    float *fsum[TKV_MAX_QUERIES];
    for (int k = 0; k < nq; k++) {
        fsum[k] = fbuf[k];
        memset(fbuf[k], 0, d * sizeof(float));
    }
    tkv_i8_span S;
    for (size_t s0 = 0; s0 < n; s0 += TKV_I8_SPAN) {
        const size_t ns = n - s0 < TKV_I8_SPAN ? n - s0 : TKV_I8_SPAN;
        const float *wk[TKV_MAX_QUERIES];
        for (int k = 0; k < nq; k++) {
            wk[k] = w[k] + s0;
        }
        TKV_I8_NAME(span_weights)(L, wk, nq, threshold, codes + s0 * L->stride, ns, &S);
        /* the next span's rows are fetched while this span's sums run (span_weights reads
         * them first, in a loop with too little work to hide the misses); after the last
         * span, the rows that follow the run (the next range of positions, when attention
         * splits a head's positions; a prefetch never faults, the address is computed as an
         * integer) */
        const uint8_t *pf = (const uint8_t *)((uintptr_t)codes + (s0 + ns) * L->stride);
        const size_t npf = ns;
        TKV_I8_BITS_NQ(TKV_I8_SUMS, L->bits, nq, L, &T, &Ts, &S, ns, pf, npf, fsum);
    }
    /* back to element order, times the codebook step */
    for (int k = 0; k < nq; k++) {
        for (uint32_t c = 0; c < d; c += 64) {
            for (uint32_t h = 0; h < 2; h++) {
                for (uint32_t r = 0; r < 4; r++) {
                    for (uint32_t l = 0; l < 8; l++) {
                        const uint32_t b = l < 4 ? 4 * r + l : 16 + 4 * r + l - 4;
                        accs[k][c + TKV_I8_NAME(elem)(L->bits, h, b)] +=
                            T.step * fsum[k][TKV_I8_FPOS(c, h, r) + l];
                    }
                }
            }
        }
    }
}
