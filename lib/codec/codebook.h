/* codebook.h - Lloyd-Max scalar quantizers for the standard normal distribution. */
#ifndef TKV_CODEC_CODEBOOK_H
#define TKV_CODEC_CODEBOOK_H

#include <stdint.h>

#define TKV_CODEBOOK_MAX_BITS 5

typedef struct tkv_codebook {
    uint32_t bits;
    uint32_t n;              /* 2^bits levels */
    float centroids[32];     /* increasing */
    float boundaries[31];    /* midpoints between neighbours: cell k is (b[k-1], b[k]] */
    double distortion;       /* E[(x - Q(x))^2] for x ~ N(0,1) */
    int iterations;          /* Lloyd steps until converged, -1 if it never did */
} tkv_codebook;

/* The codebook for 1..5 bits (computed once per process, thread-safe); NULL otherwise. */
const tkv_codebook *tkv_codebook_get(uint32_t bits);

/* Index of the nearest centroid (binary search over the boundaries). */
static inline uint32_t tkv_codebook_quantize(const tkv_codebook *cb, float v) {
    uint32_t lo = 0, hi = cb->n - 1; /* answer in [lo, hi] */
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (v > cb->boundaries[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* tkv_codebook_quantize of v[0..d) into idx: the same indices, found without branches as the
 * count of boundaries below each value, 16 values at a time so the compiler keeps them in
 * vector registers (a binary search mispredicts on every level with rotated data). */
static inline void tkv_codebook_quantize_row(const tkv_codebook *cb, const float *v, uint32_t d,
                                             uint8_t *idx) {
    uint32_t j = 0;
    for (; j + 16 <= d; j += 16) {
        uint32_t count[16] = {0};
        for (uint32_t k = 0; k + 1 < cb->n; k++) {
            const float b = cb->boundaries[k];
            for (uint32_t i = 0; i < 16; i++) {
                count[i] += v[j + i] > b;
            }
        }
        for (uint32_t i = 0; i < 16; i++) {
            idx[j + i] = (uint8_t)count[i];
        }
    }
    for (; j < d; j++) {
        idx[j] = (uint8_t)tkv_codebook_quantize(cb, v[j]);
    }
}

#endif
