/*
 * gguf.c - bounds-checked GGUF reader: maps a file (or takes a caller's buffer), validates
 * all of it once, and serves metadata and tensor descriptions from tables built at open.
 *
 * The byte layout parsed (GGUF v2 and v3, which differ only in that v3 allows big-endian
 * files; all integers little-endian, no padding between fields):
 *
 *   1. header:  magic "GGUF" (4 bytes: 47 47 55 46)
 *               u32 version                 2 or 3 (v1 used u32 counts: unsupported)
 *               u64 tensor_count
 *               u64 kv_count
 *   2. kv_count key/value pairs:
 *               string key                  string = u64 length + length bytes, no NUL
 *               u32 value_type              0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32,
 *                                           7 bool (1 byte), 8 string, 9 array,
 *                                           10 u64, 11 i64, 12 f64
 *               value                       scalars: their natural size; strings as above;
 *                                           arrays: u32 elem_type + u64 count + count
 *                                           elements back to back (arrays of arrays are
 *                                           legal GGUF but unused by models: unsupported)
 *   3. tensor_count tensor infos:
 *               string name
 *               u32 n_dims                  1..4
 *               u64 dims[n_dims]            dims[0] is the contiguous row; each >= 1
 *               u32 ggml_type               see ggml_types.h
 *               u64 offset                  from the data section start, a multiple of
 *                                           the alignment
 *   4. padding to the alignment: the value of "general.alignment" (a u32 power of two)
 *      if present, else 32.
 *   5. data section: each tensor's bytes at data_start + offset, rows of
 *      dims[0] / block_size blocks of type_size bytes.
 *
 * A big-endian file shows up as a version whose bytes are swapped (0x03000000): reported as
 * unsupported.  Every count, length and offset is checked against the bytes that are left
 * before it is used, with overflow-safe arithmetic, so a corrupt file fails with
 * TKV_ERR_BAD_FORMAT and a message saying where, and never makes us read out of bounds or
 * allocate more than a small multiple of the file size.
 */
#include "gguf/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/status.h"

/* Smallest encodings, used to reject impossible counts before allocating for them. */
#define MIN_KV_BYTES 13u     /* u64 key length + u32 type + a 1-byte value */
#define MIN_TENSOR_BYTES 32u /* u64 name length + u32 n_dims + one u64 dim + u32 + u64 */
/* names in messages are cut here, so a corrupt 1 GB "name" cannot flood the text */
#define MSG_NAME_MAX 96

typedef struct gguf_kv {
    const char *key;       /* NUL-terminated copy in the names arena */
    int32_t type;          /* TKV_GGUF_* */
    size_t value_pos;      /* file offset of the value; for arrays, of the first element */
    tkv_gguf_str str;      /* string values */
    int32_t elem_type;     /* arrays */
    uint64_t count;        /* arrays */
    tkv_gguf_str *strings; /* string arrays: count entries */
} gguf_kv;

/* Open-addressing hash of names to indices, for O(1) lookups and duplicate detection. */
typedef struct name_index {
    int64_t *slots;            /* index + 1; 0 marks an empty slot */
    size_t mask;               /* capacity - 1, capacity a power of two */
    const tkv_gguf_str *names; /* the indexed names, in the file */
} name_index;

struct tkv_gguf {
    const uint8_t *base; /* the file */
    size_t size;
    void *map; /* non-NULL when we mapped the file ourselves */
    uint32_t version;
    uint32_t alignment;
    size_t data_offset;
    int64_t n_kv;
    gguf_kv *kvs;
    tkv_gguf_str *key_names; /* (n_kv) keys in the file, not NUL-terminated */
    int64_t n_tensors;
    tkv_gguf_tensor *tensors;
    tkv_gguf_str *tensor_names; /* (n_tensors) names in the file */
    char *names;                /* arena of NUL-terminated key and tensor names */
    name_index key_index;
    name_index tensor_index;
};

/* ---- little-endian decoding (byte by byte: correct on any host, any alignment) -------- */

static uint16_t le16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t le64(const uint8_t *p) {
    return le32(p) | ((uint64_t)le32(p + 4) << 32);
}

