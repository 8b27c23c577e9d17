/*
 * segment.h - the memory the cache's code rows live in: segments, each the rows of a
 * fixed range of positions of one layer (every KV head, K and V), carved from 2 MB slabs
 * in transparent huge pages where the system gives them.
 *
 * Attention streams code rows from DRAM and waits on the TLB as much as on the bytes: in
 * 4 KB pages every 4 KB of codes costs a page walk, in 2 MB pages one walk covers a slab.
 * A huge page needs a 2 MB-aligned range of its own, which per-head arrays grown with
 * realloc never get; so a cache's segments are carved one after the other from its own
 * slabs, and memory still grows with the positions, one segment at a time.  A segment is
 * reference-counted (forks read a shared prefix's segments), and its slab lives until the
 * last segment carved from it is freed.
 */
#ifndef TKV_KV_SEGMENT_H
#define TKV_KV_SEGMENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct tkv_kv_slab;

typedef struct tkv_kv_seg {
    atomic_uint refs;         /* caches reading it */
    struct tkv_kv_slab *slab; /* the slab its rows are carved from; NULL: malloc'd alone */
    uint8_t *rows;            /* 64-byte aligned, zeroed when new */
} tkv_kv_seg;

/* Where a cache's segments come from. */
typedef struct tkv_kv_arena {
    int huge;                /* carve from huge-page slabs (0: malloc each segment) */
    struct tkv_kv_slab *cur; /* the slab being carved, NULL when none */
    size_t slack;            /* bytes of this arena's huge-page slabs that no segment took */
} tkv_kv_arena;

/* 0 when the environment variable TKV_HUGE_PAGES is "0": every segment malloc'd in base
 * pages (the path taken where huge pages are unavailable), 1 otherwise. */
int tkv_kv_huge_pages_wanted(void);
/* A segment of `bytes` with one reference; NULL when out of memory.  From the arena's
 * current slab when it fits, else from a new slab (tkv_alloc_huge; when the system refuses
 * one, this and every later segment of the arena is malloc'd alone). */
tkv_kv_seg *tkv_kv_seg_new(tkv_kv_arena *a, size_t bytes);
void tkv_kv_seg_ref(tkv_kv_seg *s);
/* Drop a reference (NULL: no-op); the last frees the segment and, with its slab's last
 * segment, the slab. */
void tkv_kv_seg_unref(tkv_kv_seg *s);
/* Stop carving: the arena's slab lives on while segments use it. */
void tkv_kv_arena_release(tkv_kv_arena *a);

#endif
