/*
 * kernels_trellis_avx512vbmi.c - AVX-512 VBMI score / accumulate kernels of the trellis
 * codecs (the avx512 table uses them when the CPU has VBMI, kernels_trellis_avx512.c).
 *
 * A key is decoded 64 coordinates per register, as int8 table entries (trellis.h: q8):
 *   1. the bytes of the stream the 64 windows read (byte 0 of the first block is the
 *      stream's last byte: tail-biting) are spread so that qword k holds the 8 bytes of
 *      coordinates 8k..8k+7 (vpermb: byte 8k + i = stream byte N k + i - 1);
 *   2. vpmultishiftqb takes bits [8 - P + N l, +8) of qword k into byte l: the low 8 bits
 *      of window 8k + l (a second one, one bit further, gives bit 8 of a 9-bit window);
 *   3. vpermi2b reads 128 int8 entries by the low 7 bits; bit 7 (and 8) pick the 128-entry
 *      part, each lane looked up by a masked vpermi2b of its part: 2 permutes for 256
 *      entries, 4 for 512.
 * Scores multiply the bytes (as v + 128) with a fixed-point query by vpdpbusd; weighted
 * sums multiply four rows' bytes at once with their fixed-point weights by vpdpbusd (both
 * exact int32 sums, below).  Values are exact (q8 * scale = the float table); the
 * fixed-point roundings of query and weights (16 bits, TKV_VBMI_DIGITS) are below the fp16
 * rounding of each code's scale (kernels.h states the bound the tests hold them to).
 * Several keys per pass: independent chains, one transposed reduction for four scores.
 * Tested against kernels_scalar.c (tests/c/test_kernels_codec.c).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/half.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"

#define TKV_VBMI_MAX_D 1024
#define TKV_INLINE static inline __attribute__((always_inline))

typedef struct tkv_vbmi_ctx {
    __m512i tab[8];   /* q8 entries, 64 per register (4 or 8 registers) */
    __m512i spread;   /* vpermb index of step 1 */
    __m512i spread0;  /* the same for block 0 loaded from the stream's first byte, when the
                       * stream fits in one register: byte -1 is the stream's last byte */
    __m512i ctl;      /* vpmultishiftqb control of step 2 */
    __mmask64 m0;     /* the bytes block 0 loads (with spread0) */
    uint32_t nb;      /* stream bytes */
    uint32_t nblk;    /* 64-coordinate blocks (the last one may be partial) */
} tkv_vbmi_ctx;

/* bias: the entries as unsigned bytes v + 128 (for vpdpbusd), else int8 v */
TKV_INLINE void tkv_vbmi_init(tkv_vbmi_ctx *c, const tkv_code_layout *Lay, const int bias,
                              const uint32_t N, const uint32_t P) {
    const uint32_t L = N + P;
    for (uint32_t r = 0; r < (1u << L) / 64; r++) {
        c->tab[r] = _mm512_loadu_si512(Lay->trellis->q8 + 64 * r);
        if (bias) { /* v + 128 = v ^ 0x80 for v in -127..127 */
            c->tab[r] = _mm512_xor_si512(c->tab[r], _mm512_set1_epi8((char)0x80));
        }
    }
    c->nb = Lay->d * N / 8;
    c->nblk = (Lay->d + 63) / 64;
    uint8_t sp[64], sp0[64], ct[64];
    for (uint32_t k = 0; k < 8; k++) {
        for (uint32_t i = 0; i < 8; i++) {
            sp[8 * k + i] = (uint8_t)(N * k + i);
            sp0[8 * k + i] = (uint8_t)(N * k + i == 0 ? c->nb - 1 : N * k + i - 1);
            ct[8 * k + i] = (uint8_t)(8 - P + N * i);
        }
    }
    c->spread = _mm512_loadu_si512(sp);
    c->spread0 = _mm512_loadu_si512(sp0);
    c->ctl = _mm512_loadu_si512(ct);
    c->m0 = c->nb >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << c->nb) - 1;
}

