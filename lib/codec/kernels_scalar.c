/*
 * kernels_scalar.c - reference codec kernels: decode each vector, then a plain loop.
 * They define what every ISA variant must compute (within float rounding).  The trellis
 * format's reference is tkv_decode_rotated_scalar (window by window, bit by bit); its
 * table entries use a faster word-wise decode, checked against it by the tests.
 */
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "codec/kernels.h"
#include "codec/kernels_common.h"
#include "codec/pack.h"

#define TKV_MAX_D 1024

static uint16_t tkv_load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

void tkv_decode_rotated_scalar(const tkv_code_layout *L, const uint8_t *code, float *out) {
    const uint32_t d = L->d;
    switch (L->format) {
    case TKV_FMT_F32:
        memcpy(out, code, d * sizeof(float));
        break;
    case TKV_FMT_F16:
        for (uint32_t j = 0; j < d; j++) {
            out[j] = tkv_fp16_to_f32(tkv_load_u16(code + 2 * j));
        }
        break;
    case TKV_FMT_BF16:
        for (uint32_t j = 0; j < d; j++) {
            out[j] = tkv_bf16_to_f32(tkv_load_u16(code + 2 * j));
        }
        break;
    case TKV_FMT_Q8_0:
        for (uint32_t b0 = 0; b0 < d; b0 += 32) {
            uint32_t t = d - b0 < 32 ? d - b0 : 32;
            float scale = tkv_fp16_to_f32(tkv_load_u16(code));
            const int8_t *q = (const int8_t *)(code + 2);
            for (uint32_t k = 0; k < t; k++) {
                out[b0 + k] = scale * (float)q[k];
            }
            code += 2 + t;
        }
        break;
    case TKV_FMT_Q4_0:
        for (uint32_t b0 = 0; b0 < d; b0 += 32) {
            uint32_t t = d - b0 < 32 ? d - b0 : 32;
            uint32_t half = t / 2;
            float scale = tkv_fp16_to_f32(tkv_load_u16(code));
            const uint8_t *q = code + 2;
            for (uint32_t k = 0; k < half; k++) {
                out[b0 + k] = scale * (float)((int)(q[k] & 15) - 8);
                out[b0 + half + k] = scale * (float)((int)(q[k] >> 4) - 8);
            }
            code += 2 + half;
        }
        break;
    case TKV_FMT_TURBO: {
        uint8_t idx[TKV_MAX_D];
        tkv_unpack_indices(L->bits, d, code + L->payload_off, idx);
        float scale = tkv_fp16_to_f32(tkv_load_u16(code + L->scale_off));
        /* one-per-byte indices can hold any byte: like the SIMD lookups (which use the low
         * 5 bits of a lane), read only the low 5, so no byte leaves the 32-float codebook */
        for (uint32_t j = 0; j < d; j++) {
            out[j] = scale * L->centroids[idx[j] & 31u];
        }
        if (L->has_qjl) {
            float g = L->qjl_coef * tkv_fp16_to_f32(tkv_load_u16(code + L->rnorm_off));
            const uint8_t *signs = code + L->signs_off;
            for (uint32_t j = 0; j < d; j++) {
                out[d + j] = ((signs[j / 8] >> (j % 8)) & 1) ? g : -g;
            }
        }
        break;
    }
    case TKV_FMT_TRELLIS: {
        const tkv_trellis *t = L->trellis;
        const uint8_t *stream = code + L->payload_off;
        float scale = tkv_fp16_to_f32(tkv_load_u16(code + L->scale_off));
        for (uint32_t j = 0; j < d; j++) {
            out[j] = scale * t->table[tkv_trellis_slot(t, tkv_trellis_window_at(t, stream, d, j))];
        }
        break;
    }
    default:
        break;
    }
}

void tkv_scores_scalar(const tkv_code_layout *L, const float *q, const uint8_t *codes, size_t n,
                       float *out) {
    const uint32_t d = L->d;
    const uint32_t width = L->has_qjl ? 2 * d : d;
    float x[2 * TKV_MAX_D];
    for (size_t i = 0; i < n; i++) {
        tkv_decode_rotated_scalar(L, codes + i * L->stride, x);
        float s = 0.0f;
        for (uint32_t j = 0; j < width; j++) {
            s += q[j] * x[j];
        }
        out[i] = s;
    }
}

