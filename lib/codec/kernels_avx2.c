/*
 * kernels_avx2.c - AVX2 + FMA + F16C codec kernels: 8 floats per register.
 *
 * Same results as kernels_scalar.c up to float rounding (FMA, summation order).
 * Every entry works on the codes directly, never decoding a vector to memory:
 *   - float formats convert 8 elements per instruction (vcvtph2ps, bf16 << 16);
 *   - q8_0 / q4_0 widen 8 int8 / nibbles to int32 lanes, convert and FMA against the
 *     query, and apply the block scale once per block;
 *   - turbo unpacks 8 indices into int32 lanes (widening load, shift, mask) and looks
 *     the centroids up with vpermps on 8-entry tables: one permute for <= 3 bits, two
 *     plus a blend on index bit 3 for 16 entries, four plus three blends for 32.
 *     P1 bits become lane masks by broadcasting the byte and testing one bit per lane.
 * AVX2 has no masked byte loads, so the partial group at the end of a vector
 * (head_dim % 32, % 64 or % 8 != 0) takes a scalar loop over tkv_kc_index.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "codec/kernels.h"
#include "codec/kernels_common.h"

/* Force inlining of the generic bodies so each (format, bits) instance is specialized. */
#define TKV_INLINE static inline __attribute__((always_inline))

static inline float tkv_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float tkv_h2f(const uint8_t *p) {
    return _cvtsh_ss(tkv_kc_u16(p));
}

/* 8 int32 lanes widened from 8 bytes at p */
static inline __m256i tkv_u8x8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

/* Lane k all ones when bit k of byte b is set. */
static inline __m256i tkv_bitmask8(uint32_t b) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)b), sel), sel);
}

/* ---------------------------------------------------------------------------------
 * fp32 / fp16 / bf16
 * --------------------------------------------------------------------------------- */

TKV_INLINE __m256 tkv_load_flt(const tkv_code_format fmt, const uint8_t *p, uint32_t j) {
    if (fmt == TKV_FMT_F32) {
        return _mm256_loadu_ps((const float *)(const void *)(p + 4 * (size_t)j));
    }
    const __m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * (size_t)j));
    if (fmt == TKV_FMT_F16) {
        return _mm256_cvtph_ps(h);
    }
    /* bf16 is the top half of an fp32: widen and shift left 16 */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

TKV_INLINE float tkv_elem_flt(const tkv_code_format fmt, const uint8_t *p, uint32_t j) {
    if (fmt == TKV_FMT_F32) {
        float f;
        memcpy(&f, p + 4 * (size_t)j, sizeof f);
        return f;
    }
    const uint16_t h = tkv_kc_u16(p + 2 * (size_t)j);
    if (fmt == TKV_FMT_F16) {
        return _cvtsh_ss(h);
    }
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

TKV_INLINE float tkv_dot_flt(const tkv_code_format fmt, const float *q, const uint8_t *p,
                             uint32_t d) {
    /* two accumulators hide the FMA latency */
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    uint32_t j = 0;
    for (; j + 16 <= d; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), tkv_load_flt(fmt, p, j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), tkv_load_flt(fmt, p, j + 8), a1);
    }
    for (; j + 8 <= d; j += 8) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), tkv_load_flt(fmt, p, j), a0);
    }
    float s = tkv_hsum8(_mm256_add_ps(a0, a1));
    for (; j < d; j++) {
        s += q[j] * tkv_elem_flt(fmt, p, j);
    }
    return s;
}

TKV_INLINE void tkv_axpy_flt(const tkv_code_format fmt, float *acc, const uint8_t *p, uint32_t d,
                             float w) {
    const __m256 vw = _mm256_set1_ps(w);
    uint32_t j = 0;
    for (; j + 8 <= d; j += 8) {
        _mm256_storeu_ps(acc + j,
                         _mm256_fmadd_ps(vw, tkv_load_flt(fmt, p, j), _mm256_loadu_ps(acc + j)));
    }
    for (; j < d; j++) {
        acc[j] += w * tkv_elem_flt(fmt, p, j);
    }
}

