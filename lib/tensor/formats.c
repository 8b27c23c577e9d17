/*
 * formats.c - weight formats: sizes, reference dequantize and quantize of a row.
 *
 * Byte layouts (little-endian; "fp16" is IEEE binary16; elements numbered within a block):
 *
 *   F32   4 bytes/elem.   F16  2 bytes/elem (binary16).   BF16  2 bytes/elem (top half of f32).
 *   Q8_0  32 elems, 34 B: fp16 d | int8 q[32].                       x[j] = d*q[j]
 *   Q4_0  32 elems, 18 B: fp16 d | u8 qs[16].  q[j] = qs[j] & 15, q[j+16] = qs[j] >> 4 (j<16)
 *                                                                     x = d*(q-8)
 *   Q4_1  32 elems, 20 B: fp16 d | fp16 m | qs[16] (nibbles as Q4_0)  x = d*q + m
 *   Q5_0  32 elems, 22 B: fp16 d | u8 qh[4] | qs[16].  q[j] = nibble[j] | (bit j of the
 *                         little-endian u32 qh) << 4                   x = d*(q-16)
 *   Q5_1  32 elems, 24 B: fp16 d | fp16 m | qh[4] | qs[16]            x = d*q + m
 *
 *   K-quants: 256-element super-blocks of 8 sub-blocks of 32 (Q4_K, Q5_K) or 16 of 16 (Q6_K).
 *   Q2_K   84 B: scales[16] | qs[64] | fp16 d | fp16 dmin.  16 sub-blocks of 16; sub-block
 *         j = e/16 has scale scales[j] & 15 and min scales[j] >> 4.  The 2-bit code of element
 *         e in half h = e/128, group g = (e%128)/32, l = e%32 is bits 2g..2g+1 of qs[32h + l].
 *                                                    x = d*sc[j]*q - dmin*m[j]
 *   Q3_K  110 B: hmask[32] | qs[64] | scales[12] | fp16 d.  Low 2 bits of the code as Q2_K;
 *         the third bit b is bit e/32 of hmask[e%32], and the value is q = low2 - (b ? 0 : 4).
 *         6-bit scale j (0..15): low 4 bits are the low nibble of scales[j] (j < 8) or the
 *         high nibble of scales[j-8]; high 2 bits are bits 2(j/4)..2(j/4)+1 of
 *         scales[8 + j%4].                            x = d*(scale[j] - 32)*q
 *   Q4_K  144 B: fp16 d | fp16 dmin | scales[12] | qs[128].
 *         6-bit scale sc[j] and min m[j] of sub-block j (0..7) are packed in scales[12]:
 *           j < 4:  sc = scales[j] & 63,  m = scales[j+4] & 63
 *           j >= 4: sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4
 *                   m  = (scales[j+4] >> 4) | (scales[j]   >> 6) << 4
 *         Element e: chunk c = e/64 uses qs[32c .. 32c+31]; e%64 < 32 takes the low nibble of
 *         qs[32c + e%64], else the high nibble of qs[32c + e%64 - 32].  Sub-block j = e/32.
 *                                                    x = d*sc[j]*q - dmin*m[j]
 *   Q5_K  176 B: fp16 d | fp16 dmin | scales[12] | qh[32] | qs[128].  Low 4 bits as Q4_K; the
 *         5th bit of element e is bit (e/32) of qh[e%32].            x = d*sc[j]*q - dmin*m[j]
 *   Q6_K  210 B: ql[128] | qh[64] | int8 scales[16] | fp16 d.  Element e in half h = e/128,
 *         group g = (e%128)/32, l = e%32: low 4 bits are the low nibble (g = 0, 1) or high
 *         nibble (g = 2, 3) of ql[64h + 32*(g&1) + l]; bits 4-5 are bits 2g..2g+1 of
 *         qh[32h + l].  Scale index e/16.                              x = d*scales[e/16]*(q-32)
 */