static int u64_to_size(uint64_t v, size_t *out) {
    if (v != (uint64_t)(size_t)v) {
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* ---- value types --------------------------------------------------------------------- */

static const char *const value_type_names[] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

#define N_VALUE_TYPES ((int32_t)(sizeof value_type_names / sizeof value_type_names[0]))

const char *tkv_gguf_type_name(int32_t type) {
    return type >= 0 && type < N_VALUE_TYPES ? value_type_names[type] : "unknown";
}

/* Bytes of a fixed-size value; 0 for strings, arrays and unknown types. */
static size_t value_size(int32_t type) {
    switch (type) {
    case TKV_GGUF_U8:
    case TKV_GGUF_I8:
    case TKV_GGUF_BOOL:
        return 1;
    case TKV_GGUF_U16:
    case TKV_GGUF_I16:
        return 2;
    case TKV_GGUF_U32:
    case TKV_GGUF_I32:
    case TKV_GGUF_F32:
        return 4;
    case TKV_GGUF_U64:
    case TKV_GGUF_I64:
    case TKV_GGUF_F64:
        return 8;
    default:
        return 0;
    }
}

/* ---- the reader: a cursor that refuses to move past the end ------------------------- */

typedef struct reader {
    const uint8_t *base;
    size_t size;
    size_t pos;
} reader;

static size_t remaining(const reader *r) {
    return r->size - r->pos;
}

/* Claim n bytes at the cursor; *at receives their file offset. */
static tkv_status take(reader *r, size_t n, const char *what, size_t *at) {
    TKV_REQUIRE(n <= remaining(r), TKV_ERR_BAD_FORMAT,
                "%s at offset %zu needs %zu bytes, only %zu left (file size %zu)", what, r->pos, n,
                remaining(r), r->size);
    *at = r->pos;
    r->pos += n;
    return TKV_OK;
}

static tkv_status read_u32(reader *r, const char *what, uint32_t *out) {
    size_t at = 0;
    TKV_TRY(take(r, 4, what, &at));
    *out = le32(r->base + at);
    return TKV_OK;
}

static tkv_status read_u64(reader *r, const char *what, uint64_t *out) {
    size_t at = 0;
    TKV_TRY(take(r, 8, what, &at));
    *out = le64(r->base + at);
    return TKV_OK;
}

static tkv_status read_string(reader *r, const char *what, tkv_gguf_str *out) {
    size_t len_at = r->pos;
    uint64_t len = 0;
    TKV_TRY(read_u64(r, what, &len));
    TKV_REQUIRE(len <= remaining(r), TKV_ERR_BAD_FORMAT,
                "%s at offset %zu: length %llu beyond end of file (size %zu)", what, len_at,
                (unsigned long long)len, r->size);
    size_t at = 0;
    TKV_TRY(take(r, (size_t)len, what, &at));
    out->ptr = (const char *)r->base + at;
    out->len = (size_t)len;
    return TKV_OK;
}

static int msg_len(tkv_gguf_str s) {
    return s.len < MSG_NAME_MAX ? (int)s.len : MSG_NAME_MAX;
}

/* Names are looked up by C string, so an embedded NUL would make one unreachable. */
static tkv_status check_name(tkv_gguf_str name, const char *what) {
    TKV_REQUIRE(memchr(name.ptr, 0, name.len) == NULL, TKV_ERR_BAD_FORMAT,
                "%s '%.*s' contains a NUL byte", what, msg_len(name), name.ptr);
    return TKV_OK;
}

/* ---- name index ----------------------------------------------------------------------- */

static uint64_t hash_name(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ULL;
    }
    return h;
}

static tkv_status index_init(name_index *ix, const tkv_gguf_str *names, int64_t n) {
    /* n is capped by the file size / 13, so doubling cannot overflow */
    size_t cap = 8;
    while (cap < 2 * (size_t)n) {
        cap *= 2;
    }
    ix->slots = calloc(cap, sizeof *ix->slots);
    TKV_REQUIRE(ix->slots, TKV_ERR_OUT_OF_MEMORY, "name index of %zu slots", cap);
    ix->mask = cap - 1;
    ix->names = names;
    return TKV_OK;
}

/* Slot holding name, or the empty slot where it would go. */
static size_t index_probe(const name_index *ix, const char *p, size_t n) {
    size_t s = (size_t)hash_name(p, n) & ix->mask;
    for (;;) {
        int64_t v = ix->slots[s];
        if (v == 0) {
            return s;
        }
        const tkv_gguf_str *name = &ix->names[v - 1];
        if (name->len == n && memcmp(name->ptr, p, n) == 0) {
            return s;
        }
        s = (s + 1) & ix->mask;
    }
}

/* Add entry i (its name already in ix->names); returns the earlier index of a duplicate, or -1. */
static int64_t index_insert(name_index *ix, int64_t i) {
    size_t s = index_probe(ix, ix->names[i].ptr, ix->names[i].len);
    if (ix->slots[s] != 0) {
        return ix->slots[s] - 1;
    }
    ix->slots[s] = i + 1;
    return -1;
}

static int64_t index_find(const name_index *ix, const char *name) {
    if (!ix->slots || !name) {
        return -1;
    }
    return ix->slots[index_probe(ix, name, strlen(name))] - 1;
}

/* ---- header --------------------------------------------------------------------------- */

static tkv_status parse_version(reader *r, uint32_t *out) {
    uint32_t v = 0;
    TKV_TRY(read_u32(r, "version", &v));
    uint32_t swapped = (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
    TKV_REQUIRE(v != 1, TKV_ERR_UNSUPPORTED, "GGUF version 1 is not supported (use v2 or v3)");
    TKV_REQUIRE(!(swapped >= 1 && swapped <= 3), TKV_ERR_UNSUPPORTED,
                "big-endian GGUF (version %u) is not supported", swapped);
    TKV_REQUIRE(v != 0, TKV_ERR_BAD_FORMAT, "GGUF version 0 is invalid");
    TKV_REQUIRE(v <= 3, TKV_ERR_UNSUPPORTED, "GGUF version %u is not supported (newest: 3)", v);
    *out = v;
    return TKV_OK;
}

static tkv_status parse_header(tkv_gguf *g, reader *r, uint64_t *n_tensors, uint64_t *n_kv) {
    TKV_REQUIRE(r->size >= 4, TKV_ERR_BAD_FORMAT, "file too small for GGUF (%zu bytes)", r->size);
    TKV_REQUIRE(memcmp(r->base, "GGUF", 4) == 0, TKV_ERR_BAD_FORMAT,
                "not a GGUF file (magic %02x %02x %02x %02x)", r->base[0], r->base[1], r->base[2],
                r->base[3]);
    r->pos = 4;
    TKV_TRY(parse_version(r, &g->version));
    TKV_TRY(read_u64(r, "tensor count", n_tensors));
    TKV_TRY(read_u64(r, "kv count", n_kv));
    /* the cheapest encodings must fit in what is left, so tables sized from these counts
     * stay within a small multiple of the file size */
    size_t left = remaining(r);
    TKV_REQUIRE(*n_kv <= left / MIN_KV_BYTES, TKV_ERR_BAD_FORMAT,
                "kv count %llu impossible in a file of %zu bytes", (unsigned long long)*n_kv,
                r->size);
    TKV_REQUIRE(*n_tensors <= left / MIN_TENSOR_BYTES, TKV_ERR_BAD_FORMAT,
                "tensor count %llu impossible in a file of %zu bytes",
                (unsigned long long)*n_tensors, r->size);
    TKV_REQUIRE(*n_kv * MIN_KV_BYTES + *n_tensors * MIN_TENSOR_BYTES <= left, TKV_ERR_BAD_FORMAT,
                "%llu kv pairs and %llu tensors impossible in a file of %zu bytes",
                (unsigned long long)*n_kv, (unsigned long long)*n_tensors, r->size);
    return TKV_OK;
}

/* ---- key/value pairs ------------------------------------------------------------------ */

static tkv_status parse_string_array(reader *r, gguf_kv *kv) {
    /* each string takes at least its 8-byte length, which bounds the table we allocate */
    TKV_REQUIRE(kv->count <= remaining(r) / 8, TKV_ERR_BAD_FORMAT,
                "array of %llu strings at offset %zu beyond end of file (size %zu)",
                (unsigned long long)kv->count, r->pos, r->size);
    /* an empty string array still gets a (one-entry) table: strings != NULL is how callers
     * tell a string array from others */
    kv->strings = malloc((size_t)(kv->count ? kv->count : 1) * sizeof *kv->strings);
    TKV_REQUIRE(kv->strings, TKV_ERR_OUT_OF_MEMORY, "table of %llu strings",
                (unsigned long long)kv->count);
    for (uint64_t i = 0; i < kv->count; i++) {
        tkv_status st = read_string(r, "string", &kv->strings[i]);
        if (st < 0) {
            tkv_error_prefix("element %llu", (unsigned long long)i);
            return st;
        }
    }
    return TKV_OK;
}

static tkv_status parse_array(reader *r, gguf_kv *kv) {
    uint32_t elem_type = 0;
    TKV_TRY(read_u32(r, "array element type", &elem_type));
    TKV_TRY(read_u64(r, "array count", &kv->count));
    TKV_REQUIRE(elem_type != TKV_GGUF_ARRAY, TKV_ERR_UNSUPPORTED,
                "arrays of arrays are not supported");
    TKV_REQUIRE(elem_type < (uint32_t)N_VALUE_TYPES, TKV_ERR_BAD_FORMAT,
                "unknown array element type %u", elem_type);
    kv->elem_type = (int32_t)elem_type;
    kv->value_pos = r->pos;
    if (elem_type == TKV_GGUF_STRING) {
        return parse_string_array(r, kv);
    }
    size_t count = 0, bytes = 0, at = 0;
    TKV_REQUIRE(u64_to_size(kv->count, &count) == 0 &&
                    tkv_mul_size(count, value_size(kv->elem_type), &bytes) == 0 &&
                    bytes <= remaining(r),
                TKV_ERR_BAD_FORMAT, "array of %llu %s at offset %zu beyond end of file (size %zu)",
                (unsigned long long)kv->count, tkv_gguf_type_name(kv->elem_type), r->pos, r->size);
    return take(r, bytes, "array", &at);
}

static tkv_status parse_value(reader *r, gguf_kv *kv) {
    kv->value_pos = r->pos;
    if (kv->type == TKV_GGUF_STRING) {
        return read_string(r, "string value", &kv->str);
    }
    if (kv->type == TKV_GGUF_ARRAY) {
        return parse_array(r, kv);
    }
    size_t at = 0;
    return take(r, value_size(kv->type), tkv_gguf_type_name(kv->type), &at);
}

static tkv_status parse_kv_body(tkv_gguf *g, reader *r, int64_t i) {
    gguf_kv *kv = &g->kvs[i];
    uint32_t type = 0;
    TKV_TRY(read_u32(r, "value type", &type));
    TKV_REQUIRE(type < (uint32_t)N_VALUE_TYPES, TKV_ERR_BAD_FORMAT, "unknown value type %u", type);
    kv->type = (int32_t)type;
    TKV_TRY(parse_value(r, kv));
    int64_t dup = index_insert(&g->key_index, i);
    TKV_REQUIRE(dup < 0, TKV_ERR_BAD_FORMAT, "duplicate key (pairs #%lld and #%lld)",
                (long long)dup, (long long)i);
    return TKV_OK;
}

static tkv_status parse_kv(tkv_gguf *g, reader *r, int64_t i) {
    tkv_gguf_str *key = &g->key_names[i];
    tkv_status st = read_string(r, "key", key);
    if (st == TKV_OK) {
        st = check_name(*key, "key");
    }
    if (st < 0) {
        tkv_error_prefix("kv pair #%lld", (long long)i);
        return st;
    }
    st = parse_kv_body(g, r, i);
    if (st < 0) {
        tkv_error_prefix("key '%.*s'", msg_len(*key), key->ptr);
    }
    return st;
}

static tkv_status parse_alignment(tkv_gguf *g) {
    g->alignment = TKV_GGUF_DEFAULT_ALIGNMENT;
    if (tkv_gguf_find_key(g, "general.alignment") < 0) {
        return TKV_OK;
    }
    uint32_t a = 0;
    TKV_TRY(tkv_gguf_get_u32(g, "general.alignment", &a));
    TKV_REQUIRE(a != 0 && (a & (a - 1)) == 0, TKV_ERR_BAD_FORMAT,
                "general.alignment = %u is not a power of two", a);
    g->alignment = a;
    return TKV_OK;
}

/* ---- tensor infos --------------------------------------------------------------------- */

static tkv_status parse_shape(reader *r, tkv_gguf_tensor *t) {
    TKV_TRY(read_u32(r, "n_dims", &t->n_dims));
    TKV_REQUIRE(t->n_dims >= 1 && t->n_dims <= TKV_GGUF_MAX_DIMS, TKV_ERR_BAD_FORMAT,
                "n_dims %u is not in 1..%d", t->n_dims, TKV_GGUF_MAX_DIMS);
    t->n_elements = 1;
    for (uint32_t d = 0; d < TKV_GGUF_MAX_DIMS; d++) {
        uint64_t v = 1;
        if (d < t->n_dims) {
            TKV_TRY(read_u64(r, "dimension", &v));
        }
        TKV_REQUIRE(v >= 1 && v <= (uint64_t)INT64_MAX, TKV_ERR_BAD_FORMAT,
                    "dims[%u] = %llu is out of range", d, (unsigned long long)v);
        TKV_REQUIRE((int64_t)v <= INT64_MAX / t->n_elements, TKV_ERR_BAD_FORMAT,
                    "element count overflows at dims[%u] = %llu", d, (unsigned long long)v);
        t->dims[d] = (int64_t)v;
        t->n_elements *= (int64_t)v;
    }
    return TKV_OK;
}

static tkv_status parse_tensor_body(tkv_gguf *g, reader *r, int64_t i) {
    tkv_gguf_tensor *t = &g->tensors[i];
    TKV_TRY(parse_shape(r, t));
    uint32_t type = 0;
    TKV_TRY(read_u32(r, "ggml type", &type));
    /* ids past INT32_MAX are as unknown as any other: keep them visible as negative */
    t->type = type <= INT32_MAX ? (int32_t)type : -1;
    TKV_TRY(read_u64(r, "data offset", &t->offset));
    int64_t dup = index_insert(&g->tensor_index, i);
    TKV_REQUIRE(dup < 0, TKV_ERR_BAD_FORMAT, "duplicate tensor name (tensors #%lld and #%lld)",
                (long long)dup, (long long)i);
    return TKV_OK;
}

static tkv_status parse_tensor_info(tkv_gguf *g, reader *r, int64_t i) {
    tkv_gguf_str *name = &g->tensor_names[i];
    tkv_status st = read_string(r, "tensor name", name);
    if (st == TKV_OK) {
        st = check_name(*name, "tensor name");
    }
    if (st < 0) {
        tkv_error_prefix("tensor #%lld", (long long)i);
        return st;
    }
    st = parse_tensor_body(g, r, i);
    if (st < 0) {
        tkv_error_prefix("tensor %.*s", msg_len(*name), name->ptr);
    }
    return st;
}

/* Type, size, alignment and range of one tensor, now that the data section is placed. */
static tkv_status check_tensor_data(const tkv_gguf *g, tkv_gguf_tensor *t, tkv_gguf_str name) {
    int nl = msg_len(name);
    TKV_REQUIRE(tkv_ggml_block_size(t->type) != 0, TKV_ERR_UNSUPPORTED,
                "tensor %.*s: unknown ggml type %d", nl, name.ptr, (int)t->type);
    size_t row = 0;
    tkv_status st = tkv_ggml_row_size(t->type, t->dims[0], &row);
    if (st < 0) {
        tkv_error_prefix("tensor %.*s", nl, name.ptr);
        return st;
    }
    size_t rows = 0;
    TKV_REQUIRE(u64_to_size((uint64_t)(t->n_elements / t->dims[0]), &rows) == 0 &&
                    tkv_mul_size(row, rows, &t->nbytes) == 0,
                TKV_ERR_BAD_FORMAT, "tensor %.*s: byte size overflows", nl, name.ptr);
    TKV_REQUIRE(t->offset % g->alignment == 0, TKV_ERR_BAD_FORMAT,
                "tensor %.*s: offset %llu is not a multiple of the alignment %u", nl, name.ptr,
                (unsigned long long)t->offset, g->alignment);
    uint64_t start = (uint64_t)g->data_offset + t->offset;
    TKV_REQUIRE(t->offset <= UINT64_MAX - g->data_offset && t->nbytes <= UINT64_MAX - start,
                TKV_ERR_BAD_FORMAT, "tensor %.*s: offset %llu + %zu bytes overflows", nl, name.ptr,
                (unsigned long long)t->offset, t->nbytes);
    uint64_t end = start + t->nbytes;
    TKV_REQUIRE(end <= g->size, TKV_ERR_BAD_FORMAT,
                "tensor %.*s: data [%llu, %llu) beyond end of file (size %zu)", nl, name.ptr,
                (unsigned long long)start, (unsigned long long)end, g->size);
    t->data = g->base + start;
    return TKV_OK;
}

typedef struct tensor_span {
    uint64_t offset;
    uint64_t end;
    int64_t index;
} tensor_span;

static int compare_spans(const void *a, const void *b) {
    const tensor_span *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Two tensors sharing bytes means a corrupt offset; sorting finds any overlap in n log n. */
static tkv_status check_overlaps(const tkv_gguf *g) {
    if (g->n_tensors < 2) {
        return TKV_OK;
    }
    tensor_span *spans = malloc((size_t)g->n_tensors * sizeof *spans);
    TKV_REQUIRE(spans, TKV_ERR_OUT_OF_MEMORY, "overlap check of %lld tensors",
                (long long)g->n_tensors);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const tkv_gguf_tensor *t = &g->tensors[i];
        spans[i] = (tensor_span){t->offset, t->offset + t->nbytes, i};
    }
    qsort(spans, (size_t)g->n_tensors, sizeof *spans, compare_spans);
    for (int64_t k = 0; k + 1 < g->n_tensors; k++) {
        if (spans[k].end > spans[k + 1].offset) {
            tkv_gguf_str a = g->tensor_names[spans[k].index];
            tkv_gguf_str b = g->tensor_names[spans[k + 1].index];
            tkv_status st = tkv_fail(TKV_ERR_BAD_FORMAT,
                                     "tensor %.*s: data at offset %llu overlaps tensor %.*s "
                                     "(offset %llu, %llu bytes)",
                                     msg_len(b), b.ptr, (unsigned long long)spans[k + 1].offset,
                                     msg_len(a), a.ptr, (unsigned long long)spans[k].offset,
                                     (unsigned long long)(spans[k].end - spans[k].offset));
            free(spans);
            return st;
        }
    }
    free(spans);
    return TKV_OK;
}

static tkv_status place_data(tkv_gguf *g, size_t infos_end) {
    size_t a = g->alignment;
    size_t padded = 0;
    TKV_REQUIRE(tkv_add_size(infos_end, a - 1, &padded) == 0, TKV_ERR_BAD_FORMAT,
                "data section offset overflows");
    g->data_offset = padded / a * a;
    /* a file without tensors may end before the padding */
    TKV_REQUIRE(g->n_tensors == 0 || g->data_offset <= g->size, TKV_ERR_BAD_FORMAT,
                "data section starts at %zu, beyond end of file (size %zu)", g->data_offset,
                g->size);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        TKV_TRY(check_tensor_data(g, &g->tensors[i], g->tensor_names[i]));
    }
    return check_overlaps(g);
}

/* ---- building the handle -------------------------------------------------------------- */

static tkv_status copy_names(tkv_gguf *g) {
    size_t total = 1;
    for (int64_t i = 0; i < g->n_kv; i++) {
        total += g->key_names[i].len + 1; /* names lie in the file: no overflow */
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        total += g->tensor_names[i].len + 1;
    }
    g->names = malloc(total);
    TKV_REQUIRE(g->names, TKV_ERR_OUT_OF_MEMORY, "%zu bytes of names", total);
    char *p = g->names;
    for (int64_t i = 0; i < g->n_kv; i++) {
        memcpy(p, g->key_names[i].ptr, g->key_names[i].len);
        p[g->key_names[i].len] = '\0';
        g->kvs[i].key = p;
        p += g->key_names[i].len + 1;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        memcpy(p, g->tensor_names[i].ptr, g->tensor_names[i].len);
        p[g->tensor_names[i].len] = '\0';
        g->tensors[i].name = p;
        p += g->tensor_names[i].len + 1;
    }
    return TKV_OK;
}

/* calloc that treats n == 0 as success (some libcs return NULL for it). */
static tkv_status alloc_table(size_t n, size_t size, void **out) {
    *out = NULL;
    if (n == 0) {
        return TKV_OK;
    }
    *out = calloc(n, size);
    TKV_REQUIRE(*out, TKV_ERR_OUT_OF_MEMORY, "table of %zu entries of %zu bytes", n, size);
    return TKV_OK;
}

static tkv_status alloc_tables(tkv_gguf *g) {
    size_t nk = (size_t)g->n_kv, nt = (size_t)g->n_tensors;
    TKV_TRY(alloc_table(nk, sizeof *g->kvs, (void **)&g->kvs));
    TKV_TRY(alloc_table(nk, sizeof *g->key_names, (void **)&g->key_names));
    TKV_TRY(alloc_table(nt, sizeof *g->tensors, (void **)&g->tensors));
    TKV_TRY(alloc_table(nt, sizeof *g->tensor_names, (void **)&g->tensor_names));
    TKV_TRY(index_init(&g->key_index, g->key_names, g->n_kv));
    return index_init(&g->tensor_index, g->tensor_names, g->n_tensors);
}

static tkv_status parse(tkv_gguf *g) {
    reader r = {g->base, g->size, 0};
    uint64_t n_tensors = 0, n_kv = 0;
    TKV_TRY(parse_header(g, &r, &n_tensors, &n_kv));
    /* both counts are below size / 13 now, so they fit int64_t and size_t */
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    TKV_TRY(alloc_tables(g));
    for (int64_t i = 0; i < g->n_kv; i++) {
        TKV_TRY(parse_kv(g, &r, i));
    }
    TKV_TRY(parse_alignment(g));
    for (int64_t i = 0; i < g->n_tensors; i++) {
        TKV_TRY(parse_tensor_info(g, &r, i));
    }
    TKV_TRY(place_data(g, r.pos));
    return copy_names(g);
}

/* Takes ownership of map (munmapped on failure too). */
static tkv_status open_bytes(const void *data, size_t size, void *map, tkv_gguf **out) {
    *out = NULL;
    tkv_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        if (map) {
            munmap(map, size);
        }
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "GGUF handle");
    }
    g->base = data;
    g->size = size;
    g->map = map;
    tkv_status st = parse(g);
    if (st < 0) {
        tkv_gguf_close(g);
        return st;
    }
    *out = g;
    return TKV_OK;
}

