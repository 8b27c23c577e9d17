/*
 * kv_file.c - the saved-cache container: header, sections, checksums, file I/O.
 *
 * Layout (all integers little-endian; docs/PERSISTENCE.md has the full description):
 *
 *     offset size  field
 *      0      8    magic "TKVCACHE"
 *      8      4    version (2; 1 is still read)
 *     12      4    header size (64)
 *     16      8    payload size in bytes
 *     24      8    payload checksum: XXH64 of the payload, seed 0
 *     32      8    model fingerprint: XXH64 of the model's GGUF file, seed 0
 *     40      4    flags (bit 0: the payload ends with a session section)
 *     44      4    positions stored (informative; the payload is authoritative)
 *     48      8    reserved, zero
 *     56      8    header checksum: XXH64 of bytes 0..55
 *     64      ...  payload: sections, each u32 tag, u32 zero, u64 size, size bytes, zero
 *                  padding to a multiple of 8
 *
 * Magic and version stay at offsets 0 and 8 in every version, so any later file is told
 * apart from damage.  The checksums catch accidental damage (a truncated copy, a flipped
 * bit); the readers of the sections still bounds-check everything, so a crafted file
 * with a valid checksum can at worst be refused.
 */
#include "kv/kv_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/hash.h"
#include "base/status.h"

/* ---- writer ---------------------------------------------------------------------------------- */

void tkv_wbuf_put(tkv_wbuf *w, const void *src, size_t n) {
    if (w->failed || n == 0) {
        return;
    }
    if (w->cap - w->len < n) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap - w->len < n) {
            if (cap > SIZE_MAX / 2) {
                w->failed = 1;
                return;
            }
            cap *= 2;
        }
        uint8_t *data = realloc(w->data, cap);
        if (!data) {
            w->failed = 1;
            return;
        }
        w->data = data;
        w->cap = cap;
    }
    memcpy(w->data + w->len, src, n);
    w->len += n;
}

static void tkv_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void tkv_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t tkv_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t tkv_rd64(const uint8_t *p) {
    return (uint64_t)tkv_rd32(p) | (uint64_t)tkv_rd32(p + 4) << 32;
}

void tkv_wbuf_u32(tkv_wbuf *w, uint32_t v) {
    uint8_t b[4];
    tkv_le32(b, v);
    tkv_wbuf_put(w, b, 4);
}

void tkv_wbuf_u64(tkv_wbuf *w, uint64_t v) {
    uint8_t b[8];
    tkv_le64(b, v);
    tkv_wbuf_put(w, b, 8);
}

void tkv_wbuf_f32(tkv_wbuf *w, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    tkv_wbuf_u32(w, u);
}

void tkv_wbuf_f64(tkv_wbuf *w, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    tkv_wbuf_u64(w, u);
}

size_t tkv_wbuf_section_begin(tkv_wbuf *w, uint32_t tag) {
    const size_t start = w->len;
    tkv_wbuf_u32(w, tag);
    tkv_wbuf_u32(w, 0);
    tkv_wbuf_u64(w, 0); /* size, set by _end */
    return start;
}

void tkv_wbuf_section_end(tkv_wbuf *w, size_t start) {
    if (w->failed) {
        return;
    }
    tkv_le64(w->data + start + 8, (uint64_t)(w->len - start - 16));
    static const uint8_t zeros[8] = {0};
    tkv_wbuf_put(w, zeros, (8 - w->len % 8) % 8);
}

void tkv_wbuf_release(tkv_wbuf *w) {
    free(w->data);
    memset(w, 0, sizeof *w);
}

/* ---- reader -------------------------------------------------------------------------------- */

tkv_status tkv_rbuf_take(tkv_rbuf *r, uint64_t n, const char *what, const uint8_t **out) {
    TKV_REQUIRE(n <= r->len - r->off, TKV_ERR_BAD_FORMAT,
                "%s: %s needs %llu bytes at offset %zu, only %zu are left", r->where, what,
                (unsigned long long)n, r->off, r->len - r->off);
    *out = r->data + r->off;
    r->off += (size_t)n;
    return TKV_OK;
}

tkv_status tkv_rbuf_get(tkv_rbuf *r, void *dst, size_t n, const char *what) {
    if (n == 0) {
        return TKV_OK; /* dst may be NULL (an array that holds nothing) */
    }
    const uint8_t *p = NULL;
    TKV_TRY(tkv_rbuf_take(r, n, what, &p));
    memcpy(dst, p, n);
    return TKV_OK;
}

tkv_status tkv_rbuf_u32(tkv_rbuf *r, const char *what, uint32_t *out) {
    const uint8_t *p = NULL;
    TKV_TRY(tkv_rbuf_take(r, 4, what, &p));
    *out = tkv_rd32(p);
    return TKV_OK;
}

tkv_status tkv_rbuf_u64(tkv_rbuf *r, const char *what, uint64_t *out) {
    const uint8_t *p = NULL;
    TKV_TRY(tkv_rbuf_take(r, 8, what, &p));
    *out = tkv_rd64(p);
    return TKV_OK;
}

