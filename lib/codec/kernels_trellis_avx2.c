/*
 * kernels_trellis_avx2.c - AVX2 score / accumulate kernels of the trellis codecs.
 *
 * A vector is decoded into floats, then dotted / accumulated 8 lanes at a time.  The
 * 2- and 4-bit codes (one-byte windows) read the int8 table with vpshufb, 32 coordinates
 * at a time (tkv_trellis_decode_lut8); the 3-bit ones (9-bit windows) compute the table
 * slots in AVX2 registers, then load 8 table floats one by one (an 8-lane gather measured
 * ~30 cycles on this project's x86 machines, slower than the loads).
 * Tested against kernels_scalar.c (tests/c/test_kernels_codec.c).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"

/*
 * Unscaled decode of one trellis vector: the 8 table slots of a group from two 32-bit
 * loads (4 windows each: at most 3N + L + 8 - P <= 32 bits), per-lane shifts and the slot
 * permutation in AVX2, then 8 scalar table loads (cheaper than a gather here).  Group 0
 * takes its older symbols from the end of the stream; the last group reads no byte past it.
 */
static inline __attribute__((always_inline)) void tkv_trellis_decode_n(const float *tab,
                                                                       const uint8_t *s, uint32_t d,
                                                                       float *out, const uint32_t N,
                                                                       const uint32_t P) {
    const uint32_t L = P + N, nb = d * N / 8, groups = d / 8;
    /* lanes 0-3 from the word at byte gN - 1 (bit 8 - P: window of coordinate 8g), lanes
     * 4-7 from the word at byte gN - 1 + (8 - P + 4N) / 8 */
    const uint32_t hi_byte = (8 - P + 4 * N) >> 3, hi_shift = (8 - P + 4 * N) & 7;
    const __m256i shifts = _mm256_setr_epi32(
        (int)(8 - P), (int)(8 - P + N), (int)(8 - P + 2 * N), (int)(8 - P + 3 * N), (int)hi_shift,
        (int)(hi_shift + N), (int)(hi_shift + 2 * N), (int)(hi_shift + 3 * N));
    const __m256i wmask = _mm256_set1_epi32((int)((1u << L) - 1u));
    const __m256i amask = _mm256_set1_epi32((int)((1u << N) - 1u));
    uint8_t edge[16]; /* group 0: the last byte, then the first bytes; last group: padded */
    int32_t slot[8];
    for (uint32_t g = 0; g < groups; g++) {
        const uint8_t *p;
        if (g == 0) { /* constant-size copies: no library calls in the inner loop */
            edge[0] = s[nb - 1];
            if (nb >= 8) {
                memcpy(edge + 1, s, 8);
            } else {
                memset(edge + 1, 0, 8);
                memcpy(edge + 1, s, nb);
            }
            p = edge;
        } else if (g + 1 == groups) {
            memset(edge, 0, sizeof edge);
            memcpy(edge, s + g * N - 1, N + 1);
            p = edge;
        } else {
            p = s + g * N - 1;
        }
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + hi_byte, 4);
        const __m256i v = _mm256_setr_m128i(_mm_set1_epi32((int)lo), _mm_set1_epi32((int)hi));
        const __m256i w = _mm256_and_si256(_mm256_srlv_epi32(v, shifts), wmask);
        const __m256i sl = _mm256_or_si256(_mm256_srli_epi32(w, (int)N),
                                           _mm256_slli_epi32(_mm256_and_si256(w, amask), (int)P));
        _mm256_storeu_si256((__m256i *)slot, sl);
        const __m128 a = _mm_setr_ps(tab[slot[0]], tab[slot[1]], tab[slot[2]], tab[slot[3]]);
        const __m128 b = _mm_setr_ps(tab[slot[4]], tab[slot[5]], tab[slot[6]], tab[slot[7]]);
        _mm256_storeu_ps(out + 8 * g, _mm256_setr_m128(a, b));
    }
}

/*
 * 256-entry windows (N = 2 and 4: L = 8 bits, one byte per window) decode without table
 * loads: the windows of 32 coordinates are built as bytes from the stream and the stream
 * one byte back (its bytes shifted across byte boundaries), then read from the int8 table
 * q8 by vpshufb: row h (16 entries, in both lanes) by the low nibble, then a tree of
 * blends on the four bits of the high nibble (16 shuffles and 15 blends per 32 windows).
 * out gets q8 values as floats (unscaled by q8_scale).
 */
typedef struct tkv_lut8 {
    __m256i row[16]; /* q8[16 h .. 16 h + 15] in both lanes */
} tkv_lut8;

static void tkv_lut8_init(tkv_lut8 *t, const int8_t *q8) {
    for (int h = 0; h < 16; h++) {
        t->row[h] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q8 + 16 * h)));
    }
}

/* (p >> (8 - t)) | (c << t) per byte: the byte-aligned 8 bits that start t bits before
 * each byte of c (p: the bytes one before c) */
static inline __m128i tkv_shift_in(__m128i p, __m128i c, const int t) {
    const __m128i lo =
        _mm_and_si128(_mm_srli_epi16(p, 8 - t), _mm_set1_epi8((char)(0xff >> (8 - t))));
    const __m128i hi = _mm_and_si128(_mm_slli_epi16(c, t), _mm_set1_epi8((char)(0xff << t)));
    return _mm_or_si128(lo, hi);
}

static inline __attribute__((always_inline)) void tkv_trellis_decode_lut8(const tkv_lut8 *T,
                                                                          const uint8_t *s,
                                                                          uint32_t d, float *out,
                                                                          const uint32_t N) {
    const uint32_t nb = d * N / 8, per = 4 * N; /* stream bytes per 32 coordinates */
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    uint8_t buf[24];
    for (uint32_t j0 = 0; j0 < d; j0 += 32) {
        const uint32_t off = j0 * N / 8;
        __m128i c, p;
        if (N == 4 && off > 0 && off + 16 <= nb) {
            c = _mm_loadu_si128((const __m128i *)(s + off));
            p = _mm_loadu_si128((const __m128i *)(s + off - 1));
        } else if (N == 2 && off > 0 && off + 8 <= nb) {
            c = _mm_loadl_epi64((const __m128i *)(s + off));
            p = _mm_loadl_epi64((const __m128i *)(s + off - 1));
        } else { /* the first block (tail-biting byte) or one near the end: a padded copy */
            memset(buf, 0, sizeof buf);
            buf[0] = off == 0 ? s[nb - 1] : s[off - 1];
            const uint32_t take = nb - off < per ? nb - off : per;
            for (uint32_t i = 0; i < take; i++) {
                buf[1 + i] = s[off + i];
            }
            p = _mm_loadu_si128((const __m128i *)buf);
            c = _mm_loadu_si128((const __m128i *)(buf + 1));
        }
        __m128i wlo, whi; /* windows of coordinates j0 .. j0 + 15, j0 + 16 .. j0 + 31 */
        if (N == 4) {     /* window 2k: 4 bits back from byte k; 2k + 1: byte k */
            const __m128i e = tkv_shift_in(p, c, 4);
            wlo = _mm_unpacklo_epi8(e, c);
            whi = _mm_unpackhi_epi8(e, c);
        } else { /* N = 2: window 4k + r starts 6 - 2 r bits back from byte k */
            const __m128i ab = _mm_unpacklo_epi8(tkv_shift_in(p, c, 6), tkv_shift_in(p, c, 4));
            const __m128i cd = _mm_unpacklo_epi8(tkv_shift_in(p, c, 2), c);
            wlo = _mm_unpacklo_epi16(ab, cd);
            whi = _mm_unpackhi_epi16(ab, cd);
        }
        const __m256i w = _mm256_setr_m128i(wlo, whi);
        const __m256i lo = _mm256_and_si256(w, m4);
        /* a tree of blends keyed on the high nibble's bits, each moved to bit 7 of its byte
         * (vpblendvb reads bit 7; a 16-bit shift left by s < 8 keeps each byte's bit 7
         * within the byte) */
        __m256i r[8];
        const __m256i sel0 = _mm256_slli_epi16(w, 3);
        for (int h = 0; h < 8; h++) {
            r[h] = _mm256_blendv_epi8(_mm256_shuffle_epi8(T->row[2 * h], lo),
                                      _mm256_shuffle_epi8(T->row[2 * h + 1], lo), sel0);
        }
        for (int k = 1, n = 8; k < 4; k++, n /= 2) {
            const __m256i sel = k == 3 ? w : _mm256_slli_epi16(w, 3 - k);
            for (int h = 0; h < n / 2; h++) {
                r[h] = _mm256_blendv_epi8(r[2 * h], r[2 * h + 1], sel);
            }
        }
        const __m256i v = r[0];
        const __m128i v0 = _mm256_castsi256_si128(v), v1 = _mm256_extracti128_si256(v, 1);
        float *o = out + j0; /* out has room for 32 past d */
        _mm256_storeu_ps(o, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0)));
        _mm256_storeu_ps(o + 8, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8))));
        _mm256_storeu_ps(o + 16, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1)));
        _mm256_storeu_ps(o + 24, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8))));
    }
}