tkv_status tkv_gguf_open_memory(const void *data, size_t size, tkv_gguf **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_gguf_open_memory: out is NULL");
    *out = NULL;
    TKV_REQUIRE(data || size == 0, TKV_ERR_INVALID_ARGUMENT, "tkv_gguf_open_memory: data is NULL");
    static const uint8_t empty[1];
    return open_bytes(size ? data : empty, size, NULL, out);
}

static tkv_status io_error(const char *path, const char *what, int err) {
    char text[256];
    if (strerror_r(err, text, sizeof text) != 0) {
        text[0] = '\0';
    }
    return tkv_fail(TKV_ERR_IO, "%s: %s: %s", path, what, text);
}

/* Map the whole file read-only; the descriptor is closed as the mapping keeps the file.
 * O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever, before
 * fstat could tell that it is no regular file (it changes nothing for regular files). */
static tkv_status map_file(const char *path, void **map, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        return io_error(path, "cannot open", errno);
    }
    struct stat st;
    tkv_status status = TKV_OK;
    *map = NULL;
    if (fstat(fd, &st) != 0) {
        status = io_error(path, "cannot stat", errno);
    } else if (!S_ISREG(st.st_mode)) {
        const char *kind = S_ISDIR(st.st_mode)    ? "a directory"
                           : S_ISFIFO(st.st_mode) ? "a pipe"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "something else";
        status = tkv_fail(TKV_ERR_IO, "%s: is %s, not a regular file", path, kind);
    } else if (u64_to_size((uint64_t)st.st_size, size) != 0) {
        status = tkv_fail(TKV_ERR_UNSUPPORTED, "%s: too large to map", path);
    } else if (*size > 0) {
        void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            status = io_error(path, "cannot map", errno);
        } else {
            *map = p;
        }
    }
    close(fd);
    return status;
}