#include "tensor/formats.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "base/half.h"
#include "base/status.h"

_Static_assert(sizeof(tkv_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(tkv_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(tkv_block_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(tkv_block_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(tkv_block_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(tkv_block_q2_k) == 84, "q2_k block");
_Static_assert(sizeof(tkv_block_q3_k) == 110, "q3_k block");
_Static_assert(sizeof(tkv_block_q4_k) == 144, "q4_k block");
_Static_assert(sizeof(tkv_block_q5_k) == 176, "q5_k block");
_Static_assert(sizeof(tkv_block_q6_k) == 210, "q6_k block");

static const tkv_type_info tkv_types[] = {
    {TKV_TYPE_F32, "f32", 1, 4},
    {TKV_TYPE_F16, "f16", 1, 2},
    {TKV_TYPE_Q4_0, "q4_0", TKV_QK, (int32_t)sizeof(tkv_block_q4_0)},
    {TKV_TYPE_Q4_1, "q4_1", TKV_QK, (int32_t)sizeof(tkv_block_q4_1)},
    {TKV_TYPE_Q5_0, "q5_0", TKV_QK, (int32_t)sizeof(tkv_block_q5_0)},
    {TKV_TYPE_Q5_1, "q5_1", TKV_QK, (int32_t)sizeof(tkv_block_q5_1)},
    {TKV_TYPE_Q8_0, "q8_0", TKV_QK, (int32_t)sizeof(tkv_block_q8_0)},
    {TKV_TYPE_Q2_K, "q2_k", TKV_QK_K, (int32_t)sizeof(tkv_block_q2_k)},
    {TKV_TYPE_Q3_K, "q3_k", TKV_QK_K, (int32_t)sizeof(tkv_block_q3_k)},
    {TKV_TYPE_Q4_K, "q4_k", TKV_QK_K, (int32_t)sizeof(tkv_block_q4_k)},
    {TKV_TYPE_Q5_K, "q5_k", TKV_QK_K, (int32_t)sizeof(tkv_block_q5_k)},
    {TKV_TYPE_Q6_K, "q6_k", TKV_QK_K, (int32_t)sizeof(tkv_block_q6_k)},
    {TKV_TYPE_BF16, "bf16", 1, 2},
};

const tkv_type_info *tkv_type_get(int32_t type) {
    for (size_t i = 0; i < sizeof tkv_types / sizeof tkv_types[0]; i++) {
        if (tkv_types[i].type == type) {
            return &tkv_types[i];
        }
    }
    return NULL;
}

tkv_status tkv_type_row_bytes(int32_t type, int64_t n, size_t *out) {
    const tkv_type_info *ti = tkv_type_get(type);
    TKV_REQUIRE(ti != NULL, TKV_ERR_UNSUPPORTED, "tensor type %d is not supported", (int)type);
    TKV_REQUIRE(n >= 0 && n % ti->block_elems == 0, TKV_ERR_INVALID_ARGUMENT,
                "row of %lld elements is not a whole number of %s blocks (%d)", (long long)n,
                ti->name, (int)ti->block_elems);
    /* n / block_elems * block_bytes fits: n < 2^63 and block_bytes / block_elems <= 4 */
    *out = (size_t)(n / ti->block_elems) * (size_t)ti->block_bytes;
    return TKV_OK;
}

/* Inverse of tkv_q_k_scale_min for all 8 sub-blocks (values 0..63). */
static void tkv_q_k_pack_scales(const uint8_t sc[8], const uint8_t m[8], uint8_t *scales) {
    for (int j = 0; j < 4; j++) {
        scales[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        scales[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

/* ---- dequantize ------------------------------------------------------------------------- */

static void tkv_dequant_q8_0(const tkv_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK) {
        const float d = tkv_fp16_to_f32(b[i].d);
        for (int j = 0; j < TKV_QK; j++) {
            y[j] = d * (float)b[i].qs[j];
        }
    }
}

static void tkv_dequant_q4_0(const tkv_block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK) {
        const float d = tkv_fp16_to_f32(b[i].d);
        for (int j = 0; j < TKV_QK / 2; j++) {
            y[j] = d * (float)((b[i].qs[j] & 15) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void tkv_dequant_q4_1(const tkv_block_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK) {
        const float d = tkv_fp16_to_f32(b[i].d);
        const float m = tkv_fp16_to_f32(b[i].m);
        for (int j = 0; j < TKV_QK / 2; j++) {
            y[j] = d * (float)(b[i].qs[j] & 15) + m;
            y[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static uint32_t tkv_load_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void tkv_dequant_q5_0(const tkv_block_q5_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK) {
        const float d = tkv_fp16_to_f32(b[i].d);
        const uint32_t qh = tkv_load_u32le(b[i].qh);
        for (int j = 0; j < TKV_QK / 2; j++) {
            const int lo = (b[i].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
            const int hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)(lo - 16);
            y[j + 16] = d * (float)(hi - 16);
        }
    }
}

static void tkv_dequant_q5_1(const tkv_block_q5_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK) {
        const float d = tkv_fp16_to_f32(b[i].d);
        const float m = tkv_fp16_to_f32(b[i].m);
        const uint32_t qh = tkv_load_u32le(b[i].qh);
        for (int j = 0; j < TKV_QK / 2; j++) {
            const int lo = (b[i].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
            const int hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)lo + m;
            y[j + 16] = d * (float)hi + m;
        }
    }
}

static void tkv_dequant_q2_k(const tkv_block_q2_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK_K) {
        const float d = tkv_fp16_to_f32(b[i].d);
        const float dmin = tkv_fp16_to_f32(b[i].dmin);
        for (int e = 0; e < TKV_QK_K; e++) {
            const uint8_t sm = b[i].scales[e / 16];
            y[e] = d * (float)(sm & 15) * (float)tkv_q23_k_low2(b[i].qs, e) - dmin * (float)(sm >> 4);
        }
    }
}

static void tkv_dequant_q3_k(const tkv_block_q3_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK_K) {
        const float d = tkv_fp16_to_f32(b[i].d);
        for (int e = 0; e < TKV_QK_K; e++) {
            y[e] = d * (float)tkv_q3_k_scale(b[i].scales, e / 16) * (float)tkv_q3_k_value(&b[i], e);
        }
    }
}

static void tkv_dequant_q4_k(const tkv_block_q4_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK_K) {
        const float d = tkv_fp16_to_f32(b[i].d);
        const float dmin = tkv_fp16_to_f32(b[i].dmin);
        for (int e = 0; e < TKV_QK_K; e++) {
            const int c = e / 64, r = e % 64;
            const uint8_t byte = b[i].qs[32 * c + (r & 31)];
            const int q = r < 32 ? (byte & 15) : (byte >> 4);
            uint8_t sc, m;
            tkv_q_k_scale_min(b[i].scales, e / 32, &sc, &m);
            y[e] = d * (float)sc * (float)q - dmin * (float)m;
        }
    }
}

static void tkv_dequant_q5_k(const tkv_block_q5_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK_K) {
        const float d = tkv_fp16_to_f32(b[i].d);
        const float dmin = tkv_fp16_to_f32(b[i].dmin);
        for (int e = 0; e < TKV_QK_K; e++) {
            const int c = e / 64, r = e % 64;
            const uint8_t byte = b[i].qs[32 * c + (r & 31)];
            const int q = (r < 32 ? (byte & 15) : (byte >> 4)) | ((b[i].qh[e % 32] >> (e / 32)) & 1) << 4;
            uint8_t sc, m;
            tkv_q_k_scale_min(b[i].scales, e / 32, &sc, &m);
            y[e] = d * (float)sc * (float)q - dmin * (float)m;
        }
    }
}

static void tkv_dequant_q6_k(const tkv_block_q6_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += TKV_QK_K) {
        const float d = tkv_fp16_to_f32(b[i].d);
        for (int e = 0; e < TKV_QK_K; e++) {
            const int h = e / 128, g = (e % 128) / 32, l = e % 32;
            const uint8_t lb = b[i].ql[64 * h + 32 * (g & 1) + l];
            const int lo = g < 2 ? (lb & 15) : (lb >> 4);
            const int q = lo | ((b[i].qh[32 * h + l] >> (2 * g)) & 3) << 4;
            y[e] = d * (float)b[i].scales[e / 16] * (float)(q - 32);
        }
    }
}

void tkv_dequantize_row(int32_t type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case TKV_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case TKV_TYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) {
            dst[i] = tkv_fp16_to_f32(s[i]);
        }
        break;
    }
    case TKV_TYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) {
            dst[i] = tkv_bf16_to_f32(s[i]);
        }
        break;
    }
    case TKV_TYPE_Q8_0: tkv_dequant_q8_0(src, dst, n / TKV_QK); break;
    case TKV_TYPE_Q4_0: tkv_dequant_q4_0(src, dst, n / TKV_QK); break;
    case TKV_TYPE_Q4_1: tkv_dequant_q4_1(src, dst, n / TKV_QK); break;
    case TKV_TYPE_Q5_0: tkv_dequant_q5_0(src, dst, n / TKV_QK); break;
    case TKV_TYPE_Q5_1: tkv_dequant_q5_1(src, dst, n / TKV_QK); break;
    case TKV_TYPE_Q2_K: tkv_dequant_q2_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q3_K: tkv_dequant_q3_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q4_K: tkv_dequant_q4_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q5_K: tkv_dequant_q5_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q6_K: tkv_dequant_q6_k(src, dst, n / TKV_QK_K); break;
    default: assert(!"unsupported tensor type"); break;
    }
}

void tkv_embedding_row(int32_t type, const void *W, size_t row_bytes, int64_t n_cols,
                       int64_t index, float *out) {
    tkv_dequantize_row(type, (const uint8_t *)W + (size_t)index * row_bytes, out, n_cols);
}

/* ---- quantize --------------------------------------------------------------------------- */

static int tkv_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Round to nearest (ties to even in the default rounding mode), clamped to [lo, hi]. */
static int tkv_qround(float v, int lo, int hi) {
    const float r = nearbyintf(v);
    if (!(r >= (float)lo)) { /* also catches nan */
        return lo;
    }
    return r > (float)hi ? hi : (int)r;
}

/* The element of largest magnitude, with its sign. */
static float tkv_absmax_signed(const float *x, int n) {
    float best = 0.0f;
    for (int j = 0; j < n; j++) {
        if (fabsf(x[j]) > fabsf(best)) {
            best = x[j];
        }
    }
    return best;
}

static void tkv_minmax(const float *x, int n, float *mn, float *mx) {
    float a = x[0], b = x[0];
    for (int j = 1; j < n; j++) {
        a = x[j] < a ? x[j] : a;
        b = x[j] > b ? x[j] : b;
    }
    *mn = a;
    *mx = b;
}

static void tkv_quant_q8_0(const float *x, tkv_block_q8_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += TKV_QK) {
        const float amax = fabsf(tkv_absmax_signed(x, TKV_QK));
        b[i].d = tkv_f32_to_fp16(amax / 127.0f);
        const float d = tkv_fp16_to_f32(b[i].d);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < TKV_QK; j++) {
            b[i].qs[j] = (int8_t)tkv_qround(x[j] * id, -127, 127);
        }
    }
}