/* Decode of one vector for the kernels below: x (d floats, room for 32 more) times the
 * returned factor is the unscaled decode (table values). */
static inline float tkv_trellis_decode_avx2(const tkv_code_layout *L, const tkv_lut8 *T,
                                            const uint8_t *code, float *out) {
    const tkv_trellis *t = L->trellis;
    const uint8_t *s = code + L->payload_off;
    switch (t->bits) {
    case 2:
        tkv_trellis_decode_lut8(T, s, L->d, out, 2);
        return t->q8_scale;
    case 3:
        tkv_trellis_decode_n(t->table, s, L->d, out, 3, 3 * (TKV_TRELLIS_WINDOW_3 - 1));
        return 1.0f;
    default:
        tkv_trellis_decode_lut8(T, s, L->d, out, 4);
        return t->q8_scale;
    }
}

_Static_assert(2 * TKV_TRELLIS_WINDOW_2 == 8 && 4 * TKV_TRELLIS_WINDOW_4 == 8,
               "the 2- and 4-bit trellis windows must be one byte (tkv_trellis_decode_lut8)");

/* The encoder's Viterbi steps (kernels_trellis_step_body.h). */
#define TKV_STEP(name) tkv_##name##_avx2
#define TKV_KEY(c, low, a) _mm256_or_si256(_mm256_andnot_si256(low, c), a)
#include "codec/kernels_trellis_step_body.h"

static inline float tkv_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float tkv_dot_avx2(const float *a, const float *b, uint32_t d) {
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t j = 0; j < d; j += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc);
    }
    return tkv_hsum256(acc);
}

static inline void tkv_axpy_avx2(float w, const float *x, float *acc, uint32_t d) {
    const __m256 wv = _mm256_set1_ps(w);
    for (uint32_t j = 0; j < d; j += 8) {
        _mm256_storeu_ps(acc + j,
                         _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j), _mm256_loadu_ps(acc + j)));
    }
}

void tkv_scores_trellis_multi_avx2(const tkv_code_layout *L, const float *const *qs, int nq,
                                   const uint8_t *codes, size_t n, float *const *outs) {
    float x[1024 + 32];
    tkv_lut8 T;
    if (L->trellis->window_bits == 8) {
        tkv_lut8_init(&T, L->trellis->q8);
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *code = codes + i * L->stride;
        const float f = tkv_trellis_decode_avx2(L, &T, code, x);
        const float scale = tkv_fp16_to_f32(tkv_kc_u16(code + L->scale_off)) * f;
        for (int k = 0; k < nq; k++) {
            outs[k][i] = scale * tkv_dot_avx2(qs[k], x, L->d);
        }
    }
}

void tkv_scores_trellis_avx2(const tkv_code_layout *L, const float *q, const uint8_t *codes,
                             size_t n, float *out) {
    tkv_scores_trellis_multi_avx2(L, &q, 1, codes, n, &out);
}

void tkv_accum_trellis_multi_avx2(const tkv_code_layout *L, const float *const *ws, int nq,
                                  float threshold, const uint8_t *codes, size_t n,
                                  float *const *accs) {
    float x[1024 + 32];
    tkv_lut8 T;
    if (L->trellis->window_bits == 8) {
        tkv_lut8_init(&T, L->trellis->q8);
    }
    for (size_t i = 0; i < n; i++) {
        if (!tkv_kc_row_needed(ws, nq, i, threshold)) {
            continue;
        }
        const uint8_t *code = codes + i * L->stride;
        const float f = tkv_trellis_decode_avx2(L, &T, code, x);
        const float scale = tkv_fp16_to_f32(tkv_kc_u16(code + L->scale_off)) * f;
        for (int k = 0; k < nq; k++) {
            if (fabsf(ws[k][i]) >= threshold) {
                tkv_axpy_avx2(ws[k][i] * scale, x, accs[k], L->d);
            }
        }
    }
}

void tkv_accum_trellis_avx2(const tkv_code_layout *L, const float *w, float threshold,
                            const uint8_t *codes, size_t n, float *acc) {
    tkv_accum_trellis_multi_avx2(L, &w, 1, threshold, codes, n, &acc);
}