tkv_status tkv_gguf_open(const char *path, tkv_gguf **out) {
    TKV_REQUIRE(out, TKV_ERR_INVALID_ARGUMENT, "tkv_gguf_open: out is NULL");
    *out = NULL;
    TKV_REQUIRE(path, TKV_ERR_INVALID_ARGUMENT, "tkv_gguf_open: path is NULL");
    void *map = NULL;
    size_t size = 0;
    TKV_TRY(map_file(path, &map, &size));
    static const uint8_t empty[1];
    tkv_status st = open_bytes(map ? map : empty, size, map, out);
    if (st < 0) {
        tkv_error_prefix("%s", path);
    }
    return st;
}

void tkv_gguf_close(tkv_gguf *g) {
    if (!g) {
        return;
    }
    for (int64_t i = 0; g->kvs && i < g->n_kv; i++) {
        free(g->kvs[i].strings);
    }
    free(g->kvs);
    free(g->key_names);
    free(g->tensors);
    free(g->tensor_names);
    free(g->names);
    free(g->key_index.slots);
    free(g->tensor_index.slots);
    if (g->map) {
        munmap(g->map, g->size);
    }
    free(g);
}

uint32_t tkv_gguf_version(const tkv_gguf *g) {
    return g->version;
}
uint32_t tkv_gguf_alignment(const tkv_gguf *g) {
    return g->alignment;
}
size_t tkv_gguf_data_offset(const tkv_gguf *g) {
    return g->data_offset;
}
const void *tkv_gguf_file_data(const tkv_gguf *g) {
    return g->base;
}
size_t tkv_gguf_file_size(const tkv_gguf *g) {
    return g->size;
}

