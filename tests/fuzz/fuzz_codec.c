/*
 * fuzz_codec.c - libFuzzer target: every codec's readers on caller-supplied codes.
 *
 * Encoded vectors come from outside (cache files, a caller's buffer), so decode, scores,
 * weighted_sum and attention must survive any bytes.  Input:
 *   byte 0   codec id (mod TKV_CODEC_COUNT)
 *   byte 1-2 head_dim = 2 * (1 + v % 512) (even, 2..1024; most are not multiples of 16)
 *   byte 3   n = 1 + b % 16 vectors (fewer when n * head_dim would pass 16384)
 *   byte 4   query / weight seed and the sparse-V threshold
 *   rest     the codes, repeated to fill n vectors (unaligned: one byte past a malloc)
 * Invariants: no crash or sanitizer report; when a public call returns TKV_OK every
 * output is finite (for the plain float codecs only when the decoded values are modest:
 * fp32/fp16/bf16 codes may legally hold inf or 1e38); the kernels of every ISA this CPU
 * runs agree with the scalar ones within 1e-4 of the magnitude of the terms, for scores,
 * accum and the multi-query entries.  Codes rejected by decode (TKV_ERR_BAD_FORMAT) are
 * not fed to the raw kernels.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"
#include "fuzz.h"
#include "turbokv.h"

#define MAX_N 16
#define MAX_ELEMS 16384
#define TOL 1e-4

static uint64_t next(uint64_t *s) {
    *s += 0x9E3779B97F4A7C15ULL; /* splitmix64 */
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static float unit(uint64_t *s) { return (float)((next(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return 0;
        }
    }
    return 1;
}

static int modest(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!(fabsf(x[i]) <= 1e6f)) {
            return 0;
        }
    }
    return 1;
}

/* The documented error of the approximate kernels (lib/codec/kernels.h), beyond TOL: int8
 * scores (max|q| sum|dec| + max|dec| sum|q|) / 254, bf16 value sums mag / 128. */
static double i8_score_bound(const float *q, const float *dec, uint32_t width) {
    double qmax = 0.0, qsum = 0.0, dmax = 0.0, dsum = 0.0;
    for (uint32_t j = 0; j < width; j++) {
        qmax = fmax(qmax, fabs((double)q[j]));
        qsum += fabs((double)q[j]);
        dmax = fmax(dmax, fabs((double)dec[j]));
        dsum += fabs((double)dec[j]);
    }
    return 1.01 * (qmax * dsum + dmax * qsum) / 254.0;
}