void tkv_accum_scalar(const tkv_code_layout *L, const float *w, float threshold,
                      const uint8_t *codes, size_t n, float *acc) {
    const uint32_t d = L->d;
    const uint32_t width = L->has_qjl ? 2 * d : d;
    float x[2 * TKV_MAX_D];
    for (size_t i = 0; i < n; i++) {
        if (fabsf(w[i]) < threshold) {
            continue;
        }
        tkv_decode_rotated_scalar(L, codes + i * L->stride, x);
        for (uint32_t j = 0; j < width; j++) {
            acc[j] += w[i] * x[j];
        }
    }
}

void tkv_fwht_scalar(float *x, uint32_t d, float scale) {
    for (uint32_t h = 1; h < d; h *= 2) {
        for (uint32_t i = 0; i < d; i += 2 * h) {
            for (uint32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    for (uint32_t i = 0; i < d; i++) {
        x[i] *= scale;
    }
}

void tkv_matvec_scalar(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y) {
    for (uint32_t r = 0; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        float s = 0.0f;
        for (uint32_t c = 0; c < cols; c++) {
            s += row[c] * x[c];
        }
        y[r] = s;
    }
}

void tkv_matvec_t_scalar(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y) {
    for (uint32_t c = 0; c < cols; c++) {
        y[c] = 0.0f;
    }
    for (uint32_t r = 0; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        for (uint32_t c = 0; c < cols; c++) {
            y[c] += x[r] * row[c];
        }
    }
}

float tkv_softmax_scalar(float *x, size_t n, float scale) {
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        x[i] *= scale;
        mx = x[i] > mx ? x[i] : mx;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) {
        x[i] *= inv;
    }
    return mx + (float)log(sum);
}

void tkv_trellis_step_scalar(const tkv_trellis *t, float x, const float *cost, float *next,
                             uint8_t *back) {
    const uint32_t N = t->bits, S = 1u << t->state_bits, K = 1u << N;
    for (uint32_t s = 0; s < S; s++) {
        uint32_t best = UINT32_MAX;
        for (uint32_t a = 0; a < K; a++) {
            const float e = x - t->table[(size_t)a * S + s];
            const float e2 = e * e;
            const float c = cost[((s << N) | a) & (S - 1)] + e2;
            uint32_t key;
            memcpy(&key, &c, sizeof key);
            key = (key & ~(K - 1u)) | a;
            best = key < best ? key : best;
        }
        const uint32_t kept = best & ~(K - 1u);
        memcpy(&next[s], &kept, sizeof kept);
        back[s] = (uint8_t)(best & (K - 1u));
    }
}

/* The steps over x[0..n) by the step above, in the step's natural order, the results
 * moved to the search's order. */
void tkv_trellis_forward_scalar(const tkv_trellis *t, const float *x, uint32_t n, float *cost,
                                uint32_t *keys) {
    const uint32_t N = t->bits, S = 1u << t->state_bits;
    float cur[64], next[64];
    uint8_t back[64];
    for (uint32_t s = 0; s < S; s++) {
        cur[s] = cost[tkv_trellis_lane_pos(N, s)];
    }
    for (uint32_t j = 0; j < n; j++) {
        tkv_trellis_step_scalar(t, x[j], cur, next, back);
        for (uint32_t s = 0; s < S; s++) {
            uint32_t key;
            memcpy(&key, &next[s], sizeof key);
            keys[(size_t)j * S + tkv_trellis_lane_pos(N, s)] = key | back[s];
        }
        memcpy(cur, next, S * sizeof(float));
    }
    for (uint32_t s = 0; s < S; s++) {
        cost[tkv_trellis_lane_pos(N, s)] = cur[s];
    }
}

/*
 * Portable fast decode of a trellis vector (unscaled) for the scalar table's kernels:
 * 8 windows per 64-bit little-endian word.  Windows of group g >= 1 start at bit
 * 8 g N - P = bit 8 - P of byte g N - 1; group 0 takes its older symbols from the stream's
 * last byte (tail-biting).  Tests hold it to the bit-by-bit reference above.
 */
static uint64_t tkv_le_bytes(const uint8_t *p, uint32_t n) {
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

static void tkv_trellis_decode_fast(const tkv_trellis *t, const uint8_t *s, uint32_t d,
                                    float *out) {
    const uint32_t N = t->bits, P = t->state_bits, nb = d * N / 8, groups = d / 8;
    const uint64_t wm = (1u << t->window_bits) - 1u, am = (1u << N) - 1u;
    uint64_t v = (tkv_le_bytes(s, nb < 7 ? nb : 7) << P) | (uint64_t)(s[nb - 1] >> (8 - P));
    for (uint32_t l = 0; l < 8; l++) {
        const uint64_t w = (v >> (N * l)) & wm;
        out[l] = t->table[(w >> N) | ((w & am) << P)];
    }
    for (uint32_t g = 1; g < groups; g++) {
        const uint32_t b0 = g * N - 1;
        v = tkv_le_bytes(s + b0, nb - b0 < 8 ? nb - b0 : 8) >> (8 - P);
        for (uint32_t l = 0; l < 8; l++) {
            const uint64_t w = (v >> (N * l)) & wm;
            out[8 * g + l] = t->table[(w >> N) | ((w & am) << P)];
        }
    }
}

static void tkv_scores_trellis_multi_scalar(const tkv_code_layout *L, const float *const *qs,
                                            int nq, const uint8_t *codes, size_t n,
                                            float *const *outs) {
    float x[TKV_MAX_D];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *code = codes + i * L->stride;
        tkv_trellis_decode_fast(L->trellis, code + L->payload_off, L->d, x);
        const float scale = tkv_fp16_to_f32(tkv_load_u16(code + L->scale_off));
        for (int k = 0; k < nq; k++) {
            float sum = 0.0f;
            for (uint32_t j = 0; j < L->d; j++) {
                sum += qs[k][j] * x[j];
            }
            outs[k][i] = scale * sum;
        }
    }
}

static void tkv_scores_trellis_scalar(const tkv_code_layout *L, const float *q,
                                      const uint8_t *codes, size_t n, float *out) {
    tkv_scores_trellis_multi_scalar(L, &q, 1, codes, n, &out);
}

static void tkv_accum_trellis_multi_scalar(const tkv_code_layout *L, const float *const *ws, int nq,
                                           float threshold, const uint8_t *codes, size_t n,
                                           float *const *accs) {
    float x[TKV_MAX_D];
    for (size_t i = 0; i < n; i++) {
        if (!tkv_kc_row_needed(ws, nq, i, threshold)) {
            continue;
        }
        const uint8_t *code = codes + i * L->stride;
        tkv_trellis_decode_fast(L->trellis, code + L->payload_off, L->d, x);
        const float scale = tkv_fp16_to_f32(tkv_load_u16(code + L->scale_off));
        for (int k = 0; k < nq; k++) {
            if (fabsf(ws[k][i]) >= threshold) {
                const float w = ws[k][i] * scale;
                for (uint32_t j = 0; j < L->d; j++) {
                    accs[k][j] += w * x[j];
                }
            }
        }
    }
}

static void tkv_accum_trellis_scalar(const tkv_code_layout *L, const float *w, float threshold,
                                     const uint8_t *codes, size_t n, float *acc) {
    tkv_accum_trellis_multi_scalar(L, &w, 1, threshold, codes, n, &acc);
}

void tkv_scores_multi_scalar(const tkv_code_layout *L, const float *const *qs, int nq,
                             const uint8_t *codes, size_t n, float *const *outs) {
    for (int k = 0; k < nq; k++) {
        tkv_scores_scalar(L, qs[k], codes, n, outs[k]);
    }
}

void tkv_accum_multi_scalar(const tkv_code_layout *L, const float *const *ws, int nq,
                            float threshold, const uint8_t *codes, size_t n, float *const *accs) {
    for (int k = 0; k < nq; k++) {
        tkv_accum_scalar(L, ws[k], threshold, codes, n, accs[k]);
    }
}

const tkv_codec_kernels tkv_codec_kernels_scalar = {
    .isa = "scalar",
    .scores = {tkv_scores_scalar, tkv_scores_scalar, tkv_scores_scalar, tkv_scores_scalar,
               tkv_scores_scalar, tkv_scores_scalar, tkv_scores_trellis_scalar},
    .accum = {tkv_accum_scalar, tkv_accum_scalar, tkv_accum_scalar, tkv_accum_scalar,
              tkv_accum_scalar, tkv_accum_scalar, tkv_accum_trellis_scalar},
    .fwht = tkv_fwht_scalar,
    .matvec = tkv_matvec_scalar,
    .matvec_t = tkv_matvec_t_scalar,
    .softmax = tkv_softmax_scalar,
    .trellis_forward = tkv_trellis_forward_scalar,
    .scores_multi = {[TKV_FMT_TURBO] = tkv_scores_multi_scalar,
                     [TKV_FMT_TRELLIS] = tkv_scores_trellis_multi_scalar},
    .accum_multi = {[TKV_FMT_TURBO] = tkv_accum_multi_scalar,
                    [TKV_FMT_TRELLIS] = tkv_accum_trellis_multi_scalar},
};
