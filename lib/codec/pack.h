/*
 * pack.h - bit packing of codebook indices ("planes"), shared by every turbo codec.
 *
 * A b-bit index vector of d elements (d even) is stored as one or two planes:
 *   b=1: P1            b=2: P2            b=3: P2 (bits 0-1) then P1 (bit 2)
 *   b=4: P4            b=5: P4 (bits 0-3) then P1 (bit 4)       b=8: P8
 * P4 (d/2 bytes): groups of 32 elements (the last group holds the t = d mod 32
 *   rest); in a group of t elements byte k (k < t/2) holds element k in its low
 *   nibble and element k + t/2 in its high nibble.
 * P2 (sum over groups of ceil(t/4) bytes): groups of 64 elements; in a group of t,
 *   with q = ceil(t/4), byte k holds elements k, k+q, k+2q, k+3q (those < t) in bit
 *   pairs 0-1, 2-3, 4-5, 6-7.
 * P1 (ceil(d/8) bytes): element j is bit j%8 of byte j/8.
 * P8 (d bytes): one index per byte.
 * These orders let SIMD code unpack 16-64 consecutive elements with one load, a
 * shift and a mask (a P1 plane is directly an AVX-512 mask register).
 */
#ifndef TKV_CODEC_PACK_H
#define TKV_CODEC_PACK_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of the packed planes of d indices at `bits` (1,2,3,4,5,8). */
size_t tkv_packed_bytes(uint32_t bits, uint32_t d);
void tkv_pack_indices(uint32_t bits, uint32_t d, const uint8_t *idx, uint8_t *out);
void tkv_unpack_indices(uint32_t bits, uint32_t d, const uint8_t *in, uint8_t *idx);

/* Single planes, for the kernels */
size_t tkv_plane2_bytes(uint32_t d);
void tkv_unpack_plane4(uint32_t d, const uint8_t *in, uint8_t *idx);
void tkv_unpack_plane2(uint32_t d, const uint8_t *in, uint8_t *idx);
void tkv_unpack_plane1_or(uint32_t d, const uint8_t *in, uint32_t shift, uint8_t *idx);

#endif
