/*
 * kernels_avx512.c - AVX-512 (F/BW/VL/DQ) codec kernels: 16 floats per register.
 *
 * Same results as kernels_scalar.c up to float rounding (FMA, summation order).
 * Every entry works on the codes directly, never decoding a vector to memory:
 *   - float formats convert 16 elements per instruction (vcvtph2ps, bf16 << 16);
 *   - q8_0 / q4_0 widen a block's int8 / nibbles to int32 lanes, convert and FMA
 *     against the query, then apply the block scale once per block;
 *   - turbo unpacks 16 indices into int32 lanes with one widening load, a shift and
 *     a mask, and looks the centroids up in registers: vpermps for 16-entry tables
 *     (bits <= 4), vpermt2ps for 32 (5 bits).  A P1 plane is read straight into a
 *     __mmask16 and ORed into the index with a masked vpord.
 * The partial group at the end of a vector (head_dim % 32 or % 64 != 0) uses masked
 * loads (fault-suppressing, so they never touch bytes past the vector) except for
 * P1 bits at unaligned positions, which tkv_kc_bits reads byte by byte.
 * The float formats, q8_0 / q4_0, QJL terms, fwht, matvec and softmax are the bodies of
 * kernels_x86_body.h at this width; the turbo kernels below (four keys per group, and the
 * grouped-query ones) are this ISA's own.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "codec/kernels.h"
#include "codec/kernels_common.h"

/* Force inlining of the generic bodies so each (format, bits) instance is specialized. */
#define TKV_INLINE static inline __attribute__((always_inline))

static inline __mmask16 tkv_m16(uint32_t r) {
    return (__mmask16)((1u << r) - 1u);
} /* r <= 16 */

/* ---------------------------------------------------------------------------------
 * The ISA of kernels_x86_body.h
 * --------------------------------------------------------------------------------- */

#define TKV_FN(name) tkv_##name##_avx512
#define TKV_VW 16
#define TKV_VF __m512
#define TKV_VZERO() _mm512_setzero_ps()
#define TKV_VSET1(x) _mm512_set1_ps(x)
#define TKV_VLOAD(p) _mm512_loadu_ps(p)
#define TKV_VSTORE(p, v) _mm512_storeu_ps(p, v)
#define TKV_VADD(a, b) _mm512_add_ps(a, b)
#define TKV_VSUB(a, b) _mm512_sub_ps(a, b)
#define TKV_VMUL(a, b) _mm512_mul_ps(a, b)
#define TKV_VMAX(a, b) _mm512_max_ps(a, b)
#define TKV_VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define TKV_VFNMA(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define TKV_VROUND(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define TKV_VHSUM(v) _mm512_reduce_add_ps(v)
#define TKV_VHMAX(v) _mm512_reduce_max_ps(v)
#define TKV_MASKED_TAIL 1
#define TKV_VMASK __mmask16
#define TKV_VMASK_N(r) tkv_m16(r)
#define TKV_VMLOAD(m, p) _mm512_maskz_loadu_ps(m, p)
#define TKV_VMSTORE(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define TKV_VMKEEP(m, v) _mm512_maskz_mov_ps(m, v)

/* Elements [j, j+16) of a float-format vector p, lanes outside m zero. */
TKV_INLINE __m512 tkv_load_flt_m(const tkv_code_format fmt, const uint8_t *p, uint32_t j,
                                 __mmask16 m) {
    if (fmt == TKV_FMT_F32) {
        return _mm512_maskz_loadu_ps(m, p + 4 * (size_t)j);
    }
    const __m256i h = _mm256_maskz_loadu_epi16(m, p + 2 * (size_t)j);
    if (fmt == TKV_FMT_F16) {
        return _mm512_cvtph_ps(h);
    }
    /* bf16 is the top half of an fp32: widen and shift left 16 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

TKV_INLINE __m512 tkv_load_flt(const tkv_code_format fmt, const uint8_t *p, uint32_t j) {
    return tkv_load_flt_m(fmt, p, j, 0xffff);
}

/* A block's 32 values are two registers: q8 widens int8 -> int32 -> float; q4 widens the
 * 16 bytes once and takes low nibbles (elements 0..15) and high nibbles (16..31). */
TKV_INLINE void tkv_block_vals(const int four_bit, const uint8_t *qs, __m512 x[2]) {
    if (four_bit) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
        const __m512i eight = _mm512_set1_epi32(8);
        x[0] =
            _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, _mm512_set1_epi32(15)), eight));
        x[1] = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), eight));
    } else {
        x[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
        x[1] =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
    }
}