/* Every ISA table against the scalar one on the raw kernels. */
static void compare_isas(const struct tkv_codec *c, const uint8_t *codes, size_t n,
                         const float *q, const float *w, float threshold) {
    const tkv_code_layout *L = &c->layout;
    const uint32_t width = tkv_codec_work_width(c);
    const tkv_codec_kernels *S = tkv_codec_kernels_for_isa("scalar");
    float qprep[2 * TKV_HEAD_DIM_MAX];
    tkv_codec_prepare_query(c, q, qprep);
    static float dec[MAX_N][2 * TKV_HEAD_DIM_MAX];
    for (size_t i = 0; i < n; i++) {
        tkv_decode_rotated_scalar(L, codes + i * L->stride, dec[i]);
    }
    float s_ref[MAX_N], s_isa[MAX_N];
    static float a_ref[2 * TKV_HEAD_DIM_MAX], a_isa[2 * TKV_HEAD_DIM_MAX];
    S->scores[L->format](L, qprep, codes, n, s_ref);
    memset(a_ref, 0, sizeof a_ref);
    S->accum[L->format](L, w, threshold, codes, n, a_ref);
    static const char *const isas[] = {"scalar", "avx2", "avx512"};
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        const tkv_codec_kernels *K = tkv_codec_kernels_for_isa(isas[k]);
        if (!K) {
            continue;
        }
        const int i8 = tkv_turbo_scores_i8(K, L), b16 = tkv_turbo_accum_bf16(K, L),
                  a8 = tkv_turbo_accum_i8(K, L);
        /* trellis kernels with integer dot products (kernels.h): fixed point of the query
         * per coordinate and of w_i * scale_i against the largest of a 256-row chunk */
        const int tcq = tkv_trellis_fixed(K, L);
        K->scores[L->format](L, qprep, codes, n, s_isa);
        for (size_t i = 0; i < n; i++) {
            double mag = 0.0;
            for (uint32_t j = 0; j < width; j++) {
                mag += fabs((double)qprep[j] * dec[i][j]);
            }
            const double extra = i8 ? i8_score_bound(qprep, dec[i], width) : 0.0;
            const double tcq_score =
                tcq ? tkv_trellis_fixed_scores_bound(L, qprep, codes + i * L->stride) : 0.0;
            REQUIRE(fabs(s_isa[i] - s_ref[i]) <= TOL * mag + extra + tcq_score + 1e-30);
        }
        memset(a_isa, 0, sizeof a_isa);
        K->accum[L->format](L, w, threshold, codes, n, a_isa);
        for (uint32_t j = 0; j < width; j++) {
            double mag = 0.0;
            for (size_t i = 0; i < n; i++) {
                mag += fabsf(w[i]) >= threshold ? fabs((double)w[i] * dec[i][j]) : 0.0;
            }
            const double extra = a8 ? tkv_turbo_accum_i8_bound(L, w, threshold, codes, n, j) : 0.0;
            const double tcq_accum =
                tcq ? tkv_trellis_fixed_accum_bound(L, w, threshold, codes, n, j) : 0.0;
            REQUIRE(fabs(a_isa[j] - a_ref[j]) <=
                    (TOL + (b16 ? 1.0 / 128 : 0.0)) * mag + extra + tcq_accum + 1e-30);
        }
        if (K->scores_multi[L->format] && K->accum_multi[L->format]) {
            /* the same query and weights in every slot: each must match the single one */
            const float *qs[TKV_MAX_QUERIES], *ws[TKV_MAX_QUERIES];
            static float so[TKV_MAX_QUERIES][MAX_N], ao[TKV_MAX_QUERIES][2 * TKV_HEAD_DIM_MAX];
            float *outs[TKV_MAX_QUERIES], *accs[TKV_MAX_QUERIES];
            for (int m = 0; m < TKV_MAX_QUERIES; m++) {
                qs[m] = qprep;
                ws[m] = w;
                outs[m] = so[m];
                accs[m] = ao[m];
            }
            memset(ao, 0, sizeof ao);
            K->scores_multi[L->format](L, qs, TKV_MAX_QUERIES, codes, n, outs);
            K->accum_multi[L->format](L, ws, TKV_MAX_QUERIES, threshold, codes, n, accs);
            for (int m = 0; m < TKV_MAX_QUERIES; m++) {
                for (size_t i = 0; i < n; i++) {
                    double mag = 0.0;
                    for (uint32_t j = 0; j < width; j++) {
                        mag += fabs((double)qprep[j] * dec[i][j]);
                    }
                    const double extra = i8 ? i8_score_bound(qprep, dec[i], width) : 0.0;
                    const double tcq_score =
                        tcq ? tkv_trellis_fixed_scores_bound(L, qprep, codes + i * L->stride) : 0.0;
                    REQUIRE(fabs(so[m][i] - s_ref[i]) <= TOL * mag + extra + tcq_score + 1e-30);
                }
                for (uint32_t j = 0; j < width; j++) {
                    double mag = 0.0;
                    for (size_t i = 0; i < n; i++) {
                        mag += fabsf(w[i]) >= threshold ? fabs((double)w[i] * dec[i][j]) : 0.0;
                    }
                    const double extra =
                        a8 ? tkv_turbo_accum_i8_bound(L, w, threshold, codes, n, j) : 0.0;
                    const double tcq_accum =
                        tcq ? tkv_trellis_fixed_accum_bound(L, w, threshold, codes, n, j) : 0.0;
                    REQUIRE(fabs(ao[m][j] - a_ref[j]) <=
                            (TOL + (b16 ? 1.0 / 128 : 0.0)) * mag + extra + tcq_accum + 1e-30);
                }
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 6) {
        return 0;
    }
    tkv_codec_params p = tkv_codec_default_params();
    p.codec = data[0] % TKV_CODEC_COUNT;
    p.head_dim = 2u * (1u + ((uint32_t)data[1] | (uint32_t)data[2] << 8) % 512u);
    /* a head_dim that is not a power of two gets a dense random orthogonal rotation, built
     * in O(d^3) (seconds at d ~ 1000 under the sanitizers): keep those dims small enough
     * for libFuzzer's timeout; powers of two (fast Walsh-Hadamard) go up to 1024 */
    if ((p.head_dim & (p.head_dim - 1)) != 0 && p.head_dim > 200) {
        p.head_dim = 2u + p.head_dim % 200u;
    }
    size_t n = 1 + data[3] % MAX_N;
    while (n > 1 && n * p.head_dim > MAX_ELEMS) {
        n--;
    }
    uint64_t rs = data[4];
    p.seed = rs;
    const float threshold = (data[4] & 3) == 3 ? 0.05f : 0.0f;
    const uint8_t *src = data + 5;
    const size_t src_len = size - 5;
    tkv_codec *c = NULL;
    if (tkv_codec_create(&p, &c) != TKV_OK) {
        REQUIRE(c == NULL);
        return 0;
    }
    const uint32_t d = p.head_dim;
    const size_t stride = tkv_codec_vector_bytes(c), bytes = n * stride;
    uint8_t *buf = malloc(bytes + 1);
    float *out = malloc(n * d * sizeof *out);
    float q[TKV_HEAD_DIM_MAX], w[MAX_N], o[TKV_HEAD_DIM_MAX];
    REQUIRE(buf && out);
    uint8_t *codes = buf + 1;
    for (size_t i = 0; i < bytes; i++) {
        codes[i] = src[i % src_len];
    }
    for (uint32_t j = 0; j < d; j++) {
        q[j] = 2.0f * unit(&rs);
    }
    float wsum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        w[i] = 0.5f * (unit(&rs) + 1.0f);
        wsum += w[i];
    }
    for (size_t i = 0; i < n; i++) {
        w[i] /= wsum;
    }
    const int is_float = (tkv_codec_flags(p.codec) & TKV_CODEC_FLAG_FLOAT) != 0;
    tkv_status st = tkv_codec_decode(c, codes, bytes, (int64_t)n, out);
    REQUIRE(st == TKV_OK || st == TKV_ERR_BAD_FORMAT);
    /* a too-short buffer is refused before any byte is read */
    REQUIRE(tkv_codec_decode(c, codes, bytes - 1, (int64_t)n, out) == TKV_ERR_BUFFER_TOO_SMALL);
    if (st == TKV_OK) {
        const int check = !is_float || modest(out, n * d);
        if (check) {
            REQUIRE(all_finite(out, n * d));
        }
        float scores[MAX_N];
        if (tkv_codec_scores(c, q, codes, bytes, (int64_t)n, scores) == TKV_OK && check) {
            REQUIRE(all_finite(scores, n));
        }
        if (tkv_codec_weighted_sum(c, w, codes, bytes, (int64_t)n, threshold, o) == TKV_OK &&
            check) {
            REQUIRE(all_finite(o, d));
        }
        if (tkv_codec_attention(c, c, q, codes, bytes, codes, bytes, (int64_t)n, 0.0f, threshold,
                                o) == TKV_OK &&
            check) {
            REQUIRE(all_finite(o, d));
        }
        if (check) {
            compare_isas((const struct tkv_codec *)c, codes, n, q, w, threshold);
        }
    } else {
        /* whatever the other readers answer, they must not crash */
        float scores[MAX_N];
        (void)tkv_codec_scores(c, q, codes, bytes, (int64_t)n, scores);
        (void)tkv_codec_weighted_sum(c, w, codes, bytes, (int64_t)n, threshold, o);
        (void)tkv_codec_attention(c, c, q, codes, bytes, codes, bytes, (int64_t)n, 0.0f,
                                  threshold, o);
    }
    free(out);
    free(buf);
    tkv_codec_free(c);
    return 0;
}
