/* alloc.c - aligned allocation, huge-page mappings and overflow-safe size arithmetic. */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, madvise */
#endif
#include "base/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

#if defined(__linux__) && defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
void *tkv_alloc_huge(size_t bytes, int *huge) {
    *huge = 0;
    size_t span;
    if (bytes == 0 || bytes % TKV_HUGE_PAGE != 0 || tkv_add_size(bytes, TKV_HUGE_PAGE, &span)) {
        return NULL;
    }
    /* map one huge page more than asked and unmap what lies outside the aligned range: mmap
     * itself only aligns to the base page */
    uint8_t *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        return NULL;
    }
    const size_t head = (TKV_HUGE_PAGE - (uintptr_t)m % TKV_HUGE_PAGE) % TKV_HUGE_PAGE;
    if (head > 0) {
        munmap(m, head);
    }
    munmap(m + head + bytes, TKV_HUGE_PAGE - head); /* never empty: head < TKV_HUGE_PAGE */
    *huge = madvise(m + head, bytes, MADV_HUGEPAGE) == 0;
    return m + head;
}

void tkv_free_huge(void *p, size_t bytes) {
    if (p) {
        munmap(p, bytes);
    }
}
#else
void *tkv_alloc_huge(size_t bytes, int *huge) {
    (void)bytes;
    *huge = 0;
    return NULL;
}

void tkv_free_huge(void *p, size_t bytes) {
    (void)p;
    (void)bytes;
}
#endif
