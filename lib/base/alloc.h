/* alloc.h - aligned allocation (64 bytes: one cache line, one AVX-512 register). */
#ifndef TKV_BASE_ALLOC_H
#define TKV_BASE_ALLOC_H

#include <stddef.h>

#define TKV_ALIGN 64

/* Zeroed, 64-byte aligned; NULL on failure or overflow of n * size. */
void *tkv_calloc_aligned(size_t n, size_t size);
void tkv_free_aligned(void *p);

/* a * b with overflow check: returns 0 and sets *out on success, -1 on overflow */
int tkv_mul_size(size_t a, size_t b, size_t *out);
int tkv_add_size(size_t a, size_t b, size_t *out);

#endif
