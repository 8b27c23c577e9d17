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
 * Scores multiply the bytes (as v + 128) with a fixed-point query by vpdpbusd (exact
 * int32 sums, below); weighted sums turn them into floats (tkv_vbmi_to_f32) and use FMA.  Values are exact (q8 * scale = the float table), so results match the
 * scalar reference within float rounding of the sums.
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

/* The 64 biased bytes u = v + 128 as four registers of floats (coordinates 16 g ..):
 * vpermb with a merge mask puts byte 16 g + i into the low byte of dword i over the bits
 * of 2^23 (the float 2^23 + u, exact), and subtracting 2^23 + 128 leaves v, exactly. */
TKV_INLINE void tkv_vbmi_to_f32(__m512i u, __m512 f[4]) {
    const __m512i magic = _mm512_set1_epi32(0x4b000000);
    const __m512 off = _mm512_set1_ps(8388736.0f); /* 2^23 + 128 */
    for (int g = 0; g < 4; g++) {
        const __m512i idx = _mm512_add_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(16 * g));
        f[g] = _mm512_sub_ps(
            _mm512_castsi512_ps(_mm512_mask_permutexvar_epi8(
                magic, (__mmask64)0x1111111111111111ull, idx, u)),
            off);
    }
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
    if (nk == 4) {
        for (int q = 0; q < NQ; q++) {
            const __m128 s = _mm_mul_ps(_mm_loadu_ps(sc), _mm_set1_ps(qz[q].inv));
            _mm_storeu_ps(outs[q] + i0,
                          _mm_mul_ps(s, tkv_vbmi_reduce4(f[q][0], f[q][1], f[q][2], f[q][3])));
        }
    } else if (nk == 1 && NQ > 1) { /* one transposed reduction over the queries */
        float r[4];
        _mm_storeu_ps(r, tkv_vbmi_reduce4(f[0][0], f[1][0], f[NQ > 2 ? 2 : 0][0],
                                          f[NQ > 3 ? 3 : 0][0]));
        for (int q = 0; q < NQ; q++) {
            outs[q][i0] = sc[0] * qz[q].inv * r[q];
        }
    } else {
        for (int q = 0; q < NQ; q++) {
            for (int k = 0; k < nk; k++) {
                outs[q][i0 + (size_t)k] = sc[k] * qz[q].inv * _mm512_reduce_add_ps(f[q][k]);
            }
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
    const int NK = NQ == 1 ? 4 : 1;
    size_t i = 0;
    for (; i + (size_t)NK <= n; i += (size_t)NK) {
        tkv_vbmi_scores_keys(&c, Lay, codes, i, qz, outs, NK, NQ, N, P);
    }
    for (; i < n; i++) {
        tkv_vbmi_scores_keys(&c, Lay, codes, i, qz, outs, 1, NQ, N, P);
    }
}

/* ap[q] += wk[k][q] * decode(code[k]) for nk (1..4) keys. */
TKV_INLINE void tkv_vbmi_axpy_keys(const tkv_vbmi_ctx *c,
                                   const tkv_code_layout *Lay, const uint8_t *const *code,
                                   float (*wk)[TKV_MAX_QUERIES], int nk,
                                   float (*ap)[TKV_VBMI_MAX_D], const int NQ, const uint32_t N,
                                   const uint32_t P) {
    for (uint32_t b = 0; b < c->nblk; b++) {
        __m512 acc[TKV_MAX_QUERIES][4]; /* loaded and stored once per batch of keys */
        for (int q = 0; q < NQ; q++) {
            for (int g = 0; g < 4; g++) {
                acc[q][g] = _mm512_load_ps(ap[q] + 64 * b + 16 * g);
            }
        }
        for (int k = 0; k < nk; k++) { /* one key's floats at a time: few live registers */
            __m512 xf[4];
            tkv_vbmi_to_f32(tkv_vbmi_block(c, code[k] + Lay->payload_off, b, N, P), xf);
            for (int q = 0; q < NQ; q++) {
                const __m512 wv = _mm512_set1_ps(wk[k][q]);
                for (int g = 0; g < 4; g++) {
                    acc[q][g] = _mm512_fmadd_ps(wv, xf[g], acc[q][g]);
                }
            }
        }
        for (int q = 0; q < NQ; q++) {
            for (int g = 0; g < 4; g++) {
                _mm512_store_ps(ap[q] + 64 * b + 16 * g, acc[q][g]);
            }
        }
    }
}

/* Rows some query needs are collected four at a time; a query that skips a row adds it
 * with weight 0 (the values are finite: the same sums). */
TKV_INLINE void tkv_vbmi_accum_n(const tkv_code_layout *Lay, const float *const *ws,
                                 float threshold, const uint8_t *codes, size_t n,
                                 float *const *accs, const int NQ, const uint32_t N,
                                 const uint32_t P) {
    tkv_vbmi_ctx c;
    tkv_vbmi_init(&c, Lay, 1, N, P);
    _Alignas(64) float ap[TKV_MAX_QUERIES][TKV_VBMI_MAX_D];
    const uint32_t dp = 64 * c.nblk, d = Lay->d;
    for (int q = 0; q < NQ; q++) {
        memset(ap[q], 0, dp * sizeof(float));
    }
    const float ts = Lay->trellis->q8_scale;
    const uint8_t *code[4];
    float wk[4][TKV_MAX_QUERIES];
    int nk = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tkv_kc_row_needed(ws, NQ, i, threshold)) {
            continue;
        }
        code[nk] = codes + i * Lay->stride;
        const float sc = _cvtsh_ss(tkv_kc_u16(code[nk] + Lay->scale_off)) * ts;
        for (int q = 0; q < NQ; q++) {
            wk[nk][q] = fabsf(ws[q][i]) >= threshold ? ws[q][i] * sc : 0.0f;
        }
        if (++nk == 4) {
            tkv_vbmi_axpy_keys(&c, Lay, code, wk, 4, ap, NQ, N, P);
            nk = 0;
        }
    }
    for (int k = 0; k < nk; k++) {
        tkv_vbmi_axpy_keys(&c, Lay, &code[k], &wk[k], 1, ap, NQ, N, P);
    }
    for (int q = 0; q < NQ; q++) {
        for (uint32_t j = 0; j < d; j++) {
            accs[q][j] += ap[q][j];
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
