/* pack.c - packing of index planes; the layout is documented in pack.h. */
#include "codec/pack.h"

#include <string.h>

size_t tkv_plane2_bytes(uint32_t d) {
    size_t bytes = 0;
    for (uint32_t g0 = 0; g0 < d; g0 += 64) {
        uint32_t t = d - g0 < 64 ? d - g0 : 64;
        bytes += (t + 3) / 4;
    }
    return bytes;
}

size_t tkv_packed_bytes(uint32_t bits, uint32_t d) {
    switch (bits) {
    case 1: return (d + 7) / 8;
    case 2: return tkv_plane2_bytes(d);
    case 3: return tkv_plane2_bytes(d) + (d + 7) / 8;
    case 4: return d / 2;
    case 5: return d / 2 + (d + 7) / 8;
    case 8: return d;
    default: return 0;
    }
}

static void tkv_pack_plane4(uint32_t d, const uint8_t *idx, uint8_t *out) {
    for (uint32_t g0 = 0; g0 < d; g0 += 32) {
        uint32_t t = d - g0 < 32 ? d - g0 : 32;
        uint32_t half = t / 2;
        for (uint32_t k = 0; k < half; k++) {
            *out++ = (uint8_t)((idx[g0 + k] & 15) | ((idx[g0 + half + k] & 15) << 4));
        }
    }
}

void tkv_unpack_plane4(uint32_t d, const uint8_t *in, uint8_t *idx) {
    for (uint32_t g0 = 0; g0 < d; g0 += 32) {
        uint32_t t = d - g0 < 32 ? d - g0 : 32;
        uint32_t half = t / 2;
        for (uint32_t k = 0; k < half; k++) {
            uint8_t b = *in++;
            idx[g0 + k] = b & 15;
            idx[g0 + half + k] = b >> 4;
        }
    }
}

static void tkv_pack_plane2(uint32_t d, const uint8_t *idx, uint8_t *out) {
    for (uint32_t g0 = 0; g0 < d; g0 += 64) {
        uint32_t t = d - g0 < 64 ? d - g0 : 64;
        uint32_t q = (t + 3) / 4;
        for (uint32_t k = 0; k < q; k++) {
            uint8_t b = 0;
            for (uint32_t s = 0; s < 4; s++) {
                uint32_t e = k + s * q;
                if (e < t) {
                    b |= (uint8_t)((idx[g0 + e] & 3) << (2 * s));
                }
            }
            *out++ = b;
        }
    }
}

void tkv_unpack_plane2(uint32_t d, const uint8_t *in, uint8_t *idx) {
    for (uint32_t g0 = 0; g0 < d; g0 += 64) {
        uint32_t t = d - g0 < 64 ? d - g0 : 64;
        uint32_t q = (t + 3) / 4;
        for (uint32_t k = 0; k < q; k++) {
            uint8_t b = *in++;
            for (uint32_t s = 0; s < 4; s++) {
                uint32_t e = k + s * q;
                if (e < t) {
                    idx[g0 + e] = (b >> (2 * s)) & 3;
                }
            }
        }
    }
}

static void tkv_pack_plane1(uint32_t d, const uint8_t *idx, uint32_t shift, uint8_t *out) {
    memset(out, 0, (d + 7) / 8);
    for (uint32_t j = 0; j < d; j++) {
        out[j / 8] |= (uint8_t)(((idx[j] >> shift) & 1) << (j % 8));
    }
}

void tkv_unpack_plane1_or(uint32_t d, const uint8_t *in, uint32_t shift, uint8_t *idx) {
    for (uint32_t j = 0; j < d; j++) {
        idx[j] |= (uint8_t)(((in[j / 8] >> (j % 8)) & 1) << shift);
    }
}

void tkv_pack_indices(uint32_t bits, uint32_t d, const uint8_t *idx, uint8_t *out) {
    switch (bits) {
    case 1: tkv_pack_plane1(d, idx, 0, out); break;
    case 2: tkv_pack_plane2(d, idx, out); break;
    case 3:
        tkv_pack_plane2(d, idx, out);
        tkv_pack_plane1(d, idx, 2, out + tkv_plane2_bytes(d));
        break;
    case 4: tkv_pack_plane4(d, idx, out); break;
    case 5:
        tkv_pack_plane4(d, idx, out);
        tkv_pack_plane1(d, idx, 4, out + d / 2);
        break;
    case 8: memcpy(out, idx, d); break;
    default: break;
    }
}

void tkv_unpack_indices(uint32_t bits, uint32_t d, const uint8_t *in, uint8_t *idx) {
    switch (bits) {
    case 1:
        memset(idx, 0, d);
        tkv_unpack_plane1_or(d, in, 0, idx);
        break;
    case 2: tkv_unpack_plane2(d, in, idx); break;
    case 3:
        tkv_unpack_plane2(d, in, idx);
        tkv_unpack_plane1_or(d, in + tkv_plane2_bytes(d), 2, idx);
        break;
    case 4: tkv_unpack_plane4(d, in, idx); break;
    case 5:
        tkv_unpack_plane4(d, in, idx);
        tkv_unpack_plane1_or(d, in + d / 2, 4, idx);
        break;
    case 8: memcpy(idx, in, d); break;
    default: break;
    }
}