#define TKV_FLOAT_KERNELS(name, fmt)                                                               \
    static void tkv_scores_##name##_avx2(const tkv_code_layout *L, const float *q,                 \
                                         const uint8_t *codes, size_t n, float *out) {             \
        for (size_t i = 0; i < n; i++) {                                                           \
            out[i] = tkv_dot_flt(fmt, q, codes + i * L->stride, L->d);                             \
        }                                                                                          \
    }                                                                                              \
    static void tkv_accum_##name##_avx2(const tkv_code_layout *L, const float *w, float threshold, \
                                        const uint8_t *codes, size_t n, float *acc) {              \
        for (size_t i = 0; i < n; i++) {                                                           \
            if (fabsf(w[i]) >= threshold) {                                                        \
                tkv_axpy_flt(fmt, acc, codes + i * L->stride, L->d, w[i]);                         \
            }                                                                                      \
        }                                                                                          \
    }

TKV_FLOAT_KERNELS(f32, TKV_FMT_F32)
TKV_FLOAT_KERNELS(f16, TKV_FMT_F16)
TKV_FLOAT_KERNELS(bf16, TKV_FMT_BF16)

/* ---------------------------------------------------------------------------------
 * q8_0 / q4_0: blocks of 32 (fp16 scale first), the last block holds d % 32.
 * A full block is four registers: q8 widens 8 int8 at a time; q4 widens 8 bytes and
 * takes low nibbles (elements k) and high nibbles (k + 16).  Partial blocks: scalar.
 * --------------------------------------------------------------------------------- */

/* The 32 values of a full block (without the scale); x[r] holds elements 8r..8r+7. */
TKV_INLINE void tkv_block_vals(const int four_bit, const uint8_t *qs, __m256 x[4]) {
    if (four_bit) {
        const __m256i m15 = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
        for (int h = 0; h < 2; h++) {
            const __m256i v = tkv_u8x8(qs + 8 * h);
            x[h] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, m15), eight));
            x[h + 2] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), eight));
        }
    } else {
        for (int r = 0; r < 4; r++) {
            x[r] = _mm256_cvtepi32_ps(
                _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * r))));
        }
    }
}

/* Element k of a partial block of t values (without the scale). */
static inline float tkv_block_elem(int four_bit, const uint8_t *qs, uint32_t t, uint32_t k) {
    if (!four_bit) {
        return (float)(int8_t)qs[k];
    }
    const uint32_t half = t / 2;
    return k < half ? (float)((int)(qs[k] & 15) - 8) : (float)((int)(qs[k - half] >> 4) - 8);
}

TKV_INLINE float tkv_dot_block(const int four_bit, const float *q, const uint8_t *p, uint32_t d) {
    __m256 acc = _mm256_setzero_ps();
    uint32_t b0 = 0;
    for (; b0 + 32 <= d; b0 += 32) {
        __m256 x[4];
        tkv_block_vals(four_bit, p + 2, x);
        /* sum q*x over the block first, then one FMA with the block scale */
        __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(q + b0), x[0]);
        __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(q + b0 + 8), x[1]);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + b0 + 16), x[2], s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + b0 + 24), x[3], s1);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(tkv_h2f(p)), _mm256_add_ps(s0, s1), acc);
        p += four_bit ? 18 : 34;
    }
    float s = tkv_hsum8(acc);
    if (b0 < d) {
        const uint32_t t = d - b0;
        float bs = 0.0f;
        for (uint32_t k = 0; k < t; k++) {
            bs += q[b0 + k] * tkv_block_elem(four_bit, p + 2, t, k);
        }
        s += tkv_h2f(p) * bs;
    }
    return s;
}

TKV_INLINE void tkv_axpy_block(const int four_bit, float *acc, const uint8_t *p, uint32_t d,
                               float w) {
    uint32_t b0 = 0;
    for (; b0 + 32 <= d; b0 += 32) {
        __m256 x[4];
        tkv_block_vals(four_bit, p + 2, x);
        const __m256 ws = _mm256_set1_ps(w * tkv_h2f(p));
        for (int r = 0; r < 4; r++) {
            float *a = acc + b0 + 8 * r;
            _mm256_storeu_ps(a, _mm256_fmadd_ps(ws, x[r], _mm256_loadu_ps(a)));
        }
        p += four_bit ? 18 : 34;
    }
    if (b0 < d) {
        const uint32_t t = d - b0;
        const float ws = w * tkv_h2f(p);
        for (uint32_t k = 0; k < t; k++) {
            acc[b0 + k] += ws * tkv_block_elem(four_bit, p + 2, t, k);
        }
    }
}

