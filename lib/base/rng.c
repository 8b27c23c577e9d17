/* rng.c - SplitMix64 and Box-Muller, see rng.h for the exact definition. */
#include "base/rng.h"

#include <math.h>

uint64_t tkv_mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

void tkv_rng_init(tkv_rng *rng, uint64_t seed) {
    rng->state = seed;
    rng->spare = 0.0;
    rng->has_spare = 0;
}

uint64_t tkv_rng_next(tkv_rng *rng) {
    rng->state += 0x9E3779B97F4A7C15ULL;
    return tkv_mix64(rng->state);
}

double tkv_rng_uniform(tkv_rng *rng) {
    /* top 53 bits, shifted by half a step so the value is never exactly 0 or 1 */
    return ((double)(tkv_rng_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

double tkv_rng_gaussian(tkv_rng *rng) {
    if (rng->has_spare) {
        rng->has_spare = 0;
        return rng->spare;
    }
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = tkv_rng_uniform(rng);
    double u2 = tkv_rng_uniform(rng);
    double r = sqrt(-2.0 * log(u1));
    rng->spare = r * sin(two_pi * u2);
    rng->has_spare = 1;
    return r * cos(two_pi * u2);
}
