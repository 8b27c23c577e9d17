/* alloc.c - aligned allocation and overflow-safe size arithmetic. */
#include "base/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int tkv_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) {
        return -1;
    }
    *out = a * b;
    return 0;
}

int tkv_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) {
        return -1;
    }
    *out = a + b;
    return 0;
}

void *tkv_calloc_aligned(size_t n, size_t size) {
    size_t bytes;
    if (tkv_mul_size(n, size, &bytes) != 0) {
        return NULL;
    }
    if (bytes == 0) {
        bytes = TKV_ALIGN;
    }
    /* aligned_alloc needs a multiple of the alignment */
    size_t rounded;
    if (tkv_add_size(bytes, TKV_ALIGN - 1, &rounded) != 0) {
        return NULL;
    }
    rounded &= ~(size_t)(TKV_ALIGN - 1);
    void *p = aligned_alloc(TKV_ALIGN, rounded);
    if (p) {
        memset(p, 0, rounded);
    }
    return p;
}

void tkv_free_aligned(void *p) { free(p); }
