/*
 * kv_file.h - the saved-cache file: a fixed header (magic, version, sizes, model
 * fingerprint, checksums) and a payload of tagged sections, with a growable writer and a
 * bounds-checked reader.  The byte layout is in docs/PERSISTENCE.md and at the top of
 * kv_file.c.  What the sections hold is up to their owners: tkv_kv_write / tkv_kv_read
 * (cache_file.c) the cache, lib/session the session state.
 */
#ifndef TKV_KV_KV_FILE_H
#define TKV_KV_KV_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "turbokv.h"

#define TKV_KV_FILE_MAGIC "TKVCACHE"
#define TKV_KV_FILE_VERSION 2u     /* written; 2 added sliding-window rings (docs/PERSISTENCE.md) */
#define TKV_KV_FILE_MIN_VERSION 1u /* the oldest still read */
#define TKV_KV_FILE_HEADER_SIZE 64u
#define TKV_KV_FILE_HAS_SESSION (1u << 0) /* header flag: a session section follows the cache */

/* Section tags: four ASCII bytes read as a little-endian u32. */
#define TKV_KV_TAG(a, b, c, d) \
    ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
#define TKV_KV_TAG_MODEL TKV_KV_TAG('M', 'O', 'D', 'L')
#define TKV_KV_TAG_CODECS TKV_KV_TAG('C', 'O', 'D', 'C')
#define TKV_KV_TAG_CONFIG TKV_KV_TAG('C', 'O', 'N', 'F')
#define TKV_KV_TAG_LAYER TKV_KV_TAG('L', 'A', 'Y', 'R')
#define TKV_KV_TAG_SESSION TKV_KV_TAG('S', 'E', 'S', 'S')

/* ---- writer: a growable byte buffer ------------------------------------------------------ */

typedef struct tkv_wbuf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed; /* an allocation failed: everything after it was dropped */
} tkv_wbuf;

void tkv_wbuf_put(tkv_wbuf *w, const void *src, size_t n);
void tkv_wbuf_u32(tkv_wbuf *w, uint32_t v);
void tkv_wbuf_u64(tkv_wbuf *w, uint64_t v);
void tkv_wbuf_f32(tkv_wbuf *w, float v);
void tkv_wbuf_f64(tkv_wbuf *w, double v);
/* Start a section (tag, size filled in by _end); returns where it starts. */
size_t tkv_wbuf_section_begin(tkv_wbuf *w, uint32_t tag);
/* Close the section started at `start`: its size is set and it is padded to 8 bytes. */
void tkv_wbuf_section_end(tkv_wbuf *w, size_t start);
void tkv_wbuf_release(tkv_wbuf *w);

/* ---- reader: a cursor over bytes that never reads past its end --------------------------- */

typedef struct tkv_rbuf {
    const uint8_t *data;
    size_t len;
    size_t off;
    const char *where; /* for messages: "section LAYR 3", ... */
} tkv_rbuf;

/* n bytes at the cursor (copied / borrowed); TKV_ERR_BAD_FORMAT naming `what` when fewer
 * are left. */
tkv_status tkv_rbuf_get(tkv_rbuf *r, void *dst, size_t n, const char *what);
tkv_status tkv_rbuf_take(tkv_rbuf *r, uint64_t n, const char *what, const uint8_t **out);
tkv_status tkv_rbuf_u32(tkv_rbuf *r, const char *what, uint32_t *out);
tkv_status tkv_rbuf_u64(tkv_rbuf *r, const char *what, uint64_t *out);
tkv_status tkv_rbuf_f32(tkv_rbuf *r, const char *what, float *out);
tkv_status tkv_rbuf_f64(tkv_rbuf *r, const char *what, double *out);
/* The next section of the payload, which must carry `tag`: *section covers its bytes. */
tkv_status tkv_rbuf_section(tkv_rbuf *payload, uint32_t tag, const char *where,
                            tkv_rbuf *section);
/* TKV_ERR_BAD_FORMAT unless every byte was read (a section with trailing bytes). */
tkv_status tkv_rbuf_done(const tkv_rbuf *r);

/* ---- the file ----------------------------------------------------------------------------- */

typedef struct tkv_kv_file {
    const uint8_t *payload;
    size_t payload_size;
    uint64_t fingerprint; /* of the model the file was saved for */
    uint32_t version;     /* TKV_KV_FILE_MIN_VERSION..TKV_KV_FILE_VERSION */
    uint32_t flags;       /* TKV_KV_FILE_HAS_SESSION */
    uint32_t n_tokens;
    void *map;            /* the mapping of tkv_kv_file_open, NULL for memory */
    size_t map_size;
} tkv_kv_file;

/* Check a whole file image: magic, version, header checksum, sizes, payload checksum.
 * The payload is borrowed from data.  TKV_ERR_BAD_FORMAT (not a cache file, truncated,
 * damaged), TKV_ERR_UNSUPPORTED (a version this library does not read). */
tkv_status tkv_kv_file_parse(const uint8_t *data, size_t size, tkv_kv_file *f);
/* The same on a file, mapped read-only (TKV_ERR_IO when it cannot be read). */
tkv_status tkv_kv_file_open(const char *path, tkv_kv_file *f);
void tkv_kv_file_close(tkv_kv_file *f);
/* Header for a payload into out (TKV_KV_FILE_HEADER_SIZE bytes). */
void tkv_kv_file_header(const tkv_wbuf *payload, uint64_t fingerprint, uint32_t flags,
                        uint32_t n_tokens, uint8_t *out);
/* Write header + payload to path through a temporary file renamed over it, so a reader
 * never sees a half-written file and a failed save leaves the old file. */
tkv_status tkv_kv_file_write(const char *path, const tkv_wbuf *payload, uint64_t fingerprint,
                             uint32_t flags, uint32_t n_tokens);

#endif
