/*
 * segment.c - segments carved from huge-page slabs (segment.h).  A slab counts its
 * references: one per segment carved from it plus one while an arena carves from it, so
 * it is unmapped when both are gone, whichever cache (a fork) frees the last segment.
 */
#include "kv/segment.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

struct tkv_kv_slab {
    atomic_uint refs;
    uint8_t *base;
    size_t bytes; /* a multiple of TKV_HUGE_PAGE */
    size_t used;  /* bytes carved, from base */
};

int tkv_kv_huge_pages_wanted(void) {
    const char *e = getenv("TKV_HUGE_PAGES");
    return !(e && strcmp(e, "0") == 0);
}

static void tkv_kv_slab_unref(struct tkv_kv_slab *s) {
    if (s && atomic_fetch_sub(&s->refs, 1u) == 1u) {
        tkv_free_huge(s->base, s->bytes);
        free(s);
    }
}

/* A new slab for segments of `bytes` (the arena's current one is too full), or NULL when
 * the system gives no huge-page mapping. */
static struct tkv_kv_slab *tkv_kv_slab_new(tkv_kv_arena *a, size_t bytes) {
    size_t size = (bytes + TKV_HUGE_PAGE - 1) / TKV_HUGE_PAGE * TKV_HUGE_PAGE;
    struct tkv_kv_slab *s = malloc(sizeof *s);
    int huge = 0;
    uint8_t *base = s && size >= bytes ? tkv_alloc_huge(size, &huge) : NULL;
    if (!base || !huge) { /* 4 KB pages: malloc'd segments are as good and exact in size */
        tkv_free_huge(base, size);
        free(s);
        return NULL;
    }
    atomic_init(&s->refs, 1u); /* the arena's */
    s->base = base;
    s->bytes = size;
    s->used = 0;
    a->slack += size;
    return s;
}

tkv_kv_seg *tkv_kv_seg_new(tkv_kv_arena *a, size_t bytes) {
    bytes = (bytes + TKV_ALIGN - 1) / TKV_ALIGN * TKV_ALIGN;
    tkv_kv_seg *g = malloc(sizeof *g);
    if (!g || bytes == 0) {
        free(g);
        return NULL;
    }
    atomic_init(&g->refs, 1u);
    g->slab = NULL;
    if (a->huge && (!a->cur || a->cur->bytes - a->cur->used < bytes)) {
        tkv_kv_slab_unref(a->cur); /* its rest stays counted in slack: it is committed */
        a->cur = tkv_kv_slab_new(a, bytes);
        a->huge = a->cur != NULL;
    }
    if (a->huge) {
        g->slab = a->cur;
        g->rows = a->cur->base + a->cur->used;
        a->cur->used += bytes;
        a->slack -= bytes;
        atomic_fetch_add(&a->cur->refs, 1u);
        return g;
    }
    g->rows = tkv_calloc_aligned(1, bytes);
    if (!g->rows) {
        free(g);
        return NULL;
    }
    return g;
}

void tkv_kv_seg_ref(tkv_kv_seg *s) {
    atomic_fetch_add(&s->refs, 1u);
}

void tkv_kv_seg_unref(tkv_kv_seg *s) {
    if (!s || atomic_fetch_sub(&s->refs, 1u) != 1u) {
        return;
    }
    if (s->slab) {
        tkv_kv_slab_unref(s->slab);
    } else {
        tkv_free_aligned(s->rows);
    }
    free(s);
}

void tkv_kv_arena_release(tkv_kv_arena *a) {
    tkv_kv_slab_unref(a->cur);
    a->cur = NULL;
    a->slack = 0;
}
