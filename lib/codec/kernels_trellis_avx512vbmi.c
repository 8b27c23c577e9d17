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
 *   3. vpermi2b reads 128 int8 entries by the low 7 bits, bit 7 (and 8) blend between
 *      the 128-entry halves: 2 permutes + 1 blend for 256 entries, 4 + 3 for 512.
 * Scores multiply the bytes (as v + 128) with a fixed-point query by vpdpbusd; weighted
 * sums multiply four rows' bytes at once with their fixed-point weights by vpdpbusd (both
 * exact int32 sums, below).  Values are exact (q8 * scale = the float table); the 23-bit
 * roundings of query and weights are of the order of float rounding, so results match the
 * scalar reference within it.
 * Several keys per pass: independent chains, one transposed reduction for four scores.
 * Tested against kernels_scalar.c (tests/c/test_kernels_codec.c).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"

#define TKV_VBMI_MAX_D 1024
#define TKV_INLINE static inline __attribute__((always_inline))

typedef struct tkv_vbmi_ctx {
    __m512i tab[8];   /* q8 entries, 64 per register (4 or 8 registers) */
    __m512i spread;   /* vpermb index of step 1 */
    __m512i ctl;      /* vpmultishiftqb control of step 2 */
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
    uint8_t sp[64], ct[64];
    for (uint32_t k = 0; k < 8; k++) {
        for (uint32_t i = 0; i < 8; i++) {
            sp[8 * k + i] = (uint8_t)(N * k + i);
            ct[8 * k + i] = (uint8_t)(8 - P + N * i);
        }
    }
    c->spread = _mm512_loadu_si512(sp);
    c->ctl = _mm512_loadu_si512(ct);
    c->nb = Lay->d * N / 8;
    c->nblk = (Lay->d + 63) / 64;
}

/* The 64 int8 values of block b of the stream s (coordinates 64 b ..). */
TKV_INLINE __m512i tkv_vbmi_block(const tkv_vbmi_ctx *c, const uint8_t *s, uint32_t b,
                                  const uint32_t N, const uint32_t P) {
    const uint32_t L = N + P;
    /* from the byte before the block (s[-1] is the fp16 scale: readable) to the end */
    const uint32_t off = 8 * N * b, avail = c->nb + 1 - off;
    const __mmask64 m = avail >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << avail) - 1;
    __m512i v = _mm512_maskz_loadu_epi8(m, s - 1 + off);
    if (b == 0) {
        v = _mm512_mask_set1_epi8(v, 1, (char)s[c->nb - 1]);
    }
    v = _mm512_permutexvar_epi8(c->spread, v);
    const __m512i lo = _mm512_multishift_epi64_epi8(c->ctl, v);
    const __mmask64 m7 = _mm512_movepi8_mask(lo);
    __m512i r = _mm512_mask_blend_epi8(m7, _mm512_permutex2var_epi8(c->tab[0], lo, c->tab[1]),
                                       _mm512_permutex2var_epi8(c->tab[2], lo, c->tab[3]));
    if (L == 9) {
        const __m512i hi =
            _mm512_multishift_epi64_epi8(_mm512_add_epi8(c->ctl, _mm512_set1_epi8(1)), v);
        const __m512i r2 =
            _mm512_mask_blend_epi8(m7, _mm512_permutex2var_epi8(c->tab[4], lo, c->tab[5]),
                                   _mm512_permutex2var_epi8(c->tab[6], lo, c->tab[7]));
        r = _mm512_mask_blend_epi8(_mm512_movepi8_mask(hi), r, r2);
    }
    return r;
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
 * A query for vpdpbusd: q_j ~ Q_j / F with Q_j = round(F q_j) an integer of 23 bits
 * (F = 2^22 / max |q|), written as three signed base-256 digits, Q = d0 + 256 d1 +
 * 65536 d2.  A key's bytes are v + 128 (unsigned), so each digit's dot product
 * starts from -128 sum_j d_p[j] per lane (bias) and ends as sum_j v_j d_p[j], exact in
 * int32.  The rounding of q (|error| <= max|q| 2^-23 per coordinate) is far below float
 * rounding of the sums' terms; the kernel tests hold it to the fp32 tolerance.
 */
typedef struct tkv_vbmi_query {
    _Alignas(64) int8_t dig[3][TKV_VBMI_MAX_D];
    __m512i bias[3];
    float inv; /* 1 / F */
} tkv_vbmi_query;

