/*
 * kernels_common.h - plain-C helpers shared by the ISA kernel files: little-endian
 * field loads, bit-field reads of P1 planes, and the index of one element of a
 * turbo vector (the scalar path SIMD kernels take for the partial group at the end
 * of a vector).  The plane layout is documented in pack.h.
 */
#ifndef TKV_CODEC_KERNELS_COMMON_H
#define TKV_CODEC_KERNELS_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "codec/kernels.h"

static inline uint16_t tkv_kc_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* The fp16 scale of a code, decoded here without the ISA helpers (for the bounds). */
static inline double tkv_kc_scale(const uint8_t *p) {
    const uint16_t h = tkv_kc_u16(p);
    const int e = (h >> 10) & 31, f = h & 1023;
    return e ? ldexp(1024 + f, e - 25) : ldexp(f, -24);
}

/* count (1..16) bits of a P1 plane starting at bit pos; reads only the bytes that hold
 * them, so it never runs past the plane. */
static inline uint32_t tkv_kc_bits(const uint8_t *p, uint32_t pos, uint32_t count) {
    const uint32_t first = pos >> 3, last = (pos + count - 1) >> 3;
    uint32_t v = 0;
    for (uint32_t b = first; b <= last; b++) {
        v |= (uint32_t)p[b] << (8 * (b - first));
    }
    return (v >> (pos & 7)) & ((1u << count) - 1u);
}

/* Bytes of a P2 plane of d elements (groups of 64, the last one ceil(t/4) bytes). */
static inline uint32_t tkv_kc_plane2_bytes(uint32_t d) {
    return (d / 64) * 16 + (d % 64 + 3) / 4;
}

static inline uint32_t tkv_kc_p4(uint32_t d, const uint8_t *pl, uint32_t j) {
    const uint32_t g0 = j & ~31u;
    const uint32_t t = d - g0 < 32 ? d - g0 : 32;
    const uint32_t half = t / 2, k = j - g0;
    const uint8_t b = pl[g0 / 2 + (k < half ? k : k - half)];
    return k < half ? (uint32_t)(b & 15) : (uint32_t)(b >> 4);
}

static inline uint32_t tkv_kc_p2(uint32_t d, const uint8_t *pl, uint32_t j) {
    const uint32_t g0 = j & ~63u;
    const uint32_t t = d - g0 < 64 ? d - g0 : 64;
    const uint32_t q = (t + 3) / 4, k = j - g0;
    return (uint32_t)(pl[g0 / 4 + k % q] >> (2 * (k / q))) & 3u;
}

static inline uint32_t tkv_kc_p1(const uint8_t *p, uint32_t j) {
    return (p[j / 8] >> (j % 8)) & 1u;
}

/* Codebook index of element j of a turbo vector whose index planes start at pl.  A P8
 * byte is masked to its low 5 bits, as every ISA's lookup does: the codebook has 32
 * entries and the kernels must stay inside it on any bytes. */
static inline uint32_t tkv_kc_index(uint32_t bits, uint32_t d, const uint8_t *pl, uint32_t j) {
    switch (bits) {
    case 1:
        return tkv_kc_p1(pl, j);
    case 2:
        return tkv_kc_p2(d, pl, j);
    case 3:
        return tkv_kc_p2(d, pl, j) | tkv_kc_p1(pl + tkv_kc_plane2_bytes(d), j) << 2;
    case 4:
        return tkv_kc_p4(d, pl, j);
    case 5:
        return tkv_kc_p4(d, pl, j) | tkv_kc_p1(pl + d / 2, j) << 4;
    default:
        return pl[j] & 31u;
    }
}

/* The rounding bound of element j of an int8 value sum (kernels.h, tkv_turbo_accum_i8) of
 * the n turbo rows `codes` weighted by w, rows below threshold skipped; for tests. */
