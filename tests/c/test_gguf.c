/*
 * test_gguf.c - the GGUF reader on files built here byte by byte: every value type, tensors
 * of several GGML types, then truncated and corrupted variants (each must fail cleanly with
 * TKV_ERR_BAD_FORMAT or TKV_ERR_UNSUPPORTED, never crash: run under ASan), typed-getter
 * mismatches, and opening from a path.  Set TKV_TEST_GGUF=model.gguf to also parse a real file.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "check.h"
#include "gguf/gguf.h"

/* ---- a minimal GGUF writer ---------------------------------------------------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void w_bytes(wbuf *w, const void *src, size_t n) {
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 64;
        w->p = realloc(w->p, w->cap);
        if (!w->p) {
            abort();
        }
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void w_le(wbuf *w, uint64_t v, size_t n) {
    uint8_t b[8];
    for (size_t i = 0; i < n; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    w_bytes(w, b, n);
}

static void w_u32(wbuf *w, uint32_t v) {
    w_le(w, v, 4);
}
static void w_u64(wbuf *w, uint64_t v) {
    w_le(w, v, 8);
}

static void w_f32(wbuf *w, float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    w_u32(w, bits);
}

static void w_f64(wbuf *w, double d) {
    uint64_t bits;
    memcpy(&bits, &d, 8);
    w_u64(w, bits);
}

static void w_str(wbuf *w, const char *s) {
    w_u64(w, strlen(s));
    w_bytes(w, s, strlen(s));
}

static void w_key(wbuf *w, const char *key, uint32_t type) {
    w_str(w, key);
    w_u32(w, type);
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* ---- the test file ------------------------------------------------------------------------- */

#define N_TENSORS 6

typedef struct tensor_def {
    const char *name;
    int32_t type;
    uint32_t n_dims;
    int64_t dims[4];
} tensor_def;

static const tensor_def tensor_defs[N_TENSORS] = {
    {"token_embd.weight", TKV_GGML_F32, 2, {8, 2, 1, 1}},
    {"blk.0.attn_norm.weight", TKV_GGML_F16, 1, {16, 1, 1, 1}},
    {"blk.0.attn_q.weight", TKV_GGML_Q4_0, 2, {64, 2, 1, 1}},
    {"blk.0.attn_k.weight", TKV_GGML_Q8_0, 4, {32, 3, 1, 2}},
    {"blk.0.ffn_up.weight", TKV_GGML_Q4_K, 1, {256, 1, 1, 1}},
    {"output.weight", TKV_GGML_BF16, 3, {4, 1, 3, 1}}, /* last: its data ends the file */
};

/* How to build a file: zero everything for the valid default. */
typedef struct spec {
    uint32_t alignment;      /* 0: no general.alignment key (default 32) */
    uint32_t alignment_type; /* value type of general.alignment; 0 means u32 */
    int dup_key;
    int dup_tensor;
    int nested_array;
    int bad_value_type;
    int bool_byte;   /* 0: write 1 */
    int64_t q4_dim0; /* 0: the default 64 */
} spec;

typedef struct built {
    uint8_t *p;
    size_t n;
    uint32_t alignment;
    size_t pos_arch_len; /* length of the general.architecture value */
    size_t pos_strarr_count;
    size_t pos_strarr_elem1; /* length of its element 1 */
    size_t pos_i32arr_count;
    size_t pos_ndims[N_TENSORS];
    size_t pos_dims[N_TENSORS];
    size_t pos_type[N_TENSORS];
    size_t pos_offset[N_TENSORS];
    size_t data_start;
    uint64_t offsets[N_TENSORS];
    size_t nbytes[N_TENSORS];
} built;

#define N_PLAIN_KV 21

static void write_scalars(wbuf *w, const spec *s) {
    w_key(w, "t.u8", TKV_GGUF_U8);
    w_le(w, 200, 1);
    w_key(w, "t.i8", TKV_GGUF_I8);
    w_le(w, (uint8_t)-5, 1);
    w_key(w, "t.u16", TKV_GGUF_U16);
    w_le(w, 60000, 2);
    w_key(w, "t.i16", TKV_GGUF_I16);
    w_le(w, (uint16_t)-30000, 2);
    w_key(w, "t.u32", TKV_GGUF_U32);
    w_u32(w, 4000000000u);
    w_key(w, "t.i32", TKV_GGUF_I32);
    w_u32(w, (uint32_t)-2000000000);
    w_key(w, "t.f32", TKV_GGUF_F32);
    w_f32(w, 1.5f);
    w_key(w, "t.bool", TKV_GGUF_BOOL);
    w_le(w, s->bool_byte ? (uint64_t)s->bool_byte : 1, 1);
    w_key(w, "t.u64", TKV_GGUF_U64);
    w_u64(w, 1ULL << 40);
    w_key(w, "t.i64", TKV_GGUF_I64);
    w_u64(w, (uint64_t) - (int64_t)(1LL << 40));
    w_key(w, "t.f64", TKV_GGUF_F64);
    w_f64(w, 3.25);
    w_key(w, "t.f64big", TKV_GGUF_F64);
    w_f64(w, 1e300);
    w_key(w, "t.small_u64", TKV_GGUF_U64);
    w_u64(w, 7);
    w_key(w, "t.str", TKV_GGUF_STRING);
    w_str(w, "hello");
}