#define TKV_BLOCK_KERNELS(name, four_bit)                                                          \
    static void tkv_scores_##name##_avx2(const tkv_code_layout *L, const float *q,                 \
                                         const uint8_t *codes, size_t n, float *out) {             \
        for (size_t i = 0; i < n; i++) {                                                           \
            out[i] = tkv_dot_block(four_bit, q, codes + i * L->stride, L->d);                      \
        }                                                                                          \
    }                                                                                              \
    static void tkv_accum_##name##_avx2(const tkv_code_layout *L, const float *w, float threshold, \
                                        const uint8_t *codes, size_t n, float *acc) {              \
        for (size_t i = 0; i < n; i++) {                                                           \
            if (fabsf(w[i]) >= threshold) {                                                        \
                tkv_axpy_block(four_bit, acc, codes + i * L->stride, L->d, w[i]);                  \
            }                                                                                      \
        }                                                                                          \
    }

TKV_BLOCK_KERNELS(q8_0, 0)
TKV_BLOCK_KERNELS(q4_0, 1)

/* ---------------------------------------------------------------------------------
 * turbo: scale * centroids[idx], indices in bit planes (pack.h).
 *
 * tkv_turbo_walk visits the full groups 8 elements at a time, yielding the 8 looked-up
 * centroids and the position of lane 0: P4 groups of 32 load 8 bytes twice (low
 * nibbles: elements k, high: k + 16), P2 groups of 64 load 8 bytes twice and shift out
 * four bit pairs (elements k + 16 s).  The partial group goes through tkv_kc_index.
 * --------------------------------------------------------------------------------- */

typedef struct tkv_turbo_tables {
    __m256 t[4]; /* centroids 0..7, 8..15, 16..23, 24..31 */
} tkv_turbo_tables;

/* 16-entry lookup: two permutes, index bit 3 (shifted into the sign) picks one. */
static inline __m256 tkv_lookup16(__m256 a, __m256 b, __m256i idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(a, idx), _mm256_permutevar8x32_ps(b, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

/* Centroids of idx (bits 0..bits-1 of each lane; for 5-bit P4+P1 codes, idx holds bits
 * 0..3 and hi the lane mask of bit 4). */
TKV_INLINE __m256 tkv_lookup(const uint32_t bits, const tkv_turbo_tables *T, __m256i idx,
                             __m256i hi) {
    if (bits <= 3) {
        return _mm256_permutevar8x32_ps(T->t[0], idx);
    }
    const __m256 lo16 = tkv_lookup16(T->t[0], T->t[1], idx);
    if (bits == 4) {
        return lo16;
    }
    const __m256 hi16 = tkv_lookup16(T->t[2], T->t[3], idx);
    if (bits == 5) {
        return _mm256_blendv_ps(lo16, hi16, _mm256_castsi256_ps(hi));
    }
    return _mm256_blendv_ps(lo16, hi16, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27)));
}

typedef struct tkv_turbo_sink {
    int accum;      /* 0: dot with q into sum0/sum1; 1: acc += ws * c */
    const float *q; /* scores */
    __m256 sum0, sum1;
    float tail; /* scores: scalar part of the partial group */
    float *acc; /* accum */
    float ws;
} tkv_turbo_sink;

TKV_INLINE void tkv_sink_chunk(tkv_turbo_sink *s, int second, __m256 c, uint32_t j) {
    if (s->accum) {
        _mm256_storeu_ps(s->acc + j,
                         _mm256_fmadd_ps(_mm256_set1_ps(s->ws), c, _mm256_loadu_ps(s->acc + j)));
    } else if (second) {
        s->sum1 = _mm256_fmadd_ps(_mm256_loadu_ps(s->q + j), c, s->sum1);
    } else {
        s->sum0 = _mm256_fmadd_ps(_mm256_loadu_ps(s->q + j), c, s->sum0);
    }
}