/* The partial last block (t < 32 values): the code bytes and the query are masked; q4
 * holds elements 0..t/2-1 in the low nibbles and t/2.. in the high ones. */
TKV_INLINE void tkv_block_part(const int four_bit, const uint8_t *qs, uint32_t t, __m512 x[2],
                               __mmask16 m[2], uint32_t *off1) {
    if (four_bit) {
        const uint32_t half = t / 2;
        m[0] = m[1] = tkv_m16(half);
        const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m[0], qs));
        const __m512i eight = _mm512_set1_epi32(8);
        x[0] =
            _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, _mm512_set1_epi32(15)), eight));
        x[1] = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), eight));
        *off1 = half;
    } else {
        m[0] = t >= 16 ? 0xffff : tkv_m16(t);
        m[1] = t > 16 ? tkv_m16(t - 16) : 0;
        x[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m[0], qs)));
        x[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m[1], qs + 16)));
        *off1 = 16;
    }
}

/* Negate the lanes whose bit is clear (masked subtract from zero). */
static inline __m512 tkv_signs(__m512 v, uint32_t b) {
    return _mm512_mask_sub_ps(v, (__mmask16)~b, _mm512_setzero_ps(), v);
}

static inline __m512 tkv_select(__m512 pos, __m512 neg, uint32_t b) {
    return _mm512_mask_blend_ps((__mmask16)b, neg, pos);
}

/* partner = x with lanes swapped (vpermilps within 128-bit lanes for h = 1, 2; vshuff32x4
 * across them for h = 4, 8), then x * sign + partner with sign = +1 on the lower half of
 * each pair, -1 on the upper; x * (+-1) is exact. */
static inline __m512 tkv_fwht_lanes(__m512 v) {
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    v = _mm512_fmadd_ps(v, s1, _mm512_permute_ps(v, 0xB1));       /* h = 1 */
    v = _mm512_fmadd_ps(v, s2, _mm512_permute_ps(v, 0x4E));       /* h = 2 */
    v = _mm512_fmadd_ps(v, s4, _mm512_shuffle_f32x4(v, v, 0xB1)); /* h = 4 */
    v = _mm512_fmadd_ps(v, s8, _mm512_shuffle_f32x4(v, v, 0x4E)); /* h = 8 */
    return v;
}

static inline __m512 tkv_exp2i(__m512 p, __m512 k) {
    return _mm512_scalef_ps(p, k);
}

#include "codec/kernels_x86_body.h"

/* ---------------------------------------------------------------------------------
 * turbo: scale * centroids[idx], indices in bit planes (pack.h).
 *
 * The index walk is written once (tkv_turbo_walk) and visits the vector in chunks of
 * up to 16 elements: for each chunk it yields the 16 centroids (looked up in
 * registers), the position of the chunk's lane 0, and the lane mask.  P4 groups of 32
 * give two chunks (low nibbles: elements k, high: k + t/2), P2 groups of 64 give four
 * (bit pair s: elements k + s*q), P8 gives one per 16 bytes.  Scores FMA the chunks
 * against q; accum FMAs them into acc.
 * --------------------------------------------------------------------------------- */

typedef struct tkv_turbo_tables {
    __m512 lo, hi; /* centroids 0..15 and 16..31 */
} tkv_turbo_tables;

