/*
 * codec.c - the codec registry (ids, names, sizes) and the codec object: its
 * rotation, codebook and QJL sketch, and encode / decode of one vector.
 *
 * Byte layout of one encoded vector of d elements (all multi-byte fields little
 * endian; fp16 = IEEE binary16):
 *   fp32          d x float32
 *   fp16, bf16    d x 16-bit
 *   q8_0(_rot)    blocks of 32 elements (last block: d mod 32): fp16 scale, t x int8;
 *                 value = scale * q; scale = max|x| / 127
 *   q4_0(_rot)    blocks of 32 (last: d mod 32): fp16 scale, t/2 bytes; byte k holds
 *                 element k (low nibble) and k + t/2 (high); value = scale * (q - 8),
 *                 scale = m / -8 where m is the element of largest magnitude
 *   turbo_kv_Nb   fp16 scale, then the N-bit index planes of pack.h
 *   turbo_kv_5b_fast  fp16 scale, then d index bytes
 *   turbo_kv_Nb_qjl   fp16 scale, fp16 residual norm, (N-1)-bit index planes,
 *                 then ceil(d/8) bytes: bit j = 1 when (S r)_j >= 0
 *   turbo_kv_Nb_tcq   fp16 scale, then d N / 8 bytes of trellis symbols (trellis.h);
 *                 u as for turbo, coded by Viterbi search instead of per coordinate
 * The _rot, turbo and qjl codecs code y = R x (rotation.c).  Turbo codecs quantize
 * u = y * sqrt(d) / |y| with the Lloyd-Max codebook and store scale = |y| / |c|
 * where c is the vector of chosen centroids, so the decoded vector scale * c has
 * exactly the input's norm (up to fp16 rounding of the scale).
 * QJL (Zandieh et al., TurboQuant_prod): r = y - scale * c, S a d x d matrix of
 * N(0,1) draws; <q, r> is estimated by sqrt(pi/2) / d * |r| * <S q, sign(S r)>,
 * which is unbiased; decode adds sqrt(pi/2) / d * |r| * S^T sign(S r).
 */
#include "codec/codec.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/half.h"
#include "base/rng.h"
#include "base/status.h"
#include "codec/pack.h"

#define F_ROT TKV_CODEC_FLAG_ROTATED
#define F_CB TKV_CODEC_FLAG_CODEBOOK
#define F_QJL TKV_CODEC_FLAG_QJL
#define F_BLK TKV_CODEC_FLAG_BLOCK
#define F_FLT TKV_CODEC_FLAG_FLOAT
#define F_TCQ TKV_CODEC_FLAG_TRELLIS

static const tkv_codec_desc tkv_codec_table[TKV_CODEC_COUNT] = {
    {TKV_CODEC_FP32, "fp32", F_FLT, TKV_FMT_F32, 0, 0},
    {TKV_CODEC_FP16, "fp16", F_FLT, TKV_FMT_F16, 0, 0},
    {TKV_CODEC_BF16, "bf16", F_FLT, TKV_FMT_BF16, 0, 0},
    {TKV_CODEC_Q8_0, "q8_0", F_BLK, TKV_FMT_Q8_0, 0, 0},
    {TKV_CODEC_Q4_0, "q4_0", F_BLK, TKV_FMT_Q4_0, 0, 0},
    {TKV_CODEC_Q8_0_ROT, "q8_0_rot", F_BLK | F_ROT, TKV_FMT_Q8_0, 0, 0},
    {TKV_CODEC_Q4_0_ROT, "q4_0_rot", F_BLK | F_ROT, TKV_FMT_Q4_0, 0, 0},
    {TKV_CODEC_TURBO_2B, "turbo_kv_2b", F_ROT | F_CB, TKV_FMT_TURBO, 2, 2},
    {TKV_CODEC_TURBO_3B, "turbo_kv_3b", F_ROT | F_CB, TKV_FMT_TURBO, 3, 3},
    {TKV_CODEC_TURBO_4B, "turbo_kv_4b", F_ROT | F_CB, TKV_FMT_TURBO, 4, 4},
    {TKV_CODEC_TURBO_5B, "turbo_kv_5b", F_ROT | F_CB, TKV_FMT_TURBO, 5, 5},
    {TKV_CODEC_TURBO_5B_FAST, "turbo_kv_5b_fast", F_ROT | F_CB, TKV_FMT_TURBO, 8, 5},
    {TKV_CODEC_TURBO_3B_QJL, "turbo_kv_3b_qjl", F_ROT | F_CB | F_QJL, TKV_FMT_TURBO, 2, 2},
    {TKV_CODEC_TURBO_4B_QJL, "turbo_kv_4b_qjl", F_ROT | F_CB | F_QJL, TKV_FMT_TURBO, 3, 3},
    {TKV_CODEC_TURBO_2B_TCQ, "turbo_kv_2b_tcq", F_ROT | F_TCQ, TKV_FMT_TRELLIS, 2, 0},
    {TKV_CODEC_TURBO_3B_TCQ, "turbo_kv_3b_tcq", F_ROT | F_TCQ, TKV_FMT_TRELLIS, 3, 0},
    {TKV_CODEC_TURBO_4B_TCQ, "turbo_kv_4b_tcq", F_ROT | F_TCQ, TKV_FMT_TRELLIS, 4, 0},
};

const tkv_codec_desc *tkv_codec_desc_get(int32_t id) {
    if (id < 0 || id >= TKV_CODEC_COUNT) {
        return NULL;
    }
    return &tkv_codec_table[id];
}

const tkv_codec_desc *tkv_codec_desc_find(const char *name) {
    for (int32_t i = 0; i < TKV_CODEC_COUNT; i++) {
        if (strcmp(tkv_codec_table[i].name, name) == 0) {
            return &tkv_codec_table[i];
        }
    }
    return NULL;
}

int tkv_head_dim_valid(uint32_t d) { return d >= 2 && d <= TKV_HEAD_DIM_MAX && d % 2 == 0; }

int tkv_codec_desc_dim_valid(const tkv_codec_desc *desc, uint32_t d) {
    if (!desc || !tkv_head_dim_valid(d)) {
        return 0;
    }
    return desc->format != TKV_FMT_TRELLIS || tkv_trellis_dim_valid(d);
}

static size_t tkv_block_quant_bytes(uint32_t d, int four_bit) {
    size_t bytes = 0;
    for (uint32_t b0 = 0; b0 < d; b0 += 32) {
        uint32_t t = d - b0 < 32 ? d - b0 : 32;
        bytes += 2 + (four_bit ? t / 2 : t);
    }
    return bytes;
}

size_t tkv_codec_desc_vector_bytes(const tkv_codec_desc *desc, uint32_t d) {
    if (!tkv_codec_desc_dim_valid(desc, d)) {
        return 0;
    }
    switch (desc->format) {
    case TKV_FMT_F32: return 4 * (size_t)d;
    case TKV_FMT_F16:
    case TKV_FMT_BF16: return 2 * (size_t)d;
    case TKV_FMT_Q8_0: return tkv_block_quant_bytes(d, 0);
    case TKV_FMT_Q4_0: return tkv_block_quant_bytes(d, 1);
    case TKV_FMT_TURBO: {
        size_t bytes = 2 + tkv_packed_bytes(desc->index_bits, d);
        if (desc->flags & F_QJL) {
            bytes += 2 + (d + 7) / 8;
        }
        return bytes;
    }
    case TKV_FMT_TRELLIS:
        return 2 + (size_t)d * desc->index_bits / 8;
    default: return 0;
    }
}

tkv_status tkv_codec_init(struct tkv_codec *c, int32_t id, uint32_t d, uint64_t seed) {
    memset(c, 0, sizeof *c);
    const tkv_codec_desc *desc = tkv_codec_desc_get(id);
    TKV_REQUIRE(desc, TKV_ERR_INVALID_ARGUMENT, "unknown codec id %d", (int)id);
    TKV_REQUIRE(tkv_head_dim_valid(d), TKV_ERR_INVALID_ARGUMENT,
                "head_dim %u is invalid (must be even, 2..%d)", d, TKV_HEAD_DIM_MAX);
    TKV_REQUIRE(tkv_codec_desc_dim_valid(desc, d), TKV_ERR_INVALID_ARGUMENT,
                "%s needs head_dim to be a multiple of 8 and at least 16 (got %u)", desc->name, d);
    c->desc = desc;
    c->d = d;
    c->seed = seed;
    tkv_code_layout *L = &c->layout;
    L->format = desc->format;
    L->d = d;
    L->stride = (uint32_t)tkv_codec_desc_vector_bytes(desc, d);
    L->centroids = c->centroids;
    if (desc->flags & F_ROT) {
        c->rotated = 1;
        TKV_TRY(tkv_rotation_init(&c->rot, d, seed));
    }
    if (desc->format == TKV_FMT_TRELLIS) {
        c->trellis = tkv_trellis_get(desc->index_bits);
        L->trellis = c->trellis;
        L->bits = desc->index_bits;
        L->scale_off = 0;
        L->payload_off = 2;
    }
    if (desc->format == TKV_FMT_TURBO) {
        c->codebook = tkv_codebook_get(desc->codebook_bits);
        memcpy(c->centroids, c->codebook->centroids, c->codebook->n * sizeof(float));
        L->bits = desc->index_bits;
        L->scale_off = 0;
        L->payload_off = 2;
        if (desc->flags & F_QJL) {
            L->has_qjl = 1;
            L->rnorm_off = 2;
            L->payload_off = 4;
            L->signs_off = (uint32_t)(4 + tkv_packed_bytes(L->bits, d));
            L->qjl_coef = 1.2533141373155003f / (float)d; /* sqrt(pi/2) / d */
            c->qjl_matrix = tkv_calloc_aligned((size_t)d * d, sizeof(float));
            if (!c->qjl_matrix) {
                tkv_codec_release(c);
                return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "codec: out of memory for QJL matrix");
            }
            tkv_rng rng;
            tkv_rng_init(&rng, tkv_mix64(seed ^ 0x514a4c534b455443ULL));
            for (size_t i = 0; i < (size_t)d * d; i++) {
                c->qjl_matrix[i] = (float)tkv_rng_gaussian(&rng);
            }
        }
    }
    return TKV_OK;
}

void tkv_codec_release(struct tkv_codec *c) {
    if (c->rotated) {
        tkv_rotation_free(&c->rot);
    }
    tkv_free_aligned(c->qjl_matrix);
    c->qjl_matrix = NULL;
}

uint32_t tkv_codec_work_width(const struct tkv_codec *c) {
    return c->layout.has_qjl ? 2 * c->d : c->d;
}

static void tkv_store_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

#define TKV_FP16_MAX 65504.0f

static tkv_status tkv_encode_q8_0(const float *y, uint32_t d, uint8_t *out) {
    for (uint32_t b0 = 0; b0 < d; b0 += 32) {
        uint32_t t = d - b0 < 32 ? d - b0 : 32;
        float amax = 0.0f;
        for (uint32_t k = 0; k < t; k++) {
            amax = fmaxf(amax, fabsf(y[b0 + k]));
        }
        float scale = amax / 127.0f;
        TKV_REQUIRE(scale <= TKV_FP16_MAX, TKV_ERR_INVALID_ARGUMENT,
                    "q8_0: |value| %g too large for an fp16 block scale", (double)amax);
        uint16_t h = tkv_f32_to_fp16(scale);
        /* a scale that rounds to fp16 zero decodes the block to zeros whatever q holds; write
         * zeros (1 / scale may be inf there, and 0 * inf would be NaN) */
        float inv = h != 0 ? 1.0f / scale : 0.0f;
        tkv_store_u16(out, h);
        int8_t *q = (int8_t *)(out + 2);
        for (uint32_t k = 0; k < t; k++) {
            float v = roundf(y[b0 + k] * inv);
            q[k] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : v);
        }
        out += 2 + t;
    }
    return TKV_OK;
}

