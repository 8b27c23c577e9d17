/*
 * kernels.h - the function-pointer table of the codec kernels.
 *
 * kernels_scalar.c is the reference; kernels_avx2.c / kernels_avx512.c implement
 * the same entries (falling back to the scalar ones where they add nothing).
 * dispatch.c picks one table per process from the CPU features; TKV_ISA
 * overrides it.  Every variant is tested against the scalar one.
 */
#ifndef TKV_CODEC_KERNELS_H
#define TKV_CODEC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "codec/trellis.h"

/* Storage families the score / accumulate kernels understand. */
typedef enum tkv_code_format {
    TKV_FMT_F32 = 0,
    TKV_FMT_F16,
    TKV_FMT_BF16,
    TKV_FMT_Q8_0,
    TKV_FMT_Q4_0,
    TKV_FMT_TURBO,   /* fp16 scale + packed codebook indices (+ QJL signs) */
    TKV_FMT_TRELLIS, /* fp16 scale + tail-biting trellis symbols (trellis.h) */
    TKV_FMT_COUNT
} tkv_code_format;

/* How one encoded vector is laid out; see each codec file for the byte layout. */
typedef struct tkv_code_layout {
    tkv_code_format format;
    uint32_t d;            /* elements per vector */
    uint32_t stride;       /* bytes per encoded vector */
    /* turbo and trellis */
    uint32_t bits;         /* index bits: 1..5, or 8 (one index per byte); trellis: N */
    uint32_t scale_off;    /* fp16: norm / |centroid vector| */
    uint32_t payload_off;  /* packed indices (pack.h) or the trellis stream */
    const tkv_trellis *trellis; /* trellis only */
    /* turbo only */
    int has_qjl;
    uint32_t rnorm_off;    /* fp16: residual norm |r| (QJL) */
    uint32_t signs_off;    /* P1 plane of sign(S r) (QJL) */
    float qjl_coef;        /* sqrt(pi/2) / d */
    const float *centroids; /* 2^bits levels (32 floats of storage; a one-per-byte index
                             * is read by its low 5 bits in every kernel) */
} tkv_code_layout;

/*
 * scores: out[i] = <q, decode_rotated(code i)> for n codes.  For QJL layouts q holds
 *   2d floats: the rotated query, then S times it; the sketch term is added.
 * accum:  acc += w[i] * decode_rotated(code i) for every i with |w[i]| >= threshold.
 *   For QJL layouts acc holds 2d floats: the rotated-domain sum, then the sketch sum
 *   sum_i w[i] * coef * |r_i| * sign_i (the caller applies S^T once).
 * The "rotated" domain is the identity for unrotated codecs.
 */
typedef void (*tkv_scores_fn)(const tkv_code_layout *layout, const float *q, const uint8_t *codes,
                              size_t n, float *out);
typedef void (*tkv_accum_fn)(const tkv_code_layout *layout, const float *w, float threshold,
                             const uint8_t *codes, size_t n, float *acc);

/*
 * The same for nq (1..TKV_MAX_QUERIES) queries over the same codes, for grouped-query
 * attention where several query heads share one KV head: outs[k][i] = scores of qs[k],
 * accs[k] += ws[k][i] * decode(code i).  Only the turbo and trellis formats have them
 * (NULL elsewhere): decoding a vector once serves every query of the group.
 */
#define TKV_MAX_QUERIES 4
typedef void (*tkv_scores_multi_fn)(const tkv_code_layout *layout, const float *const *qs, int nq,
                                    const uint8_t *codes, size_t n, float *const *outs);
typedef void (*tkv_accum_multi_fn)(const tkv_code_layout *layout, const float *const *ws, int nq,
                                   float threshold, const uint8_t *codes, size_t n,
                                   float *const *accs);

typedef struct tkv_codec_kernels {
    const char *isa;
    tkv_scores_fn scores[TKV_FMT_COUNT];
    tkv_accum_fn accum[TKV_FMT_COUNT];
    /* in-place unnormalized Walsh-Hadamard transform of d = 2^k floats, times scale */
    void (*fwht)(float *x, uint32_t d, float scale);
    /* y = M x, M (rows, cols) row-major */
    void (*matvec)(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y);
    /* y = M^T x, M (rows, cols) row-major, x has rows elements */
    void (*matvec_t)(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y);
    /* in place: x[i] = exp(scale * x[i] - max_j scale * x[j]) / sum, n >= 1; returns
     * log sum_j exp(scale * x[j]) (the max plus the log of that sum) */
    float (*softmax)(float *x, size_t n, float scale);
    /* The trellis encoder's Viterbi steps (trellis.c) over x[0..n), each the scalar step
     * tkv_trellis_step_scalar: cost (2^P floats) holds the path costs before step 0 and
     * gets those after step n - 1; keys[j 2^P + i] gets the least key of step j of the
     * state at position i (its kept cost's bits | its dropped symbol), states in the order
     * of tkv_trellis_lane_state.  Every ISA writes the same bits. */
    tkv_trellis_forward_fn trellis_forward;
    tkv_scores_multi_fn scores_multi[TKV_FMT_COUNT];
    tkv_accum_multi_fn accum_multi[TKV_FMT_COUNT];
} tkv_codec_kernels;

