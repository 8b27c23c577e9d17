/*
 * kernels_turbo_i8_body.h - turbo attention kernels on int8 codebook values: scores against
 * int8 queries and weighted value sums with int8 weights.  The body is shared by
 * kernels_turbo_avx2.c and kernels_turbo_avx512.c, included once by each with
 *   TKV_I8_VNNI    1: dot products by vpdpbusd (AVX-512 VNNI, 256-bit forms);
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
 *   5 bits: the same, with bit 4 from the P1 plane expanded to byte masks, selecting
 *       between two 16-entry tables (vpblendvb);
 *   2 bits (P2): the chunk's 16 bytes in both 128-bit lanes, shifted per lane (vpsrlvd by
 *       0 / 2 for half 0, 4 / 6 for half 1) and masked: byte b of half h is element 32 h + b;
 *   3 bits: the same, bit 2 from the P1 plane;
 * and then one vpshufb in an int8 copy of the codebook (16 entries per register).
 *
 * Scores: each query is quantized once per call to int8 (q8 = round(q * 127 / max|q|)) and
 * stored in the halves' element order; the int8 products are summed in int32 lanes by
 * vpdpbusd (or vpmaddubsw + vpmaddwd), keys four at a time with one transposing reduction.
 * vpdpbusd multiplies unsigned by signed bytes: the scores table holds cb8 + 128 and
 * 128 sum(q8) is subtracted once per key.  vpmaddubsw takes |cb8| and sign(cb8) q8
 * (vpsignb): |products| <= 127 * 127, so a pair never saturates.
 *
 * Value sums: keys go in blocks of TKV_I8_BLOCK; per block and query the weights w_i times
 * the keys' fp16 scales are quantized to int8 on the block's largest magnitude (step =
 * max |w s| / 127), four keys' halves are interleaved byte by byte (vpunpck*bw / *wd) so
 * that an int32 lane holds one element of four keys, and the four int8 weights broadcast
 * in every lane multiply them (vpdpbusd on cb8 + 128 with the block's 128 sum(w8)
 * subtracted, or vpmaddubsw on |cb8| and sign(cb8) w8); each block's int32 sums are
 * converted and added in fp32 times its step.  Blocks of TKV_I8_SPAN keys are walked once
 * per half, so their codes are read from L1 after the first half.
 *
 * Exactness (kernels.h states the bounds the tests hold every ISA to): scores differ from
 * the fp32 score by the rounding of q and of the codebook to 8 bits; value sums by the
 * rounding of the codebook and of each weight to 8 bits (steps 1/254 of the largest |c|
 * and of the block's largest |w s|).
 *
 * Shapes: codes of 2..5 bits without QJL, d a multiple of 64 (every head_dim of the
 * supported models); other layouts go to the fp32 kernels of the same ISA.
 */

#define TKV_I8_MAX_D 1024
#define TKV_I8_BLOCK 32 /* value sums: keys per weight quantization step */
#define TKV_I8_SPAN 256 /* value sums: keys per walk of the halves (L1-resident codes) */

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
        return _mm256_blendv_epi8(v, _mm256_shuffle_epi8(T->hi, idx),
                                  TKV_I8_NAME(p1_mask)(5, pl + d / 2, c, h));
    }
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(pl + c / 4)));
    const __m256i sh =
        h ? _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6) : _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(b, sh), _mm256_set1_epi8(3));
    if (bits == 3) {
        const __m256i m = TKV_I8_NAME(p1_mask)(3, pl + (d / 64) * 16, c, h);
        idx = _mm256_or_si256(idx, _mm256_and_si256(m, _mm256_set1_epi8(4)));
    }
    return _mm256_shuffle_epi8(T->lo, idx);
}

static inline TKV_I8_ATTR float TKV_I8_NAME(h2f)(const uint8_t *p) {
    return _cvtsh_ss(tkv_kc_u16(p));
}

/* ---- scores ------------------------------------------------------------------------ */

typedef struct {
    int8_t q8[TKV_MAX_QUERIES][TKV_I8_MAX_D]; /* per chunk: half 0's 32 bytes, then half 1's */
    float mul[TKV_MAX_QUERIES];               /* q step * codebook step */
    int32_t corr[TKV_MAX_QUERIES];            /* VNNI: 128 * sum(q8); else 0 */
    tkv_i8_tab tab;
} tkv_i8_query;