/* The 64 int8 values of block b of the stream s (coordinates 64 b ..). */
TKV_INLINE __m512i tkv_vbmi_block(const tkv_vbmi_ctx *c, const uint8_t *s, uint32_t b,
                                  const uint32_t N, const uint32_t P) {
    const uint32_t L = N + P;
    __m512i v;
    if (b == 0 && c->nb <= 64) { /* the whole stream, its last byte read by spread0 */
        v = _mm512_permutexvar_epi8(c->spread0, _mm512_maskz_loadu_epi8(c->m0, s));
    } else {
        /* from the byte before the block (s[-1] is the fp16 scale: readable) to the end */
        const uint32_t off = 8 * N * b, avail = c->nb + 1 - off;
        const __mmask64 m = avail >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << avail) - 1;
        v = _mm512_maskz_loadu_epi8(m, s - 1 + off);
        if (b == 0) {
            v = _mm512_mask_set1_epi8(v, 1, (char)s[c->nb - 1]);
        }
        v = _mm512_permutexvar_epi8(c->spread, v);
    }
    const __m512i lo = _mm512_multishift_epi64_epi8(c->ctl, v);
    /* 128 entries per vpermi2b, which keeps its index where the mask is clear: the lanes of
     * each 128-entry part are looked up in turn and the others carry their index on to the
     * next part (no blends) */
    const __mmask64 m7 = _mm512_movepi8_mask(lo);
    if (L == 8) {
        const __m512i r = _mm512_mask2_permutex2var_epi8(c->tab[0], lo, ~m7, c->tab[1]);
        return _mm512_mask2_permutex2var_epi8(c->tab[2], r, m7, c->tab[3]);
    }
    const __m512i hi =
        _mm512_multishift_epi64_epi8(_mm512_add_epi8(c->ctl, _mm512_set1_epi8(1)), v);
    const __mmask64 m8 = _mm512_movepi8_mask(hi);
    __m512i r = _mm512_mask2_permutex2var_epi8(c->tab[0], lo, ~(m7 | m8), c->tab[1]);
    r = _mm512_mask2_permutex2var_epi8(c->tab[2], r, m7 & ~m8, c->tab[3]);
    r = _mm512_mask2_permutex2var_epi8(c->tab[4], r, ~m7 & m8, c->tab[5]);
    return _mm512_mask2_permutex2var_epi8(c->tab[6], r, m7 & m8, c->tab[7]);
}

/* The sum of each of four registers, as one register of four. */
TKV_INLINE __m128 tkv_vbmi_reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/*
 * Fixed point for vpdpbusd: a value x ~ X / F with X = round(F x) an integer written as
 * D signed base-256 digits, X = d0 + 256 d1 + ..., each -128..127 (the top one |.| <= 127:
 * F = TKV_VBMI_FULL / max|x|, |X| <= 127 256^(D-1)).  The rounding, |error| <= max|x| /
 * (254 256^(D-1)), is TKV_VBMI_DIGITS' choice: two digits put it below the rounding of the
 * fp16 scale every code already carries (2^-11 relative), at two thirds of three digits'
 * vpdpbusd work (kernels.h states the bound the tests hold it to).
 */
#define TKV_VBMI_DIGITS 2
#define TKV_VBMI_FULL ((float)TKV_TRELLIS_FIXED_FULL) /* 127 * 256^(D-1), the bound's */

/*
 * A query for vpdpbusd: its fixed-point digits (above).  A key's bytes are v + 128
 * (unsigned), so each digit's dot product starts from -128 sum_j d_p[j] per lane (bias)
 * and ends as sum_j v_j d_p[j], exact in int32.
 */
typedef struct tkv_vbmi_query {
    _Alignas(64) int8_t dig[TKV_VBMI_DIGITS][TKV_VBMI_MAX_D];
    __m512i bias[TKV_VBMI_DIGITS];
    float inv; /* 1 / F */
} tkv_vbmi_query;

static void tkv_vbmi_query_init(const float *q, uint32_t d, uint32_t nblk, tkv_vbmi_query *z) {
    float m = 0.0f;
    for (uint32_t j = 0; j < d; j++) {
        m = fabsf(q[j]) > m ? fabsf(q[j]) : m;
    }
    const float F = m > 0.0f ? TKV_VBMI_FULL / m : 0.0f;
    z->inv = m > 0.0f ? m / TKV_VBMI_FULL : 0.0f;
    int32_t bias[TKV_VBMI_DIGITS][16] = {{0}};
    for (uint32_t j = 0; j < 64 * nblk; j++) {
        int32_t Q = j < d ? (int32_t)lrintf(q[j] * F) : 0;
        for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
            const int32_t dp = p == TKV_VBMI_DIGITS - 1 ? Q : ((Q + 128) & 255) - 128;
            z->dig[p][j] = (int8_t)dp;
            bias[p][(j % 64) / 4] -= 128 * dp;
            Q = (Q - dp) / 256; /* exact */
        }
    }
    for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
        z->bias[p] = _mm512_loadu_si512(bias[p]);
    }
}