static void write_arrays(wbuf *w, built *b) {
    w_key(w, "t.arr_i32", TKV_GGUF_ARRAY);
    w_u32(w, TKV_GGUF_I32);
    b->pos_i32arr_count = w->n;
    w_u64(w, 3);
    w_u32(w, 1);
    w_u32(w, (uint32_t)-2);
    w_u32(w, 3);
    w_key(w, "t.arr_f32", TKV_GGUF_ARRAY);
    w_u32(w, TKV_GGUF_F32);
    w_u64(w, 2);
    w_f32(w, 0.5f);
    w_f32(w, -1.25f);
    w_key(w, "t.arr_u32", TKV_GGUF_ARRAY);
    w_u32(w, TKV_GGUF_U32);
    w_u64(w, 2);
    w_u32(w, 7);
    w_u32(w, 4000000000u);
    w_key(w, "t.arr_u8", TKV_GGUF_ARRAY);
    w_u32(w, TKV_GGUF_U8);
    w_u64(w, 3);
    w_bytes(w, "\x01\x02\x03", 3);
    w_key(w, "t.arr_empty", TKV_GGUF_ARRAY);
    w_u32(w, TKV_GGUF_I32);
    w_u64(w, 0);
    w_key(w, "tokenizer.ggml.tokens", TKV_GGUF_ARRAY);
    w_u32(w, TKV_GGUF_STRING);
    b->pos_strarr_count = w->n;
    w_u64(w, 3);
    w_str(w, "<s>");
    b->pos_strarr_elem1 = w->n;
    w_str(w, "");
    w_str(w, "\xc4\xa0the");
}

static void write_kvs(wbuf *w, const spec *s, built *b) {
    w_key(w, "general.architecture", TKV_GGUF_STRING);
    b->pos_arch_len = w->n;
    w_str(w, "llama");
    write_scalars(w, s);
    write_arrays(w, b);
    if (s->alignment) {
        uint32_t type = s->alignment_type ? s->alignment_type : TKV_GGUF_U32;
        w_key(w, "general.alignment", type);
        if (type == TKV_GGUF_STRING) {
            w_str(w, "32");
        } else {
            w_le(w, s->alignment, type == TKV_GGUF_U64 ? 8 : 4);
        }
    }
    if (s->dup_key) {
        w_key(w, "t.u8", TKV_GGUF_U8);
        w_le(w, 1, 1);
    }
    if (s->nested_array) {
        w_key(w, "t.nested", TKV_GGUF_ARRAY);
        w_u32(w, TKV_GGUF_ARRAY);
        w_u64(w, 0);
    }
    if (s->bad_value_type) {
        w_key(w, "t.bad", 13);
        w_u32(w, 0);
    }
}

static size_t def_nbytes(const tensor_def *d, int64_t dim0) {
    int64_t ne = dim0 * d->dims[1] * d->dims[2] * d->dims[3];
    return (size_t)(ne / tkv_ggml_block_size(d->type)) * tkv_ggml_type_size(d->type);
}

static size_t align_up(size_t x, size_t a) {
    return (x + a - 1) / a * a;
}

static void write_tensor_infos(wbuf *w, const spec *s, built *b) {
    uint64_t off = 0;
    for (int i = 0; i < N_TENSORS; i++) {
        const tensor_def *d = &tensor_defs[i];
        int64_t dim0 = (i == 2 && s->q4_dim0) ? s->q4_dim0 : d->dims[0];
        w_str(w, (s->dup_tensor && i == 3) ? tensor_defs[1].name : d->name);
        b->pos_ndims[i] = w->n;
        w_u32(w, d->n_dims);
        b->pos_dims[i] = w->n;
        for (uint32_t k = 0; k < d->n_dims; k++) {
            w_u64(w, (uint64_t)(k == 0 ? dim0 : d->dims[k]));
        }
        b->pos_type[i] = w->n;
        w_u32(w, (uint32_t)d->type);
        b->pos_offset[i] = w->n;
        w_u64(w, off);
        b->offsets[i] = off;
        b->nbytes[i] = def_nbytes(d, dim0);
        off = align_up(off + b->nbytes[i], b->alignment);
    }
}

static void write_tensor_data(wbuf *w, built *b) {
    static const uint8_t zeros[256];
    w_bytes(w, zeros, align_up(w->n, b->alignment) - w->n);
    b->data_start = w->n;
    for (int i = 0; i < N_TENSORS; i++) {
        w_bytes(w, zeros, b->data_start + b->offsets[i] - w->n); /* padding */
        for (size_t k = 0; k < b->nbytes[i]; k++) {
            w_le(w, (k * 7 + (size_t)i) & 0xff, 1);
        }
    }
}