/* 16 centroids of indices idx (int32 lanes; bits 0..4 used). */
TKV_INLINE __m512 tkv_lookup(const uint32_t bits, const tkv_turbo_tables *T, __m512i idx) {
    if (bits <= 4) {
        return _mm512_permutexvar_ps(idx, T->lo); /* 16-entry table in one register */
    }
    return _mm512_permutex2var_ps(T->lo, idx, T->hi); /* 32 entries across two */
}

/* Scores and accum share the walk; the "sink" is what they do with a chunk. */
typedef struct tkv_turbo_sink {
    int accum;      /* 0: dot with q into sum0/sum1; 1: acc += ws * c */
    const float *q; /* scores */
    __m512 sum0, sum1;
    float *acc; /* accum */
    __m512 ws;
} tkv_turbo_sink;

TKV_INLINE void tkv_sink_chunk(tkv_turbo_sink *s, int second, __m512 c, uint32_t j, __mmask16 m) {
    if (s->accum) {
        const __m512 a = _mm512_maskz_loadu_ps(m, s->acc + j);
        _mm512_mask_storeu_ps(s->acc + j, m, _mm512_fmadd_ps(s->ws, c, a));
    } else if (second) {
        s->sum1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, s->q + j), c, s->sum1);
    } else {
        s->sum0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, s->q + j), c, s->sum0);
    }
}

/* OR bit `b` into the index lanes selected by the P1 mask m. */
TKV_INLINE __m512i tkv_or_bit(__m512i idx, __mmask16 m, int b) {
    return _mm512_mask_or_epi32(idx, m, idx, _mm512_set1_epi32(1 << b));
}

TKV_INLINE void tkv_turbo_walk(const uint32_t bits, uint32_t d, const uint8_t *pl,
                               const tkv_turbo_tables *T, tkv_turbo_sink *s, uint32_t begin) {
    const __m512i m15 = _mm512_set1_epi32(15), m3 = _mm512_set1_epi32(3);
    if (bits == 4 || bits == 5) {
        const uint8_t *p1 = pl + d / 2; /* bit 4 (5-bit codes) */
        for (uint32_t g0 = begin; g0 < d; g0 += 32) {
            const uint32_t t = d - g0 < 32 ? d - g0 : 32, half = t / 2;
            const __mmask16 mh = half >= 16 ? 0xffff : tkv_m16(half);
            /* byte k: element k in the low nibble, k + t/2 in the high one */
            const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mh, pl + g0 / 2));
            __m512i i0 = _mm512_and_si512(v, m15), i1 = _mm512_srli_epi32(v, 4);
            if (bits == 5) {
                const __mmask16 b0 =
                    t == 32 ? tkv_kc_u16(p1 + g0 / 8) : (__mmask16)tkv_kc_bits(p1, g0, half);
                const __mmask16 b1 = t == 32 ? tkv_kc_u16(p1 + g0 / 8 + 2)
                                             : (__mmask16)tkv_kc_bits(p1, g0 + half, half);
                i0 = tkv_or_bit(i0, b0, 4);
                i1 = tkv_or_bit(i1, b1, 4);
            }
            tkv_sink_chunk(s, 0, tkv_lookup(bits, T, i0), g0, mh);
            tkv_sink_chunk(s, 1, tkv_lookup(bits, T, i1), g0 + half, mh);
        }
    } else if (bits == 2 || bits == 3) {
        const uint8_t *p1 = pl + tkv_kc_plane2_bytes(d); /* bit 2 (3-bit codes) */
        for (uint32_t g0 = begin; g0 < d; g0 += 64) {
            const uint32_t t = d - g0 < 64 ? d - g0 : 64, qn = (t + 3) / 4;
            /* byte k: elements k, k+qn, k+2qn, k+3qn in bit pairs 0-1 .. 6-7 */
            const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(tkv_m16(qn), pl + g0 / 4));
            for (uint32_t sl = 0; sl < 4 && sl * qn < t; sl++) {
                const uint32_t cnt = t - sl * qn < qn ? t - sl * qn : qn;
                const uint32_t j = g0 + sl * qn;
                __m512i idx = _mm512_and_si512(_mm512_srli_epi32(v, 2 * (int)sl), m3);
                if (bits == 3) {
                    const __mmask16 b =
                        t == 64 ? tkv_kc_u16(p1 + j / 8) : (__mmask16)tkv_kc_bits(p1, j, cnt);
                    idx = tkv_or_bit(idx, b, 2);
                }
                tkv_sink_chunk(s, sl & 1, tkv_lookup(bits, T, idx), j, tkv_m16(cnt));
            }
        }
    } else { /* 8: one index byte per element */
        for (uint32_t j = begin; j < d; j += 16) {
            const __mmask16 m = d - j >= 16 ? 0xffff : tkv_m16(d - j);
            const __m512i idx = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, pl + j));
            tkv_sink_chunk(s, (j >> 4) & 1, tkv_lookup(bits, T, idx), j, m);
        }
    }
}