/* ---- metadata access ------------------------------------------------------------------ */

int64_t tkv_gguf_n_kv(const tkv_gguf *g) {
    return g->n_kv;
}

int64_t tkv_gguf_find_key(const tkv_gguf *g, const char *key) {
    return index_find(&g->key_index, key);
}

const char *tkv_gguf_key_name(const tkv_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kvs[i].key : NULL;
}

int32_t tkv_gguf_kv_type(const tkv_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kvs[i].type : -1;
}

static tkv_status find_kv(const tkv_gguf *g, const char *key, const gguf_kv **out) {
    int64_t i = tkv_gguf_find_key(g, key);
    TKV_REQUIRE(i >= 0, TKV_ERR_BAD_FORMAT, "key '%s' not found", key ? key : "(null)");
    *out = &g->kvs[i];
    return TKV_OK;
}

typedef struct int_value {
    int is_signed;
    int64_t s;
    uint64_t u;
} int_value;

/* Decode an integer of any width; 0 if type is not an integer type. */
static int load_int(int32_t type, const uint8_t *p, int_value *v) {
    v->is_signed =
        type == TKV_GGUF_I8 || type == TKV_GGUF_I16 || type == TKV_GGUF_I32 || type == TKV_GGUF_I64;
    switch (type) {
    case TKV_GGUF_U8:
        v->u = p[0];
        return 1;
    case TKV_GGUF_U16:
        v->u = le16(p);
        return 1;
    case TKV_GGUF_U32:
        v->u = le32(p);
        return 1;
    case TKV_GGUF_U64:
        v->u = le64(p);
        return 1;
    case TKV_GGUF_I8:
        v->s = (int8_t)p[0];
        return 1;
    case TKV_GGUF_I16:
        v->s = (int16_t)le16(p);
        return 1;
    case TKV_GGUF_I32:
        v->s = (int32_t)le32(p);
        return 1;
    case TKV_GGUF_I64:
        v->s = (int64_t)le64(p);
        return 1;
    default:
        return 0;
    }
}