static void tkv_vbmi_query_init(const float *q, uint32_t d, uint32_t nblk, tkv_vbmi_query *z) {
    float m = 0.0f;
    for (uint32_t j = 0; j < d; j++) {
        m = fabsf(q[j]) > m ? fabsf(q[j]) : m;
    }
    const float F = m > 0.0f ? 4194304.0f / m : 0.0f;
    z->inv = m > 0.0f ? m / 4194304.0f : 0.0f;
    int32_t bias[3][16] = {{0}};
    for (uint32_t j = 0; j < 64 * nblk; j++) {
        int32_t Q = j < d ? (int32_t)lrintf(q[j] * F) : 0;
        for (int p = 0; p < 3; p++) {
            const int32_t dp = p == 2 ? Q : ((Q + 128) & 255) - 128;
            z->dig[p][j] = (int8_t)dp;
            bias[p][(j % 64) / 4] -= 128 * dp;
            Q = (Q - dp) / 256; /* exact */
        }
    }
    for (int p = 0; p < 3; p++) {
        z->bias[p] = _mm512_loadu_si512(bias[p]);
    }
}

/* Scores of nk (1..4) keys for NQ queries. */
TKV_INLINE void tkv_vbmi_scores_keys(const tkv_vbmi_ctx *c, const tkv_code_layout *Lay,
                                     const uint8_t *codes, size_t i0, const tkv_vbmi_query *qz,
                                     float *const *outs, const int nk, const int NQ,
                                     const uint32_t N, const uint32_t P) {
    __m512i acc[TKV_MAX_QUERIES][4][3];
    const uint8_t *code[4];
    for (int k = 0; k < nk; k++) {
        code[k] = codes + (i0 + (size_t)k) * Lay->stride;
        for (int q = 0; q < NQ; q++) {
            for (int p = 0; p < 3; p++) {
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
            for (int p = 0; p < 3; p++) {
                const __m512i dv = _mm512_load_si512(qz[q].dig[p] + 64 * b);
                for (int k = 0; k < nk; k++) {
                    acc[q][k][p] = _mm512_dpbusd_epi32(acc[q][k][p], x[k], dv);
                }
            }
        }
    }
    float sc[4];
    for (int k = 0; k < nk; k++) {
        sc[k] = _cvtsh_ss(tkv_kc_u16(code[k] + Lay->scale_off)) * Lay->trellis->q8_scale;
    }
    __m512 f[TKV_MAX_QUERIES][4];
    for (int q = 0; q < NQ; q++) {
        for (int k = 0; k < nk; k++) {
            f[q][k] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc[q][k][2]), _mm512_set1_ps(65536.0f),
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[q][k][1]), _mm512_set1_ps(256.0f),
                                _mm512_cvtepi32_ps(acc[q][k][0])));
        }
    }
    /* the NQ nk sums, four at a time through one transposed reduction */
    const __m512 *fl[4 * TKV_MAX_QUERIES];
    float *dst[4 * TKV_MAX_QUERIES];
    float mul[4 * TKV_MAX_QUERIES];
    int nf = 0;
    for (int q = 0; q < NQ; q++) {
        for (int k = 0; k < nk; k++) {
            fl[nf] = &f[q][k];
            dst[nf] = outs[q] + i0 + (size_t)k;
            mul[nf++] = sc[k] * qz[q].inv;
        }
    }
    for (int t = 0; t < nf; t += 4) {
        float r[4];
        _mm_storeu_ps(r,
                      tkv_vbmi_reduce4(*fl[t], *fl[t + 1 < nf ? t + 1 : t],
                                       *fl[t + 2 < nf ? t + 2 : t], *fl[t + 3 < nf ? t + 3 : t]));
        for (int u = 0; u < 4 && t + u < nf; u++) {
            *dst[t + u] = mul[t + u] * r[u];
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
    /* keys per pass: 3 NQ nk int32 accumulators stay in registers */
    const int NK = NQ == 1 ? 4 : 2;
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
 * times the rows' scales are rounded to 23-bit fixed point against the chunk's largest
 * (F = 2^22 / max |w|, as the query of the scores) and split into three signed base-256
 * digits.  Four rows' biased bytes (v + 128) are interleaved so that dword lane j holds
 * coordinate j of the four rows; vpdpbusd with a dword of the four rows' digits adds
 * sum_k (v_kj + 128) digit_k to an int32 lane, which starts at -128 times the digit sum
 * of the chunk, so each lane ends exact: sum_k v_kj digit_k (|.| < 2^31 for
 * 4 * 64 rows).  At the end of a chunk the three int32 sums become floats
 * (d0 + 256 d1 + 65536 d2) / F.  The weights' rounding, |error| <= 2^-23 max|w| per row of
 * the chunk, is of the order of float rounding (kernels.h states the bound).
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
                                   const int32_t (*dig)[3][TKV_VBMI_CHUNK / 4],
                                   const int32_t (*bias)[3], const float (*unit)[3], uint32_t b,
                                   __m512i (*tb)[4], float (*accf)[TKV_VBMI_MAX_D], const int NQ,
                                   const uint32_t N, const uint32_t P) {
    if (NQ <= 2) { /* 12 NQ accumulators fit in registers next to the rows' bytes */
        __m512i acc[2][3][4];
        for (int q = 0; q < NQ; q++) {
            for (int p = 0; p < 3; p++) {
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
                for (int p = 0; p < 3; p++) {
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
                for (int p = 0; p < 3; p++) {
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
        __m512i acc[3][4];
        for (int p = 0; p < 3; p++) {
            for (int r = 0; r < 4; r++) {
                acc[p][r] = _mm512_set1_epi32(bias[q][p]);
            }
        }
        for (int g = 0; g < ng; g++) {
            for (int p = 0; p < 3; p++) {
                const __m512i dv = _mm512_set1_epi32(dig[q][p][g]);
                for (int r = 0; r < 4; r++) {
                    acc[p][r] = _mm512_dpbusd_epi32(acc[p][r], tb[g][r], dv);
                }
            }
        }
        for (int r = 0; r < 4; r++) {
            float *dst = accf[q] + 64 * b + 16 * r;
            __m512 s = _mm512_load_ps(dst);
            for (int p = 0; p < 3; p++) {
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
    _Alignas(64) int32_t dig[TKV_MAX_QUERIES][3][TKV_VBMI_CHUNK / 4];
    int32_t bias[TKV_MAX_QUERIES][3];
    float unit[TKV_MAX_QUERIES][3];
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
        const __m512 F = _mm512_set1_ps(mx > 0.0f ? 4194304.0f / mx : 0.0f);
        __m512i sum[3] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int i = 0; i < m16; i += 16) {
            /* round to nearest (MXCSR default), then digits in -128..127 (the top one
             * |.| <= 65) */
            __m512i Q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wr[q] + i), F));
            for (int p = 0; p < 3; p++) {
                const __m512i dp =
                    p == 2
                        ? Q
                        : _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(Q, c128), c255), c128);
                sum[p] = _mm512_add_epi32(sum[p], dp);
                _mm_store_si128((__m128i *)(dig[q][p] + i / 4), _mm512_cvtepi32_epi8(dp));
                Q = _mm512_srai_epi32(_mm512_sub_epi32(Q, dp), 8); /* exact */
            }
        }
        const float inv = mx > 0.0f ? mx / 4194304.0f : 0.0f;
        for (int p = 0; p < 3; p++) {
            bias[q][p] = -128 * _mm512_reduce_add_epi32(sum[p]);
            unit[q][p] = inv * (p == 0 ? 1.0f : p == 1 ? 256.0f : 65536.0f);
        }
    }
    __m512i tb[TKV_VBMI_CHUNK / 4][4];
    for (uint32_t b = 0; b < c->nblk; b++) {
        tkv_vbmi_sum_block(c, Lay, code, m16 / 4, (const int32_t(*)[3][TKV_VBMI_CHUNK / 4]) dig,
                           (const int32_t(*)[3])bias, (const float(*)[3])unit, b, tb, accf, NQ, N,
                           P);
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
    const float ts = Lay->trellis->q8_scale;
    const uint8_t *code[TKV_VBMI_CHUNK];
    float wr[TKV_MAX_QUERIES][TKV_VBMI_CHUNK];
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tkv_kc_row_needed(ws, NQ, i, threshold)) {
            continue;
        }
        code[m] = codes + i * Lay->stride;
        const float sc = _cvtsh_ss(tkv_kc_u16(code[m] + Lay->scale_off)) * ts;
        for (int q = 0; q < NQ; q++) {
            wr[q][m] = fabsf(ws[q][i]) >= threshold ? ws[q][i] * sc : 0.0f;
        }
        if (++m == TKV_VBMI_CHUNK) {
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