static tkv_turbo_tables tkv_tables(const tkv_code_layout *L) {
    tkv_turbo_tables T;
    T.lo = _mm512_loadu_ps(L->centroids);
    T.hi = _mm512_loadu_ps(L->centroids + 16);
    return T;
}

/* Elements per full group: P4 32, P2 64, P8 16 (one register). */
#define TKV_GROUP(bits) ((bits) == 4 || (bits) == 5 ? 32u : (bits) == 2 || (bits) == 3 ? 64u : 16u)

/* The G/16 centroid registers of the full group at g0 (c[k]: elements g0+16k..g0+16k+15):
 * the hot path, with no masks or tail checks. */
TKV_INLINE void tkv_group_full(const uint32_t bits, uint32_t d, const uint8_t *pl, uint32_t g0,
                               const tkv_turbo_tables *T, __m512 c[4]) {
    if (bits == 4 || bits == 5) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(pl + g0 / 2)));
        __m512i i0 = _mm512_and_si512(v, _mm512_set1_epi32(15)), i1 = _mm512_srli_epi32(v, 4);
        if (bits == 5) {
            const uint8_t *p1 = pl + d / 2 + g0 / 8;
            i0 = tkv_or_bit(i0, tkv_kc_u16(p1), 4);
            i1 = tkv_or_bit(i1, tkv_kc_u16(p1 + 2), 4);
        }
        c[0] = tkv_lookup(bits, T, i0);
        c[1] = tkv_lookup(bits, T, i1);
    } else if (bits == 2 || bits == 3) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(pl + g0 / 4)));
        const uint8_t *p1 = pl + tkv_kc_plane2_bytes(d) + g0 / 8;
        for (int sl = 0; sl < 4; sl++) {
            __m512i idx = _mm512_and_si512(_mm512_srli_epi32(v, 2 * sl), _mm512_set1_epi32(3));
            if (bits == 3) {
                idx = tkv_or_bit(idx, tkv_kc_u16(p1 + 2 * sl), 2);
            }
            c[sl] = tkv_lookup(bits, T, idx);
        }
    } else {
        c[0] =
            tkv_lookup(bits, T, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(pl + g0))));
    }
}

/* Horizontal sums of four registers at once: [sum a, sum b, sum c, sum d]. */
static inline __m128 tkv_reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d */
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    /* per 128-bit lane: [a, b, c, d] partial sums */
    const __m512 s =
        _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* Scores of keys one at a time (remainder of the 4-key batches). */
TKV_INLINE float tkv_turbo_score1(const uint32_t bits, const tkv_code_layout *L, const float *q,
                                  const uint8_t *code, const tkv_turbo_tables *T) {
    tkv_turbo_sink s = {0, q, _mm512_setzero_ps(), _mm512_setzero_ps(), NULL, _mm512_setzero_ps()};
    tkv_turbo_walk(bits, L->d, code + L->payload_off, T, &s, 0);
    return tkv_h2f(code + L->scale_off) * _mm512_reduce_add_ps(_mm512_add_ps(s.sum0, s.sum1));
}

