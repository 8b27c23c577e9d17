/*
 * rotation.c - random orthogonal rotations, exactly invertible.
 *
 * Power-of-two d:  R = H D / sqrt(d), D = diag(s), s_i = +-1 from the generator
 *   (bit i % 64 of the (i / 64)-th SplitMix64 output, 1 -> -1), H the Walsh-Hadamard
 *   matrix.  R x costs d log d; R^T = D H / sqrt(d).
 * Other even d:  R = Q of the QR factorization of a d x d matrix of independent
 *   N(0,1) draws (row-major, Box-Muller on the generator), with the signs of R's
 *   diagonal folded into Q so that Q is Haar-distributed.  Every coordinate is
 *   mixed with every other one; rotating power-of-two chunks separately would
 *   leave their energies unequal and fail structured inputs.  Costs d^2 per vector.
 * The generator is SplitMix64 seeded with tkv_rotation_stream_seed(seed).
 */
#include "codec/rotation.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/rng.h"
#include "base/status.h"
#include "codec/kernels.h"

uint64_t tkv_rotation_stream_seed(uint64_t seed) { return tkv_mix64(seed ^ 0x524f544154494f4eULL); }

static int tkv_is_pow2(uint32_t d) { return d != 0 && (d & (d - 1)) == 0; }

/* Householder QR in double; returns Q (d x d, row-major, as float) with the sign fix. */
static tkv_status tkv_random_orthogonal(uint32_t d, tkv_rng *rng, float *q_out) {
    size_t n = (size_t)d * d;
    double *a = malloc(n * sizeof *a);    /* (d, d) becomes R in place */
    double *q = malloc(n * sizeof *q);    /* (d, d) accumulated Q */
    double *v = malloc((size_t)d * sizeof *v);
    if (!a || !q || !v) {
        free(a);
        free(q);
        free(v);
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "rotation: out of memory for a %u x %u matrix", d, d);
    }
    for (size_t i = 0; i < n; i++) {
        a[i] = tkv_rng_gaussian(rng);
    }
    for (uint32_t i = 0; i < d; i++) {
        for (uint32_t j = 0; j < d; j++) {
            q[(size_t)i * d + j] = i == j ? 1.0 : 0.0;
        }
    }
    for (uint32_t k = 0; k < d; k++) {
        /* Householder vector for column k, rows k..d-1 */
        double norm = 0.0;
        for (uint32_t i = k; i < d; i++) {
            norm += a[(size_t)i * d + k] * a[(size_t)i * d + k];
        }
        norm = sqrt(norm);
        double akk = a[(size_t)k * d + k];
        double alpha = akk > 0 ? -norm : norm;
        for (uint32_t i = 0; i < d; i++) {
            v[i] = i < k ? 0.0 : a[(size_t)i * d + k];
        }
        v[k] -= alpha;
        double vnorm2 = 0.0;
        for (uint32_t i = k; i < d; i++) {
            vnorm2 += v[i] * v[i];
        }
        if (vnorm2 == 0.0) {
            continue;
        }
        /* A <- (I - 2 v v^T / |v|^2) A ; Q <- Q (I - 2 v v^T / |v|^2) */
        for (uint32_t j = 0; j < d; j++) {
            double dot = 0.0;
            for (uint32_t i = k; i < d; i++) {
                dot += v[i] * a[(size_t)i * d + j];
            }
            double f = 2.0 * dot / vnorm2;
            for (uint32_t i = k; i < d; i++) {
                a[(size_t)i * d + j] -= f * v[i];
            }
        }
        for (uint32_t i = 0; i < d; i++) {
            double dot = 0.0;
            for (uint32_t j = k; j < d; j++) {
                dot += q[(size_t)i * d + j] * v[j];
            }
            double f = 2.0 * dot / vnorm2;
            for (uint32_t j = k; j < d; j++) {
                q[(size_t)i * d + j] -= f * v[j];
            }
        }
    }
    /* Haar measure: multiply column j of Q by sign(R_jj) (Mezzadri 2007) */
    for (uint32_t j = 0; j < d; j++) {
        double s = a[(size_t)j * d + j] < 0 ? -1.0 : 1.0;
        for (uint32_t i = 0; i < d; i++) {
            q[(size_t)i * d + j] *= s;
        }
    }
    /* Store R = Q^T so that R x = Q^T x; any orthogonal matrix works, rows are handy */
    for (uint32_t i = 0; i < d; i++) {
        for (uint32_t j = 0; j < d; j++) {
            q_out[(size_t)i * d + j] = (float)q[(size_t)j * d + i];
        }
    }
    free(a);
    free(q);
    free(v);
    return TKV_OK;
}

tkv_status tkv_rotation_init(tkv_rotation *rot, uint32_t d, uint64_t seed) {
    memset(rot, 0, sizeof *rot);
    rot->d = d;
    tkv_rng rng;
    tkv_rng_init(&rng, tkv_rotation_stream_seed(seed));
    if (tkv_is_pow2(d)) {
        rot->is_hadamard = 1;
        rot->signs = tkv_calloc_aligned(d, sizeof(float));
        TKV_REQUIRE(rot->signs, TKV_ERR_OUT_OF_MEMORY, "rotation: out of memory");
        uint64_t word = 0;
        for (uint32_t i = 0; i < d; i++) {
            if (i % 64 == 0) {
                word = tkv_rng_next(&rng);
            }
            rot->signs[i] = ((word >> (i % 64)) & 1) ? -1.0f : 1.0f;
        }
        return TKV_OK;
    }
    rot->matrix = tkv_calloc_aligned((size_t)d * d, sizeof(float));
    TKV_REQUIRE(rot->matrix, TKV_ERR_OUT_OF_MEMORY, "rotation: out of memory");
    tkv_status st = tkv_random_orthogonal(d, &rng, rot->matrix);
    if (st != TKV_OK) {
        tkv_rotation_free(rot);
    }
    return st;
}

void tkv_rotation_free(tkv_rotation *rot) {
    tkv_free_aligned(rot->signs);
    tkv_free_aligned(rot->matrix);
    rot->signs = NULL;
    rot->matrix = NULL;
}

void tkv_rotation_apply(const tkv_rotation *rot, const float *x, float *y) {
    const uint32_t d = rot->d;
    const tkv_codec_kernels *k = tkv_codec_kernels_active();
    if (rot->is_hadamard) {
        for (uint32_t i = 0; i < d; i++) {
            y[i] = x[i] * rot->signs[i];
        }
        k->fwht(y, d, 1.0f / sqrtf((float)d));
        return;
    }
    k->matvec(rot->matrix, x, d, d, y);
}

void tkv_rotation_apply_inverse(const tkv_rotation *rot, const float *y, float *x) {
    const uint32_t d = rot->d;
    const tkv_codec_kernels *k = tkv_codec_kernels_active();
    if (rot->is_hadamard) {
        memcpy(x, y, d * sizeof *x);
        k->fwht(x, d, 1.0f / sqrtf((float)d));
        for (uint32_t i = 0; i < d; i++) {
            x[i] *= rot->signs[i];
        }
        return;
    }
    k->matvec_t(rot->matrix, y, d, d, x);
}