/* The float value of the D int32 digit sums a0 + 256 a1 of one register.  Combined as
 * integers (exact: a lane sums at most 64 products |v d| <= 127 * 32512, below 2^31), so
 * one conversion per register: the conversions and FMAs share the two FMA pipes with
 * vpdpbusd (Zen 4), the integer shift and add do not. */
_Static_assert(TKV_VBMI_DIGITS == 2 && (int)TKV_TRELLIS_FIXED_FULL == 127 * 256,
               "two digits: TKV_TRELLIS_FIXED_FULL (kernels.h) states their bound");
TKV_INLINE __m512 tkv_vbmi_digits_f(const __m512i *a) {
    return _mm512_cvtepi32_ps(_mm512_add_epi32(a[0], _mm512_slli_epi32(a[1], 8)));
}

/* Scores of nk (1, 2 or 4) keys for NQ queries. */
TKV_INLINE void tkv_vbmi_scores_keys(const tkv_vbmi_ctx *c, const tkv_code_layout *Lay,
                                     const uint8_t *codes, size_t i0, const tkv_vbmi_query *qz,
                                     float *const *outs, const int nk, const int NQ,
                                     const uint32_t N, const uint32_t P) {
    __m512i acc[TKV_MAX_QUERIES][4][TKV_VBMI_DIGITS];
    const uint8_t *code[4];
    for (int k = 0; k < nk; k++) {
        code[k] = codes + (i0 + (size_t)k) * Lay->stride;
        for (int q = 0; q < NQ; q++) {
            for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                acc[q][k][p] = qz[q].bias[p];
            }
        }
    }
    for (uint32_t b = 0; b < c->nblk; b++) {
        __m512i x[4];
        for (int k = 0; k < nk; k++) {
            x[k] = tkv_vbmi_block(c, code[k] + Lay->payload_off, b, N, P);
        }
        for (int q = 0; q < NQ; q++) {
            for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                const __m512i dv = _mm512_load_si512(qz[q].dig[p] + 64 * b);
                for (int k = 0; k < nk; k++) {
                    acc[q][k][p] = _mm512_dpbusd_epi32(acc[q][k][p], x[k], dv);
                }
            }
        }
    }
    /* the keys' scales times the table step, four lanes (unused lanes 0) */
    const uint32_t so = Lay->scale_off;
    const __m128i hs = _mm_setr_epi16((short)tkv_kc_u16(code[0] + so),
                                      nk > 1 ? (short)tkv_kc_u16(code[1] + so) : 0,
                                      nk > 2 ? (short)tkv_kc_u16(code[2] + so) : 0,
                                      nk > 3 ? (short)tkv_kc_u16(code[3] + so) : 0, 0, 0, 0, 0);
    const __m128 sc = _mm_mul_ps(_mm_cvtph_ps(hs), _mm_set1_ps(Lay->trellis->q8_scale));
    __m512 f[TKV_MAX_QUERIES][4];
    for (int q = 0; q < NQ; q++) {
        for (int k = 0; k < nk; k++) {
            f[q][k] = tkv_vbmi_digits_f(acc[q][k]);
        }
    }
    /* the NQ nk sums through transposed reductions of four, stored as vectors */
    if (nk == 4) {
        for (int q = 0; q < NQ; q++) {
            const __m128 r = tkv_vbmi_reduce4(f[q][0], f[q][1], f[q][2], f[q][3]);
            _mm_storeu_ps(outs[q] + i0, _mm_mul_ps(r, _mm_mul_ps(sc, _mm_set1_ps(qz[q].inv))));
        }
    } else if (nk == 2) { /* two queries per reduction: lanes q k0, q k1, q' k0, q' k1 */
        const __m128 sc2 = _mm_movelh_ps(sc, sc);
        for (int q = 0; q < NQ; q += 2) {
            const int q2 = q + 1 < NQ ? q + 1 : q;
            const __m128 r = tkv_vbmi_reduce4(f[q][0], f[q][1], f[q2][0], f[q2][1]);
            const __m128 inv = _mm_setr_ps(qz[q].inv, qz[q].inv, qz[q2].inv, qz[q2].inv);
            const __m128 v = _mm_mul_ps(r, _mm_mul_ps(sc2, inv));
            _mm_storel_pi((__m64 *)(void *)(outs[q] + i0), v);
            _mm_storeh_pi((__m64 *)(void *)(outs[q2] + i0), v);
        }
    } else {
        for (int q = 0; q < NQ; q++) {
            const __m128 r = tkv_vbmi_reduce4(f[q][0], f[q][0], f[q][0], f[q][0]);
            outs[q][i0] = _mm_cvtss_f32(_mm_mul_ps(r, _mm_mul_ps(sc, _mm_set1_ps(qz[q].inv))));
        }
    }
}