static tkv_status tkv_encode_q4_0(const float *y, uint32_t d, uint8_t *out) {
    for (uint32_t b0 = 0; b0 < d; b0 += 32) {
        uint32_t t = d - b0 < 32 ? d - b0 : 32;
        uint32_t half = t / 2;
        float amax = 0.0f, m = 0.0f;
        for (uint32_t k = 0; k < t; k++) {
            if (fabsf(y[b0 + k]) > amax) {
                amax = fabsf(y[b0 + k]);
                m = y[b0 + k];
            }
        }
        /* the extreme element maps to level 0 (-8), which uses the asymmetric range */
        float scale = m / -8.0f;
        TKV_REQUIRE(fabsf(scale) <= TKV_FP16_MAX, TKV_ERR_INVALID_ARGUMENT,
                    "q4_0: |value| %g too large for an fp16 block scale", (double)amax);
        const uint16_t h = tkv_f32_to_fp16(scale);
        tkv_store_u16(out, h);
        float inv = (h & 0x7fff) != 0 ? 1.0f / scale : 0.0f; /* as for q8_0 */
        uint8_t *q = out + 2;
        for (uint32_t k = 0; k < half; k++) {
            int lo = (int)roundf(y[b0 + k] * inv) + 8;
            int hi = (int)roundf(y[b0 + half + k] * inv) + 8;
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            q[k] = (uint8_t)(lo | (hi << 4));
        }
        out += 2 + half;
    }
    return TKV_OK;
}

/* sqrt(d) / |y|, which maps y to u with |u| = sqrt(d).  0 for a zero vector, and also for
 * |y| below ~1e-37 where it would overflow float: such a vector's fp16 scale (about
 * |y| / sqrt(d)) rounds to 0 anyway, so it is coded as the zero vector it decodes to. */
static float tkv_unit_scale(double norm, uint32_t d) {
    const double s = norm > 0.0 ? sqrt((double)d) / norm : 0.0;
    return s <= FLT_MAX ? (float)s : 0.0f;
}

/* Turbo stage: quantize y (rotated), write scale + indices; *yhat gets the decoded y. */
static tkv_status tkv_encode_turbo(const struct tkv_codec *c, const float *y, uint8_t *out,
                                   float *yhat) {
    const uint32_t d = c->d;
    const tkv_code_layout *L = &c->layout;
    const tkv_codebook *cb = c->codebook;
    uint8_t idx[TKV_HEAD_DIM_MAX];
    float u[TKV_HEAD_DIM_MAX];
    double norm2 = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        norm2 += (double)y[j] * y[j];
    }
    const double norm = sqrt(norm2);
    double cnorm2 = 0.0;
    const float u_scale = tkv_unit_scale(norm, d);
    for (uint32_t j = 0; j < d; j++) {
        u[j] = y[j] * u_scale;
    }
    tkv_codebook_quantize_row(cb, u, d, idx);
    for (uint32_t j = 0; j < d; j++) {
        double cj = cb->centroids[idx[j]];
        cnorm2 += cj * cj;
    }
    const double scale = u_scale > 0.0f ? norm / sqrt(cnorm2) : 0.0;
    TKV_REQUIRE(scale <= TKV_FP16_MAX, TKV_ERR_INVALID_ARGUMENT,
                "%s: vector norm %g too large for the fp16 scale", c->desc->name, norm);
    const uint16_t h = tkv_f32_to_fp16((float)scale);
    tkv_store_u16(out + L->scale_off, h);
    tkv_pack_indices(L->bits, d, idx, out + L->payload_off);
    const float s = tkv_fp16_to_f32(h);
    for (uint32_t j = 0; j < d; j++) {
        yhat[j] = s * cb->centroids[idx[j]];
    }
    return TKV_OK;
}

/* Trellis: u = y sqrt(d) / |y| coded by tkv_trellis_encode, scale as for turbo. */
static tkv_status tkv_encode_trellis(const struct tkv_codec *c, const float *y, uint8_t *out,
                                     float *scratch) {
    const uint32_t d = c->d;
    float *u = scratch, *uhat = scratch + d;
    uint8_t *search = (uint8_t *)(scratch + 2 * (size_t)d);
    double norm2 = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        norm2 += (double)y[j] * y[j];
    }
    const double norm = sqrt(norm2);
    const float u_scale = tkv_unit_scale(norm, d);
    for (uint32_t j = 0; j < d; j++) {
        u[j] = y[j] * u_scale;
    }
    tkv_trellis_encode(c->trellis, u, d, out + c->layout.payload_off, uhat, search);
    double cnorm2 = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        cnorm2 += (double)uhat[j] * uhat[j];
    }
    const double scale = u_scale > 0.0f && cnorm2 > 0.0 ? norm / sqrt(cnorm2) : 0.0;
    TKV_REQUIRE(scale <= TKV_FP16_MAX, TKV_ERR_INVALID_ARGUMENT,
                "%s: vector norm %g too large for the fp16 scale", c->desc->name, norm);
    tkv_store_u16(out + c->layout.scale_off, tkv_f32_to_fp16((float)scale));
    return TKV_OK;
}

