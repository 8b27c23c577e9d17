/*
 * rng.h - the documented seeded generator behind every random rotation and sketch.
 *
 * SplitMix64 (Steele, Lea, Flood 2014): state += 0x9E3779B97F4A7C15, then the
 * output is mixed with two xor-shift-multiply rounds (constants 0xBF58476D1CE4E5B9,
 * 0x94D049BB133111EB).  It passes BigCrush, and any 64-bit seed is a valid state,
 * so seeds per (layer, head) can be derived by plain arithmetic.
 * Uniform doubles take the top 53 bits; Gaussians use Box-Muller in double.
 */
#ifndef TKV_BASE_RNG_H
#define TKV_BASE_RNG_H

#include <stdint.h>

typedef struct tkv_rng {
    uint64_t state;
    double spare;    /* second Box-Muller value */
    int has_spare;
} tkv_rng;

void tkv_rng_init(tkv_rng *rng, uint64_t seed);
uint64_t tkv_rng_next(tkv_rng *rng);
double tkv_rng_uniform(tkv_rng *rng); /* in (0, 1) */
double tkv_rng_gaussian(tkv_rng *rng);
/* One SplitMix64 mixing step of a value: used to derive independent sub-seeds. */
uint64_t tkv_mix64(uint64_t x);

#endif
