/* alloc.h - aligned allocation (64 bytes: one cache line, one AVX-512 register). */
#ifndef TKV_BASE_ALLOC_H
#define TKV_BASE_ALLOC_H

#include <stddef.h>

#define TKV_ALIGN 64

/* Zeroed, 64-byte aligned; NULL on failure or overflow of n * size. */
void *tkv_calloc_aligned(size_t n, size_t size);
void tkv_free_aligned(void *p);

/* Huge pages (transparent, 2 MB on x86-64 and arm64 Linux): memory that the TLB maps
 * with one entry per 2 MB instead of one per 4 KB.  tkv_alloc_huge maps `bytes` (a multiple
 * of TKV_HUGE_PAGE) at a TKV_HUGE_PAGE-aligned address and asks the kernel to back it with
 * huge pages; NULL where anonymous mappings are unavailable (not Linux) or refused.  *huge
 * is 1 when the kernel took the advice (the range is then committed 2 MB at a time as it
 * is touched), 0 when it kept 4 KB pages.  Zeroed; free with tkv_free_huge(p, bytes). */
#define TKV_HUGE_PAGE ((size_t)2 << 20)
void *tkv_alloc_huge(size_t bytes, int *huge);
void tkv_free_huge(void *p, size_t bytes);

/* a * b with overflow check: returns 0 and sets *out on success, -1 on overflow */
int tkv_mul_size(size_t a, size_t b, size_t *out);
int tkv_add_size(size_t a, size_t b, size_t *out);

#endif