static tkv_status tkv_encode_qjl_residual(const struct tkv_codec *c, const float *y,
                                          const float *yhat, uint8_t *out, float *scratch) {
    const uint32_t d = c->d;
    const tkv_code_layout *L = &c->layout;
    float *r = scratch;
    float *z = scratch + d;
    double rn2 = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        r[j] = y[j] - yhat[j];
        rn2 += (double)r[j] * r[j];
    }
    const float rnorm = (float)sqrt(rn2);
    TKV_REQUIRE(rnorm <= TKV_FP16_MAX, TKV_ERR_INVALID_ARGUMENT,
                "%s: residual norm %g too large for fp16", c->desc->name, (double)rnorm);
    tkv_store_u16(out + L->rnorm_off, tkv_f32_to_fp16(rnorm));
    tkv_codec_kernels_active()->matvec(c->qjl_matrix, r, d, d, z);
    uint8_t *signs = out + L->signs_off;
    memset(signs, 0, (d + 7) / 8);
    for (uint32_t j = 0; j < d; j++) {
        if (z[j] >= 0.0f) {
            signs[j / 8] |= (uint8_t)(1u << (j % 8));
        }
    }
    return TKV_OK;
}

/* |x| in double: no overflow for any finite float input. */
static double tkv_norm(const float *x, uint32_t d) {
    double s = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        s += (double)x[j] * x[j];
    }
    return sqrt(s);
}

tkv_status tkv_codec_encode_one(const struct tkv_codec *c, const float *x, uint8_t *out,
                                float *scratch) {
    const uint32_t d = c->d;
    const float *y = x;
    float *rotated = scratch;              /* d */
    float *rest = scratch + d;             /* the remaining floats */
    if (c->rotated) {
        tkv_rotation_apply(&c->rot, x, rotated);
        y = rotated;
        /* the rotation keeps |x| but its float sums overflow for |x| beyond ~1e35; every
         * rotated codec stores an fp16 scale, which such a vector overflows by far */
        for (uint32_t j = 0; j < d; j++) {
            TKV_REQUIRE(isfinite(rotated[j]), TKV_ERR_INVALID_ARGUMENT,
                        "%s: vector norm %g too large for the fp16 scale (the rotation "
                        "overflows float32)",
                        c->desc->name, tkv_norm(x, d));
        }
    }
    switch (c->desc->format) {
    case TKV_FMT_F32:
        memcpy(out, y, d * sizeof(float));
        return TKV_OK;
    case TKV_FMT_F16:
        for (uint32_t j = 0; j < d; j++) {
            TKV_REQUIRE(fabsf(y[j]) <= TKV_FP16_MAX, TKV_ERR_INVALID_ARGUMENT,
                        "fp16: value %g at index %u is outside the fp16 range", (double)y[j], j);
            tkv_store_u16(out + 2 * j, tkv_f32_to_fp16(y[j]));
        }
        return TKV_OK;
    case TKV_FMT_BF16:
        for (uint32_t j = 0; j < d; j++) {
            const uint16_t b = tkv_f32_to_bf16(y[j]);
            /* above bf16's largest finite value (3.3895e38) rounding gives inf */
            TKV_REQUIRE((b & 0x7f80) != 0x7f80, TKV_ERR_INVALID_ARGUMENT,
                        "bf16: value %g at index %u is outside the bf16 range", (double)y[j], j);
            tkv_store_u16(out + 2 * j, b);
        }
        return TKV_OK;
    case TKV_FMT_Q8_0:
        return tkv_encode_q8_0(y, d, out);
    case TKV_FMT_Q4_0:
        return tkv_encode_q4_0(y, d, out);
    case TKV_FMT_TURBO: {
        float *yhat = rest;
        TKV_TRY(tkv_encode_turbo(c, y, out, yhat));
        if (c->layout.has_qjl) {
            TKV_TRY(tkv_encode_qjl_residual(c, y, yhat, out, rest + d));
        }
        return TKV_OK;
    }
    case TKV_FMT_TRELLIS:
        return tkv_encode_trellis(c, y, out, rest);
    default:
        return tkv_fail(TKV_ERR_INTERNAL, "codec %s: no encoder", c->desc->name);
    }
}

