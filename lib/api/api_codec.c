/*
 * api_codec.c - the public codec functions: argument checks, then the codec layer.
 * This is the only place that validates codec arguments and sets their messages.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/status.h"
#include "codec/codec.h"
#include "turbokv.h"

int32_t tkv_codec_count(void) { return TKV_CODEC_COUNT; }

const char *tkv_codec_name(int32_t codec) {
    const tkv_codec_desc *desc = tkv_codec_desc_get(codec);
    return desc ? desc->name : NULL;
}

uint32_t tkv_codec_flags(int32_t codec) {
    const tkv_codec_desc *desc = tkv_codec_desc_get(codec);
    return desc ? desc->flags : 0;
}

tkv_status tkv_codec_from_name(const char *name, int32_t *out_codec) {
    TKV_REQUIRE(name && out_codec, TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_from_name: name and out_codec must not be NULL");
    const tkv_codec_desc *desc = tkv_codec_desc_find(name);
    if (!desc) {
        char known[512] = "";
        size_t used = 0;
        for (int32_t i = 0; i < TKV_CODEC_COUNT; i++) {
            const char *n = tkv_codec_desc_get(i)->name;
            size_t len = strlen(n);
            if (used + len + 3 < sizeof known) {
                memcpy(known + used, n, len);
                used += len;
                if (i + 1 < TKV_CODEC_COUNT) {
                    memcpy(known + used, ", ", 2);
                    used += 2;
                }
                known[used] = '\0';
            }
        }
        return tkv_fail(TKV_ERR_INVALID_ARGUMENT, "unknown codec name '%.64s' (known: %s)", name,
                        known);
    }
    *out_codec = desc->id;
    return TKV_OK;
}

static tkv_status tkv_check_head_dim(const char *fn, uint32_t d) {
    TKV_REQUIRE(tkv_head_dim_valid(d), TKV_ERR_INVALID_ARGUMENT,
                "%s: head_dim %u is invalid (must be even, 2..%d)", fn, d, TKV_HEAD_DIM_MAX);
    return TKV_OK;
}

tkv_status tkv_codec_bytes_per_vector(int32_t codec, uint32_t head_dim, size_t *out_bytes) {
    TKV_REQUIRE(out_bytes, TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_bytes_per_vector: out_bytes is NULL");
    const tkv_codec_desc *desc = tkv_codec_desc_get(codec);
    TKV_REQUIRE(desc, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_bytes_per_vector: unknown codec id %d",
                (int)codec);
    TKV_TRY(tkv_check_head_dim("tkv_codec_bytes_per_vector", head_dim));
    TKV_REQUIRE(tkv_codec_desc_dim_valid(desc, head_dim), TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_bytes_per_vector: %s needs head_dim to be a multiple of 8 and at "
                "least 16 (got %u)",
                desc->name, head_dim);
    *out_bytes = tkv_codec_desc_vector_bytes(desc, head_dim);
    return TKV_OK;
}

tkv_codec_params tkv_codec_default_params(void) {
    tkv_codec_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.codec = TKV_CODEC_TURBO_4B;
    p.head_dim = 128;
    p.seed = 0;
    return p;
}

tkv_status tkv_codec_create(const tkv_codec_params *params, tkv_codec **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_create: out is NULL");
    *out = NULL;
    TKV_REQUIRE(params, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_create: params is NULL");
    TKV_REQUIRE(params->struct_size == sizeof *params, TKV_ERR_ABI,
                "tkv_codec_create: params->struct_size is %u, this library expects %u "
                "(start from tkv_codec_default_params())",
                params->struct_size, (unsigned)sizeof *params);
    for (size_t i = 0; i < sizeof params->reserved / sizeof params->reserved[0]; i++) {
        TKV_REQUIRE(params->reserved[i] == 0, TKV_ERR_ABI,
                    "tkv_codec_create: reserved[%zu] is not zero", i);
    }
    TKV_REQUIRE(params->flags == 0, TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_create: flags 0x%x: no codec flags are defined", params->flags);
    TKV_REQUIRE(tkv_codec_desc_get(params->codec), TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_create: unknown codec id %d", (int)params->codec);
    TKV_TRY(tkv_check_head_dim("tkv_codec_create", params->head_dim));
    tkv_codec *c = calloc(1, sizeof *c);
    TKV_REQUIRE(c, TKV_ERR_OUT_OF_MEMORY, "tkv_codec_create: out of memory");
    tkv_status st = tkv_codec_init(c, params->codec, params->head_dim, params->seed);
    if (st != TKV_OK) {
        free(c);
        return st;
    }
    *out = c;
    return TKV_OK;
}

void tkv_codec_free(tkv_codec *codec) {
    if (!codec) {
        return;
    }
    tkv_codec_release(codec);
    free(codec);
}

int32_t tkv_codec_id(const tkv_codec *codec) { return codec ? codec->desc->id : -1; }
uint32_t tkv_codec_head_dim(const tkv_codec *codec) { return codec ? codec->d : 0; }
uint64_t tkv_codec_seed(const tkv_codec *codec) { return codec ? codec->seed : 0; }
size_t tkv_codec_vector_bytes(const tkv_codec *codec) { return codec ? codec->layout.stride : 0; }

size_t tkv_codec_encoded_size(const tkv_codec *codec, int64_t n) {
    size_t bytes;
    if (!codec || n < 0 || tkv_mul_size((size_t)n, codec->layout.stride, &bytes) != 0) {
        return 0;
    }
    return bytes;
}

/* Common checks for the functions that read n encoded vectors. */
static tkv_status tkv_check_codes(const char *fn, const tkv_codec *codec, const void *codes,
                                  size_t codes_size, int64_t n) {
    TKV_REQUIRE(codec, TKV_ERR_INVALID_ARGUMENT, "%s: codec is NULL", fn);
    TKV_REQUIRE(n >= 0, TKV_ERR_INVALID_ARGUMENT, "%s: n is negative (%lld)", fn, (long long)n);
    TKV_REQUIRE(n == 0 || codes, TKV_ERR_INVALID_ARGUMENT, "%s: codes is NULL", fn);
    size_t need = tkv_codec_encoded_size(codec, n);
    TKV_REQUIRE(n == 0 || need != 0, TKV_ERR_INVALID_ARGUMENT, "%s: n = %lld overflows", fn,
                (long long)n);
    TKV_REQUIRE(codes_size >= need, TKV_ERR_BUFFER_TOO_SMALL,
                "%s: codes_size %zu is smaller than %lld vectors x %u bytes = %zu", fn, codes_size,
                (long long)n, codec->layout.stride, need);
    return TKV_OK;
}