TKV_INLINE void tkv_turbo_walk(const uint32_t bits, uint32_t d, const uint8_t *pl,
                               const float *centroids, const tkv_turbo_tables *T,
                               tkv_turbo_sink *s) {
    const __m256i m15 = _mm256_set1_epi32(15), m3 = _mm256_set1_epi32(3);
    const __m256i four = _mm256_set1_epi32(4), none = _mm256_setzero_si256();
    uint32_t end; /* first element of the partial group */
    if (bits == 4 || bits == 5) {
        const uint8_t *p1 = pl + d / 2; /* bit 4 (5-bit codes) */
        end = d & ~31u;
        for (uint32_t g0 = 0; g0 < end; g0 += 32) {
            for (uint32_t h = 0; h < 2; h++) {
                const __m256i v = tkv_u8x8(pl + g0 / 2 + 8 * h);
                const uint32_t j0 = g0 + 8 * h, j1 = g0 + 16 + 8 * h;
                const __m256i b0 = bits == 5 ? tkv_bitmask8(p1[j0 / 8]) : none;
                const __m256i b1 = bits == 5 ? tkv_bitmask8(p1[j1 / 8]) : none;
                tkv_sink_chunk(s, 0, tkv_lookup(bits, T, _mm256_and_si256(v, m15), b0), j0);
                tkv_sink_chunk(s, 1, tkv_lookup(bits, T, _mm256_srli_epi32(v, 4), b1), j1);
            }
        }
    } else if (bits == 2 || bits == 3) {
        const uint8_t *p1 = pl + tkv_kc_plane2_bytes(d); /* bit 2 (3-bit codes) */
        end = d & ~63u;
        for (uint32_t g0 = 0; g0 < end; g0 += 64) {
            for (uint32_t h = 0; h < 2; h++) {
                const __m256i v = tkv_u8x8(pl + g0 / 4 + 8 * h);
                for (uint32_t sl = 0; sl < 4; sl++) {
                    const uint32_t j = g0 + 16 * sl + 8 * h;
                    __m256i idx = _mm256_and_si256(_mm256_srli_epi32(v, 2 * (int)sl), m3);
                    if (bits == 3) {
                        idx = _mm256_or_si256(idx, _mm256_and_si256(tkv_bitmask8(p1[j / 8]), four));
                    }
                    tkv_sink_chunk(s, sl & 1, tkv_lookup(bits, T, idx, none), j);
                }
            }
        }
    } else { /* 8: one index byte per element */
        end = d & ~7u;
        for (uint32_t j = 0; j < end; j += 8) {
            tkv_sink_chunk(s, (j >> 3) & 1, tkv_lookup(bits, T, tkv_u8x8(pl + j), none), j);
        }
    }
    for (uint32_t j = end; j < d; j++) {
        const float c = centroids[tkv_kc_index(bits, d, pl, j)];
        if (s->accum) {
            s->acc[j] += s->ws * c;
        } else {
            s->tail += s->q[j] * c;
        }
    }
}

/* QJL sketch term sum_j sq_j * (bit j ? +1 : -1): flip the sign bit of the lanes whose
 * bit is clear (xor with signbit & ~mask). */
static float tkv_qjl_dot(const float *sq, const uint8_t *signs, uint32_t d) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    uint32_t j = 0;
    for (; j + 16 <= d; j += 16) {
        const __m256 m0 = _mm256_castsi256_ps(tkv_bitmask8(signs[j / 8]));
        const __m256 m1 = _mm256_castsi256_ps(tkv_bitmask8(signs[j / 8 + 1]));
        a0 = _mm256_add_ps(a0, _mm256_xor_ps(_mm256_loadu_ps(sq + j), _mm256_andnot_ps(m0, sign)));
        a1 = _mm256_add_ps(a1,
                           _mm256_xor_ps(_mm256_loadu_ps(sq + j + 8), _mm256_andnot_ps(m1, sign)));
    }
    for (; j + 8 <= d; j += 8) {
        const __m256 m0 = _mm256_castsi256_ps(tkv_bitmask8(signs[j / 8]));
        a0 = _mm256_add_ps(a0, _mm256_xor_ps(_mm256_loadu_ps(sq + j), _mm256_andnot_ps(m0, sign)));
    }
    float s = tkv_hsum8(_mm256_add_ps(a0, a1));
    for (; j < d; j++) {
        s += tkv_kc_p1(signs, j) ? sq[j] : -sq[j];
    }
    return s;
}