/*
 * Validation of one encoded vector against what the encoder writes, for bytes from
 * outside (the public decode/scores/weighted_sum/attention).  The kernels are memory-safe
 * on any bytes; this turns the values no encoder produces into TKV_ERR_BAD_FORMAT:
 *   - fp16 scale / residual-norm fields that are inf or NaN, or negative where the encoder
 *     writes a norm (turbo, qjl, tcq, q8_0; q4_0 scales carry a sign);
 *   - fp32 / fp16 / bf16 elements that are inf or NaN;
 *   - q8_0 values of -128 (the encoder writes -127..127);
 *   - turbo_kv_5b_fast index bytes >= 32;
 *   - set padding bits in the index planes and the QJL sign plane (the encoder writes 0);
 * The message names the field and its byte offset in the vector.
 */
static uint16_t tkv_load_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static tkv_status tkv_check_f16_field(const struct tkv_codec *c, const uint8_t *code, uint32_t off,
                                      const char *field, int nonneg) {
    const uint16_t h = tkv_load_u16(code + off);
    TKV_REQUIRE((h & 0x7c00) != 0x7c00, TKV_ERR_BAD_FORMAT, "%s: %s at byte %u is %s (fp16 0x%04x)",
                c->desc->name, field, off, h & 0x3ff ? "NaN" : "infinite", h);
    TKV_REQUIRE(!nonneg || !(h & 0x8000), TKV_ERR_BAD_FORMAT,
                "%s: %s at byte %u is negative (fp16 0x%04x); the encoder writes a norm >= 0",
                c->desc->name, field, off, h);
    return TKV_OK;
}

/* got (at byte `base` of the vector) must equal want, the same bytes with every bit that
 * holds no element cleared. */
static tkv_status tkv_check_padding(const struct tkv_codec *c, const uint8_t *got,
                                    const uint8_t *want, size_t n, uint32_t base,
                                    const char *plane) {
    for (size_t k = 0; k < n; k++) {
        TKV_REQUIRE(got[k] == want[k], TKV_ERR_BAD_FORMAT,
                    "%s: %s padding bits at byte %u are set (0x%02x; the encoder writes 0x%02x)",
                    c->desc->name, plane, base + (uint32_t)k, got[k], want[k]);
    }
    return TKV_OK;
}

static tkv_status tkv_validate_turbo(const struct tkv_codec *c, const uint8_t *code) {
    const tkv_code_layout *L = &c->layout;
    const uint32_t d = c->d;
    TKV_TRY(tkv_check_f16_field(c, code, L->scale_off, "scale", 1));
    const uint8_t *pl = code + L->payload_off;
    if (L->bits == 8) {
        for (uint32_t j = 0; j < d; j++) {
            TKV_REQUIRE(pl[j] < 32, TKV_ERR_BAD_FORMAT,
                        "%s: index of element %u at byte %u is %u (the codebook has 32 entries)",
                        c->desc->name, j, L->payload_off + j, pl[j]);
        }
    } else {
        /* every index value is valid; the bits that hold no element must be 0 */
        uint8_t idx[TKV_HEAD_DIM_MAX], again[TKV_HEAD_DIM_MAX];
        const size_t bytes = tkv_packed_bytes(L->bits, d);
        tkv_unpack_indices(L->bits, d, pl, idx);
        tkv_pack_indices(L->bits, d, idx, again);
        TKV_TRY(tkv_check_padding(c, pl, again, bytes, L->payload_off, "index plane"));
    }
    if (L->has_qjl) {
        TKV_TRY(tkv_check_f16_field(c, code, L->rnorm_off, "residual norm", 1));
        const uint32_t last = (d + 7) / 8 - 1, used = d - 8 * last;
        const uint8_t want = (uint8_t)(code[L->signs_off + last] & ((1u << used) - 1u));
        TKV_TRY(tkv_check_padding(c, code + L->signs_off + last, &want, 1, L->signs_off + last,
                                  "sign plane"));
    }
    return TKV_OK;
}

