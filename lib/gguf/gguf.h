/*
 * gguf.h - bounds-checked GGUF reader (internal; the byte layout is documented in gguf.c).
 *
 * Usage:
 *     tkv_gguf *g;
 *     TKV_TRY(tkv_gguf_open("model.gguf", &g));
 *     uint32_t n_layer;
 *     TKV_TRY(tkv_gguf_get_u32(g, "llama.block_count", &n_layer));
 *     int64_t t = tkv_gguf_find_tensor(g, "token_embd.weight");
 *     const tkv_gguf_tensor *info = tkv_gguf_tensor_at(g, t);   (NULL if t is -1)
 *     tkv_gguf_close(g);
 *
 * Everything is validated by open: counts, string lengths, types, tensor shapes and data
 * ranges.  After a successful open, every pointer handed out lies inside the file, and the
 * getters only check types.  Values are little-endian as stored; pointers into the file
 * (strings, array data, tensor data) may be unaligned, except tensor data, which sits at a
 * multiple of the file's alignment from the start of the file.
 *
 * Lifetime: every pointer returned is valid until tkv_gguf_close.  With
 * tkv_gguf_open_memory the caller's buffer must outlive the handle.
 * Thread safety: an open handle is immutable; any number of threads may read it.
 * Errors: TKV_ERR_BAD_FORMAT (malformed file, wrong value type), TKV_ERR_UNSUPPORTED (GGUF v1,
 * big-endian files, unknown tensor types, nested arrays), TKV_ERR_IO, TKV_ERR_OUT_OF_MEMORY,
 * TKV_ERR_INVALID_ARGUMENT; each sets the thread's last-error message.
 */
#ifndef TKV_GGUF_GGUF_H
#define TKV_GGUF_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/ggml_types.h"
#include "turbokv.h"

/* Metadata value types, as stored in the file. */
enum {
    TKV_GGUF_U8 = 0,
    TKV_GGUF_I8 = 1,
    TKV_GGUF_U16 = 2,
    TKV_GGUF_I16 = 3,
    TKV_GGUF_U32 = 4,
    TKV_GGUF_I32 = 5,
    TKV_GGUF_F32 = 6,
    TKV_GGUF_BOOL = 7,
    TKV_GGUF_STRING = 8,
    TKV_GGUF_ARRAY = 9,
    TKV_GGUF_U64 = 10,
    TKV_GGUF_I64 = 11,
    TKV_GGUF_F64 = 12,
};

#define TKV_GGUF_MAX_DIMS 4
#define TKV_GGUF_DEFAULT_ALIGNMENT 32

typedef struct tkv_gguf tkv_gguf;

/* A string inside the file: not NUL-terminated, may contain any bytes. */
typedef struct tkv_gguf_str {
    const char *ptr;
    size_t len;
} tkv_gguf_str;

/* An array value.  Filled by tkv_gguf_get_array; valid until the handle is closed. */
typedef struct tkv_gguf_array {
    const char *key;             /* the key it was read from (for error messages) */
    int32_t elem_type;           /* TKV_GGUF_* (never TKV_GGUF_ARRAY) */
    uint64_t count;              /* number of elements */
    const void *data;            /* first element in the file, little-endian, maybe unaligned;
                                    for strings, the first length prefix */
    const tkv_gguf_str *strings; /* string arrays: count entries, built at open; else NULL */
} tkv_gguf_array;

/* One tensor.  Shapes are in GGML order: dims[0] is the contiguous (row) dimension. */
typedef struct tkv_gguf_tensor {
    const char *name;                /* NUL-terminated copy */
    uint32_t n_dims;                 /* 1..4 */
    int64_t dims[TKV_GGUF_MAX_DIMS]; /* dims[i] >= 1; unused trailing dims are 1 */
    int32_t type;                    /* TKV_GGML_* (always a known type) */
    int64_t n_elements;              /* product of dims */
    uint64_t offset;                 /* from the start of the data section */
    size_t nbytes;                   /* bytes of data */
    const void *data;                /* inside the file */
} tkv_gguf_tensor;

/* ---- open / close --------------------------------------------------------------------- */

/* Map path read-only and parse it.  *out is NULL on failure; messages start with the path. */
tkv_status tkv_gguf_open(const char *path, tkv_gguf **out);

