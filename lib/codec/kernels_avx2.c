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
 * The float formats, q8_0 / q4_0, QJL terms, fwht, matvec and softmax are the bodies of
 * kernels_x86_body.h at this width; the turbo walk below is this ISA's own.
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

static float tkv_hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
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
 * The ISA of kernels_x86_body.h
 * --------------------------------------------------------------------------------- */

#define TKV_FN(name) tkv_##name##_avx2
#define TKV_VW 8
#define TKV_VF __m256
#define TKV_VZERO() _mm256_setzero_ps()
#define TKV_VSET1(x) _mm256_set1_ps(x)
#define TKV_VLOAD(p) _mm256_loadu_ps(p)
#define TKV_VSTORE(p, v) _mm256_storeu_ps(p, v)
#define TKV_VADD(a, b) _mm256_add_ps(a, b)
#define TKV_VSUB(a, b) _mm256_sub_ps(a, b)
#define TKV_VMUL(a, b) _mm256_mul_ps(a, b)
#define TKV_VMAX(a, b) _mm256_max_ps(a, b)
#define TKV_VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define TKV_VFNMA(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define TKV_VROUND(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define TKV_VHSUM(v) tkv_hsum8(v)
#define TKV_VHMAX(v) tkv_hmax8(v)
#define TKV_MASKED_TAIL 0

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

/* q8 widens 8 int8 at a time; q4 widens 8 bytes and takes low nibbles (elements k) and
 * high nibbles (k + 16). */
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

/* Flip the sign bit of the lanes whose bit is clear (xor with signbit & ~mask). */
static inline __m256 tkv_signs(__m256 v, uint32_t b) {
    const __m256 m = _mm256_castsi256_ps(tkv_bitmask8(b));
    return _mm256_xor_ps(v, _mm256_andnot_ps(m, _mm256_set1_ps(-0.0f)));
}

static inline __m256 tkv_select(__m256 pos, __m256 neg, uint32_t b) {
    return _mm256_blendv_ps(neg, pos, _mm256_castsi256_ps(tkv_bitmask8(b)));
}

/* h = 1, 2 (vpermilps) and h = 4 (vperm2f128): x * sign + partner, sign = +1 on the lower
 * half of each pair and -1 on the upper; x * (+-1) is exact. */
static inline __m256 tkv_fwht_lanes(__m256 v) {
    const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    v = _mm256_fmadd_ps(v, s1, _mm256_permute_ps(v, 0xB1));         /* h = 1 */
    v = _mm256_fmadd_ps(v, s2, _mm256_permute_ps(v, 0x4E));         /* h = 2 */
    v = _mm256_fmadd_ps(v, s4, _mm256_permute2f128_ps(v, v, 0x01)); /* h = 4 */
    return v;
}

/* 2^k added to the exponent field (k in [-126, 128] after the clamp of tkv_vexp). */
static inline __m256 tkv_exp2i(__m256 p, __m256 k) {
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#include "codec/kernels_x86_body.h"

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
    .trellis_forward = tkv_trellis_forward_avx2,
    .scores_multi = {[TKV_FMT_TURBO] = tkv_scores_turbo_multi_avx2,
                     [TKV_FMT_TRELLIS] = tkv_scores_trellis_multi_avx2},
    .accum_multi = {[TKV_FMT_TURBO] = tkv_accum_turbo_multi_avx2,
                    [TKV_FMT_TRELLIS] = tkv_accum_trellis_multi_avx2},
};