/* The table in use (chosen once, thread-safe). */
const tkv_codec_kernels *tkv_codec_kernels_active(void);
/* The table of a named ISA ("scalar", "avx2", "avx512"), or NULL if this CPU or
 * build cannot run it.  For tests and benchmarks. */
const tkv_codec_kernels *tkv_codec_kernels_for_isa(const char *isa);

/* Per-ISA tables, defined in kernels_<isa>.c */
extern const tkv_codec_kernels tkv_codec_kernels_scalar;
#if defined(TKV_HAVE_X86_KERNELS)
extern const tkv_codec_kernels tkv_codec_kernels_avx2;
extern const tkv_codec_kernels tkv_codec_kernels_avx512;
/* kernels_trellis_avx2.c */
void tkv_scores_trellis_avx2(const tkv_code_layout *layout, const float *q, const uint8_t *codes,
                             size_t n, float *out);
void tkv_accum_trellis_avx2(const tkv_code_layout *layout, const float *w, float threshold,
                            const uint8_t *codes, size_t n, float *acc);
void tkv_scores_trellis_multi_avx2(const tkv_code_layout *layout, const float *const *qs, int nq,
                                   const uint8_t *codes, size_t n, float *const *outs);
void tkv_trellis_forward_avx2(const tkv_trellis *t, const float *x, uint32_t n, float *cost,
                              uint32_t *keys);
/* kernels_trellis_avx512.c */
void tkv_trellis_forward_avx512(const tkv_trellis *t, const float *x, uint32_t n, float *cost,
                                uint32_t *keys);
void tkv_scores_trellis_avx512(const tkv_code_layout *layout, const float *q, const uint8_t *codes,
                               size_t n, float *out);
void tkv_accum_trellis_avx512(const tkv_code_layout *layout, const float *w, float threshold,
                              const uint8_t *codes, size_t n, float *acc);
void tkv_scores_trellis_multi_avx512(const tkv_code_layout *layout, const float *const *qs, int nq,
                                     const uint8_t *codes, size_t n, float *const *outs);
void tkv_accum_trellis_multi_avx512(const tkv_code_layout *layout, const float *const *ws, int nq,
                                    float threshold, const uint8_t *codes, size_t n,
                                    float *const *accs);
/* kernels_trellis_avx512.c: the float-permute kernels the entries above use without VBMI */
void tkv_scores_trellis_avx512f(const tkv_code_layout *layout, const float *q,
                                const uint8_t *codes, size_t n, float *out);
void tkv_accum_trellis_avx512f(const tkv_code_layout *layout, const float *w, float threshold,
                               const uint8_t *codes, size_t n, float *acc);
void tkv_scores_trellis_multi_avx512f(const tkv_code_layout *layout, const float *const *qs,
                                      int nq, const uint8_t *codes, size_t n, float *const *outs);
void tkv_accum_trellis_multi_avx512f(const tkv_code_layout *layout, const float *const *ws, int nq,
                                     float threshold, const uint8_t *codes, size_t n,
                                     float *const *accs);
/* kernels_trellis_avx512vbmi.c (int8 tables, byte permutes; the CPU must have VBMI and
 * VNNI).  Integer dot products on 16-bit fixed point (TKV_TRELLIS_FIXED_FULL): scores
 * round the rotated query to a multiple of max|q| / FULL, so a score may differ from the
 * fp32 one by up to max|q| sum_j |x_j| / (2 FULL), x the decoded key; weighted sums round
 * w_i * scale_i * q8_scale to a multiple of M / FULL, M the largest of it over the rows of
 * a chunk of 256 rows kept, so accumulator element j may differ by up to
 * M sum_i |q8_ij| / (2 FULL), q8_ij the int8 table entry of element j of row i
 * (tkv_trellis_fixed_*_bound in kernels_common.h), up to float rounding.  Below the fp16
 * rounding of the codes' own scales (2^-11 relative). */
