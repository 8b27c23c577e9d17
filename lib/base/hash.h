/*
 * hash.h - a 64-bit non-cryptographic hash of a byte range: XXH64 (Collet), written from
 * its published specification.  Used for the payload checksum of saved cache files and
 * the model fingerprint; it detects accidental damage, not tampering.
 */
#ifndef TKV_BASE_HASH_H
#define TKV_BASE_HASH_H

#include <stddef.h>
#include <stdint.h>

uint64_t tkv_hash64(const void *data, size_t len, uint64_t seed);

#endif