TKV_INLINE void tkv_vbmi_scores_n(const tkv_code_layout *Lay, const float *const *qs,
                                  const uint8_t *codes, size_t n, float *const *outs,
                                  const int NQ, const uint32_t N, const uint32_t P) {
    tkv_vbmi_ctx c;
    tkv_vbmi_init(&c, Lay, 1, N, P);
    tkv_vbmi_query qz[TKV_MAX_QUERIES];
    for (int q = 0; q < NQ; q++) {
        tkv_vbmi_query_init(qs[q], Lay->d, c.nblk, &qz[q]);
    }
    /* keys per pass: four, one decode each, NQ reductions of four sums */
    const int NK = 4;
    size_t i = 0;
    for (; i + (size_t)NK <= n; i += (size_t)NK) {
        tkv_vbmi_scores_keys(&c, Lay, codes, i, qz, outs, NK, NQ, N, P);
    }
    for (; i < n; i++) {
        tkv_vbmi_scores_keys(&c, Lay, codes, i, qz, outs, 1, NQ, N, P);
    }
}

/*
 * Weighted sums by integer dot products.  Rows are taken in chunks of up to
 * TKV_VBMI_CHUNK (rows some query needs, four at a time).  In a chunk, query q's weights
 * times the rows' scales are rounded to fixed point against the chunk's largest (F =
 * TKV_VBMI_FULL / max |w|, as the query of the scores) and split into TKV_VBMI_DIGITS
 * signed base-256 digits.  Four rows' biased bytes (v + 128) are interleaved so that dword lane j
 * holds coordinate j of the four rows; vpdpbusd with a dword of the four rows' digits adds sum_k
 * (v_kj + 128) digit_k to an int32 lane, which starts at -128 times the digit sum of the chunk, so
 * each lane ends exact: sum_k v_kj digit_k (|.| < 2^31 for 4 * 64 rows).  At the end of a chunk the
 * digits' int32 sums become floats (d0 + 256 d1 + ...) / F.  The weights' rounding, |error| <=
 * max|w| / (254 256^(D-1)) per row of the chunk, is below the fp16 rounding of the rows' scales
 * (kernels.h states the bound).
 */
#define TKV_VBMI_CHUNK 256

/* The 4 x 64 bytes of four rows as four registers of dwords: register r, lane 4 l + i
 * holds coordinate 16 l + 4 r + i of rows 0..3 in bytes 0..3 (vpunpck* work per 128-bit
 * lane). */
TKV_INLINE void tkv_vbmi_transpose4(const __m512i x[4], __m512i o[4]) {
    const __m512i t0 = _mm512_unpacklo_epi8(x[0], x[1]), t1 = _mm512_unpackhi_epi8(x[0], x[1]);
    const __m512i t2 = _mm512_unpacklo_epi8(x[2], x[3]), t3 = _mm512_unpackhi_epi8(x[2], x[3]);
    o[0] = _mm512_unpacklo_epi16(t0, t2);
    o[1] = _mm512_unpackhi_epi16(t0, t2);
    o[2] = _mm512_unpacklo_epi16(t1, t3);
    o[3] = _mm512_unpackhi_epi16(t1, t3);
}

/* The integer sums of one chunk for block b: accf[q] (64 floats, in transposed order)
 * += the chunk's rows weighted by their digits (dig[q][p][g]: the digits p of rows
 * 4 g .. 4 g + 3, one byte each).  With more than two queries the rows' bytes are decoded
 * and interleaved once into tb (L1-resident), then each query's 12 accumulators stay in
 * registers. */