static int int_fits(const int_value *v, int64_t min, uint64_t max) {
    if (v->is_signed && v->s < 0) {
        return v->s >= min;
    }
    return (v->is_signed ? (uint64_t)v->s : v->u) <= max;
}

/*
 * Read an integer value of type `type` at p into *v, requiring it to lie in [min, max].
 * what names the value in messages ("key 'x'" or "key 'x' element 3").
 */
static tkv_status get_int(const char *what, int32_t type, const uint8_t *p, const char *want,
                          int64_t min, uint64_t max, int_value *v) {
    TKV_REQUIRE(load_int(type, p, v), TKV_ERR_BAD_FORMAT, "%s: expected %s, found %s", what, want,
                tkv_gguf_type_name(type));
    if (int_fits(v, min, max)) {
        return TKV_OK;
    }
    if (v->is_signed) {
        return tkv_fail(TKV_ERR_BAD_FORMAT, "%s: %s value %lld does not fit in %s", what,
                        tkv_gguf_type_name(type), (long long)v->s, want);
    }
    return tkv_fail(TKV_ERR_BAD_FORMAT, "%s: %s value %llu does not fit in %s", what,
                    tkv_gguf_type_name(type), (unsigned long long)v->u, want);
}

/* A scalar's type and bytes, or an error naming the key if it is absent. */
static tkv_status scalar(const tkv_gguf *g, const char *key, char *what, size_t cap, int32_t *type,
                         const uint8_t **p) {
    const gguf_kv *kv = NULL;
    TKV_TRY(find_kv(g, key, &kv));
    snprintf(what, cap, "key '%s'", key);
    *type = kv->type;
    *p = g->base + kv->value_pos;
    return TKV_OK;
}