/* acc[j] += bit j ? wg : -wg */
static void tkv_qjl_axpy(float *acc, const uint8_t *signs, uint32_t d, float wg) {
    const __m256 pos = _mm256_set1_ps(wg), neg = _mm256_set1_ps(-wg);
    uint32_t j = 0;
    for (; j + 8 <= d; j += 8) {
        const __m256 m = _mm256_castsi256_ps(tkv_bitmask8(signs[j / 8]));
        _mm256_storeu_ps(acc + j,
                         _mm256_add_ps(_mm256_loadu_ps(acc + j), _mm256_blendv_ps(neg, pos, m)));
    }
    for (; j < d; j++) {
        acc[j] += tkv_kc_p1(signs, j) ? wg : -wg;
    }
}

static tkv_turbo_tables tkv_tables(const tkv_code_layout *L) {
    tkv_turbo_tables T;
    for (int k = 0; k < 4; k++) {
        T.t[k] = _mm256_loadu_ps(L->centroids + 8 * k);
    }
    return T;
}

/* Horizontal sums of four registers at once: [sum a, sum b, sum c, sum d]. */
static inline __m128 tkv_reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
    /* [a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567] after two rounds of hadd */
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* Four keys per pass: their walks are independent (the out-of-order core overlaps
 * them), one transposed reduction serves all four and their fp16 scales convert
 * together. */
TKV_INLINE void tkv_turbo_scores_bits(const uint32_t bits, const tkv_code_layout *L, const float *q,
                                      const uint8_t *codes, size_t n, float *out) {
    const tkv_turbo_tables T = tkv_tables(L);
    const uint32_t d = L->d;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256 sum[4];
        float tail[4];
        uint16_t h[8] = {0};
        for (int k = 0; k < 4; k++) {
            const uint8_t *code = codes + (i + (size_t)k) * L->stride;
            tkv_turbo_sink s = {0, q, _mm256_setzero_ps(), _mm256_setzero_ps(), 0.0f, NULL, 0.0f};
            tkv_turbo_walk(bits, d, code + L->payload_off, L->centroids, &T, &s);
            sum[k] = _mm256_add_ps(s.sum0, s.sum1);
            tail[k] = s.tail;
            h[k] = tkv_kc_u16(code + L->scale_off);
        }
        const __m128 dot =
            _mm_add_ps(tkv_reduce4(sum[0], sum[1], sum[2], sum[3]), _mm_loadu_ps(tail));
        /* the scale multiplies the whole dot product once */
        const __m128 sc = _mm_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)h));
        _mm_storeu_ps(out + i, _mm_mul_ps(sc, dot));
    }
    for (; i < n; i++) {
        const uint8_t *code = codes + i * L->stride;
        tkv_turbo_sink s = {0, q, _mm256_setzero_ps(), _mm256_setzero_ps(), 0.0f, NULL, 0.0f};
        tkv_turbo_walk(bits, d, code + L->payload_off, L->centroids, &T, &s);
        const float dot = tkv_hsum8(_mm256_add_ps(s.sum0, s.sum1)) + s.tail;
        out[i] = tkv_h2f(code + L->scale_off) * dot;
    }
    if (L->has_qjl) {
        for (size_t k = 0; k < n; k++) {
            const uint8_t *code = codes + k * L->stride;
            const float g = L->qjl_coef * tkv_h2f(code + L->rnorm_off);
            out[k] += g * tkv_qjl_dot(q + d, code + L->signs_off, d);
        }
    }
}

TKV_INLINE void tkv_turbo_accum_bits(const uint32_t bits, const tkv_code_layout *L, const float *w,
                                     float threshold, const uint8_t *codes, size_t n, float *acc) {
    const tkv_turbo_tables T = tkv_tables(L);
    const uint32_t d = L->d;
    for (size_t i = 0; i < n; i++) {
        if (!(fabsf(w[i]) >= threshold)) {
            continue;
        }
        const uint8_t *code = codes + i * L->stride;
        /* fold w * scale into one broadcast: acc += (w * scale) * centroid */
        tkv_turbo_sink s = {1,
                            NULL,
                            _mm256_setzero_ps(),
                            _mm256_setzero_ps(),
                            0.0f,
                            acc,
                            w[i] * tkv_h2f(code + L->scale_off)};
        tkv_turbo_walk(bits, d, code + L->payload_off, L->centroids, &T, &s);
        if (L->has_qjl) {
            const float g = L->qjl_coef * tkv_h2f(code + L->rnorm_off);
            tkv_qjl_axpy(acc + d, code + L->signs_off, d, w[i] * g);
        }
    }
}