/* Symmetric 2^bits-level quantizer of Q4_0/Q5_0: the largest-magnitude element maps to the
 * most negative level (-8 or -16), which uses the level range fully on that side. */
static void tkv_quant_sym(const float *x, int bits, uint16_t *dh, int *q) {
    const int half = 1 << (bits - 1);
    const float mx = tkv_absmax_signed(x, TKV_QK);
    *dh = tkv_f32_to_fp16(mx / (float)-half);
    const float d = tkv_fp16_to_f32(*dh);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < TKV_QK; j++) {
        q[j] = tkv_qround(x[j] * id, -half, half - 1) + half;
    }
}

/* Asymmetric quantizer of Q4_1/Q5_1: x ~ d*q + m with m = min, d = (max - min) / levels. */
static void tkv_quant_asym(const float *x, int bits, uint16_t *dh, uint16_t *mh, int *q) {
    const int top = (1 << bits) - 1;
    float mn, mx;
    tkv_minmax(x, TKV_QK, &mn, &mx);
    *dh = tkv_f32_to_fp16((mx - mn) / (float)top);
    *mh = tkv_f32_to_fp16(mn);
    const float d = tkv_fp16_to_f32(*dh);
    const float m = tkv_fp16_to_f32(*mh);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < TKV_QK; j++) {
        q[j] = tkv_qround((x[j] - m) * id, 0, top);
    }
}

