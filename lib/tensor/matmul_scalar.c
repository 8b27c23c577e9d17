/*
 * matmul_scalar.c - the reference kernels: activation quantization and one-row dots for
 * every format.  These define the results (see matmul.h); the ISA files must quantize
 * activations bit-identically and reproduce the dots up to float summation order.
 * Block contributions are summed in double so the reference itself adds no rounding noise.
 */
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "tensor/matmul.h"

static void tkv_quantize_q8_scalar(const float *x, int64_t n, void *xq) {
    int8_t *q = xq;
    float *d = (float *)((char *)xq + n);
    float *ds = d + n / TKV_QK;
    for (int64_t b = 0; b < n / TKV_QK; b++) {
        const float *xb = x + b * TKV_QK;
        float amax = 0.0f;
        for (int j = 0; j < TKV_QK; j++) {
            amax = fmaxf(amax, fabsf(xb[j]));
        }
        /* id = 127 / amax, not 1 / d: one rounding, the same in every ISA */
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < TKV_QK; j++) {
            const int v = (int)nearbyintf(xb[j] * id);
            q[b * TKV_QK + j] = (int8_t)v;
            sum += v;
        }
        d[b] = amax / 127.0f;
        ds[b] = d[b] * (float)sum;
    }
}

/* Q8 activation row accessors */
#define XQ(x) ((const int8_t *)(x))
#define XD(x, n) ((const float *)((const char *)(x) + (n)))
#define XDS(x, n) (XD(x, n) + (n) / TKV_QK)

static void tkv_dot_f32_scalar(int64_t n, const void *w, const void *x, size_t xs, int nx,
                               float *y, size_t ys) {
    const float *wf = w;
    for (int t = 0; t < nx; t++) {
        const float *xf = (const float *)((const char *)x + t * xs);
        double acc = 0.0;
        for (int64_t i = 0; i < n; i++) {
            acc += (double)wf[i] * (double)xf[i];
        }
        y[t * ys] = (float)acc;
    }
}

static void tkv_dot_f16_scalar(int64_t n, const void *w, const void *x, size_t xs, int nx,
                               float *y, size_t ys) {
    const uint16_t *wh = w;
    for (int t = 0; t < nx; t++) {
        const float *xf = (const float *)((const char *)x + t * xs);
        double acc = 0.0;
        for (int64_t i = 0; i < n; i++) {
            acc += (double)tkv_fp16_to_f32(wh[i]) * (double)xf[i];
        }
        y[t * ys] = (float)acc;
    }
}

static void tkv_dot_bf16_scalar(int64_t n, const void *w, const void *x, size_t xs, int nx,
                                float *y, size_t ys) {
    const uint16_t *wh = w;
    for (int t = 0; t < nx; t++) {
        const float *xf = (const float *)((const char *)x + t * xs);
        double acc = 0.0;
        for (int64_t i = 0; i < n; i++) {
            acc += (double)tkv_bf16_to_f32(wh[i]) * (double)xf[i];
        }
        y[t * ys] = (float)acc;
    }
}

/* The weight codes of one 32-element block, offsets already subtracted for Q4_0/Q5_0, and
 * the scale and min (min 0 for the symmetric formats). */