/* Every vector of caller-supplied codes must be one the encoder could have written. */
static tkv_status tkv_validate_codes(const char *fn, const tkv_codec *codec, const void *codes,
                                     int64_t n) {
    const size_t stride = codec->layout.stride;
    for (int64_t i = 0; i < n; i++) {
        const tkv_status st =
            tkv_codec_validate_one(codec, (const uint8_t *)codes + (size_t)i * stride);
        if (st != TKV_OK) {
            tkv_error_prefix("%s: vector %lld (byte %zu of codes)", fn, (long long)i,
                             (size_t)i * stride);
            return st;
        }
    }
    return TKV_OK;
}

static tkv_status tkv_check_finite(const char *fn, const char *what, const float *x, size_t count) {
    for (size_t i = 0; i < count; i++) {
        TKV_REQUIRE(isfinite(x[i]), TKV_ERR_INVALID_ARGUMENT, "%s: %s[%zu] is not finite (%g)", fn,
                    what, i, (double)x[i]);
    }
    return TKV_OK;
}

tkv_status tkv_codec_encode(const tkv_codec *codec, const float *x, int64_t n, void *codes,
                            size_t codes_size) {
    TKV_TRY(tkv_check_codes("tkv_codec_encode", codec, codes, codes_size, n));
    TKV_REQUIRE(n == 0 || x, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_encode: x is NULL");
    const size_t d = codec->d;
    TKV_TRY(tkv_check_finite("tkv_codec_encode", "x", x, (size_t)n * d));
    float *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * sizeof(float));
    TKV_REQUIRE(scratch, TKV_ERR_OUT_OF_MEMORY, "tkv_codec_encode: out of memory");
    tkv_status st = TKV_OK;
    for (int64_t i = 0; i < n && st == TKV_OK; i++) {
        st = tkv_codec_encode_one(codec, x + (size_t)i * d,
                                  (uint8_t *)codes + (size_t)i * codec->layout.stride, scratch);
        if (st != TKV_OK) {
            tkv_error_prefix("tkv_codec_encode: vector %lld", (long long)i);
        }
    }
    free(scratch);
    return st;
}

tkv_status tkv_codec_decode(const tkv_codec *codec, const void *codes, size_t codes_size,
                            int64_t n, float *out) {
    TKV_TRY(tkv_check_codes("tkv_codec_decode", codec, codes, codes_size, n));
    TKV_REQUIRE(n == 0 || out, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_decode: out is NULL");
    TKV_TRY(tkv_validate_codes("tkv_codec_decode", codec, codes, n));
    const size_t d = codec->d;
    float *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * sizeof(float));
    TKV_REQUIRE(scratch, TKV_ERR_OUT_OF_MEMORY, "tkv_codec_decode: out of memory");
    for (int64_t i = 0; i < n; i++) {
        tkv_codec_decode_one(codec, (const uint8_t *)codes + (size_t)i * codec->layout.stride,
                             out + (size_t)i * d, scratch);
    }
    free(scratch);
    return TKV_OK;
}