#define TKV_TRELLIS_FIXED_FULL 32512.0 /* 127 * 256: two base-256 digits */
int tkv_trellis_vbmi_active(const tkv_codec_kernels *K);
void tkv_scores_trellis_multi_avx512vbmi(const tkv_code_layout *layout, const float *const *qs,
                                         int nq, const uint8_t *codes, size_t n,
                                         float *const *outs);
void tkv_accum_trellis_multi_avx512vbmi(const tkv_code_layout *layout, const float *const *ws,
                                        int nq, float threshold, const uint8_t *codes, size_t n,
                                        float *const *accs);
void tkv_accum_trellis_multi_avx2(const tkv_code_layout *layout, const float *const *ws, int nq,
                                  float threshold, const uint8_t *codes, size_t n,
                                  float *const *accs);
/* kernels_turbo_avx2.c / kernels_turbo_avx512.c: turbo scores with int8 queries and an int8
 * codebook (4-bit codes, head_dim % 64 == 0; other layouts go to the fp32 entries of the
 * tables above).  dispatch.c puts them in the avx2 / avx512 tables (the _vnni ones only on
 * CPUs with AVX-512 VNNI). */
void tkv_scores_turbo_i8_avx2(const tkv_code_layout *layout, const float *q, const uint8_t *codes,
                              size_t n, float *out);
void tkv_scores_turbo_multi_i8_avx2(const tkv_code_layout *layout, const float *const *qs, int nq,
                                    const uint8_t *codes, size_t n, float *const *outs);
void tkv_scores_turbo_i8_vnni(const tkv_code_layout *layout, const float *q, const uint8_t *codes,
                              size_t n, float *out);
void tkv_scores_turbo_multi_i8_vnni(const tkv_code_layout *layout, const float *const *qs, int nq,
                                    const uint8_t *codes, size_t n, float *const *outs);
void tkv_accum_turbo_i8_avx2(const tkv_code_layout *layout, const float *w, float threshold,
                             const uint8_t *codes, size_t n, float *acc);
void tkv_accum_turbo_multi_i8_avx2(const tkv_code_layout *layout, const float *const *ws, int nq,
                                   float threshold, const uint8_t *codes, size_t n,
                                   float *const *accs);
void tkv_accum_turbo_i8_vnni(const tkv_code_layout *layout, const float *w, float threshold,
                             const uint8_t *codes, size_t n, float *acc);
void tkv_accum_turbo_multi_i8_vnni(const tkv_code_layout *layout, const float *const *ws, int nq,
                                   float threshold, const uint8_t *codes, size_t n,
                                   float *const *accs);
/* kernels_turbo_avx512.c: the int8 value sums above where they apply, else the bf16 ones
 * below (CPUs with VNNI and AVX512_BF16) */
void tkv_accum_turbo_i8_bf16(const tkv_code_layout *layout, const float *w, float threshold,
                             const uint8_t *codes, size_t n, float *acc);
void tkv_accum_turbo_multi_i8_bf16(const tkv_code_layout *layout, const float *const *ws, int nq,
                                   float threshold, const uint8_t *codes, size_t n,
                                   float *const *accs);
/* kernels_turbo_avx512.c: weighted value sums of 4-bit codes by bf16 dot products
 * (AVX512_BF16; d % 32 == 0, other layouts fall back to the fp32 entries). */
void tkv_accum_turbo_bf16(const tkv_code_layout *layout, const float *w, float threshold,
                          const uint8_t *codes, size_t n, float *acc);
void tkv_accum_turbo_multi_bf16(const tkv_code_layout *layout, const float *const *ws, int nq,
                                float threshold, const uint8_t *codes, size_t n,
                                float *const *accs);
#endif

/* 1 if table K scores layout L with int8 queries and an int8 codebook (the entries of
 * kernels_turbo_*.c): results then differ from the fp32 score by the 8-bit roundings of
 * the query and the codebook, |error| <= scale * (max|q| sum|c_j| + max|c| sum|q_j|) / 254
 * up to float rounding, c the centroids of the key, scale its fp16 norm factor. */
static inline int tkv_turbo_scores_i8(const tkv_codec_kernels *K, const tkv_code_layout *L) {
    return K != &tkv_codec_kernels_scalar && L->format == TKV_FMT_TURBO && L->bits >= 2 &&
           L->bits <= 5 && !L->has_qjl && L->d % 64 == 0 && L->d <= 1024;
}