static inline double tkv_turbo_accum_i8_bound(const tkv_code_layout *L, const float *w,
                                              float threshold, const uint8_t *codes, size_t n,
                                              uint32_t j) {
    double cmax = 0, m = 0, sws = 0, sc = 0;
    for (uint32_t i = 0; i < (1u << L->bits); i++) {
        cmax = cmax > fabs(L->centroids[i]) ? cmax : fabs(L->centroids[i]);
    }
    const double cstep = cmax / 127.0;
    for (size_t i = 0; i < n; i++) {
        if (!(w[i] >= threshold || -w[i] >= threshold)) {
            continue;
        }
        const uint8_t *code = codes + i * L->stride;
        const double s = tkv_kc_scale(code + L->scale_off);
        const double ws = fabs((double)w[i] * s);
        m = m > ws ? m : ws;
        sws += ws;
        sc += fabs(L->centroids[tkv_kc_index(L->bits, L->d, code + L->payload_off, j)]) + cstep / 2;
    }
    return 1.001 * (cstep / 2 * sws + m / 254.0 * sc) + 1e-30;
}

/* The rounding bound of a fixed-point trellis score (kernels.h, tkv_trellis_fixed) of the
 * query q against one code; for tests. */
static inline double tkv_trellis_fixed_scores_bound(const tkv_code_layout *L, const float *q,
                                                    const uint8_t *code) {
    const tkv_trellis *t = L->trellis;
    double qmax = 0, sv = 0;
    for (uint32_t j = 0; j < L->d; j++) {
        qmax = qmax > fabs(q[j]) ? qmax : fabs(q[j]);
        sv += abs(t->q8[tkv_trellis_window_at(t, code + L->payload_off, L->d, j)]);
    }
    const double s = tkv_kc_scale(code + L->scale_off) * t->q8_scale;
    return 1.001 * s * sv * qmax / (2.0 * TKV_TRELLIS_FIXED_FULL) + 1e-30;
}

/* The rounding bound of element j of a fixed-point trellis value sum (kernels.h,
 * tkv_trellis_fixed) of the n rows `codes` weighted by w, rows below threshold skipped;
 * for tests. */
static inline double tkv_trellis_fixed_accum_bound(const tkv_code_layout *L, const float *w,
                                                   float threshold, const uint8_t *codes, size_t n,
                                                   uint32_t j) {
    const tkv_trellis *t = L->trellis;
    double m = 0, sv = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(w[i] >= threshold || -w[i] >= threshold)) {
            continue;
        }
        const uint8_t *code = codes + i * L->stride;
        const double ws = fabs((double)w[i] * tkv_kc_scale(code + L->scale_off) * t->q8_scale);
        m = m > ws ? m : ws;
        sv += abs(t->q8[tkv_trellis_window_at(t, code + L->payload_off, L->d, j)]);
    }
    return 1.001 * m * sv / (2.0 * TKV_TRELLIS_FIXED_FULL) + 1e-30;
}

/* 1 if any of the nq queries weights row i at least threshold (sparse V: rows below it
 * for every query are skipped). */
static inline int tkv_kc_row_needed(const float *const *ws, int nq, size_t i, float threshold) {
    for (int k = 0; k < nq; k++) {
        if (ws[k][i] >= threshold || -ws[k][i] >= threshold) {
            return 1;
        }
    }
    return 0;
}

/*
 * The turbo kernels are specialized per bit width (the unpacking is a compile-time
 * constant); this maps a layout's width to CALL(b) for the widths with a specialization
 * (2, 3, 4, 5 and 8 for the one-index-per-byte codec) and to FALLBACK otherwise (1 bit: no
 * codec uses it).  CALL is the name of a function-like macro of one argument.
 */
#define TKV_TURBO_BITS_DISPATCH(bits, CALL, FALLBACK)                                        \
    do {                                                                                     \
        switch (bits) {                                                                      \
        case 2: CALL(2); break;                                                              \
        case 3: CALL(3); break;                                                              \
        case 4: CALL(4); break;                                                              \
        case 5: CALL(5); break;                                                              \
        case 8: CALL(8); break;                                                              \
        default: FALLBACK; break;                                                            \
        }                                                                                    \
    } while (0)

#endif