TKV_INLINE void tkv_vbmi_sum_block(const tkv_vbmi_ctx *c, const tkv_code_layout *Lay,
                                   const uint8_t *const *code, int ng,
                                   const int32_t (*dig)[TKV_VBMI_DIGITS][TKV_VBMI_CHUNK / 4],
                                   const int32_t (*bias)[TKV_VBMI_DIGITS],
                                   const float (*unit)[TKV_VBMI_DIGITS], uint32_t b,
                                   __m512i (*tb)[4], float (*accf)[TKV_VBMI_MAX_D], const int NQ,
                                   const uint32_t N, const uint32_t P) {
    if (NQ <= 2) { /* 12 NQ accumulators fit in registers next to the rows' bytes */
        __m512i acc[2][TKV_VBMI_DIGITS][4];
        for (int q = 0; q < NQ; q++) {
            for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                for (int r = 0; r < 4; r++) {
                    acc[q][p][r] = _mm512_set1_epi32(bias[q][p]);
                }
            }
        }
        for (int g = 0; g < ng; g++) {
            __m512i x[4], t[4];
            for (int k = 0; k < 4; k++) {
                x[k] = tkv_vbmi_block(c, code[4 * g + k] + Lay->payload_off, b, N, P);
            }
            tkv_vbmi_transpose4(x, t);
            for (int q = 0; q < NQ; q++) {
                for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                    const __m512i dv = _mm512_set1_epi32(dig[q][p][g]);
                    for (int r = 0; r < 4; r++) {
                        acc[q][p][r] = _mm512_dpbusd_epi32(acc[q][p][r], t[r], dv);
                    }
                }
            }
        }
        for (int q = 0; q < NQ; q++) {
            for (int r = 0; r < 4; r++) {
                float *dst = accf[q] + 64 * b + 16 * r;
                __m512 s = _mm512_load_ps(dst);
                for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                    s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[q][p][r]),
                                        _mm512_set1_ps(unit[q][p]), s);
                }
                _mm512_store_ps(dst, s);
            }
        }
        return;
    }
    for (int g = 0; g < ng; g++) {
        __m512i x[4];
        for (int k = 0; k < 4; k++) {
            x[k] = tkv_vbmi_block(c, code[4 * g + k] + Lay->payload_off, b, N, P);
        }
        tkv_vbmi_transpose4(x, tb[g]);
    }
    for (int q = 0; q < NQ; q++) {
        __m512i acc[TKV_VBMI_DIGITS][4];
        for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
            for (int r = 0; r < 4; r++) {
                acc[p][r] = _mm512_set1_epi32(bias[q][p]);
            }
        }
        for (int g = 0; g < ng; g++) {
            for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                const __m512i dv = _mm512_set1_epi32(dig[q][p][g]);
                for (int r = 0; r < 4; r++) {
                    acc[p][r] = _mm512_dpbusd_epi32(acc[p][r], tb[g][r], dv);
                }
            }
        }
        for (int r = 0; r < 4; r++) {
            float *dst = accf[q] + 64 * b + 16 * r;
            __m512 s = _mm512_load_ps(dst);
            for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p][r]), _mm512_set1_ps(unit[q][p]), s);
            }
            _mm512_store_ps(dst, s);
        }
    }
}

/* The digits of one chunk of m rows (code; wr[q]: weight times scale, padded with zeros
 * to a multiple of 16) and the rows' blocks summed into accf. */