static void tkv_scores_turbo_avx2(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                                  size_t n, float *out) {
#define TKV_CALL(b) tkv_turbo_scores_bits(b, L, q, codes, n, out)
    TKV_TURBO_BITS_DISPATCH(L->bits, TKV_CALL, tkv_scores_scalar(L, q, codes, n, out));
#undef TKV_CALL
}

static void tkv_accum_turbo_avx2(const tkv_code_layout *L, const float *w, float threshold,
                                 const uint8_t *codes, size_t n, float *acc) {
#define TKV_CALL(b) tkv_turbo_accum_bits(b, L, w, threshold, codes, n, acc)
    TKV_TURBO_BITS_DISPATCH(L->bits, TKV_CALL,
                            tkv_accum_scalar(L, w, threshold, codes, n, acc));
#undef TKV_CALL
}

/* ---------------------------------------------------------------------------------
 * fwht: spans h >= 8 pair whole registers; h = 1, 2 (vpermilps) and h = 4 (vperm2f128)
 * stay in one register: x * sign + partner, sign = +1 on the lower half of each pair and
 * -1 on the upper.  x * (+-1) is exact, so each stage equals the scalar a + b, a - b.
 * --------------------------------------------------------------------------------- */

static void tkv_fwht_avx2(float *x, uint32_t d, float scale) {
    if (d < 8) {
        tkv_fwht_scalar(x, d, scale);
        return;
    }
    const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    for (uint32_t i = 0; i < d; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        v = _mm256_fmadd_ps(v, s1, _mm256_permute_ps(v, 0xB1));         /* h = 1 */
        v = _mm256_fmadd_ps(v, s2, _mm256_permute_ps(v, 0x4E));         /* h = 2 */
        v = _mm256_fmadd_ps(v, s4, _mm256_permute2f128_ps(v, v, 0x01)); /* h = 4 */
        _mm256_storeu_ps(x + i, v);
    }
    for (uint32_t h = 8; h < d; h *= 2) {
        for (uint32_t i = 0; i < d; i += 2 * h) {
            for (uint32_t j = i; j < i + h; j += 8) {
                const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
                _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
            }
        }
    }
    const __m256 vs = _mm256_set1_ps(scale);
    for (uint32_t i = 0; i < d; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    }
}

/* ---------------------------------------------------------------------------------
 * matvec: four rows per pass share each load of x; matvec_t: y += x[r] * row r for
 * four rows per pass, so y is loaded and stored once per four rows.
 * --------------------------------------------------------------------------------- */

static void tkv_matvec_avx2(const float *m, const float *x, uint32_t rows, uint32_t cols,
                            float *y) {
    const uint32_t cv = cols & ~7u;
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = m + (size_t)r * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (uint32_t c = 0; c < cv; c += 8) {
            const __m256 xv = _mm256_loadu_ps(x + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + c), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + c), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + c), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + c), xv, a3);
        }
        float s0 = tkv_hsum8(a0), s1 = tkv_hsum8(a1), s2 = tkv_hsum8(a2), s3 = tkv_hsum8(a3);
        for (uint32_t c = cv; c < cols; c++) {
            s0 += r0[c] * x[c];
            s1 += r1[c] * x[c];
            s2 += r2[c] * x[c];
            s3 += r3[c] * x[c];
        }
        y[r] = s0;
        y[r + 1] = s1;
        y[r + 2] = s2;
        y[r + 3] = s3;
    }
    for (; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        __m256 a = _mm256_setzero_ps();
        for (uint32_t c = 0; c < cv; c += 8) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(x + c), a);
        }
        float s = tkv_hsum8(a);
        for (uint32_t c = cv; c < cols; c++) {
            s += row[c] * x[c];
        }
        y[r] = s;
    }
}