static void tkv_unpack32(int32_t type, const void *blk, int *q, float *d, float *m) {
    *m = 0.0f;
    switch (type) {
    case TKV_TYPE_Q8_0: {
        const tkv_block_q8_0 *b = blk;
        *d = tkv_fp16_to_f32(b->d);
        for (int j = 0; j < 32; j++) {
            q[j] = b->qs[j];
        }
        break;
    }
    case TKV_TYPE_Q4_0:
    case TKV_TYPE_Q4_1: {
        const uint8_t *qs;
        if (type == TKV_TYPE_Q4_0) {
            const tkv_block_q4_0 *b = blk;
            *d = tkv_fp16_to_f32(b->d);
            qs = b->qs;
        } else {
            const tkv_block_q4_1 *b = blk;
            *d = tkv_fp16_to_f32(b->d);
            *m = tkv_fp16_to_f32(b->m);
            qs = b->qs;
        }
        const int off = type == TKV_TYPE_Q4_0 ? 8 : 0;
        for (int j = 0; j < 16; j++) {
            q[j] = (qs[j] & 15) - off;
            q[j + 16] = (qs[j] >> 4) - off;
        }
        break;
    }
    default: { /* Q5_0, Q5_1 */
        const uint8_t *qs, *qhb;
        if (type == TKV_TYPE_Q5_0) {
            const tkv_block_q5_0 *b = blk;
            *d = tkv_fp16_to_f32(b->d);
            qs = b->qs;
            qhb = b->qh;
        } else {
            const tkv_block_q5_1 *b = blk;
            *d = tkv_fp16_to_f32(b->d);
            *m = tkv_fp16_to_f32(b->m);
            qs = b->qs;
            qhb = b->qh;
        }
        const uint32_t qh = (uint32_t)qhb[0] | (uint32_t)qhb[1] << 8 | (uint32_t)qhb[2] << 16 |
                            (uint32_t)qhb[3] << 24;
        const int off = type == TKV_TYPE_Q5_0 ? 16 : 0;
        for (int j = 0; j < 16; j++) {
            q[j] = ((qs[j] & 15) | (int)((qh >> j) & 1) << 4) - off;
            q[j + 16] = ((qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - off;
        }
        break;
    }
    }
}

static void tkv_dot_q32_scalar(int32_t type, size_t block_bytes, int64_t n, const void *w,
                               const void *x, size_t xs, int nx, float *y, size_t ys) {
    double acc[TKV_MM_NX] = {0};
    int q[32];
    for (int64_t b = 0; b < n / TKV_QK; b++) {
        float d, m;
        tkv_unpack32(type, (const char *)w + (size_t)b * block_bytes, q, &d, &m);
        for (int t = 0; t < nx; t++) {
            const void *xt = (const char *)x + t * xs;
            const int8_t *xq = XQ(xt) + b * TKV_QK;
            int32_t isum = 0;
            for (int j = 0; j < 32; j++) {
                isum += q[j] * xq[j];
            }
            acc[t] += (double)d * XD(xt, n)[b] * isum + (double)m * XDS(xt, n)[b];
        }
    }
    for (int t = 0; t < nx; t++) {
        y[t * ys] = (float)acc[t];
    }
}

#define TKV_DOT32(name, type, blk)                                                         \
    static void name(int64_t n, const void *w, const void *x, size_t xs, int nx, float *y, \
                     size_t ys) {                                                          \
        tkv_dot_q32_scalar(type, sizeof(blk), n, w, x, xs, nx, y, ys);                     \
    }
TKV_DOT32(tkv_dot_q8_0_scalar, TKV_TYPE_Q8_0, tkv_block_q8_0)
TKV_DOT32(tkv_dot_q4_0_scalar, TKV_TYPE_Q4_0, tkv_block_q4_0)
TKV_DOT32(tkv_dot_q4_1_scalar, TKV_TYPE_Q4_1, tkv_block_q4_1)
TKV_DOT32(tkv_dot_q5_0_scalar, TKV_TYPE_Q5_0, tkv_block_q5_0)
TKV_DOT32(tkv_dot_q5_1_scalar, TKV_TYPE_Q5_1, tkv_block_q5_1)

/* One K-quant super-block as 16 sub-blocks of 16 elements: integer codes q (offsets
 * applied), scales sc and mins m per sub-block (Q4_K / Q5_K: each 32-element sub-block's
 * pair twice), x[e] = d * sc[e / 16] * q[e] - dmin * m[e / 16]. */
static void tkv_unpack_k(int32_t type, const void *blk, int q[TKV_QK_K], int sc[16], int m[16],
                         float *d, float *dmin) {
    *dmin = 0.0f;
    switch (type) {
    case TKV_TYPE_Q2_K: {
        const tkv_block_q2_k *b = blk;
        *d = tkv_fp16_to_f32(b->d);
        *dmin = tkv_fp16_to_f32(b->dmin);
        for (int j = 0; j < 16; j++) {
            sc[j] = b->scales[j] & 15;
            m[j] = b->scales[j] >> 4;
        }
        for (int e = 0; e < TKV_QK_K; e++) {
            q[e] = tkv_q23_k_low2(b->qs, e);
        }
        break;
    }
    case TKV_TYPE_Q3_K: {
        const tkv_block_q3_k *b = blk;
        *d = tkv_fp16_to_f32(b->d);
        for (int j = 0; j < 16; j++) {
            sc[j] = tkv_q3_k_scale(b->scales, j);
            m[j] = 0;
        }
        for (int e = 0; e < TKV_QK_K; e++) {
            q[e] = tkv_q3_k_value(b, e);
        }
        break;
    }
    case TKV_TYPE_Q6_K: {
        const tkv_block_q6_k *b = blk;
        *d = tkv_fp16_to_f32(b->d);
        for (int j = 0; j < 16; j++) {
            sc[j] = b->scales[j];
            m[j] = 0;
        }
        for (int e = 0; e < TKV_QK_K; e++) {
            const int h = e / 128, g = (e % 128) / 32, l = e % 32;
            const uint8_t lb = b->ql[64 * h + 32 * (g & 1) + l];
            q[e] =
                ((g < 2 ? (lb & 15) : (lb >> 4)) | ((b->qh[32 * h + l] >> (2 * g)) & 3) << 4) - 32;
        }
        break;
    }
    default: { /* Q4_K, Q5_K */
        const int five = type == TKV_TYPE_Q5_K;
        const tkv_block_q4_k *b4 = blk;
        const tkv_block_q5_k *b5 = blk;
        *d = tkv_fp16_to_f32(five ? b5->d : b4->d);
        *dmin = tkv_fp16_to_f32(five ? b5->dmin : b4->dmin);
        const uint8_t *scales = five ? b5->scales : b4->scales, *qs = five ? b5->qs : b4->qs;
        for (int j = 0; j < 8; j++) {
            uint8_t s8, m8;
            tkv_q_k_scale_min(scales, j, &s8, &m8);
            sc[2 * j] = sc[2 * j + 1] = s8;
            m[2 * j] = m[2 * j + 1] = m8;
        }
        for (int e = 0; e < TKV_QK_K; e++) {
            const int r = e % 64;
            const uint8_t byte = qs[32 * (e / 64) + (r & 31)];
            q[e] = r < 32 ? (byte & 15) : (byte >> 4);
            if (five) {
                q[e] |= ((b5->qh[e % 32] >> (e / 32)) & 1) << 4;
            }
        }
        break;
    }
    }
}

/* The K-quants: per 16-element sub-block j, d*sc*d_x*isum - dmin*m*d_x*(sum of the 16
 * activation codes); sub-blocks 2k and 2k + 1 share activation block k. */
static void tkv_dot_k_scalar(int32_t type, int64_t n, const void *w, const void *x, size_t xs,
                             int nx, float *y, size_t ys) {
    const size_t bb = (size_t)tkv_type_get(type)->block_bytes;
    double acc[TKV_MM_NX] = {0};
    int q[TKV_QK_K], sc[16], m[16];
    for (int64_t i = 0; i < n / TKV_QK_K; i++) {
        float d, dmin;
        tkv_unpack_k(type, (const char *)w + (size_t)i * bb, q, sc, m, &d, &dmin);
        for (int j = 0; j < 16; j++) {
            const int64_t xb = i * 8 + j / 2; /* activation block */
            for (int t = 0; t < nx; t++) {
                const void *xt = (const char *)x + t * xs;
                const int8_t *xq = XQ(xt) + xb * TKV_QK + 16 * (j % 2);
                int32_t isum = 0, xsum = 0;
                for (int k = 0; k < 16; k++) {
                    isum += q[16 * j + k] * xq[k];
                    xsum += xq[k];
                }
                const double dx = XD(xt, n)[xb];
                acc[t] += (double)d * sc[j] * dx * isum - (double)dmin * m[j] * dx * xsum;
            }
        }
    }
    for (int t = 0; t < nx; t++) {
        y[t * ys] = (float)acc[t];
    }
}

#define TKV_DOTK(name, type)                                                                       \
    static void name(int64_t n, const void *w, const void *x, size_t xs, int nx, float *y,         \
                     size_t ys) {                                                                  \
        tkv_dot_k_scalar(type, n, w, x, xs, nx, y, ys);                                            \
    }
TKV_DOTK(tkv_dot_q2_k_scalar, TKV_TYPE_Q2_K)
TKV_DOTK(tkv_dot_q3_k_scalar, TKV_TYPE_Q3_K)
TKV_DOTK(tkv_dot_q4_k_scalar, TKV_TYPE_Q4_K)
TKV_DOTK(tkv_dot_q5_k_scalar, TKV_TYPE_Q5_K)
TKV_DOTK(tkv_dot_q6_k_scalar, TKV_TYPE_Q6_K)

const tkv_matmul_kernels tkv_matmul_kernels_scalar = {
    .isa = "scalar",
    .quantize_q8 = tkv_quantize_q8_scalar,
    .dot = {
        [TKV_TYPE_F32] = tkv_dot_f32_scalar,
        [TKV_TYPE_F16] = tkv_dot_f16_scalar,
        [TKV_TYPE_BF16] = tkv_dot_bf16_scalar,
        [TKV_TYPE_Q8_0] = tkv_dot_q8_0_scalar,
        [TKV_TYPE_Q4_0] = tkv_dot_q4_0_scalar,
        [TKV_TYPE_Q4_1] = tkv_dot_q4_1_scalar,
        [TKV_TYPE_Q5_0] = tkv_dot_q5_0_scalar,
        [TKV_TYPE_Q5_1] = tkv_dot_q5_1_scalar,
        [TKV_TYPE_Q2_K] = tkv_dot_q2_k_scalar,
        [TKV_TYPE_Q3_K] = tkv_dot_q3_k_scalar,
        [TKV_TYPE_Q4_K] = tkv_dot_q4_k_scalar,
        [TKV_TYPE_Q5_K] = tkv_dot_q5_k_scalar,
        [TKV_TYPE_Q6_K] = tkv_dot_q6_k_scalar,
    },
};