tkv_status tkv_rbuf_f32(tkv_rbuf *r, const char *what, float *out) {
    uint32_t u;
    TKV_TRY(tkv_rbuf_u32(r, what, &u));
    memcpy(out, &u, 4);
    return TKV_OK;
}

tkv_status tkv_rbuf_f64(tkv_rbuf *r, const char *what, double *out) {
    uint64_t u;
    TKV_TRY(tkv_rbuf_u64(r, what, &u));
    memcpy(out, &u, 8);
    return TKV_OK;
}

static void tkv_tag_text(uint32_t tag, char out[5]) {
    for (int i = 0; i < 4; i++) {
        const char c = (char)(tag >> (8 * i));
        out[i] = c >= 0x20 && c < 0x7f ? c : '?';
    }
    out[4] = '\0';
}

tkv_status tkv_rbuf_section(tkv_rbuf *payload, uint32_t tag, const char *where,
                            tkv_rbuf *section) {
    char want[5], got[5];
    tkv_tag_text(tag, want);
    TKV_REQUIRE(payload->len - payload->off >= 16, TKV_ERR_BAD_FORMAT,
                "payload ends at offset %zu where section %s (%s) should start", payload->off,
                want, where);
    const uint8_t *h = payload->data + payload->off;
    const uint32_t file_tag = tkv_rd32(h);
    const uint64_t size = tkv_rd64(h + 8);
    tkv_tag_text(file_tag, got);
    TKV_REQUIRE(file_tag == tag, TKV_ERR_BAD_FORMAT,
                "payload offset %zu: section '%s' where section %s (%s) should be", payload->off,
                got, want, where);
    TKV_REQUIRE(tkv_rd32(h + 4) == 0, TKV_ERR_BAD_FORMAT, "section %s (%s): reserved word not zero",
                want, where);
    const size_t left = payload->len - payload->off - 16;
    TKV_REQUIRE(size <= left, TKV_ERR_BAD_FORMAT,
                "section %s (%s): size %llu beyond the end of the payload (%zu bytes left)", want,
                where, (unsigned long long)size, left);
    const size_t padded = (size_t)size + (8 - (size_t)size % 8) % 8;
    TKV_REQUIRE(padded <= left, TKV_ERR_BAD_FORMAT,
                "section %s (%s): padding beyond the end of the payload", want, where);
    for (size_t i = (size_t)size; i < padded; i++) {
        TKV_REQUIRE(h[16 + i] == 0, TKV_ERR_BAD_FORMAT, "section %s (%s): padding not zero",
                    want, where);
    }
    section->data = h + 16;
    section->len = (size_t)size;
    section->off = 0;
    section->where = where;
    payload->off += 16 + padded;
    return TKV_OK;
}

tkv_status tkv_rbuf_done(const tkv_rbuf *r) {
    TKV_REQUIRE(r->off == r->len, TKV_ERR_BAD_FORMAT, "%s: %zu unread bytes at its end", r->where,
                r->len - r->off);
    return TKV_OK;
}

/* ---- file ------------------------------------------------------------------------------------ */

void tkv_kv_file_header(const tkv_wbuf *payload, uint64_t fingerprint, uint32_t flags,
                        uint32_t n_tokens, uint8_t *out) {
    memset(out, 0, TKV_KV_FILE_HEADER_SIZE);
    memcpy(out, TKV_KV_FILE_MAGIC, 8);
    tkv_le32(out + 8, TKV_KV_FILE_VERSION);
    tkv_le32(out + 12, TKV_KV_FILE_HEADER_SIZE);
    tkv_le64(out + 16, payload->len);
    tkv_le64(out + 24, tkv_hash64(payload->data, payload->len, 0));
    tkv_le64(out + 32, fingerprint);
    tkv_le32(out + 40, flags);
    tkv_le32(out + 44, n_tokens);
    tkv_le64(out + 56, tkv_hash64(out, 56, 0));
}