static tkv_status tkv_validate_block(const struct tkv_codec *c, const uint8_t *code, int four_bit) {
    const uint32_t d = c->d;
    uint32_t off = 0;
    for (uint32_t b0 = 0; b0 < d; b0 += 32) {
        const uint32_t t = d - b0 < 32 ? d - b0 : 32;
        char field[32];
        snprintf(field, sizeof field, "block %u scale", b0 / 32);
        /* q8_0 scales are max|x| / 127 >= 0; q4_0 scales carry the sign of the extreme */
        TKV_TRY(tkv_check_f16_field(c, code, off, field, !four_bit));
        if (!four_bit) {
            for (uint32_t k = 0; k < t; k++) {
                TKV_REQUIRE(code[off + 2 + k] != 0x80, TKV_ERR_BAD_FORMAT,
                            "%s: element %u at byte %u is -128 (the encoder writes -127..127)",
                            c->desc->name, b0 + k, off + 2 + k);
            }
        }
        off += 2 + (four_bit ? t / 2 : t);
    }
    return TKV_OK;
}

tkv_status tkv_codec_validate_one(const struct tkv_codec *c, const uint8_t *code) {
    const uint32_t d = c->d;
    switch (c->desc->format) {
    case TKV_FMT_F32:
        for (uint32_t j = 0; j < d; j++) {
            uint32_t u;
            memcpy(&u, code + 4 * (size_t)j, sizeof u);
            TKV_REQUIRE((u & 0x7f800000u) != 0x7f800000u, TKV_ERR_BAD_FORMAT,
                        "fp32: element %u at byte %u is %s (0x%08x)", j, 4 * j,
                        u & 0x7fffffu ? "NaN" : "infinite", u);
        }
        return TKV_OK;
    case TKV_FMT_F16:
    case TKV_FMT_BF16: {
        const int f16 = c->desc->format == TKV_FMT_F16;
        const uint16_t emask = f16 ? 0x7c00 : 0x7f80, mmask = f16 ? 0x03ff : 0x007f;
        for (uint32_t j = 0; j < d; j++) {
            const uint16_t h = tkv_load_u16(code + 2 * (size_t)j);
            TKV_REQUIRE((h & emask) != emask, TKV_ERR_BAD_FORMAT,
                        "%s: element %u at byte %u is %s (0x%04x)", c->desc->name, j, 2 * j,
                        h & mmask ? "NaN" : "infinite", h);
        }
        return TKV_OK;
    }
    case TKV_FMT_Q8_0:
        return tkv_validate_block(c, code, 0);
    case TKV_FMT_Q4_0:
        return tkv_validate_block(c, code, 1);
    case TKV_FMT_TURBO:
        return tkv_validate_turbo(c, code);
    case TKV_FMT_TRELLIS:
        /* every symbol stream is a path of the tail-biting trellis */
        return tkv_check_f16_field(c, code, c->layout.scale_off, "scale", 1);
    default:
        return tkv_fail(TKV_ERR_INTERNAL, "codec %s: no validator", c->desc->name);
    }
}

void tkv_codec_finish_accum(const struct tkv_codec *c, float *acc, float *out) {
    const uint32_t d = c->d;
    if (c->layout.has_qjl) {
        /* fold the sketch-domain sum back: acc_rot += S^T acc_sketch */
        float tmp[TKV_HEAD_DIM_MAX];
        tkv_codec_kernels_active()->matvec_t(c->qjl_matrix, acc + d, d, d, tmp);
        for (uint32_t j = 0; j < d; j++) {
            acc[j] += tmp[j];
        }
    }
    if (c->rotated) {
        tkv_rotation_apply_inverse(&c->rot, acc, out);
    } else {
        memcpy(out, acc, d * sizeof *out);
    }
}

void tkv_codec_decode_one(const struct tkv_codec *c, const uint8_t *code, float *out,
                          float *scratch) {
    tkv_decode_rotated_scalar(&c->layout, code, scratch);
    tkv_codec_finish_accum(c, scratch, out);
}

void tkv_codec_prepare_query(const struct tkv_codec *c, const float *q, float *qprep) {
    const uint32_t d = c->d;
    if (c->rotated) {
        tkv_rotation_apply(&c->rot, q, qprep);
    } else {
        memcpy(qprep, q, d * sizeof *q);
    }
    if (c->layout.has_qjl) {
        tkv_codec_kernels_active()->matvec(c->qjl_matrix, qprep, d, d, qprep + d);
    }
}