static void tkv_pack_nibbles(const int *q, uint8_t *qs) {
    for (int j = 0; j < TKV_QK / 2; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
    }
}

static void tkv_pack_qh(const int *q, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < TKV_QK; j++) {
        h |= (uint32_t)((q[j] >> 4) & 1) << j;
    }
    for (int k = 0; k < 4; k++) {
        qh[k] = (uint8_t)(h >> (8 * k));
    }
}

/* Scales and mins of one Q4_K/Q5_K super-block, from per-sub-block min/max. */
static void tkv_quant_k_asym(const float *x, int top, uint16_t *dh, uint16_t *dminh,
                             uint8_t *scales, int *q) {
    float scale[8], minv[8], smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < 8; j++) {
        float mn, mx;
        tkv_minmax(x + 32 * j, 32, &mn, &mx);
        mn = mn < 0.0f ? mn : 0.0f; /* the format subtracts a non-negative min */
        scale[j] = (mx - mn) / (float)top;
        minv[j] = -mn;
        smax = scale[j] > smax ? scale[j] : smax;
        mmax = minv[j] > mmax ? minv[j] : mmax;
    }
    *dh = tkv_f32_to_fp16(smax / 63.0f);
    *dminh = tkv_f32_to_fp16(mmax / 63.0f);
    const float d = tkv_fp16_to_f32(*dh), dmin = tkv_fp16_to_f32(*dminh);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        /* round the min up so that x + min stays >= 0 after rounding */
        sc[j] = (uint8_t)(d > 0.0f ? tkv_qround(scale[j] / d, 0, 63) : 0);
        m[j] = (uint8_t)(dmin > 0.0f ? tkv_clampi((int)ceilf(minv[j] / dmin), 0, 63) : 0);
        const float es = d * (float)sc[j], em = dmin * (float)m[j];
        const float ies = es > 0.0f ? 1.0f / es : 0.0f;
        for (int k = 0; k < 32; k++) {
            q[32 * j + k] = tkv_qround((x[32 * j + k] + em) * ies, 0, top);
        }
    }
    tkv_q_k_pack_scales(sc, m, scales);
}