static built build(const spec *s) {
    built b;
    memset(&b, 0, sizeof b);
    b.alignment = s->alignment ? s->alignment : 32;
    if ((b.alignment & (b.alignment - 1)) || b.alignment > 256) {
        b.alignment = 32; /* invalid or huge values are written but laid out as the default */
    }
    wbuf w = {0};
    w_bytes(&w, "GGUF", 4);
    w_u32(&w, 3);
    w_u64(&w, N_TENSORS);
    uint64_t n_kv = N_PLAIN_KV + (s->alignment != 0) + (s->dup_key != 0) + (s->nested_array != 0) +
                    (s->bad_value_type != 0);
    w_u64(&w, n_kv);
    write_kvs(&w, s, &b);
    write_tensor_infos(&w, s, &b);
    write_tensor_data(&w, &b);
    b.p = w.p;
    b.n = w.n;
    return b;
}

/* Parse a copy of exactly n bytes, so ASan sees any read past the end. */
static tkv_status parse_copy(const uint8_t *p, size_t n, tkv_gguf **out) {
    uint8_t *copy = malloc(n ? n : 1);
    if (n) {
        memcpy(copy, p, n);
    }
    tkv_status st = tkv_gguf_open_memory(copy, n, out);
    if (st == TKV_OK) {
        tkv_gguf_close(*out);
        *out = NULL;
    }
    free(copy);
    return st;
}

static int error_has(const char *needle) {
    if (strstr(tkv_last_error(), needle)) {
        return 1;
    }
    fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", tkv_last_error(), needle);
    return 0;
}

/* Expect the valid file b, patched by patch(), to fail with want and a message holding needle. */
#define EXPECT_CORRUPT(b, want, needle, patch)                                                     \
    do {                                                                                           \
        uint8_t *c_ = malloc((b)->n);                                                              \
        memcpy(c_, (b)->p, (b)->n);                                                                \
        {                                                                                          \
            uint8_t *P = c_;                                                                       \
            patch;                                                                                 \
        }                                                                                          \
        tkv_gguf *g_ = NULL;                                                                       \
        CHECK_STATUS(parse_copy(c_, (b)->n, &g_), want);                                           \
        CHECK(error_has(needle));                                                                  \
        CHECK(g_ == NULL);                                                                         \
        free(c_);                                                                                  \
    } while (0)

/* ---- valid files ----------------------------------------------------------------------------- */