/* 1 if table K sums the values of layout L with int8 weights and an int8 codebook
 * (kernels_turbo_*.c): per block of 32 rows and query, w_i times the row's scale is rounded
 * to int8 on the block's largest |w s| (step <= M / 127, M the largest |w_i s_i| of the rows
 * kept) and the centroids to int8 (step cstep = max|c| / 127), so accumulator element j may
 * differ from the fp32 sum by up to
 *   (cstep / 2) sum_i |w_i s_i| + (M / 254) sum_i (|c_ij| + cstep / 2)
 * over the rows kept, c_ij the centroid of element j of row i (tkv_turbo_accum_i8_bound in
 * kernels_common.h), up to float rounding. */
static inline int tkv_turbo_accum_i8(const tkv_codec_kernels *K, const tkv_code_layout *L) {
#if defined(TKV_HAVE_X86_KERNELS)
    return (K->accum[TKV_FMT_TURBO] == tkv_accum_turbo_i8_avx2 ||
            K->accum[TKV_FMT_TURBO] == tkv_accum_turbo_i8_vnni ||
            K->accum[TKV_FMT_TURBO] == tkv_accum_turbo_i8_bf16) &&
           tkv_turbo_scores_i8(K, L);
#else
    (void)K;
    (void)L;
    return 0;
#endif
}

/* 1 if table K sums the values of layout L by bf16 dot products (tkv_accum_turbo_bf16):
 * weights (times the key's scale) and centroids are rounded to bf16, so an accumulator
 * element may differ from the fp32 sum by up to 2^-7 sum_i |w_i x_ij| (x the decoded values
 * of the rows kept): 2^-8 from the two input roundings, the rest from vdpbf16ps's own
 * rounding of each pair's product sum (fuzz_codec found 1.03 x 2^-8). */
static inline int tkv_turbo_accum_bf16(const tkv_codec_kernels *K, const tkv_code_layout *L) {
#if defined(TKV_HAVE_X86_KERNELS)
    const int bf16 =
        K->accum[TKV_FMT_TURBO] == tkv_accum_turbo_bf16 ||
        (K->accum[TKV_FMT_TURBO] == tkv_accum_turbo_i8_bf16 && !tkv_turbo_scores_i8(K, L));
    return bf16 && L->format == TKV_FMT_TURBO && L->bits == 4 && !L->has_qjl && L->d % 32 == 0;
#else
    (void)K;
    (void)L;
    return 0;
#endif
}

/* 1 if table K scores and sums the trellis layouts with the fixed-point VBMI kernels (the
 * bounds above). */
static inline int tkv_trellis_fixed(const tkv_codec_kernels *K, const tkv_code_layout *L) {
#if defined(TKV_HAVE_X86_KERNELS)
    return L->format == TKV_FMT_TRELLIS && tkv_trellis_vbmi_active(K);
#else
    (void)K;
    (void)L;
    return 0;
#endif
}

/* Scalar entries, reused by ISA tables for the formats they do not specialize. */
void tkv_scores_scalar(const tkv_code_layout *layout, const float *q, const uint8_t *codes,
                       size_t n, float *out);
void tkv_accum_scalar(const tkv_code_layout *layout, const float *w, float threshold,
                      const uint8_t *codes, size_t n, float *acc);
void tkv_fwht_scalar(float *x, uint32_t d, float scale);
void tkv_matvec_scalar(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y);
void tkv_matvec_t_scalar(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y);
float tkv_softmax_scalar(float *x, size_t n, float scale);
/* One Viterbi step, the definition every trellis_forward follows: for every new state
 * s < S = 2^P (natural order), the candidates c_a = cost[((s << N) | a) mod S] +
 * (x - table[a S + s])^2 for a < K = 2^N (a product, then a sum) are compared as keys:
 * c_a's bits (non-negative floats order as unsigned integers) with the low N bits
 * replaced by a.  The least key gives next[s] (its float with those bits cleared, a
 * relative change below 2^(N-23)) and back[s] (its a; among equal keys the smallest a). */
void tkv_trellis_step_scalar(const tkv_trellis *t, float x, const float *cost, float *next,
                             uint8_t *back);
void tkv_trellis_forward_scalar(const tkv_trellis *t, const float *x, uint32_t n, float *cost,
                                uint32_t *keys);
void tkv_scores_multi_scalar(const tkv_code_layout *layout, const float *const *qs, int nq,
                             const uint8_t *codes, size_t n, float *const *outs);
void tkv_accum_multi_scalar(const tkv_code_layout *layout, const float *const *ws, int nq,
                            float threshold, const uint8_t *codes, size_t n, float *const *accs);

/* Decode one vector into the rotated domain (d floats; QJL: 2d, the second half
 * being coef * |r| * sign bits, still to be multiplied by S^T). */
void tkv_decode_rotated_scalar(const tkv_code_layout *layout, const uint8_t *code, float *out);

#endif