/* Parse a caller-owned buffer (not copied: it must outlive the handle). */
tkv_status tkv_gguf_open_memory(const void *data, size_t size, tkv_gguf **out);

/* NULL is a no-op. */
void tkv_gguf_close(tkv_gguf *g);

uint32_t tkv_gguf_version(const tkv_gguf *g);   /* 2 or 3 */
uint32_t tkv_gguf_alignment(const tkv_gguf *g); /* of tensor data, a power of two */
size_t tkv_gguf_data_offset(const tkv_gguf *g); /* file offset of the data section */
const void *tkv_gguf_file_data(const tkv_gguf *g);
size_t tkv_gguf_file_size(const tkv_gguf *g);

/* Name of a value type ("u32", "string", ...), "unknown" for other values. */
const char *tkv_gguf_type_name(int32_t type);

/* ---- metadata (key/value pairs) ------------------------------------------------------- */

int64_t tkv_gguf_n_kv(const tkv_gguf *g);
/* Index of key, or -1 if absent.  O(1). */
int64_t tkv_gguf_find_key(const tkv_gguf *g, const char *key);
/* NUL-terminated key of pair i; NULL if i is out of range. */
const char *tkv_gguf_key_name(const tkv_gguf *g, int64_t i);
/* TKV_GGUF_* type of pair i; -1 if i is out of range. */
int32_t tkv_gguf_kv_type(const tkv_gguf *g, int64_t i);

/*
 * Typed getters by key.  Each returns TKV_OK, or TKV_ERR_BAD_FORMAT when the key is absent
 * or its value has another type or does not fit (the message names the key, the expected
 * and the actual type).  For optional keys, test tkv_gguf_find_key first.
 * Integer getters accept any integer type whose value fits (writers vary: u32, i32, u64...).
 * tkv_gguf_get_f32 accepts f32, and f64 within the f32 range.
 */
tkv_status tkv_gguf_get_u32(const tkv_gguf *g, const char *key, uint32_t *out);
tkv_status tkv_gguf_get_i32(const tkv_gguf *g, const char *key, int32_t *out);
tkv_status tkv_gguf_get_u64(const tkv_gguf *g, const char *key, uint64_t *out);
tkv_status tkv_gguf_get_i64(const tkv_gguf *g, const char *key, int64_t *out);
tkv_status tkv_gguf_get_f32(const tkv_gguf *g, const char *key, float *out);
tkv_status tkv_gguf_get_f64(const tkv_gguf *g, const char *key, double *out);
tkv_status tkv_gguf_get_bool(const tkv_gguf *g, const char *key, int *out);
/* A string value, pointing into the file (not NUL-terminated). */
tkv_status tkv_gguf_get_string(const tkv_gguf *g, const char *key, tkv_gguf_str *out);
/* Copy a string value plus a NUL into buf; TKV_ERR_BUFFER_TOO_SMALL if cap < len + 1. */
tkv_status tkv_gguf_get_string_copy(const tkv_gguf *g, const char *key, char *buf, size_t cap);
tkv_status tkv_gguf_get_array(const tkv_gguf *g, const char *key, tkv_gguf_array *out);

/*
 * Element i of an array.  Return TKV_ERR_INVALID_ARGUMENT if i >= count and
 * TKV_ERR_BAD_FORMAT on a type mismatch (same conversion rules as the scalar getters).
 */
tkv_status tkv_gguf_array_u32(const tkv_gguf_array *a, uint64_t i, uint32_t *out);
tkv_status tkv_gguf_array_i32(const tkv_gguf_array *a, uint64_t i, int32_t *out);
tkv_status tkv_gguf_array_f32(const tkv_gguf_array *a, uint64_t i, float *out);
tkv_status tkv_gguf_array_string(const tkv_gguf_array *a, uint64_t i, tkv_gguf_str *out);

/* ---- tensors --------------------------------------------------------------------------- */

int64_t tkv_gguf_n_tensors(const tkv_gguf *g);
/* Index of the tensor called name, or -1 if absent.  O(1). */
int64_t tkv_gguf_find_tensor(const tkv_gguf *g, const char *name);
/* Tensor i, or NULL if i is out of range. */
const tkv_gguf_tensor *tkv_gguf_tensor_at(const tkv_gguf *g, int64_t i);

#endif