static int str_eq(tkv_gguf_str s, const char *want) {
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

static void check_scalars(const tkv_gguf *g) {
    uint32_t u32 = 0;
    int32_t i32 = 0;
    uint64_t u64 = 0;
    int64_t i64 = 0;
    float f = 0;
    double d = 0;
    int b = 0;
    tkv_gguf_str s = {0};
    CHECK_OK(tkv_gguf_get_u32(g, "t.u8", &u32));
    CHECK_EQ_INT(u32, 200);
    CHECK_OK(tkv_gguf_get_i32(g, "t.i8", &i32));
    CHECK_EQ_INT(i32, -5);
    CHECK_OK(tkv_gguf_get_u32(g, "t.u16", &u32));
    CHECK_EQ_INT(u32, 60000);
    CHECK_OK(tkv_gguf_get_i32(g, "t.i16", &i32));
    CHECK_EQ_INT(i32, -30000);
    CHECK_OK(tkv_gguf_get_u32(g, "t.u32", &u32));
    CHECK(u32 == 4000000000u);
    CHECK_OK(tkv_gguf_get_i32(g, "t.i32", &i32));
    CHECK_EQ_INT(i32, -2000000000);
    CHECK_OK(tkv_gguf_get_f32(g, "t.f32", &f));
    CHECK(f == 1.5f);
    CHECK_OK(tkv_gguf_get_bool(g, "t.bool", &b));
    CHECK_EQ_INT(b, 1);
    CHECK_OK(tkv_gguf_get_u64(g, "t.u64", &u64));
    CHECK(u64 == 1ULL << 40);
    CHECK_OK(tkv_gguf_get_i64(g, "t.i64", &i64));
    CHECK(i64 == -(1LL << 40));
    CHECK_OK(tkv_gguf_get_i64(g, "t.u64", &i64));
    CHECK(i64 == 1LL << 40);
    CHECK_OK(tkv_gguf_get_f64(g, "t.f64", &d));
    CHECK(d == 3.25);
    CHECK_OK(tkv_gguf_get_f32(g, "t.f64", &f));
    CHECK(f == 3.25f);
    CHECK_OK(tkv_gguf_get_f64(g, "t.f32", &d));
    CHECK(d == 1.5);
    CHECK_OK(tkv_gguf_get_u32(g, "t.small_u64", &u32));
    CHECK_EQ_INT(u32, 7);
    CHECK_OK(tkv_gguf_get_string(g, "t.str", &s));
    CHECK(str_eq(s, "hello"));
    char buf[8];
    CHECK_OK(tkv_gguf_get_string_copy(g, "general.architecture", buf, sizeof buf));
    CHECK(strcmp(buf, "llama") == 0);
    CHECK_STATUS(tkv_gguf_get_string_copy(g, "general.architecture", buf, 5),
                 TKV_ERR_BUFFER_TOO_SMALL);
    CHECK_OK(tkv_gguf_get_string_copy(g, "general.architecture", buf, 6));
}

static void check_arrays(const tkv_gguf *g) {
    tkv_gguf_array a;
    int32_t i32 = 0;
    uint32_t u32 = 0;
    float f = 0;
    tkv_gguf_str s = {0};
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_i32", &a));
    CHECK_EQ_INT(a.elem_type, TKV_GGUF_I32);
    CHECK_EQ_INT(a.count, 3);
    CHECK(a.strings == NULL);
    CHECK_OK(tkv_gguf_array_i32(&a, 1, &i32));
    CHECK_EQ_INT(i32, -2);
    CHECK_OK(tkv_gguf_array_i32(&a, 2, &i32));
    CHECK_EQ_INT(i32, 3);
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_f32", &a));
    CHECK_OK(tkv_gguf_array_f32(&a, 0, &f));
    CHECK(f == 0.5f);
    CHECK_OK(tkv_gguf_array_f32(&a, 1, &f));
    CHECK(f == -1.25f);
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_u32", &a));
    CHECK_OK(tkv_gguf_array_u32(&a, 1, &u32));
    CHECK(u32 == 4000000000u);
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_u8", &a));
    CHECK_EQ_INT(a.count, 3);
    CHECK(memcmp(a.data, "\x01\x02\x03", 3) == 0);
    CHECK_OK(tkv_gguf_array_i32(&a, 2, &i32));
    CHECK_EQ_INT(i32, 3);
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_empty", &a));
    CHECK_EQ_INT(a.count, 0);
    CHECK_OK(tkv_gguf_get_array(g, "tokenizer.ggml.tokens", &a));
    CHECK_EQ_INT(a.elem_type, TKV_GGUF_STRING);
    CHECK_EQ_INT(a.count, 3);
    CHECK(str_eq(a.strings[0], "<s>"));
    CHECK_OK(tkv_gguf_array_string(&a, 1, &s));
    CHECK(str_eq(s, ""));
    CHECK_OK(tkv_gguf_array_string(&a, 2, &s));
    CHECK(str_eq(s, "\xc4\xa0the"));
}

static void check_tensors(const tkv_gguf *g, const built *b) {
    CHECK_EQ_INT(tkv_gguf_n_tensors(g), N_TENSORS);
    CHECK_EQ_INT(tkv_gguf_data_offset(g), b->data_start);
    for (int i = 0; i < N_TENSORS; i++) {
        const tensor_def *d = &tensor_defs[i];
        int64_t idx = tkv_gguf_find_tensor(g, d->name);
        CHECK_EQ_INT(idx, i);
        const tkv_gguf_tensor *t = tkv_gguf_tensor_at(g, idx);
        if (!t) {
            continue;
        }
        CHECK(strcmp(t->name, d->name) == 0);
        CHECK_EQ_INT(t->type, d->type);
        CHECK_EQ_INT(t->n_dims, d->n_dims);
        int64_t ne = 1;
        for (int k = 0; k < 4; k++) {
            CHECK_EQ_INT(t->dims[k], d->dims[k]);
            ne *= d->dims[k];
        }
        CHECK_EQ_INT(t->n_elements, ne);
        CHECK_EQ_INT(t->offset, b->offsets[i]);
        CHECK_EQ_INT(t->nbytes, b->nbytes[i]);
        const uint8_t *p = t->data;
        CHECK(p == (const uint8_t *)tkv_gguf_file_data(g) + b->data_start + b->offsets[i]);
        CHECK_EQ_INT((size_t)(p - (const uint8_t *)tkv_gguf_file_data(g)) % b->alignment, 0);
        int same = 1;
        for (size_t k = 0; k < t->nbytes; k++) {
            same &= p[k] == ((k * 7 + (size_t)i) & 0xff);
        }
        CHECK(same);
    }
    CHECK_EQ_INT(tkv_gguf_find_tensor(g, "missing"), -1);
    CHECK_EQ_INT(tkv_gguf_find_tensor(g, NULL), -1);
    CHECK(tkv_gguf_tensor_at(g, -1) == NULL);
    CHECK(tkv_gguf_tensor_at(g, N_TENSORS) == NULL);
}

static void check_valid(const built *b) {
    tkv_gguf *g = NULL;
    CHECK_OK(tkv_gguf_open_memory(b->p, b->n, &g));
    if (!g) {
        return;
    }
    CHECK_EQ_INT(tkv_gguf_version(g), 3);
    CHECK_EQ_INT(tkv_gguf_alignment(g), b->alignment);
    CHECK_EQ_INT(tkv_gguf_file_size(g), b->n);
    int64_t n_kv = tkv_gguf_n_kv(g);
    CHECK(n_kv == N_PLAIN_KV || n_kv == N_PLAIN_KV + 1);
    CHECK_EQ_INT(tkv_gguf_find_key(g, "general.architecture"), 0);
    CHECK(strcmp(tkv_gguf_key_name(g, 0), "general.architecture") == 0);
    CHECK_EQ_INT(tkv_gguf_kv_type(g, 0), TKV_GGUF_STRING);
    CHECK_EQ_INT(tkv_gguf_kv_type(g, tkv_gguf_find_key(g, "t.u16")), TKV_GGUF_U16);
    for (int64_t i = 0; i < n_kv; i++) {
        CHECK_EQ_INT(tkv_gguf_find_key(g, tkv_gguf_key_name(g, i)), i);
    }
    CHECK_EQ_INT(tkv_gguf_find_key(g, "missing"), -1);
    CHECK_EQ_INT(tkv_gguf_find_key(g, "t.u"), -1);
    CHECK(tkv_gguf_key_name(g, n_kv) == NULL);
    CHECK_EQ_INT(tkv_gguf_kv_type(g, -1), -1);
    check_scalars(g);
    check_arrays(g);
    check_tensors(g, b);
    tkv_gguf_close(g);
}

static void test_valid(void) {
    spec s = {0};
    built b = build(&s);
    check_valid(&b);
    free(b.p);
    s.alignment = 64;
    b = build(&s);
    check_valid(&b);
    free(b.p);
    s.alignment = 32;
    s.alignment_type = TKV_GGUF_U64; /* any integer type that fits is accepted */
    b = build(&s);
    check_valid(&b);
    free(b.p);
    tkv_gguf_close(NULL);
}

/* ---- typed getters on the wrong types ------------------------------------------------------ */

static void test_getter_mismatch(void) {
    spec s = {0};
    built b = build(&s);
    tkv_gguf *g = NULL;
    CHECK_OK(tkv_gguf_open_memory(b.p, b.n, &g));
    if (!g) {
        free(b.p);
        return;
    }
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    int bo;
    tkv_gguf_str str;
    tkv_gguf_array a;
    CHECK_STATUS(tkv_gguf_get_u32(g, "t.str", &u32), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("key 't.str': expected u32, found string"));
    CHECK_STATUS(tkv_gguf_get_u32(g, "t.i32", &u32), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("i32 value -2000000000 does not fit in u32"));
    CHECK_STATUS(tkv_gguf_get_u32(g, "t.i8", &u32), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_u32(g, "t.u64", &u32), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("u64 value 1099511627776 does not fit in u32"));
    CHECK_STATUS(tkv_gguf_get_i32(g, "t.u32", &i32), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_u64(g, "t.i64", &u64), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_u32(g, "t.f32", &u32), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_u32(g, "t.bool", &u32), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_f32(g, "t.i32", &f), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("key 't.i32': expected f32, found i32"));
    CHECK_STATUS(tkv_gguf_get_f32(g, "t.f64big", &f), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("does not fit in f32"));
    CHECK_STATUS(tkv_gguf_get_bool(g, "t.u8", &bo), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_string(g, "t.u32", &str), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("expected string, found u32"));
    CHECK_STATUS(tkv_gguf_get_string(g, "t.arr_i32", &str), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_get_array(g, "t.str", &a), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("expected array, found string"));
    CHECK_STATUS(tkv_gguf_get_u32(g, "no.such.key", &u32), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("key 'no.such.key' not found"));
    CHECK_STATUS(tkv_gguf_get_u32(g, NULL, &u32), TKV_ERR_BAD_FORMAT);
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_i32", &a));
    CHECK_STATUS(tkv_gguf_array_u32(&a, 1, &u32), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("key 't.arr_i32' element 1: i32 value -2 does not fit in u32"));
    CHECK_STATUS(tkv_gguf_array_f32(&a, 0, &f), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_array_string(&a, 0, &str), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_gguf_array_i32(&a, 3, &i32), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_gguf_array_i32(&a, UINT64_MAX, &i32), TKV_ERR_INVALID_ARGUMENT);
    CHECK_OK(tkv_gguf_get_array(g, "t.arr_u32", &a));
    CHECK_STATUS(tkv_gguf_array_i32(&a, 1, &i32), TKV_ERR_BAD_FORMAT);
    CHECK_OK(tkv_gguf_get_array(g, "tokenizer.ggml.tokens", &a));
    CHECK_STATUS(tkv_gguf_array_i32(&a, 0, &i32), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("expected i32, found string"));
    CHECK_STATUS(tkv_gguf_array_string(&a, 3, &str), TKV_ERR_INVALID_ARGUMENT);
    tkv_gguf_close(g);
    free(b.p);

    /* a bool byte other than 0 or 1 is caught by the getter */
    s.bool_byte = 7;
    b = build(&s);
    CHECK_OK(tkv_gguf_open_memory(b.p, b.n, &g));
    if (g) {
        CHECK_STATUS(tkv_gguf_get_bool(g, "t.bool", &bo), TKV_ERR_BAD_FORMAT);
        CHECK(error_has("neither 0 nor 1"));
        tkv_gguf_close(g);
    }
    free(b.p);
}

/* ---- truncation and corruption ------------------------------------------------------------- */

static void test_truncation(void) {
    spec s = {0};
    built b = build(&s);
    int bad = 0;
    for (size_t n = 0; n < b.n; n++) {
        tkv_gguf *g = NULL;
        tkv_status st = parse_copy(b.p, n, &g);
        if (st != TKV_ERR_BAD_FORMAT) {
            if (bad++ < 5) {
                fprintf(stderr, "truncated at %zu of %zu: %s\n", n, b.n, tkv_status_name(st));
            }
        }
    }
    CHECK_EQ_INT(bad, 0);
    tkv_gguf *g = NULL;
    CHECK_OK(parse_copy(b.p, b.n, &g));
    CHECK_STATUS(parse_copy(b.p, 0, &g), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("file too small"));
    CHECK_STATUS(parse_copy(b.p, b.n - 1, &g), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("tensor output.weight: data ["));
    CHECK(error_has("beyond end of file"));
    free(b.p);
}

static void test_header_corruption(const built *b) {
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "not a GGUF file", P[0] = 'X');
    EXPECT_CORRUPT(b, TKV_ERR_UNSUPPORTED, "version 1", put_u32(P + 4, 1));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "version 0", put_u32(P + 4, 0));
    EXPECT_CORRUPT(b, TKV_ERR_UNSUPPORTED, "version 4", put_u32(P + 4, 4));
    EXPECT_CORRUPT(b, TKV_ERR_UNSUPPORTED, "big-endian", put_u32(P + 4, 0x03000000u));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "tensor count", put_u64(P + 8, UINT64_MAX));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "impossible", put_u64(P + 8, b->n / 32));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "kv count", put_u64(P + 16, UINT64_MAX));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "kv count", put_u64(P + 16, 1ULL << 62));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "impossible", put_u64(P + 16, b->n / 13));
    /* a plausible count: the pairs run into the tensor infos and fail there */
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "", put_u64(P + 16, N_PLAIN_KV + 2));
}

