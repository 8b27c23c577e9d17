/*
 * fuzz_gguf.c - libFuzzer target: the GGUF reader (lib/gguf/gguf.c) on arbitrary bytes.
 *
 * The input is parsed from memory (tkv_gguf_open_memory, the parser the mmap path uses
 * too).  A failed open must leave *out NULL; a successful one must hand out only pointers
 * inside the input, so the target walks every key through every typed getter (a type
 * mismatch must be a status, never a crash), every array element, and every tensor,
 * touching the first and last byte of its data.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "gguf/gguf.h"
#include "turbokv.h"

static volatile uint8_t sink;

static int inside(const uint8_t *base, size_t size, const void *p, size_t len) {
    const uint8_t *q = p;
    return q >= base && q <= base + size && len <= (size_t)(base + size - q);
}

static void touch(const void *p, size_t len) {
    if (len) {
        sink ^= ((const uint8_t *)p)[0] ^ ((const uint8_t *)p)[len - 1];
    }
}

/* Every getter on one key: whatever the stored type, the call returns a status. */
static void walk_key(const tkv_gguf *g, const uint8_t *base, size_t size, int64_t i) {
    const char *key = tkv_gguf_key_name(g, i);
    REQUIRE(key != NULL);
    REQUIRE(tkv_gguf_find_key(g, key) == i);
    const int32_t type = tkv_gguf_kv_type(g, i);
    REQUIRE(type >= TKV_GGUF_U8 && type <= TKV_GGUF_F64);
    REQUIRE(strcmp(tkv_gguf_type_name(type), "unknown") != 0);
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    int b;
    (void)tkv_gguf_get_u32(g, key, &u32);
    (void)tkv_gguf_get_i32(g, key, &i32);
    (void)tkv_gguf_get_u64(g, key, &u64);
    (void)tkv_gguf_get_i64(g, key, &i64);
    (void)tkv_gguf_get_f32(g, key, &f32);
    (void)tkv_gguf_get_f64(g, key, &f64);
    (void)tkv_gguf_get_bool(g, key, &b);
    tkv_gguf_str s;
    if (tkv_gguf_get_string(g, key, &s) == TKV_OK) {
        REQUIRE(type == TKV_GGUF_STRING);
        REQUIRE(inside(base, size, s.ptr, s.len));
        touch(s.ptr, s.len);
        char small[4], big[256];
        tkv_status st = tkv_gguf_get_string_copy(g, key, small, sizeof small);
        REQUIRE(st == (s.len + 1 <= sizeof small ? TKV_OK : TKV_ERR_BUFFER_TOO_SMALL));
        st = tkv_gguf_get_string_copy(g, key, big, sizeof big);
        if (st == TKV_OK) {
            REQUIRE(memcmp(big, s.ptr, s.len) == 0 && big[s.len] == '\0');
        }
    } else {
        REQUIRE(type != TKV_GGUF_STRING);
    }
    tkv_gguf_array a;
    if (tkv_gguf_get_array(g, key, &a) != TKV_OK) {
        REQUIRE(type != TKV_GGUF_ARRAY);
        return;
    }
    REQUIRE(type == TKV_GGUF_ARRAY && a.elem_type != TKV_GGUF_ARRAY);
    REQUIRE(a.elem_type == TKV_GGUF_STRING ? a.strings != NULL : a.strings == NULL);
    for (uint64_t k = 0; k < a.count; k++) {
        (void)tkv_gguf_array_u32(&a, k, &u32);
        (void)tkv_gguf_array_i32(&a, k, &i32);
        (void)tkv_gguf_array_f32(&a, k, &f32);
        if (tkv_gguf_array_string(&a, k, &s) == TKV_OK) {
            REQUIRE(inside(base, size, s.ptr, s.len));
            touch(s.ptr, s.len);
        }
    }
    REQUIRE(tkv_gguf_array_u32(&a, a.count, &u32) != TKV_OK);
    REQUIRE(tkv_gguf_array_string(&a, a.count, &s) != TKV_OK);
}

static void walk_tensor(const tkv_gguf *g, const uint8_t *base, size_t size, int64_t i) {
    const tkv_gguf_tensor *t = tkv_gguf_tensor_at(g, i);
    REQUIRE(t != NULL && t->name != NULL);
    REQUIRE(tkv_gguf_find_tensor(g, t->name) == i);
    REQUIRE(t->n_dims >= 1 && t->n_dims <= TKV_GGUF_MAX_DIMS);
    int64_t n = 1;
    for (uint32_t d = 0; d < TKV_GGUF_MAX_DIMS; d++) {
        REQUIRE(t->dims[d] >= 1);
        REQUIRE(!__builtin_mul_overflow(n, t->dims[d], &n));
    }
    REQUIRE(n == t->n_elements);
    REQUIRE(inside(base, size, t->data, t->nbytes));
    REQUIRE((size_t)((const uint8_t *)t->data - base) ==
            tkv_gguf_data_offset(g) + (size_t)t->offset);
    REQUIRE(t->offset % tkv_gguf_alignment(g) == 0);
    touch(t->data, t->nbytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tkv_gguf *g = (tkv_gguf *)data; /* must be overwritten with NULL on failure */
    if (tkv_gguf_open_memory(data, size, &g) != TKV_OK) {
        REQUIRE(g == NULL);
        return 0;
    }
    REQUIRE(tkv_gguf_version(g) == 2 || tkv_gguf_version(g) == 3);
    const uint32_t align = tkv_gguf_alignment(g);
    REQUIRE(align != 0 && (align & (align - 1)) == 0);
    /* with no tensors the (empty) data section may start past the end: no padding needed */
    REQUIRE(tkv_gguf_n_tensors(g) == 0 || tkv_gguf_data_offset(g) <= size);
    REQUIRE(tkv_gguf_file_data(g) == data && tkv_gguf_file_size(g) == size);
    const int64_t n_kv = tkv_gguf_n_kv(g);
    REQUIRE(n_kv >= 0);
    for (int64_t i = 0; i < n_kv; i++) {
        walk_key(g, data, size, i);
    }
    REQUIRE(tkv_gguf_key_name(g, n_kv) == NULL && tkv_gguf_key_name(g, -1) == NULL);
    REQUIRE(tkv_gguf_kv_type(g, n_kv) == -1);
    REQUIRE(tkv_gguf_find_key(g, "no.such.key.in.any.file") == -1);
    const int64_t n_t = tkv_gguf_n_tensors(g);
    REQUIRE(n_t >= 0);
    for (int64_t i = 0; i < n_t; i++) {
        walk_tensor(g, data, size, i);
    }
    REQUIRE(tkv_gguf_tensor_at(g, n_t) == NULL && tkv_gguf_tensor_at(g, -1) == NULL);
    tkv_gguf_close(g);
    return 0;
}
