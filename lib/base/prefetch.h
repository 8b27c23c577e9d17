/*
 * prefetch.h - software prefetch of a byte range.
 */
#ifndef TKV_BASE_PREFETCH_H
#define TKV_BASE_PREFETCH_H

#include <stddef.h>

/* Prefetch (for reading) every cache line of the n >= 1 bytes at p, which need not start on
 * a line: one prefetch per 64 bytes from p, then the line of the last byte.  `locality` is
 * __builtin_prefetch's (a constant: 3 = into L1, 2 = into L2).  A prefetch never faults, so
 * the range may lie past an array's end (compute such an address as an integer). */
#define TKV_PREFETCH_BYTES(p, n, locality)                                                         \
    do {                                                                                           \
        const char *tkv_pf_p_ = (const char *)(p);                                                 \
        const size_t tkv_pf_n_ = (n);                                                              \
        for (size_t tkv_pf_o_ = 0; tkv_pf_o_ < tkv_pf_n_; tkv_pf_o_ += 64) {                       \
            __builtin_prefetch(tkv_pf_p_ + tkv_pf_o_, 0, locality);                                \
        }                                                                                          \
        __builtin_prefetch(tkv_pf_p_ + tkv_pf_n_ - 1, 0, locality);                                \
    } while (0)

#endif