tkv_status tkv_codec_scores(const tkv_codec *codec, const float *q, const void *codes,
                            size_t codes_size, int64_t n, float *scores) {
    TKV_TRY(tkv_check_codes("tkv_codec_scores", codec, codes, codes_size, n));
    TKV_REQUIRE(q && (n == 0 || scores), TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_scores: q and scores must not be NULL");
    TKV_TRY(tkv_check_finite("tkv_codec_scores", "q", q, codec->d));
    TKV_TRY(tkv_validate_codes("tkv_codec_scores", codec, codes, n));
    float qprep[2 * TKV_HEAD_DIM_MAX];
    tkv_codec_prepare_query(codec, q, qprep);
    tkv_codec_kernels_active()->scores[codec->layout.format](&codec->layout, qprep, codes,
                                                              (size_t)n, scores);
    return TKV_OK;
}

tkv_status tkv_codec_weighted_sum(const tkv_codec *codec, const float *w, const void *codes,
                                  size_t codes_size, int64_t n, float threshold, float *out) {
    TKV_TRY(tkv_check_codes("tkv_codec_weighted_sum", codec, codes, codes_size, n));
    TKV_REQUIRE(out && (n == 0 || w), TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_weighted_sum: w and out must not be NULL");
    TKV_REQUIRE(isfinite(threshold) && threshold >= 0.0f, TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_weighted_sum: threshold %g must be finite and >= 0", (double)threshold);
    TKV_TRY(tkv_check_finite("tkv_codec_weighted_sum", "w", w, (size_t)n));
    TKV_TRY(tkv_validate_codes("tkv_codec_weighted_sum", codec, codes, n));
    float acc[2 * TKV_HEAD_DIM_MAX];
    memset(acc, 0, sizeof acc);
    tkv_codec_kernels_active()->accum[codec->layout.format](&codec->layout, w, threshold, codes,
                                                             (size_t)n, acc);
    tkv_codec_finish_accum(codec, acc, out);
    return TKV_OK;
}

tkv_status tkv_codec_attention(const tkv_codec *k_codec, const tkv_codec *v_codec, const float *q,
                               const void *k_codes, size_t k_codes_size, const void *v_codes,
                               size_t v_codes_size, int64_t n, float scale, float threshold,
                               float *out) {
    TKV_TRY(tkv_check_codes("tkv_codec_attention (keys)", k_codec, k_codes, k_codes_size, n));
    TKV_TRY(tkv_check_codes("tkv_codec_attention (values)", v_codec, v_codes, v_codes_size, n));
    TKV_REQUIRE(k_codec->d == v_codec->d, TKV_ERR_INVALID_ARGUMENT,
                "tkv_codec_attention: key head_dim %u != value head_dim %u", k_codec->d,
                v_codec->d);
    TKV_REQUIRE(n > 0, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_attention: n must be > 0");
    TKV_REQUIRE(q && out, TKV_ERR_INVALID_ARGUMENT, "tkv_codec_attention: q and out must not be NULL");
    TKV_REQUIRE(isfinite(scale) && isfinite(threshold) && threshold >= 0.0f,
                TKV_ERR_INVALID_ARGUMENT, "tkv_codec_attention: scale and threshold must be "
                "finite, threshold >= 0");
    TKV_TRY(tkv_check_finite("tkv_codec_attention", "q", q, k_codec->d));
    TKV_TRY(tkv_validate_codes("tkv_codec_attention (keys)", k_codec, k_codes, n));
    TKV_TRY(tkv_validate_codes("tkv_codec_attention (values)", v_codec, v_codes, n));
    if (scale == 0.0f) {
        scale = 1.0f / sqrtf((float)k_codec->d);
    }
    float *p = malloc((size_t)n * sizeof *p);
    TKV_REQUIRE(p, TKV_ERR_OUT_OF_MEMORY, "tkv_codec_attention: out of memory for %lld scores",
                (long long)n);
    const tkv_codec_kernels *kern = tkv_codec_kernels_active();
    float qprep[2 * TKV_HEAD_DIM_MAX];
    tkv_codec_prepare_query(k_codec, q, qprep);
    kern->scores[k_codec->layout.format](&k_codec->layout, qprep, k_codes, (size_t)n, p);
    kern->softmax(p, (size_t)n, scale);
    float acc[2 * TKV_HEAD_DIM_MAX];
    memset(acc, 0, sizeof acc);
    kern->accum[v_codec->layout.format](&v_codec->layout, p, threshold, v_codes, (size_t)n, acc);
    tkv_codec_finish_accum(v_codec, acc, out);
    free(p);
    return TKV_OK;
}

tkv_status tkv_codebook_centroids(uint32_t bits, float *out, size_t n_out, size_t *n_needed) {
    TKV_REQUIRE(bits >= 1 && bits <= TKV_CODEBOOK_MAX_BITS, TKV_ERR_INVALID_ARGUMENT,
                "tkv_codebook_centroids: bits %u outside 1..%d", bits, TKV_CODEBOOK_MAX_BITS);
    const tkv_codebook *cb = tkv_codebook_get(bits);
    if (n_needed) {
        *n_needed = cb->n;
    }
    TKV_REQUIRE(n_out >= cb->n, TKV_ERR_BUFFER_TOO_SMALL,
                "tkv_codebook_centroids: %u centroids need room for %u floats, got %zu", bits,
                cb->n, n_out);
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_codebook_centroids: out is NULL");
    memcpy(out, cb->centroids, cb->n * sizeof(float));
    return TKV_OK;
}