TKV_INLINE void tkv_vbmi_sum_chunk(const tkv_vbmi_ctx *c, const tkv_code_layout *Lay,
                                   const uint8_t **code, float (*wr)[TKV_VBMI_CHUNK], int m,
                                   float (*accf)[TKV_VBMI_MAX_D], const int NQ, const uint32_t N,
                                   const uint32_t P) {
    _Alignas(64) int32_t dig[TKV_MAX_QUERIES][TKV_VBMI_DIGITS][TKV_VBMI_CHUNK / 4];
    int32_t bias[TKV_MAX_QUERIES][TKV_VBMI_DIGITS];
    float unit[TKV_MAX_QUERIES][TKV_VBMI_DIGITS];
    const int m16 = (m + 15) & ~15;
    for (int i = m; i < m16; i++) { /* pad with weight-0 copies of a row */
        code[i] = code[0];
        for (int q = 0; q < NQ; q++) {
            wr[q][i] = 0.0f;
        }
    }
    const __m512i c128 = _mm512_set1_epi32(128), c255 = _mm512_set1_epi32(255);
    for (int q = 0; q < NQ; q++) {
        __m512 mv = _mm512_setzero_ps();
        for (int i = 0; i < m16; i += 16) {
            mv = _mm512_max_ps(mv, _mm512_abs_ps(_mm512_loadu_ps(wr[q] + i)));
        }
        const float mx = _mm512_reduce_max_ps(mv);
        const __m512 F = _mm512_set1_ps(mx > 0.0f ? TKV_VBMI_FULL / mx : 0.0f);
        __m512i sum[TKV_VBMI_DIGITS];
        for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
            sum[p] = _mm512_setzero_si512();
        }
        for (int i = 0; i < m16; i += 16) {
            /* round to nearest (MXCSR default), then digits in -128..127 */
            __m512i Q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wr[q] + i), F));
            for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
                const __m512i dp =
                    p == TKV_VBMI_DIGITS - 1
                        ? Q
                        : _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(Q, c128), c255), c128);
                sum[p] = _mm512_add_epi32(sum[p], dp);
                _mm_store_si128((__m128i *)(dig[q][p] + i / 4), _mm512_cvtepi32_epi8(dp));
                Q = _mm512_srai_epi32(_mm512_sub_epi32(Q, dp), 8); /* exact */
            }
        }
        const float inv = mx > 0.0f ? mx / TKV_VBMI_FULL : 0.0f;
        for (int p = 0; p < TKV_VBMI_DIGITS; p++) {
            /* in uint32: NaN weights convert to INT_MIN and their digit sums overflow the
             * product (garbage in, garbage out, but no undefined behaviour) */
            bias[q][p] = (int32_t)(0u - 128u * (uint32_t)_mm512_reduce_add_epi32(sum[p]));
            unit[q][p] = inv * (p == 0 ? 1.0f : p == 1 ? 256.0f : 65536.0f);
        }
    }
    __m512i tb[TKV_VBMI_CHUNK / 4][4];
    for (uint32_t b = 0; b < c->nblk; b++) {
        tkv_vbmi_sum_block(c, Lay, code, m16 / 4,
                           (const int32_t(*)[TKV_VBMI_DIGITS][TKV_VBMI_CHUNK / 4]) dig,
                           (const int32_t(*)[TKV_VBMI_DIGITS])bias,
                           (const float(*)[TKV_VBMI_DIGITS])unit, b, tb, accf, NQ, N, P);
    }
}

