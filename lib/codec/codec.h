/*
 * codec.h - the codec registry and the internal codec object used by the cache,
 * the attention code and the public codec API.  Inner layers trust their callers:
 * arguments are checked in lib/api.
 */
#ifndef TKV_CODEC_CODEC_H
#define TKV_CODEC_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "codec/codebook.h"
#include "codec/kernels.h"
#include "codec/rotation.h"
#include "turbokv.h"

#define TKV_HEAD_DIM_MAX 1024

typedef struct tkv_codec_desc {
    int32_t id;
    const char *name;
    uint32_t flags;          /* TKV_CODEC_FLAG_* */
    tkv_code_format format;
    uint32_t index_bits;     /* turbo: bits of the codebook stage (8 = byte indices of 5 bits) */
    uint32_t codebook_bits;  /* turbo: Lloyd-Max codebook size in bits */
} tkv_codec_desc;

/* Registry entry of an id, NULL if unknown. */
const tkv_codec_desc *tkv_codec_desc_get(int32_t id);
const tkv_codec_desc *tkv_codec_desc_find(const char *name);
/* Bytes of one vector; 0 for an unknown id or invalid head_dim. */
size_t tkv_codec_desc_vector_bytes(const tkv_codec_desc *desc, uint32_t d);
/* 1 if head_dim is valid for some codec (even, 2..TKV_HEAD_DIM_MAX). */
int tkv_head_dim_valid(uint32_t d);
/* 1 if this codec can code vectors of head_dim d (trellis codecs: a multiple of 8, >= 16). */
int tkv_codec_desc_dim_valid(const tkv_codec_desc *desc, uint32_t d);

struct tkv_codec {
    const tkv_codec_desc *desc;
    uint32_t d;
    uint64_t seed;
    tkv_code_layout layout;
    int rotated;
    tkv_rotation rot;
    const tkv_codebook *codebook; /* turbo only */
    const tkv_trellis *trellis;   /* trellis only */
    float centroids[32];          /* layout.centroids points here */
    float *qjl_matrix;            /* (d, d) N(0,1) sketch matrix S, QJL only */
};

/* Floats of scratch the one-vector operations below need: the trellis encoder's (the
 * rotated vector, u and its reconstruction, the search's keys) is the largest; QJL
 * needs 22 d + 16. */
#define TKV_CODEC_SCRATCH_FLOATS(d)                                                                \
    (3 * (size_t)(d) + (TKV_TRELLIS_SCRATCH_BYTES(d) + sizeof(float) - 1) / sizeof(float))

tkv_status tkv_codec_init(struct tkv_codec *c, int32_t id, uint32_t d, uint64_t seed);
void tkv_codec_release(struct tkv_codec *c);

/* Encode one vector x (d floats) into out (layout.stride bytes).  x must be finite.
 * Returns TKV_ERR_INVALID_ARGUMENT when a value does not fit the codec's fp16 fields. */
tkv_status tkv_codec_encode_one(const struct tkv_codec *c, const float *x, uint8_t *out,
                                float *scratch);
/* Check one encoded vector from outside (d's layout.stride bytes): TKV_OK, or
 * TKV_ERR_BAD_FORMAT (message: field and byte offset in the vector) for values the
 * encoder never writes: non-finite fields or elements, negative norms, out-of-range
 * indices, set padding bits.  The kernels are memory-safe without it; this keeps NaN
 * and garbage out of results.  Rules per format at the top of its definition. */
tkv_status tkv_codec_validate_one(const struct tkv_codec *c, const uint8_t *code);
/* Decode one vector into out (d floats). */
void tkv_codec_decode_one(const struct tkv_codec *c, const uint8_t *code, float *out,
                          float *scratch);
/* Rotate (and sketch) a query once: qprep gets d floats, 2d for QJL codecs. */
void tkv_codec_prepare_query(const struct tkv_codec *c, const float *q, float *qprep);
/* Width of qprep / accumulators in floats (d, or 2d for QJL). */
uint32_t tkv_codec_work_width(const struct tkv_codec *c);
/* out = back-rotation of an accumulator filled by the accum kernel (acc is clobbered). */
void tkv_codec_finish_accum(const struct tkv_codec *c, float *acc, float *out);

#endif