tkv_status tkv_kv_file_parse(const uint8_t *data, size_t size, tkv_kv_file *f) {
    memset(f, 0, sizeof *f);
    TKV_REQUIRE(size >= 8 && memcmp(data, TKV_KV_FILE_MAGIC, 8) == 0, TKV_ERR_BAD_FORMAT,
                "not a turbokv cache file: %s", size < 8 ? "shorter than its 8-byte magic"
                                                         : "it does not start with TKVCACHE");
    TKV_REQUIRE(size >= TKV_KV_FILE_HEADER_SIZE, TKV_ERR_BAD_FORMAT,
                "truncated cache file: %zu bytes, the header alone takes %u", size,
                TKV_KV_FILE_HEADER_SIZE);
    const uint32_t version = tkv_rd32(data + 8);
    TKV_REQUIRE(version <= TKV_KV_FILE_VERSION, TKV_ERR_UNSUPPORTED,
                "cache file version %u is newer than this library reads (version %u): save it "
                "again with this version, or upgrade turbokv",
                version, TKV_KV_FILE_VERSION);
    TKV_REQUIRE(tkv_rd64(data + 56) == tkv_hash64(data, 56, 0), TKV_ERR_BAD_FORMAT,
                "damaged cache file: the header checksum does not match its bytes");
    TKV_REQUIRE(version >= TKV_KV_FILE_MIN_VERSION, TKV_ERR_BAD_FORMAT,
                "cache file version %u does not exist", version);
    TKV_REQUIRE(tkv_rd32(data + 12) == TKV_KV_FILE_HEADER_SIZE, TKV_ERR_BAD_FORMAT,
                "cache file: header size %u, version %u has %u", tkv_rd32(data + 12), version,
                TKV_KV_FILE_HEADER_SIZE);
    const uint64_t payload_size = tkv_rd64(data + 16);
    const size_t have = size - TKV_KV_FILE_HEADER_SIZE;
    TKV_REQUIRE(payload_size <= have, TKV_ERR_BAD_FORMAT,
                "truncated cache file: the header promises %llu payload bytes, the file holds %zu",
                (unsigned long long)payload_size, have);
    TKV_REQUIRE(payload_size == have, TKV_ERR_BAD_FORMAT,
                "cache file: %zu bytes after the %llu-byte payload (appended to?)",
                have - (size_t)payload_size, (unsigned long long)payload_size);
    const uint8_t *payload = data + TKV_KV_FILE_HEADER_SIZE;
    const uint64_t sum = tkv_hash64(payload, have, 0);
    TKV_REQUIRE(sum == tkv_rd64(data + 24), TKV_ERR_BAD_FORMAT,
                "damaged cache file: payload checksum %016llx, the header says %016llx (bytes "
                "changed after it was written)",
                (unsigned long long)sum, (unsigned long long)tkv_rd64(data + 24));
    f->payload = payload;
    f->payload_size = have;
    f->version = version;
    f->fingerprint = tkv_rd64(data + 32);
    f->flags = tkv_rd32(data + 40);
    f->n_tokens = tkv_rd32(data + 44);
    TKV_REQUIRE((f->flags & ~TKV_KV_FILE_HAS_SESSION) == 0, TKV_ERR_BAD_FORMAT,
                "cache file: unknown header flags 0x%x", f->flags);
    return TKV_OK;
}

tkv_status tkv_kv_file_open(const char *path, tkv_kv_file *f) {
    memset(f, 0, sizeof *f);
    const int fd = open(path, O_RDONLY);
    TKV_REQUIRE(fd >= 0, TKV_ERR_IO, "cannot open cache file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        const int err = errno;
        close(fd);
        return tkv_fail(TKV_ERR_IO, "cache file '%s': %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tkv_fail(TKV_ERR_IO, "cache file '%s': not a regular file", path);
    }
    const size_t size = (size_t)st.st_size;
    if (size < TKV_KV_FILE_HEADER_SIZE) { /* too short to map usefully: parse says why */
        uint8_t small[TKV_KV_FILE_HEADER_SIZE];
        const ssize_t got = size ? read(fd, small, size) : 0;
        close(fd);
        TKV_REQUIRE(got == (ssize_t)size, TKV_ERR_IO, "cannot read cache file '%s'", path);
        tkv_status s = tkv_kv_file_parse(small, size, f);
        tkv_error_prefix("%s", path);
        return s;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    close(fd);
    TKV_REQUIRE(map != MAP_FAILED, TKV_ERR_IO, "cannot map cache file '%s': %s", path,
                strerror(err));
    tkv_status s = tkv_kv_file_parse(map, size, f);
    if (s != TKV_OK) {
        munmap(map, size);
        tkv_error_prefix("%s", path);
        return s;
    }
    f->map = map;
    f->map_size = size;
    return TKV_OK;
}

void tkv_kv_file_close(tkv_kv_file *f) {
    if (f->map) {
        munmap(f->map, f->map_size);
    }
    memset(f, 0, sizeof *f);
}

tkv_status tkv_kv_file_write(const char *path, const tkv_wbuf *payload, uint64_t fingerprint,
                             uint32_t flags, uint32_t n_tokens) {
    TKV_REQUIRE(!payload->failed, TKV_ERR_OUT_OF_MEMORY, "saving '%s': out of memory", path);
    const size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    TKV_REQUIRE(tmp, TKV_ERR_OUT_OF_MEMORY, "saving '%s': out of memory", path);
    snprintf(tmp, plen + 16, "%s.tmp%d", path, (int)(getpid() % 100000));
    uint8_t header[TKV_KV_FILE_HEADER_SIZE];
    tkv_kv_file_header(payload, fingerprint, flags, n_tokens, header);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        const int err = errno;
        free(tmp);
        return tkv_fail(TKV_ERR_IO, "cannot write '%s': %s", path, strerror(err));
    }
    int ok = fwrite(header, 1, sizeof header, fp) == sizeof header &&
             fwrite(payload->data, 1, payload->len, fp) == payload->len;
    int err = errno;
    if (fclose(fp) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        remove(tmp);
        free(tmp);
        return tkv_fail(TKV_ERR_IO, "cannot write '%s': %s", path, strerror(err));
    }
    free(tmp);
    return TKV_OK;
}