/* Four keys per pass: their groups interleave (four independent FMA chains), one
 * transposed reduction serves all four, and the four fp16 scales convert together.
 * The partial last group (if any) goes through the masked walk. */
TKV_INLINE void tkv_turbo_scores_bits(const uint32_t bits, const tkv_code_layout *L, const float *q,
                                      const uint8_t *codes, size_t n, float *out) {
    const tkv_turbo_tables T = tkv_tables(L);
    const uint32_t d = L->d, G = TKV_GROUP(bits), full = d / G * G;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *code[4];
        __m512 acc[4];
        for (int k = 0; k < 4; k++) {
            code[k] = codes + (i + (size_t)k) * L->stride;
            acc[k] = _mm512_setzero_ps();
        }
        for (uint32_t g0 = 0; g0 < full; g0 += G) {
            for (int k = 0; k < 4; k++) {
                __m512 c[4];
                tkv_group_full(bits, d, code[k] + L->payload_off, g0, &T, c);
                for (uint32_t ch = 0; ch < G / 16; ch++) {
                    acc[k] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g0 + 16 * ch), c[ch], acc[k]);
                }
            }
        }
        if (full < d) {
            for (int k = 0; k < 4; k++) {
                tkv_turbo_sink s = {0, q, acc[k], _mm512_setzero_ps(), NULL, _mm512_setzero_ps()};
                tkv_turbo_walk(bits, d, code[k] + L->payload_off, &T, &s, full);
                acc[k] = _mm512_add_ps(s.sum0, s.sum1);
            }
        }
        const __m128i h = _mm_setr_epi16((short)tkv_kc_u16(code[0] + L->scale_off),
                                         (short)tkv_kc_u16(code[1] + L->scale_off),
                                         (short)tkv_kc_u16(code[2] + L->scale_off),
                                         (short)tkv_kc_u16(code[3] + L->scale_off), 0, 0, 0, 0);
        /* the scale multiplies the whole dot product once */
        _mm_storeu_ps(out + i,
                      _mm_mul_ps(_mm_cvtph_ps(h), tkv_reduce4(acc[0], acc[1], acc[2], acc[3])));
    }
    for (; i < n; i++) {
        out[i] = tkv_turbo_score1(bits, L, q, codes + i * L->stride, &T);
    }
    if (L->has_qjl) {
        for (size_t k = 0; k < n; k++) {
            const uint8_t *code = codes + k * L->stride;
            const float g = L->qjl_coef * tkv_h2f(code + L->rnorm_off);
            out[k] += g * tkv_qjl_dot(q + d, code + L->signs_off, d);
        }
    }
}

/* acc += ws[k] * decode(code[k]) for nk (1..4) keys, in key order for every element.
 * Each full-group register of acc is loaded and stored once for all nk keys. */
TKV_INLINE void tkv_turbo_axpy_batch(const uint32_t bits, const tkv_code_layout *L,
                                     const tkv_turbo_tables *T, const uint8_t *const code[4],
                                     const float ws[4], int nk, float *acc) {
    const uint32_t d = L->d, G = TKV_GROUP(bits), full = d / G * G;
    for (uint32_t g0 = 0; g0 < full; g0 += G) {
        __m512 c[4][4];
        for (int k = 0; k < nk; k++) {
            tkv_group_full(bits, d, code[k] + L->payload_off, g0, T, c[k]);
        }
        for (uint32_t ch = 0; ch < G / 16; ch++) {
            float *a = acc + g0 + 16 * ch;
            __m512 v = _mm512_loadu_ps(a);
            for (int k = 0; k < nk; k++) {
                v = _mm512_fmadd_ps(_mm512_set1_ps(ws[k]), c[k][ch], v);
            }
            _mm512_storeu_ps(a, v);
        }
    }
    for (int k = 0; k < nk && full < d; k++) {
        tkv_turbo_sink s = {
            1, NULL, _mm512_setzero_ps(), _mm512_setzero_ps(), acc, _mm512_set1_ps(ws[k])};
        tkv_turbo_walk(bits, d, code[k] + L->payload_off, T, &s, full);
    }
}

