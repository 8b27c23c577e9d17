/*
 * kernels_turbo_i8_body.h - scores of 4-bit turbo codes against int8 queries: the body
 * shared by kernels_turbo_avx2.c and kernels_turbo_avx512.c, included once by each with
 *   TKV_I8_VNNI    1: dot products by vpdpbusd (AVX-512 VNNI, 256-bit forms);
 *                  0: vpmaddubsw + vpmaddwd (AVX2)
 *   TKV_I8_ATTR    function attributes (a target("...") or nothing)
 *   TKV_I8_NAME(x) the per-ISA name of x
 *
 * Scores are the memory-bound half of attention: at 4 bits a key is 2 + d/2 bytes and
 * the fp32 kernels spend ~2 vector instructions per 16 elements on unpacking and table
 * lookups alone.  Here 64 elements cost six: one 32-byte load, two masks and a shift for
 * the nibbles, two vpshufb lookups in an int8 copy of the codebook (16 entries: one
 * register) and the int8 products summed in int32 lanes by vpdpbusd (or vpmaddubsw +
 * vpmaddwd).  Per call, each query is quantized once to int8 (q8 = round(q * 127 / max|q|))
 * and stored in the element order of the nibbles: in a P4 group of 32 (pack.h) byte k holds
 * element k in its low nibble and k + 16 in its high one, so the 32 bytes of elements
 * [64c, 64c + 64) give, masked, elements 64c + {0..15, 32..47} and, shifted, the other 32.
 *
 * Exactness: the result differs from the fp32 score by the rounding of q and of the
 * codebook to 8 bits (relative steps 1/254 of the largest |q| and |centroid|); the tests
 * bound it and compare it with the codec's own error (test_kernels_codec.c).
 *
 * vpdpbusd multiplies unsigned by signed bytes: the codebook table holds cb8 + 128 and the
 * constant 128 * sum(q8) is subtracted once per key.  vpmaddubsw (unsigned x signed, pairs
 * summed with int16 saturation) takes |cb8| and sign(cb8) * q8 (vpsignb): |products| <=
 * 127 * 127, so a pair never saturates.
 *
 * Shapes: 4-bit codes without QJL, d a multiple of 64 (every head_dim of the supported
 * models); other layouts go to the fp32 kernels of the same ISA.  Keys go four at a time,
 * with one transposing reduction (vphaddd) for the four.
 */

#define TKV_I8_MAX_D 1024

/* Round to nearest, halves away from zero (lrintf is a libm call in this build: it showed
 * in the decode profile, as fmaxf did). */
static inline int TKV_I8_NAME(round)(float x) {
    return (int)(x + (x >= 0.0f ? 0.5f : -0.5f));
}

typedef struct {
    int8_t lo[TKV_MAX_QUERIES][TKV_I8_MAX_D / 2]; /* q8 of the low-nibble elements */
    int8_t hi[TKV_MAX_QUERIES][TKV_I8_MAX_D / 2]; /* q8 of the high-nibble elements */
    float mul[TKV_MAX_QUERIES];                   /* q step * codebook step */
    int32_t corr[TKV_MAX_QUERIES];                /* VNNI: 128 * sum(q8); else 0 */
    __m256i tab;                                  /* the int8 codebook in both 128-bit lanes */
} tkv_i8_query;

/* Quantize the codebook and the nq queries. */
static TKV_I8_ATTR void TKV_I8_NAME(prepare)(const tkv_code_layout *L, const float *const *qs,
                                             int nq, tkv_i8_query *P) {
    const uint32_t d = L->d;
    float cmax = 0.0f;
    for (int i = 0; i < 16; i++) {
        const float a = fabsf(L->centroids[i]);
        cmax = a > cmax ? a : cmax;
    }
    const float cstep = cmax > 0.0f ? cmax / 127.0f : 1.0f;
    uint8_t tab[16]; /* VNNI: cb8 + 128 (unsigned); else cb8 (two's complement) */
    for (int i = 0; i < 16; i++) {
        const int v = TKV_I8_NAME(round)(L->centroids[i] / cstep);
        tab[i] = (uint8_t)(TKV_I8_VNNI ? v + 128 : v & 255);
    }
    P->tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tab));
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
            for (uint32_t b = 0; b < 32; b++) { /* byte b of the chunk at element c */
                const uint32_t e = c + (b / 16) * 32 + b % 16;
                const int lo = TKV_I8_NAME(round)(q[e] * inv),
                          hi = TKV_I8_NAME(round)(q[e + 16] * inv);
                P->lo[k][c / 2 + b] = (int8_t)lo;
                P->hi[k][c / 2 + b] = (int8_t)hi;
                sum += lo + hi;
            }
        }
        P->mul[k] = qstep * cstep;
        P->corr[k] = TKV_I8_VNNI ? 128 * sum : 0;
    }
}

