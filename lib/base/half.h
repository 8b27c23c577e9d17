/*
 * half.h - scalar IEEE binary16 and bfloat16 conversions (round to nearest even).
 * Portable C: no F16C needed; SIMD files use their own instructions and are tested
 * against these.
 */
#ifndef TKV_BASE_HALF_H
#define TKV_BASE_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t tkv_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float tkv_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float tkv_fp16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        if (mant == 0) {
            return tkv_bits_f32(sign);
        }
        /* subnormal: value = mant * 2^-24 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31) {
        return tkv_bits_f32(sign | 0x7f800000u | (mant << 13));
    }
    return tkv_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* out[i] = tkv_fp16_to_f32(h[i]) for n values, without branches, so that the loop
 * vectorizes: normal numbers by moving exponent and mantissa into place (exponent + 112),
 * subnormals as their integer mantissa times 2^-24 (exact), infinities and NaN with the
 * exponent all ones. */
static inline void tkv_fp16_row_to_f32(const uint16_t *h, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint32_t em = h[i] & 0x7fffu;
        const uint32_t normal = (em << 13) + (112u << 23);
        const uint32_t sub = tkv_f32_bits((float)(int32_t)em * 0x1p-24f);
        const uint32_t is_sub = 0u - (uint32_t)(em < 0x400u); /* masks, not branches */
        const uint32_t is_inf = 0u - (uint32_t)(em >= 0x7c00u);
        const uint32_t u = ((sub & is_sub) | (normal & ~is_sub)) + ((112u << 23) & is_inf);
        out[i] = tkv_bits_f32(u | (uint32_t)(h[i] & 0x8000u) << 16);
    }
}

static inline uint16_t tkv_f32_to_fp16(float f) {
    const uint32_t u = tkv_f32_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t absu = u & 0x7fffffffu;
    if (absu >= 0x7f800000u) { /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0u));
    }
    if (absu >= 0x477ff000u) { /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (absu < 0x38800000u) { /* below 2^-14: subnormal or zero */
        if (absu < 0x33000000u) { /* below 2^-25: rounds to zero */
            return (uint16_t)sign;
        }
        const uint32_t e = absu >> 23;
        const uint32_t m = (absu & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e; /* 14..24 */
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) {
            r++;
        }
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((absu >> 13) - (112u << 10));
    const uint32_t rem = absu & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) {
        r++;
    }
    return (uint16_t)(sign | r);
}

static inline float tkv_bf16_to_f32(uint16_t h) { return tkv_bits_f32((uint32_t)h << 16); }

static inline uint16_t tkv_f32_to_bf16(float f) {
    uint32_t u = tkv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* nan: keep it a quiet nan */
        return (uint16_t)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif
