/* rotation.h - the seeded random orthogonal rotation applied before coding. */
#ifndef TKV_CODEC_ROTATION_H
#define TKV_CODEC_ROTATION_H

#include <stdint.h>

#include "turbokv.h"

typedef struct tkv_rotation {
    uint32_t d;
    int is_hadamard;  /* power-of-two d: random signs then normalized Walsh-Hadamard */
    float *signs;     /* (d) +-1, Hadamard form only */
    float *matrix;    /* (d, d) row-major orthogonal matrix, dense form only */
} tkv_rotation;

/* Build the rotation of dimension d (even, >= 2) from seed. */
tkv_status tkv_rotation_init(tkv_rotation *rot, uint32_t d, uint64_t seed);
void tkv_rotation_free(tkv_rotation *rot);

/* y = R x (x and y may not alias) */
void tkv_rotation_apply(const tkv_rotation *rot, const float *x, float *y);
/* x = R^T y (x and y may not alias) */
void tkv_rotation_apply_inverse(const tkv_rotation *rot, const float *y, float *x);

/* The seed of the sign / matrix stream of a rotation, derived from the codec seed. */
uint64_t tkv_rotation_stream_seed(uint64_t seed);

#endif