TKV_INLINE void tkv_vbmi_accum_n(const tkv_code_layout *Lay, const float *const *ws,
                                 float threshold, const uint8_t *codes, size_t n,
                                 float *const *accs, const int NQ, const uint32_t N,
                                 const uint32_t P) {
    tkv_vbmi_ctx c;
    tkv_vbmi_init(&c, Lay, 1, N, P);
    _Alignas(64) float accf[TKV_MAX_QUERIES][TKV_VBMI_MAX_D];
    const uint32_t dp = 64 * c.nblk, d = Lay->d;
    for (int q = 0; q < NQ; q++) {
        memset(accf[q], 0, dp * sizeof(float));
    }
    /* the rows some query needs, 16 at a time: their scales by one gather, the kept
     * rows' pointers and weights appended to the chunk by compresses (a scalar loop over
     * rows cost as much as the sums at head_dim 64) */
    const __m512 ts = _mm512_set1_ps(Lay->trellis->q8_scale), thr = _mm512_set1_ps(threshold);
    const __m512i lstride =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)Lay->stride));
    const __m512i lstride0 = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(lstride));
    const __m512i lstride1 = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(lstride, 1));
    const uint8_t *code[TKV_VBMI_CHUNK];
    _Alignas(64) float wr[TKV_MAX_QUERIES][TKV_VBMI_CHUNK];
    int m = 0;
    for (size_t i0 = 0; i0 < n; i0 += 16) {
        const size_t left = n - i0;
        const __mmask16 live = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        __m512 wv[TKV_MAX_QUERIES];
        __mmask16 kq[TKV_MAX_QUERIES], need = 0;
        for (int q = 0; q < NQ; q++) { /* |w| >= threshold (false for NaN, as in scalar) */
            wv[q] = _mm512_maskz_loadu_ps(live, ws[q] + i0);
            kq[q] = _mm512_mask_cmp_ps_mask(live, _mm512_abs_ps(wv[q]), thr, _CMP_GE_OQ);
            need |= kq[q];
        }
        if (!need) {
            continue;
        }
        const uint8_t *base = codes + i0 * Lay->stride;
        /* 4 bytes from each kept row's scale: the scale and 2 stream bytes */
        const __m512i h = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), need, lstride,
                                                      base + Lay->scale_off, 1);
        const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)), ts);
        for (int q = 0; q < NQ; q++) {
            _mm512_storeu_ps(wr[q] + m,
                             _mm512_maskz_compress_ps(need, _mm512_maskz_mul_ps(kq[q], wv[q], sc)));
        }
        const __m512i pb = _mm512_set1_epi64((long long)(uintptr_t)base);
        const __mmask8 n0 = (__mmask8)need, n1 = (__mmask8)(need >> 8);
        _mm512_storeu_si512((void *)(code + m),
                            _mm512_maskz_compress_epi64(n0, _mm512_add_epi64(pb, lstride0)));
        _mm512_storeu_si512((void *)(code + m + __builtin_popcount(n0)),
                            _mm512_maskz_compress_epi64(n1, _mm512_add_epi64(pb, lstride1)));
        m += __builtin_popcount(need);
        if (m > TKV_VBMI_CHUNK - 16) { /* the next 16 must fit */
            tkv_vbmi_sum_chunk(&c, Lay, code, wr, m, accf, NQ, N, P);
            m = 0;
        }
    }
    if (m > 0) {
        tkv_vbmi_sum_chunk(&c, Lay, code, wr, m, accf, NQ, N, P);
    }
    /* undo the transposed order: float 64 b + 16 r + 4 l + i is coordinate 64 b + 16 l +
     * 4 r + i */
    for (int q = 0; q < NQ; q++) {
        for (uint32_t j = 0; j < d; j++) {
            const uint32_t b = j / 64, l = (j % 64) / 16, r = (j % 16) / 4, i = j % 4;
            accs[q][j] += accf[q][64 * b + 16 * r + 4 * l + i];
        }
    }
}

/* CALL(N, P) for the codec's width, literal. */
#define TKV_VBMI_WIDTHS(t, CALL)                                                                   \
    do {                                                                                           \
        switch ((t)->bits) {                                                                       \
        case 2: CALL(2, 2 * (TKV_TRELLIS_WINDOW_2 - 1)); break;                                    \
        case 3: CALL(3, 3 * (TKV_TRELLIS_WINDOW_3 - 1)); break;                                    \
        default: CALL(4, 4 * (TKV_TRELLIS_WINDOW_4 - 1)); break;                                   \
        }                                                                                          \
    } while (0)

#define TKV_VBMI_NQ(nq, CALL)                                                                      \
    do {                                                                                           \
        switch (nq) {                                                                              \
        case 1: CALL(1); break;                                                                    \
        case 2: CALL(2); break;                                                                    \
        case 3: CALL(3); break;                                                                    \
        default: CALL(4); break;                                                                   \
        }                                                                                          \
    } while (0)

void tkv_scores_trellis_multi_avx512vbmi(const tkv_code_layout *L, const float *const *qs, int nq,
                                         const uint8_t *codes, size_t n, float *const *outs) {
#define TKV_S(N, P) tkv_vbmi_scores_n(L, qs, codes, n, outs, NQ_, N, P)
#define TKV_SQ(q)                                                                                  \
    do {                                                                                           \
        const int NQ_ = q;                                                                         \
        TKV_VBMI_WIDTHS(L->trellis, TKV_S);                                                        \
    } while (0)
    TKV_VBMI_NQ(nq, TKV_SQ);
#undef TKV_SQ
#undef TKV_S
}

void tkv_accum_trellis_multi_avx512vbmi(const tkv_code_layout *L, const float *const *ws, int nq,
                                        float threshold, const uint8_t *codes, size_t n,
                                        float *const *accs) {
#define TKV_A(N, P) tkv_vbmi_accum_n(L, ws, threshold, codes, n, accs, NQ_, N, P)
#define TKV_AQ(q)                                                                                  \
    do {                                                                                           \
        const int NQ_ = q;                                                                         \
        TKV_VBMI_WIDTHS(L->trellis, TKV_A);                                                        \
    } while (0)
    TKV_VBMI_NQ(nq, TKV_AQ);
#undef TKV_AQ
#undef TKV_A
}