#define WHAT_CAP 160

tkv_status tkv_gguf_get_u32(const tkv_gguf *g, const char *key, uint32_t *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    int_value v = {0};
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    TKV_TRY(get_int(what, type, p, "u32", 0, UINT32_MAX, &v));
    *out = v.is_signed ? (uint32_t)v.s : (uint32_t)v.u;
    return TKV_OK;
}

tkv_status tkv_gguf_get_i32(const tkv_gguf *g, const char *key, int32_t *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    int_value v = {0};
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    TKV_TRY(get_int(what, type, p, "i32", INT32_MIN, INT32_MAX, &v));
    *out = v.is_signed ? (int32_t)v.s : (int32_t)v.u;
    return TKV_OK;
}

tkv_status tkv_gguf_get_u64(const tkv_gguf *g, const char *key, uint64_t *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    int_value v = {0};
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    TKV_TRY(get_int(what, type, p, "u64", 0, UINT64_MAX, &v));
    *out = v.is_signed ? (uint64_t)v.s : v.u;
    return TKV_OK;
}

tkv_status tkv_gguf_get_i64(const tkv_gguf *g, const char *key, int64_t *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    int_value v = {0};
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    TKV_TRY(get_int(what, type, p, "i64", INT64_MIN, INT64_MAX, &v));
    *out = v.is_signed ? v.s : (int64_t)v.u;
    return TKV_OK;
}