/* Rows with |w| >= threshold are collected four at a time and added in one batch;
 * w * scale is folded into one broadcast per row. */
TKV_INLINE void tkv_turbo_accum_bits(const uint32_t bits, const tkv_code_layout *L, const float *w,
                                     float threshold, const uint8_t *codes, size_t n, float *acc) {
    const tkv_turbo_tables T = tkv_tables(L);
    const uint32_t d = L->d;
    const uint8_t *code[4];
    float ws[4];
    int nk = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(fabsf(w[i]) >= threshold)) {
            continue;
        }
        code[nk] = codes + i * L->stride;
        ws[nk] = w[i] * tkv_h2f(code[nk] + L->scale_off);
        if (L->has_qjl) {
            const float g = L->qjl_coef * tkv_h2f(code[nk] + L->rnorm_off);
            tkv_qjl_axpy(acc + d, code[nk] + L->signs_off, d, w[i] * g);
        }
        if (++nk == 4) {
            tkv_turbo_axpy_batch(bits, L, &T, code, ws, 4, acc);
            nk = 0;
        }
    }
    for (int k = 0; k < nk; k++) {
        tkv_turbo_axpy_batch(bits, L, &T, &code[k], &ws[k], 1, acc);
    }
}

static void tkv_scores_turbo_avx512(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                                    size_t n, float *out) {
#define TKV_CALL(b) tkv_turbo_scores_bits(b, L, q, codes, n, out)
    TKV_TURBO_BITS_DISPATCH(L->bits, TKV_CALL, tkv_scores_scalar(L, q, codes, n, out));
#undef TKV_CALL
}

static void tkv_accum_turbo_avx512(const tkv_code_layout *L, const float *w, float threshold,
                                   const uint8_t *codes, size_t n, float *acc) {
#define TKV_CALL(b) tkv_turbo_accum_bits(b, L, w, threshold, codes, n, acc)
    TKV_TURBO_BITS_DISPATCH(L->bits, TKV_CALL,
                            tkv_accum_scalar(L, w, threshold, codes, n, acc));
#undef TKV_CALL
}

/* ---------------------------------------------------------------------------------
 * Grouped queries (GQA): nq query heads share the KV head, so each key's codebook
 * indices are unpacked and looked up once and the resulting centroid registers feed
 * the FMAs of every query.  Keys go four at a time as in the single-query kernels.
 * --------------------------------------------------------------------------------- */