/* Q2_K: per 16-element sub-block, x ~ s_j * q - m_j with q in 0..3, s_j = (max - lo) / 3,
 * m_j = -lo, lo = min(min x, 0); s_j and m_j are then coded as 4-bit multiples of d, dmin. */
static void tkv_quant_q2_k(const float *x, tkv_block_q2_k *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += TKV_QK_K) {
        float s[16], m[16], smax = 0.0f, mmax = 0.0f;
        for (int j = 0; j < 16; j++) {
            float mn, mx;
            tkv_minmax(x + 16 * j, 16, &mn, &mx);
            mn = fminf(mn, 0.0f);
            s[j] = (mx - mn) / 3.0f;
            m[j] = -mn;
            smax = fmaxf(smax, s[j]);
            mmax = fmaxf(mmax, m[j]);
        }
        b[i].d = tkv_f32_to_fp16(smax / 15.0f);
        b[i].dmin = tkv_f32_to_fp16(mmax / 15.0f);
        const float d = tkv_fp16_to_f32(b[i].d), dmin = tkv_fp16_to_f32(b[i].dmin);
        memset(b[i].qs, 0, sizeof b[i].qs);
        for (int j = 0; j < 16; j++) {
            const int sc = d > 0.0f ? tkv_qround(s[j] / d, 0, 15) : 0;
            const int mq = dmin > 0.0f ? tkv_qround(m[j] / dmin, 0, 15) : 0;
            b[i].scales[j] = (uint8_t)(sc | mq << 4);
            const float step = d * (float)sc, off = dmin * (float)mq;
            for (int k = 0; k < 16; k++) {
                const int e = 16 * j + k;
                const int q = step > 0.0f ? tkv_qround((x[e] + off) / step, 0, 3) : 0;
                b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)(q << (2 * ((e % 128) / 32)));
            }
        }
    }
}