static double load_f32(const uint8_t *p) {
    uint32_t bits = le32(p);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static double load_f64(const uint8_t *p) {
    uint64_t bits = le64(p);
    double d = 0;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* f32 or f64 as a double; narrow_to_f32 also rejects finite f64 values beyond float range. */
static tkv_status get_float(const char *what, int32_t type, const uint8_t *p, int narrow_to_f32,
                            double *out) {
    const char *want = narrow_to_f32 ? "f32" : "f64";
    if (type == TKV_GGUF_F32) {
        *out = load_f32(p);
        return TKV_OK;
    }
    TKV_REQUIRE(type == TKV_GGUF_F64, TKV_ERR_BAD_FORMAT, "%s: expected %s, found %s", what, want,
                tkv_gguf_type_name(type));
    *out = load_f64(p);
    TKV_REQUIRE(!narrow_to_f32 || !isfinite(*out) || fabs(*out) <= FLT_MAX, TKV_ERR_BAD_FORMAT,
                "%s: f64 value %g does not fit in f32", what, *out);
    return TKV_OK;
}

tkv_status tkv_gguf_get_f32(const tkv_gguf *g, const char *key, float *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    double d = 0;
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    TKV_TRY(get_float(what, type, p, 1, &d));
    *out = (float)d;
    return TKV_OK;
}

tkv_status tkv_gguf_get_f64(const tkv_gguf *g, const char *key, double *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    return get_float(what, type, p, 0, out);
}

tkv_status tkv_gguf_get_bool(const tkv_gguf *g, const char *key, int *out) {
    char what[WHAT_CAP];
    int32_t type = -1;
    const uint8_t *p = NULL;
    TKV_TRY(scalar(g, key, what, sizeof what, &type, &p));
    TKV_REQUIRE(type == TKV_GGUF_BOOL, TKV_ERR_BAD_FORMAT, "%s: expected bool, found %s", what,
                tkv_gguf_type_name(type));
    TKV_REQUIRE(p[0] <= 1, TKV_ERR_BAD_FORMAT, "%s: bool byte %u is neither 0 nor 1", what, p[0]);
    *out = p[0];
    return TKV_OK;
}

tkv_status tkv_gguf_get_string(const tkv_gguf *g, const char *key, tkv_gguf_str *out) {
    const gguf_kv *kv = NULL;
    TKV_TRY(find_kv(g, key, &kv));
    TKV_REQUIRE(kv->type == TKV_GGUF_STRING, TKV_ERR_BAD_FORMAT,
                "key '%s': expected string, found %s", key, tkv_gguf_type_name(kv->type));
    *out = kv->str;
    return TKV_OK;
}

tkv_status tkv_gguf_get_string_copy(const tkv_gguf *g, const char *key, char *buf, size_t cap) {
    tkv_gguf_str s = {0};
    TKV_TRY(tkv_gguf_get_string(g, key, &s));
    TKV_REQUIRE(buf && s.len < cap, TKV_ERR_BUFFER_TOO_SMALL,
                "key '%s': string of %zu bytes needs a buffer of %zu, got %zu", key, s.len,
                s.len + 1, cap);
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = '\0';
    return TKV_OK;
}

tkv_status tkv_gguf_get_array(const tkv_gguf *g, const char *key, tkv_gguf_array *out) {
    const gguf_kv *kv = NULL;
    TKV_TRY(find_kv(g, key, &kv));
    TKV_REQUIRE(kv->type == TKV_GGUF_ARRAY, TKV_ERR_BAD_FORMAT,
                "key '%s': expected array, found %s", key, tkv_gguf_type_name(kv->type));
    out->key = kv->key;
    out->elem_type = kv->elem_type;
    out->count = kv->count;
    out->data = g->base + kv->value_pos;
    out->strings = kv->strings;
    return TKV_OK;
}

/* Element i's bytes and a label for messages, or an error if i is out of range. */
static tkv_status element(const tkv_gguf_array *a, uint64_t i, char *what, size_t cap,
                          const uint8_t **p) {
    snprintf(what, cap, "key '%s' element %llu", a->key, (unsigned long long)i);
    TKV_REQUIRE(i < a->count, TKV_ERR_INVALID_ARGUMENT, "%s: index beyond the %llu elements", what,
                (unsigned long long)a->count);
    /* strings have no fixed size: p is only used for fixed-size types */
    *p = (const uint8_t *)a->data + (size_t)i * value_size(a->elem_type);
    return TKV_OK;
}

tkv_status tkv_gguf_array_u32(const tkv_gguf_array *a, uint64_t i, uint32_t *out) {
    char what[WHAT_CAP];
    const uint8_t *p = NULL;
    int_value v = {0};
    TKV_TRY(element(a, i, what, sizeof what, &p));
    TKV_TRY(get_int(what, a->elem_type, p, "u32", 0, UINT32_MAX, &v));
    *out = v.is_signed ? (uint32_t)v.s : (uint32_t)v.u;
    return TKV_OK;
}

tkv_status tkv_gguf_array_i32(const tkv_gguf_array *a, uint64_t i, int32_t *out) {
    char what[WHAT_CAP];
    const uint8_t *p = NULL;
    int_value v = {0};
    TKV_TRY(element(a, i, what, sizeof what, &p));
    TKV_TRY(get_int(what, a->elem_type, p, "i32", INT32_MIN, INT32_MAX, &v));
    *out = v.is_signed ? (int32_t)v.s : (int32_t)v.u;
    return TKV_OK;
}

tkv_status tkv_gguf_array_f32(const tkv_gguf_array *a, uint64_t i, float *out) {
    char what[WHAT_CAP];
    const uint8_t *p = NULL;
    double d = 0;
    TKV_TRY(element(a, i, what, sizeof what, &p));
    TKV_TRY(get_float(what, a->elem_type, p, 1, &d));
    *out = (float)d;
    return TKV_OK;
}

tkv_status tkv_gguf_array_string(const tkv_gguf_array *a, uint64_t i, tkv_gguf_str *out) {
    char what[WHAT_CAP];
    const uint8_t *p = NULL;
    TKV_TRY(element(a, i, what, sizeof what, &p));
    TKV_REQUIRE(a->elem_type == TKV_GGUF_STRING, TKV_ERR_BAD_FORMAT,
                "%s: expected string, found %s", what, tkv_gguf_type_name(a->elem_type));
    *out = a->strings[i];
    return TKV_OK;
}

/* ---- tensors -------------------------------------------------------------------------- */

int64_t tkv_gguf_n_tensors(const tkv_gguf *g) {
    return g->n_tensors;
}

int64_t tkv_gguf_find_tensor(const tkv_gguf *g, const char *name) {
    return index_find(&g->tensor_index, name);
}

const tkv_gguf_tensor *tkv_gguf_tensor_at(const tkv_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}