TKV_INLINE void tkv_turbo_scores_multi_bits(const uint32_t bits, const tkv_code_layout *L,
                                            const float *const *qs, int nq, const uint8_t *codes,
                                            size_t n, float *const *outs) {
    const tkv_turbo_tables T = tkv_tables(L);
    const uint32_t d = L->d, G = TKV_GROUP(bits), full = d / G * G;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *code[4];
        __m512 acc[TKV_MAX_QUERIES][4];
        for (int k = 0; k < 4; k++) {
            code[k] = codes + (i + (size_t)k) * L->stride;
        }
        for (int qi = 0; qi < nq; qi++) {
            for (int k = 0; k < 4; k++) {
                acc[qi][k] = _mm512_setzero_ps();
            }
        }
        for (uint32_t g0 = 0; g0 < full; g0 += G) {
            __m512 c[4][4];
            for (int k = 0; k < 4; k++) {
                tkv_group_full(bits, d, code[k] + L->payload_off, g0, &T, c[k]);
            }
            for (int qi = 0; qi < nq; qi++) {
                for (uint32_t ch = 0; ch < G / 16; ch++) {
                    const __m512 qv = _mm512_loadu_ps(qs[qi] + g0 + 16 * ch);
                    for (int k = 0; k < 4; k++) {
                        acc[qi][k] = _mm512_fmadd_ps(qv, c[k][ch], acc[qi][k]);
                    }
                }
            }
        }
        if (full < d) {
            for (int qi = 0; qi < nq; qi++) {
                for (int k = 0; k < 4; k++) {
                    tkv_turbo_sink s = {0, qs[qi], acc[qi][k], _mm512_setzero_ps(), NULL,
                                        _mm512_setzero_ps()};
                    tkv_turbo_walk(bits, d, code[k] + L->payload_off, &T, &s, full);
                    acc[qi][k] = _mm512_add_ps(s.sum0, s.sum1);
                }
            }
        }
        const __m128i h = _mm_setr_epi16((short)tkv_kc_u16(code[0] + L->scale_off),
                                         (short)tkv_kc_u16(code[1] + L->scale_off),
                                         (short)tkv_kc_u16(code[2] + L->scale_off),
                                         (short)tkv_kc_u16(code[3] + L->scale_off), 0, 0, 0, 0);
        const __m128 scales = _mm_cvtph_ps(h);
        for (int qi = 0; qi < nq; qi++) {
            _mm_storeu_ps(outs[qi] + i, _mm_mul_ps(scales, tkv_reduce4(acc[qi][0], acc[qi][1],
                                                                       acc[qi][2], acc[qi][3])));
        }
    }
    for (; i < n; i++) {
        for (int qi = 0; qi < nq; qi++) {
            outs[qi][i] = tkv_turbo_score1(bits, L, qs[qi], codes + i * L->stride, &T);
        }
    }
    if (L->has_qjl) {
        for (size_t k = 0; k < n; k++) {
            const uint8_t *code = codes + k * L->stride;
            const float g = L->qjl_coef * tkv_h2f(code + L->rnorm_off);
            for (int qi = 0; qi < nq; qi++) {
                outs[qi][k] += g * tkv_qjl_dot(qs[qi] + d, code + L->signs_off, d);
            }
        }
    }
}

/* accs[qi] += ws[qi][k] * decode(code[k]) for four keys; a weight of 0 stands for a row the
 * threshold skips (adding 0 * finite centroid leaves acc bit-identical). */
TKV_INLINE void tkv_turbo_axpy_multi(const uint32_t bits, const tkv_code_layout *L,
                                     const tkv_turbo_tables *T, const uint8_t *const code[4],
                                     float ws[TKV_MAX_QUERIES][4], int nq, int nk,
                                     float *const *accs) {
    const uint32_t d = L->d, G = TKV_GROUP(bits), full = d / G * G;
    for (uint32_t g0 = 0; g0 < full; g0 += G) {
        __m512 c[4][4];
        for (int k = 0; k < nk; k++) {
            tkv_group_full(bits, d, code[k] + L->payload_off, g0, T, c[k]);
        }
        for (int qi = 0; qi < nq; qi++) {
            for (uint32_t ch = 0; ch < G / 16; ch++) {
                float *a = accs[qi] + g0 + 16 * ch;
                __m512 v = _mm512_loadu_ps(a);
                for (int k = 0; k < nk; k++) {
                    v = _mm512_fmadd_ps(_mm512_set1_ps(ws[qi][k]), c[k][ch], v);
                }
                _mm512_storeu_ps(a, v);
            }
        }
    }
    for (int k = 0; k < nk && full < d; k++) {
        for (int qi = 0; qi < nq; qi++) {
            tkv_turbo_sink s = {1, NULL, _mm512_setzero_ps(), _mm512_setzero_ps(), accs[qi],
                                _mm512_set1_ps(ws[qi][k])};
            tkv_turbo_walk(bits, d, code[k] + L->payload_off, T, &s, full);
        }
    }
}