static void test_kv_corruption(const built *b) {
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "kv pair #0: key at offset 24",
                   put_u64(P + 24, UINT64_MAX));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "length", put_u64(P + 24, b->n - 31));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "key 'general.architecture': string value",
                   put_u64(P + b->pos_arch_len, 1ULL << 63));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "array of 18446744073709551615 strings",
                   put_u64(P + b->pos_strarr_count, UINT64_MAX));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "element 1",
                   put_u64(P + b->pos_strarr_elem1, 1ULL << 40));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "array of",
                   put_u64(P + b->pos_i32arr_count, UINT64_MAX / 2));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "array of",
                   put_u64(P + b->pos_i32arr_count, 1ULL << 62)); /* * 4 wraps to 0 */
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "NUL byte", P[24 + 8 + 3] = 0);
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "unknown value type 77", put_u32(P + 24 + 8 + 20, 77));
}

static void test_tensor_corruption(const built *b) {
    const size_t *off = b->pos_offset;
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "tensor token_embd.weight: n_dims 0",
                   put_u32(P + b->pos_ndims[0], 0));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "n_dims 5 is not in 1..4",
                   put_u32(P + b->pos_ndims[0], 5));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "dims[1] = 0", put_u64(P + b->pos_dims[0] + 8, 0));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "out of range", put_u64(P + b->pos_dims[0], 1ULL << 63));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "element count overflows",
                   put_u64(P + b->pos_dims[3], 1ULL << 40);
                   put_u64(P + b->pos_dims[3] + 8, 1ULL << 40));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "byte size overflows",
                   put_u64(P + b->pos_dims[0], 1ULL << 61)); /* nbytes = 2^64 */
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "tensor token_embd.weight: data [",
                   put_u64(P + b->pos_dims[0], 1ULL << 20));
    EXPECT_CORRUPT(b, TKV_ERR_UNSUPPORTED, "tensor blk.0.attn_k.weight: unknown ggml type 99",
                   put_u32(P + b->pos_type[3], 99));
    EXPECT_CORRUPT(b, TKV_ERR_UNSUPPORTED, "unknown ggml type 4", put_u32(P + b->pos_type[3], 4));
    EXPECT_CORRUPT(b, TKV_ERR_UNSUPPORTED, "unknown ggml type -1",
                   put_u32(P + b->pos_type[3], UINT32_MAX));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "not a multiple of the block size 32",
                   put_u32(P + b->pos_type[0], TKV_GGML_Q8_0)); /* dims[0] = 8 */
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "not a multiple of the alignment 32",
                   put_u64(P + off[1], b->offsets[1] + 1));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "beyond end of file (size",
                   put_u64(P + off[1], (b->n + 31) / 32 * 32));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "overflows", put_u64(P + off[1], UINT64_MAX / 32 * 32));
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, "overlaps tensor token_embd.weight",
                   put_u64(P + off[1], b->offsets[0]));
    /* "tensor X: data [a, b) beyond end of file (size n)": exact text for one case */
    char want[160];
    snprintf(want, sizeof want,
             "tensor output.weight: data [%zu, %zu) beyond end of file (size %zu)",
             b->data_start + 1024, b->data_start + 1024 + b->nbytes[5], b->n);
    EXPECT_CORRUPT(b, TKV_ERR_BAD_FORMAT, want, put_u64(P + off[5], 1024));
}