static void tkv_matvec_t_avx2(const float *m, const float *x, uint32_t rows, uint32_t cols,
                              float *y) {
    const uint32_t cv = cols & ~7u;
    memset(y, 0, cols * sizeof *y);
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = m + (size_t)r * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;
        const __m256 x0 = _mm256_set1_ps(x[r]), x1 = _mm256_set1_ps(x[r + 1]);
        const __m256 x2 = _mm256_set1_ps(x[r + 2]), x3 = _mm256_set1_ps(x[r + 3]);
        for (uint32_t c = 0; c < cv; c += 8) {
            __m256 a = _mm256_loadu_ps(y + c);
            a = _mm256_fmadd_ps(x0, _mm256_loadu_ps(r0 + c), a);
            a = _mm256_fmadd_ps(x1, _mm256_loadu_ps(r1 + c), a);
            a = _mm256_fmadd_ps(x2, _mm256_loadu_ps(r2 + c), a);
            a = _mm256_fmadd_ps(x3, _mm256_loadu_ps(r3 + c), a);
            _mm256_storeu_ps(y + c, a);
        }
        for (uint32_t c = cv; c < cols; c++) {
            y[c] += x[r] * r0[c] + x[r + 1] * r1[c] + x[r + 2] * r2[c] + x[r + 3] * r3[c];
        }
    }
    for (; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        const __m256 xr = _mm256_set1_ps(x[r]);
        for (uint32_t c = 0; c < cv; c += 8) {
            _mm256_storeu_ps(y + c,
                             _mm256_fmadd_ps(xr, _mm256_loadu_ps(row + c), _mm256_loadu_ps(y + c)));
        }
        for (uint32_t c = cv; c < cols; c++) {
            y[c] += x[r] * row[c];
        }
    }
}


/*
 * softmax with a vectorized exp.  exp(x) = 2^k * exp(r), k = round(x / ln 2),
 * r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in a high and a low part so r is exact
 * to float precision), exp(r) by its degree-6 Taylor polynomial (error < 2e-8 on that
 * interval), and 2^k applied to the exponent.  Inputs below -87 give 0, as expf's
 * subnormal results do not matter next to the maximum's 1.
 */
static inline __m256 tkv_exp_avx2(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^k: k in [-126, 128] after the clamp, added to the exponent field */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static float tkv_hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static float tkv_softmax_avx2(float *x, size_t n, float scale) {
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        _mm256_storeu_ps(x + i, v);
        vmax = _mm256_max_ps(vmax, v);
    }
    float mx = tkv_hmax8(vmax);
    for (; i < n; i++) {
        x[i] *= scale;
        mx = x[i] > mx ? x[i] : mx;
    }
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = tkv_exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = tkv_hsum8(vsum);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    }
    for (; i < n; i++) {
        x[i] *= inv;
    }
    return mx + logf(sum);
}

/* Grouped queries: one pass per query (the AVX2 lookups cost little next to the FMAs). */
static void tkv_scores_turbo_multi_avx2(const tkv_code_layout *L, const float *const *qs, int nq,
                                        const uint8_t *codes, size_t n, float *const *outs) {
    for (int k = 0; k < nq; k++) {
        tkv_scores_turbo_avx2(L, qs[k], codes, n, outs[k]);
    }
}

static void tkv_accum_turbo_multi_avx2(const tkv_code_layout *L, const float *const *ws, int nq,
                                       float threshold, const uint8_t *codes, size_t n,
                                       float *const *accs) {
    for (int k = 0; k < nq; k++) {
        tkv_accum_turbo_avx2(L, ws[k], threshold, codes, n, accs[k]);
    }
}

const tkv_codec_kernels tkv_codec_kernels_avx2 = {
    .isa = "avx2",
    .scores = {tkv_scores_f32_avx2, tkv_scores_f16_avx2, tkv_scores_bf16_avx2, tkv_scores_q8_0_avx2,
               tkv_scores_q4_0_avx2, tkv_scores_turbo_avx2, tkv_scores_trellis_avx2},
    .accum = {tkv_accum_f32_avx2, tkv_accum_f16_avx2, tkv_accum_bf16_avx2, tkv_accum_q8_0_avx2,
              tkv_accum_q4_0_avx2, tkv_accum_turbo_avx2, tkv_accum_trellis_avx2},
    .fwht = tkv_fwht_avx2,
    .matvec = tkv_matvec_avx2,
    .matvec_t = tkv_matvec_t_avx2,
    .softmax = tkv_softmax_avx2,
    .trellis_step = tkv_trellis_step_avx2,
    .scores_multi = {[TKV_FMT_TURBO] = tkv_scores_turbo_multi_avx2,
                     [TKV_FMT_TRELLIS] = tkv_scores_trellis_multi_avx2},
    .accum_multi = {[TKV_FMT_TURBO] = tkv_accum_turbo_multi_avx2,
                    [TKV_FMT_TRELLIS] = tkv_accum_trellis_multi_avx2},
};