/* acc += the products of the 64 elements in the 32 code bytes b with the query's chunk. */
static inline TKV_I8_ATTR __m256i TKV_I8_NAME(dot64)(__m256i acc, __m256i vlo, __m256i vhi,
                                                     const int8_t *qlo, const int8_t *qhi) {
    const __m256i ql = _mm256_loadu_si256((const __m256i *)qlo);
    const __m256i qh = _mm256_loadu_si256((const __m256i *)qhi);
#if TKV_I8_VNNI
    acc = _mm256_dpbusd_epi32(acc, vlo, ql);
    return _mm256_dpbusd_epi32(acc, vhi, qh);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i pl = _mm256_maddubs_epi16(_mm256_abs_epi8(vlo), _mm256_sign_epi8(ql, vlo));
    const __m256i ph = _mm256_maddubs_epi16(_mm256_abs_epi8(vhi), _mm256_sign_epi8(qh, vhi));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16(pl, ph), ones));
#endif
}

/* The looked-up int8 codebook values of the low and high nibbles of 32 code bytes. */
static inline TKV_I8_ATTR void TKV_I8_NAME(lookup)(const uint8_t *p, __m256i tab, __m256i *vlo,
                                                   __m256i *vhi) {
    const __m256i m = _mm256_set1_epi8(15);
    const __m256i b = _mm256_loadu_si256((const __m256i *)p);
    *vlo = _mm256_shuffle_epi8(tab, _mm256_and_si256(b, m));
    *vhi = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(b, 4), m));
}

/* [sum a, sum b, sum c, sum d] of four registers of int32 lanes. */
static inline TKV_I8_ATTR __m128i TKV_I8_NAME(reduce4)(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
    const __m256i s = _mm256_hadd_epi32(ab, cd); /* per lane: a, b, c, d partial sums */
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

static inline TKV_I8_ATTR float TKV_I8_NAME(h2f)(const uint8_t *p) {
    return _cvtsh_ss(tkv_kc_u16(p));
}

/* outs[k][i] for nq (1..4) queries; NQ is a compile-time constant in each instance. */
static inline __attribute__((always_inline)) TKV_I8_ATTR void
TKV_I8_NAME(scores_nq)(const int NQ, const tkv_code_layout *L, const tkv_i8_query *P,
                       const uint8_t *codes, size_t n, float *const *outs) {
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
            for (int r = 0; r < 4; r++) {
                __m256i vlo, vhi;
                TKV_I8_NAME(lookup)(c0 + (size_t)r * stride + po + c / 2, P->tab, &vlo, &vhi);
                for (int k = 0; k < NQ; k++) {
                    acc[k][r] =
                        TKV_I8_NAME(dot64)(acc[k][r], vlo, vhi, P->lo[k] + c / 2, P->hi[k] + c / 2);
                }
            }
        }
        const __m128i h = _mm_setr_epi16(
            (short)tkv_kc_u16(c0 + L->scale_off), (short)tkv_kc_u16(c0 + stride + L->scale_off),
            (short)tkv_kc_u16(c0 + 2 * stride + L->scale_off),
            (short)tkv_kc_u16(c0 + 3 * stride + L->scale_off), 0, 0, 0, 0);
        const __m128 scales = _mm_cvtph_ps(h);
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
            __m256i vlo, vhi;
            TKV_I8_NAME(lookup)(code + po + c / 2, P->tab, &vlo, &vhi);
            for (int k = 0; k < NQ; k++) {
                acc[k] = TKV_I8_NAME(dot64)(acc[k], vlo, vhi, P->lo[k] + c / 2, P->hi[k] + c / 2);
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
    return L->bits == 4 && !L->has_qjl && L->d % 64 == 0 && L->d <= TKV_I8_MAX_D;
}

static TKV_I8_ATTR void TKV_I8_NAME(run)(const tkv_code_layout *L, const float *const *qs, int nq,
                                         const uint8_t *codes, size_t n, float *const *outs) {
    tkv_i8_query P;
    TKV_I8_NAME(prepare)(L, qs, nq, &P);
    switch (nq) {
    case 1:
        TKV_I8_NAME(scores_nq)(1, L, &P, codes, n, outs);
        break;
    case 2:
        TKV_I8_NAME(scores_nq)(2, L, &P, codes, n, outs);
        break;
    case 3:
        TKV_I8_NAME(scores_nq)(3, L, &P, codes, n, outs);
        break;
    default:
        TKV_I8_NAME(scores_nq)(4, L, &P, codes, n, outs);
        break;
    }
}