static void expect_spec_fails(const spec *s, tkv_status want, const char *needle) {
    built b = build(s);
    tkv_gguf *g = NULL;
    CHECK_STATUS(parse_copy(b.p, b.n, &g), want);
    CHECK(error_has(needle));
    free(b.p);
}

static void test_structural(void) {
    spec s = {0};
    s.dup_key = 1;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT, "key 't.u8': duplicate key");
    s = (spec){0};
    s.dup_tensor = 1;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT, "tensor blk.0.attn_norm.weight: duplicate tensor");
    s = (spec){0};
    s.nested_array = 1;
    expect_spec_fails(&s, TKV_ERR_UNSUPPORTED, "key 't.nested': arrays of arrays");
    s = (spec){0};
    s.bad_value_type = 1;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT, "key 't.bad': unknown value type 13");
    s = (spec){0};
    s.q4_dim0 = 48;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT,
                      "tensor blk.0.attn_q.weight: q4_0 row of 48 elements is not a multiple");
    s = (spec){0};
    s.alignment = 3;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT, "general.alignment = 3 is not a power of two");
    s.alignment = 48;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT, "general.alignment = 48 is not a power of two");
    s.alignment = 0x80000000u; /* fine as a value, but the data section cannot start that far */
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT, "beyond end of file");
    s.alignment = 32;
    s.alignment_type = TKV_GGUF_STRING;
    expect_spec_fails(&s, TKV_ERR_BAD_FORMAT,
                      "key 'general.alignment': expected u32, found string");
    /* alignment 0: write a valid file, then patch the value */
    s = (spec){0};
    s.alignment = 32;
    built b = build(&s);
    EXPECT_CORRUPT(&b, TKV_ERR_BAD_FORMAT, "general.alignment = 0",
                   put_u32(P + b.pos_ndims[0] - (strlen(tensor_defs[0].name) + 8) - 4, 0));
    free(b.p);
}