/* Quantize the codebook and the nq queries. */
static TKV_I8_ATTR void TKV_I8_NAME(prepare)(const tkv_code_layout *L, const float *const *qs,
                                             int nq, tkv_i8_query *P) {
    const uint32_t d = L->d;
    TKV_I8_NAME(make_tab)(L, TKV_I8_VNNI, &P->tab);
    for (int k = 0; k < nq; k++) {
        const float *q = qs[k];
        float qmax = 0.0f;
        for (uint32_t j = 0; j < d; j++) {
            const float a = fabsf(q[j]); /* no fmaxf: it may be a libm call */
            qmax = a > qmax ? a : qmax;
        }
        const float qstep = qmax > 0.0f ? qmax / 127.0f : 1.0f, inv = 1.0f / qstep;
        int32_t sum = 0;
        for (uint32_t c = 0; c < d; c += 64) {
            for (uint32_t h = 0; h < 2; h++) {
                for (uint32_t b = 0; b < 32; b++) {
                    const int v = TKV_I8_NAME(round)(q[c + TKV_I8_NAME(elem)(L->bits, h, b)] * inv);
                    P->q8[k][c + 32 * h + b] = (int8_t)v;
                    sum += v;
                }
            }
        }
        P->mul[k] = qstep * P->tab.step;
        P->corr[k] = TKV_I8_VNNI ? 128 * sum : 0;
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

/* [sum a, sum b, sum c, sum d] of four registers of int32 lanes. */
static inline TKV_I8_ATTR __m128i TKV_I8_NAME(reduce4)(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
    const __m256i s = _mm256_hadd_epi32(ab, cd); /* per lane: a, b, c, d partial sums */
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* outs[k][i] for nq (1..4) queries; NQ and BITS are compile-time constants in each instance. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(scores_nq)(const int NQ, const uint32_t BITS, const tkv_code_layout *L,
                       const tkv_i8_query *P, const uint8_t *codes, size_t n, float *const *outs) {
    const uint32_t d = L->d, stride = L->stride, po = L->payload_off;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * stride;
        __m256i acc[TKV_MAX_QUERIES][4];
        for (int k = 0; k < NQ; k++) {
            for (int r = 0; r < 4; r++) {
                acc[k][r] = _mm256_setzero_si256();
            }
        }
        for (uint32_t c = 0; c < d; c += 64) {
            for (uint32_t h = 0; h < 2; h++) {
                for (int r = 0; r < 4; r++) {
                    const __m256i v =
                        TKV_I8_NAME(half)(BITS, d, c0 + (size_t)r * stride + po, c, h, &P->tab);
                    for (int k = 0; k < NQ; k++) {
                        acc[k][r] = TKV_I8_NAME(dot32)(acc[k][r], v, P->q8[k] + c + 32 * h);
                    }
                }
            }
        }
        const __m128i hs = _mm_setr_epi16(
            (short)tkv_kc_u16(c0 + L->scale_off), (short)tkv_kc_u16(c0 + stride + L->scale_off),
            (short)tkv_kc_u16(c0 + 2 * stride + L->scale_off),
            (short)tkv_kc_u16(c0 + 3 * stride + L->scale_off), 0, 0, 0, 0);
        const __m128 scales = _mm_cvtph_ps(hs);
        for (int k = 0; k < NQ; k++) {
            const __m128i s =
                _mm_sub_epi32(TKV_I8_NAME(reduce4)(acc[k][0], acc[k][1], acc[k][2], acc[k][3]),
                              _mm_set1_epi32(P->corr[k]));
            _mm_storeu_ps(outs[k] + i, _mm_mul_ps(_mm_mul_ps(scales, _mm_set1_ps(P->mul[k])),
                                                  _mm_cvtepi32_ps(s)));
        }
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
            const __m128i s = TKV_I8_NAME(reduce4)(acc[k], acc[k], acc[k], acc[k]);
            outs[k][i] = scale * P->mul[k] * (float)(_mm_cvtsi128_si32(s) - P->corr[k]);
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

#define TKV_I8_SCORES(NQ, BITS, L, P, codes, n, outs)                                              \
    TKV_I8_NAME(scores_nq)(NQ, BITS, L, P, codes, n, outs)

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
} tkv_i8_span;

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
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 thr = _mm256_set1_ps(threshold);
    for (int k = 0; k < nq; k++) {
        size_t b0 = 0;
        for (; b0 + TKV_I8_BLOCK <= ns; b0 += TKV_I8_BLOCK) { /* whole blocks, in vectors */
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
            _mm256_storeu_si256(
                (__m256i *)(S->w8[k] + b0),
                _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            S->step[k][b0 / TKV_I8_BLOCK] = step;
            S->corr[k][b0 / TKV_I8_BLOCK] = TKV_I8_VNNI ? 128 * TKV_I8_NAME(hsum)(s) : 0;
        }
        if (b0 < ns) { /* the span's partial last block */
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
            }
            for (size_t i = ns; i < padded; i++) {
                S->w8[k][i] = 0;
            }
            S->step[k][b0 / TKV_I8_BLOCK] = step;
            S->corr[k][b0 / TKV_I8_BLOCK] = TKV_I8_VNNI ? 128 * sum : 0;
        }
    }
}

/* fsum[k][c + 32 h + 8 r + l] += the weighted sums of the span for half h of chunk c, in the
 * lane order of the interleave: register r lane l is byte 4 r + l (l < 4) or 16 + 4 r + l - 4
 * of the half. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(span_sums)(const int NQ, const uint32_t BITS, const tkv_code_layout *L,
                       const tkv_i8_tab *T, const tkv_i8_span *S, size_t ns, float *const *fsum) {
    const uint32_t d = L->d, po = L->payload_off;
    for (uint32_t c = 0; c < d; c += 64) {
        for (uint32_t h = 0; h < 2; h++) {
            __m256 F[TKV_MAX_QUERIES][4];
            for (int k = 0; k < NQ; k++) {
                for (int r = 0; r < 4; r++) {
                    F[k][r] = _mm256_loadu_ps(fsum[k] + c + 32 * h + 8 * r);
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
                    const __m256i va = TKV_I8_NAME(half)(BITS, d, S->code[i] + po, c, h, T);
                    const __m256i vb = TKV_I8_NAME(half)(BITS, d, S->code[i + 1] + po, c, h, T);
                    const __m256i vc = TKV_I8_NAME(half)(BITS, d, S->code[i + 2] + po, c, h, T);
                    const __m256i vd = TKV_I8_NAME(half)(BITS, d, S->code[i + 3] + po, c, h, T);
                    const __m256i ab0 = _mm256_unpacklo_epi8(va, vb),
                                  ab1 = _mm256_unpackhi_epi8(va, vb);
                    const __m256i cd0 = _mm256_unpacklo_epi8(vc, vd),
                                  cd1 = _mm256_unpackhi_epi8(vc, vd);
                    __m256i X[4] = {
                        _mm256_unpacklo_epi16(ab0, cd0), _mm256_unpackhi_epi16(ab0, cd0),
                        _mm256_unpacklo_epi16(ab1, cd1), _mm256_unpackhi_epi16(ab1, cd1)};
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
                        F[k][r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(_mm256_sub_epi32(A[k][r], corr)), st, F[k][r]);
                    }
                }
            }
            for (int k = 0; k < NQ; k++) {
                for (int r = 0; r < 4; r++) {
                    _mm256_storeu_ps(fsum[k] + c + 32 * h + 8 * r, F[k][r]);
                }
            }
        }
    }
}

#define TKV_I8_SUMS(NQ, BITS, L, T, S, ns, fsum) TKV_I8_NAME(span_sums)(NQ, BITS, L, T, S, ns, fsum)

static TKV_I8_ATTR void TKV_I8_NAME(accum_run)(const tkv_code_layout *L, const float *const *w,
                                               int nq, float threshold, const uint8_t *codes,
                                               size_t n, float *const *accs) {
    const uint32_t d = L->d;
    tkv_i8_tab T;
    TKV_I8_NAME(make_tab)(L, TKV_I8_VNNI, &T);
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
        TKV_I8_BITS_NQ(TKV_I8_SUMS, L->bits, nq, L, &T, &S, ns, fsum);
    }
    /* back to element order, times the codebook step */
    for (int k = 0; k < nq; k++) {
        for (uint32_t c = 0; c < d; c += 64) {
            for (uint32_t h = 0; h < 2; h++) {
                for (uint32_t r = 0; r < 4; r++) {
                    for (uint32_t l = 0; l < 8; l++) {
                        const uint32_t b = l < 4 ? 4 * r + l : 16 + 4 * r + l - 4;
                        accs[k][c + TKV_I8_NAME(elem)(L->bits, h, b)] +=
                            T.step * fsum[k][c + 32 * h + 8 * r + l];
                    }
                }
            }
        }
    }
}