TKV_INLINE void tkv_turbo_accum_multi_bits(const uint32_t bits, const tkv_code_layout *L,
                                           const float *const *w, int nq, float threshold,
                                           const uint8_t *codes, size_t n, float *const *accs) {
    const tkv_turbo_tables T = tkv_tables(L);
    const uint32_t d = L->d;
    const uint8_t *code[4];
    float ws[TKV_MAX_QUERIES][4];
    int nk = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tkv_kc_row_needed(w, nq, i, threshold)) {
            continue;
        }
        code[nk] = codes + i * L->stride;
        const float scale = tkv_h2f(code[nk] + L->scale_off);
        for (int qi = 0; qi < nq; qi++) {
            const int keep = fabsf(w[qi][i]) >= threshold;
            ws[qi][nk] = keep ? w[qi][i] * scale : 0.0f;
            if (keep && L->has_qjl) {
                const float g = L->qjl_coef * tkv_h2f(code[nk] + L->rnorm_off);
                tkv_qjl_axpy(accs[qi] + d, code[nk] + L->signs_off, d, w[qi][i] * g);
            }
        }
        if (++nk == 4) {
            tkv_turbo_axpy_multi(bits, L, &T, code, ws, nq, 4, accs);
            nk = 0;
        }
    }
    if (nk > 0) {
        tkv_turbo_axpy_multi(bits, L, &T, code, ws, nq, nk, accs);
    }
}

static void tkv_scores_turbo_multi_avx512(const tkv_code_layout *L, const float *const *qs, int nq,
                                          const uint8_t *codes, size_t n, float *const *outs) {
#define TKV_CALL(b) tkv_turbo_scores_multi_bits(b, L, qs, nq, codes, n, outs)
    TKV_TURBO_BITS_DISPATCH(L->bits, TKV_CALL,
                            tkv_scores_multi_scalar(L, qs, nq, codes, n, outs));
#undef TKV_CALL
}

static void tkv_accum_turbo_multi_avx512(const tkv_code_layout *L, const float *const *ws, int nq,
                                         float threshold, const uint8_t *codes, size_t n,
                                         float *const *accs) {
#define TKV_CALL(b) tkv_turbo_accum_multi_bits(b, L, ws, nq, threshold, codes, n, accs)
    TKV_TURBO_BITS_DISPATCH(L->bits, TKV_CALL,
                            tkv_accum_multi_scalar(L, ws, nq, threshold, codes, n, accs));
#undef TKV_CALL
}

const tkv_codec_kernels tkv_codec_kernels_avx512 = {
    .isa = "avx512",
    .scores = {tkv_scores_f32_avx512, tkv_scores_f16_avx512, tkv_scores_bf16_avx512,
               tkv_scores_q8_0_avx512, tkv_scores_q4_0_avx512, tkv_scores_turbo_avx512,
               tkv_scores_trellis_avx512},
    .accum = {tkv_accum_f32_avx512, tkv_accum_f16_avx512, tkv_accum_bf16_avx512,
              tkv_accum_q8_0_avx512, tkv_accum_q4_0_avx512, tkv_accum_turbo_avx512,
              tkv_accum_trellis_avx512},
    .fwht = tkv_fwht_avx512,
    .matvec = tkv_matvec_avx512,
    .matvec_t = tkv_matvec_t_avx512,
    .softmax = tkv_softmax_avx512,
    .trellis_forward = tkv_trellis_forward_avx512,
    .scores_multi = {[TKV_FMT_TURBO] = tkv_scores_turbo_multi_avx512,
                     [TKV_FMT_TRELLIS] = tkv_scores_trellis_multi_avx512},
    .accum_multi = {[TKV_FMT_TURBO] = tkv_accum_turbo_multi_avx512,
                    [TKV_FMT_TRELLIS] = tkv_accum_trellis_multi_avx512},
};