/* Overwrite every byte with a few values: any status is fine, a crash or ASan report is not. */
static void test_byte_flips(void) {
    static const uint8_t values[] = {0x00, 0x01, 0x05, 0x20, 0x7f, 0x80, 0xff};
    spec s = {0};
    built b = build(&s);
    uint8_t *c = malloc(b.n);
    int parsed = 0, runs = 0;
    for (size_t i = 0; i < b.n; i++) {
        for (size_t v = 0; v < sizeof values; v++) {
            memcpy(c, b.p, b.n);
            c[i] = values[v];
            tkv_gguf *g = NULL;
            if (tkv_gguf_open_memory(c, b.n, &g) == TKV_OK) {
                /* walk everything the handle hands out */
                for (int64_t k = 0; k < tkv_gguf_n_kv(g); k++) {
                    tkv_gguf_array a;
                    tkv_gguf_str str;
                    const char *key = tkv_gguf_key_name(g, k);
                    if (tkv_gguf_get_array(g, key, &a) == TKV_OK && a.count > 0) {
                        (void)tkv_gguf_array_string(&a, a.count - 1, &str);
                        float f;
                        (void)tkv_gguf_array_f32(&a, a.count - 1, &f);
                    }
                    uint32_t u;
                    (void)tkv_gguf_get_u32(g, key, &u);
                }
                for (int64_t k = 0; k < tkv_gguf_n_tensors(g); k++) {
                    const tkv_gguf_tensor *t = tkv_gguf_tensor_at(g, k);
                    volatile uint8_t last = ((const uint8_t *)t->data)[t->nbytes - 1];
                    (void)last;
                }
                tkv_gguf_close(g);
                parsed++;
            }
            runs++;
        }
    }
    printf("byte flips: %d of %d variants still parse\n", parsed, runs);
    CHECK(parsed > 0 && parsed < runs);
    free(c);
    free(b.p);
}