/* Q3_K: per 16-element sub-block, x ~ s_j * q with q in -4..3, s_j = max|x| / 4 coded as a
 * signed 6-bit multiple of d (the far side clamps at +3, as Q4_0's at +7). */
static void tkv_quant_q3_k(const float *x, tkv_block_q3_k *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += TKV_QK_K) {
        float s[16], smax = 0.0f;
        for (int j = 0; j < 16; j++) {
            s[j] = tkv_absmax_signed(x + 16 * j, 16) / -4.0f;
            smax = fmaxf(smax, fabsf(s[j]));
        }
        b[i].d = tkv_f32_to_fp16(smax / 31.0f);
        const float d = tkv_fp16_to_f32(b[i].d);
        memset(b[i].hmask, 0, sizeof b[i].hmask);
        memset(b[i].qs, 0, sizeof b[i].qs);
        memset(b[i].scales, 0, sizeof b[i].scales);
        for (int j = 0; j < 16; j++) {
            const int sc = d > 0.0f ? tkv_qround(s[j] / d, -32, 31) : 0;
            const int v = sc + 32;
            b[i].scales[j % 8] |= (uint8_t)((v & 15) << (j < 8 ? 0 : 4));
            b[i].scales[8 + j % 4] |= (uint8_t)((v >> 4) << (2 * (j / 4)));
            const float step = d * (float)sc;
            for (int k = 0; k < 16; k++) {
                const int e = 16 * j + k;
                const int u = (step != 0.0f ? tkv_qround(x[e] / step, -4, 3) : 0) + 4;
                b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)((u & 3) << (2 * ((e % 128) / 32)));
                b[i].hmask[e % 32] |= (uint8_t)((u >> 2) << (e / 32));
            }
        }
    }
}

static void tkv_quant_q4_k(const float *x, tkv_block_q4_k *b, int64_t nb) {
    int q[TKV_QK_K];
    for (int64_t i = 0; i < nb; i++, x += TKV_QK_K) {
        tkv_quant_k_asym(x, 15, &b[i].d, &b[i].dmin, b[i].scales, q);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                b[i].qs[32 * c + l] = (uint8_t)(q[64 * c + l] | q[64 * c + 32 + l] << 4);
            }
        }
    }
}

static void tkv_quant_q5_k(const float *x, tkv_block_q5_k *b, int64_t nb) {
    int q[TKV_QK_K];
    for (int64_t i = 0; i < nb; i++, x += TKV_QK_K) {
        tkv_quant_k_asym(x, 31, &b[i].d, &b[i].dmin, b[i].scales, q);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                b[i].qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 15) | (q[64 * c + 32 + l] & 15) << 4);
            }
        }
        for (int e = 0; e < TKV_QK_K; e++) {
            b[i].qh[e % 32] |= (uint8_t)(((q[e] >> 4) & 1) << (e / 32));
        }
    }
}