static void test_corruption(void) {
    spec s = {0};
    built b = build(&s);
    test_header_corruption(&b);
    test_kv_corruption(&b);
    test_tensor_corruption(&b);
    free(b.p);
}

/* ---- files ------------------------------------------------------------------------------------
 */

static void test_files(void) {
    spec s = {0};
    built b = build(&s);
    char path[] = "/tmp/tkv_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) {
        free(b.p);
        return;
    }
    CHECK(write(fd, b.p, b.n) == (ssize_t)b.n);
    close(fd);
    tkv_gguf *g = NULL;
    CHECK_OK(tkv_gguf_open(path, &g));
    if (g) {
        CHECK_EQ_INT(tkv_gguf_n_tensors(g), N_TENSORS);
        check_tensors(g, &b);
        check_scalars(g);
        tkv_gguf_close(g);
    }
    /* truncated on disk: the message starts with the path */
    CHECK(truncate(path, (off_t)(b.n - 1)) == 0);
    CHECK_STATUS(tkv_gguf_open(path, &g), TKV_ERR_BAD_FORMAT);
    CHECK(error_has(path));
    CHECK(truncate(path, 0) == 0);
    CHECK_STATUS(tkv_gguf_open(path, &g), TKV_ERR_BAD_FORMAT);
    CHECK(error_has("file too small"));
    unlink(path);
    CHECK_STATUS(tkv_gguf_open(path, &g), TKV_ERR_IO);
    CHECK(error_has("cannot open: No such file"));
    CHECK(g == NULL);
    CHECK_STATUS(tkv_gguf_open("/", &g), TKV_ERR_IO);
    CHECK(error_has("not a regular file"));
    CHECK_STATUS(tkv_gguf_open(NULL, &g), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_gguf_open(path, NULL), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_gguf_open_memory(NULL, 10, &g), TKV_ERR_INVALID_ARGUMENT);
    free(b.p);
}

static void test_types(void) {
    CHECK(strcmp(tkv_ggml_type_name(TKV_GGML_Q4_K), "q4_k") == 0);
    CHECK(strcmp(tkv_ggml_type_name(4), "unknown") == 0);
    CHECK(strcmp(tkv_ggml_type_name(-3), "unknown") == 0);
    CHECK(strcmp(tkv_ggml_type_name(1000), "unknown") == 0);
    CHECK_EQ_INT(tkv_ggml_block_size(TKV_GGML_Q6_K), 256);
    CHECK_EQ_INT(tkv_ggml_type_size(TKV_GGML_Q6_K), 210);
    CHECK_EQ_INT(tkv_ggml_type_size(TKV_GGML_Q8_K), 292);
    CHECK_EQ_INT(tkv_ggml_block_size(TKV_GGML_BF16), 1);
    CHECK_EQ_INT(tkv_ggml_block_size(29), 0);
    size_t bytes = 0;
    CHECK_OK(tkv_ggml_row_size(TKV_GGML_Q4_1, 576, &bytes));
    CHECK_EQ_INT(bytes, 18 * 20);
    CHECK_STATUS(tkv_ggml_row_size(TKV_GGML_Q4_1, 100, &bytes), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_ggml_row_size(TKV_GGML_F32, 0, &bytes), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_ggml_row_size(TKV_GGML_F64, INT64_MAX, &bytes), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_ggml_row_size(17, 256, &bytes), TKV_ERR_UNSUPPORTED);
    CHECK(strcmp(tkv_gguf_type_name(TKV_GGUF_F64), "f64") == 0);
    CHECK(strcmp(tkv_gguf_type_name(13), "unknown") == 0);
}

/* A real model, when TKV_TEST_GGUF names one. */
static void test_real_file(void) {
    const char *path = getenv("TKV_TEST_GGUF");
    if (!path || !*path) {
        printf("TKV_TEST_GGUF not set: skipping the real-file check\n");
        return;
    }
    tkv_gguf *g = NULL;
    CHECK_OK(tkv_gguf_open(path, &g));
    if (!g) {
        return;
    }
    char arch[64] = "?";
    if (tkv_gguf_find_key(g, "general.architecture") >= 0) {
        CHECK_OK(tkv_gguf_get_string_copy(g, "general.architecture", arch, sizeof arch));
    }
    size_t total = 0;
    for (int64_t i = 0; i < tkv_gguf_n_tensors(g); i++) {
        total += tkv_gguf_tensor_at(g, i)->nbytes;
    }
    printf("%s: GGUF v%u, %lld kv pairs, %lld tensors (%zu bytes of data), architecture %s\n", path,
           tkv_gguf_version(g), (long long)tkv_gguf_n_kv(g), (long long)tkv_gguf_n_tensors(g),
           total, arch);
    tkv_gguf_close(g);
}

int main(void) {
    test_types();
    test_valid();
    test_getter_mismatch();
    test_truncation();
    test_corruption();
    test_structural();
    test_byte_flips();
    test_files();
    test_real_file();
    CHECK_MAIN_END();
}