static void tkv_quant_q6_k(const float *x, tkv_block_q6_k *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += TKV_QK_K) {
        float scale[16], smax = 0.0f;
        for (int k = 0; k < 16; k++) {
            scale[k] = tkv_absmax_signed(x + 16 * k, 16) / -32.0f;
            smax = fabsf(scale[k]) > smax ? fabsf(scale[k]) : smax;
        }
        b[i].d = tkv_f32_to_fp16(smax / 127.0f);
        const float d = tkv_fp16_to_f32(b[i].d);
        int q[TKV_QK_K];
        for (int k = 0; k < 16; k++) {
            b[i].scales[k] = (int8_t)(d > 0.0f ? tkv_qround(scale[k] / d, -127, 127) : 0);
            const float es = d * (float)b[i].scales[k];
            const float ies = es != 0.0f ? 1.0f / es : 0.0f;
            for (int l = 0; l < 16; l++) {
                q[16 * k + l] = tkv_qround(x[16 * k + l] * ies, -32, 31) + 32;
            }
        }
        memset(b[i].ql, 0, sizeof b[i].ql);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int e = 0; e < TKV_QK_K; e++) {
            const int h = e / 128, g = (e % 128) / 32, l = e % 32;
            b[i].ql[64 * h + 32 * (g & 1) + l] |= (uint8_t)((q[e] & 15) << (g < 2 ? 0 : 4));
            b[i].qh[32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * g));
        }
    }
}

void tkv_quantize_row(int32_t type, const float *src, void *dst, int64_t n) {
    int q[TKV_QK];
    switch (type) {
    case TKV_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case TKV_TYPE_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) {
            d[i] = tkv_f32_to_fp16(src[i]);
        }
        break;
    }
    case TKV_TYPE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) {
            d[i] = tkv_f32_to_bf16(src[i]);
        }
        break;
    }
    case TKV_TYPE_Q8_0: tkv_quant_q8_0(src, dst, n / TKV_QK); break;
    case TKV_TYPE_Q4_0: {
        tkv_block_q4_0 *b = dst;
        for (int64_t i = 0; i < n / TKV_QK; i++) {
            tkv_quant_sym(src + i * TKV_QK, 4, &b[i].d, q);
            tkv_pack_nibbles(q, b[i].qs);
        }
        break;
    }
    case TKV_TYPE_Q4_1: {
        tkv_block_q4_1 *b = dst;
        for (int64_t i = 0; i < n / TKV_QK; i++) {
            tkv_quant_asym(src + i * TKV_QK, 4, &b[i].d, &b[i].m, q);
            tkv_pack_nibbles(q, b[i].qs);
        }
        break;
    }
    case TKV_TYPE_Q5_0: {
        tkv_block_q5_0 *b = dst;
        for (int64_t i = 0; i < n / TKV_QK; i++) {
            tkv_quant_sym(src + i * TKV_QK, 5, &b[i].d, q);
            tkv_pack_nibbles(q, b[i].qs);
            tkv_pack_qh(q, b[i].qh);
        }
        break;
    }
    case TKV_TYPE_Q5_1: {
        tkv_block_q5_1 *b = dst;
        for (int64_t i = 0; i < n / TKV_QK; i++) {
            tkv_quant_asym(src + i * TKV_QK, 5, &b[i].d, &b[i].m, q);
            tkv_pack_nibbles(q, b[i].qs);
            tkv_pack_qh(q, b[i].qh);
        }
        break;
    }
    case TKV_TYPE_Q2_K: tkv_quant_q2_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q3_K: tkv_quant_q3_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q4_K: tkv_quant_q4_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q5_K: tkv_quant_q5_k(src, dst, n / TKV_QK_K); break;
    case TKV_TYPE_Q6_K: tkv_quant_q6_k(src, dst, n / TKV_QK_K); break;
    default: assert(!"unsupported tensor type"); break;
    }
}
