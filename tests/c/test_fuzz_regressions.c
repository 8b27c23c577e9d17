/*
 * test_fuzz_regressions.c - inputs found by the fuzz targets (tests/fuzz), reduced to the
 * call that went wrong.
 *
 * fuzz_model, December 2026: a tiny Q4_0 model whose blk.0.attn_norm.weight holds 1.5e27
 * (any finite F32 norm weight loads) overflows the keys to inf/NaN in the first eval; the
 * cache append (lib/kv/cache.c tkv_kv_append) hands them to the q8_0 encoder, whose
 * (int8_t) cast of NaN is undefined behaviour (lib/codec/codec.c tkv_encode_q8_0; UBSan:
 * "-nan is outside the range of representable values of type 'signed char'").  The
 * encoders require finite input (tkv_codec_encode_one); appending non-finite keys or values
 * must be refused with a status instead.  PENDING: fails until lib/kv checks its input.
 *
 * fuzz_gguf, December 2026: an empty string array (e.g. "tokenizer.ggml.merges" with 0
 * elements) came back with strings == NULL, which gguf.h reserves for non-string arrays,
 * so the model loader rejected a valid file as "merges is not strings".  Fixed in gguf.c.
 *
 * fuzz_model, December 2026: a crafted model's non-finite attention weights reached the
 * VBMI trellis value sums, which convert each weight to 16-bit fixed point: an infinite
 * weight makes the chunk's scale 0 and its products NaN, NaN converts to INT_MIN, and the
 * digit sum overflowed -128 * sum in int (UBSan, kernels_trellis_avx512vbmi.c).  Such sums
 * mean nothing, but computing them must not be undefined behaviour:
 * the product is taken in uint32 now.  Runs where the CPU has the VBMI kernels (the
 * sanitizer build in CI decides).
 */
#include <math.h>
#include <stdlib.h>

#include <string.h>

#include "check.h"
#include "codec/codec.h"
#include "codec/kernels.h"
#include "gguf/gguf.h"
#include "kv/cache.h"
#include "turbokv.h"

static void test_kv_append_non_finite(void) {
    const uint32_t d = 32;
    const int32_t codecs[] = {TKV_CODEC_Q8_0, TKV_CODEC_Q8_0_ROT, TKV_CODEC_Q4_0, TKV_CODEC_TURBO_4B};
    for (size_t c = 0; c < sizeof codecs / sizeof codecs[0]; c++) {
        tkv_kv_cache kv;
        CHECK_OK(tkv_kv_init(&kv, 1, 1, d, 4, codecs[c], codecs[c], 0, 1));
        float k[32], v[32];
        for (uint32_t j = 0; j < d; j++) {
            k[j] = v[j] = 0.5f;
        }
        k[3] = NAN;
        float *scratch = malloc(TKV_KV_SCRATCH_FLOATS(d) * sizeof(float));
        CHECK(scratch != NULL);
        CHECK_MSG(tkv_kv_append(&kv, 0, 0, k, v, scratch) != TKV_OK,
                  "codec %d: a NaN key was appended", (int)codecs[c]);
        k[3] = INFINITY;
        CHECK_MSG(tkv_kv_append(&kv, 0, tkv_kv_n_tokens(&kv), k, v, scratch) != TKV_OK,
                  "codec %d: an infinite key was appended", (int)codecs[c]);
        free(scratch);
        tkv_kv_release(&kv);
    }
}

static void test_gguf_empty_string_array(void) {
    /* GGUF v3, 0 tensors, 1 key "k": array of 0 strings */
    static const unsigned char file[] = {
        'G', 'G', 'U', 'F', 3, 0, 0, 0,            /* magic, version */
        0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, /* n_tensors, n_kv */
        1, 0, 0, 0, 0, 0, 0, 0, 'k',               /* key */
        9, 0, 0, 0, 8, 0, 0, 0,                    /* array of strings */
        0, 0, 0, 0, 0, 0, 0, 0};                   /* count 0 */
    tkv_gguf *g = NULL;
    CHECK_OK(tkv_gguf_open_memory(file, sizeof file, &g));
    tkv_gguf_array a;
    memset(&a, 0, sizeof a);
    CHECK_OK(tkv_gguf_get_array(g, "k", &a));
    CHECK_EQ_INT(a.elem_type, TKV_GGUF_STRING);
    CHECK_EQ_INT(a.count, 0);
    CHECK(a.strings != NULL);
    tkv_gguf_str s;
    CHECK_STATUS(tkv_gguf_array_string(&a, 0, &s), TKV_ERR_INVALID_ARGUMENT);
    tkv_gguf_close(g);
}

static void test_trellis_sums_nan_weights(void) {
    const tkv_codec_kernels *K = tkv_codec_kernels_for_isa("avx512");
    if (K == NULL || !tkv_trellis_vbmi_active(K)) {
        printf("trellis NaN weights: no VBMI kernels on this CPU, skipped\n");
        return;
    }
    enum { N = 40 };
    const uint32_t d = 64;
    struct tkv_codec c;
    CHECK_OK(tkv_codec_init(&c, TKV_CODEC_TURBO_4B_TCQ, d, 5));
    const size_t stride = c.layout.stride;
    uint8_t *codes = malloc(N * stride);
    float *scratch = malloc(TKV_CODEC_SCRATCH_FLOATS(d) * sizeof(float));
    float x[64], w[N], w2[N], acc[64] = {0}, acc2[64] = {0};
    for (int i = 0; i < N; i++) {
        for (uint32_t j = 0; j < d; j++) {
            x[j] = sinf((float)(i * 64 + (int)j));
        }
        CHECK_OK(tkv_codec_encode_one(&c, x, codes + (size_t)i * stride, scratch));
        w[i] = (i % 3 == 0) ? INFINITY : 0.5f;
        w2[i] = 1.0f / (float)(i + 1);
    }
    const float *ws[2] = {w, w2};
    float *accs[2] = {acc, acc2};
    tkv_accum_trellis_multi_avx512vbmi(&c.layout, ws, 2, 0.0f, codes, N, accs);
    for (uint32_t j = 0; j < d; j++) {
        CHECK(isfinite(acc2[j])); /* the other query's sums are unaffected */
    }
    free(codes);
    free(scratch);
    tkv_codec_release(&c);
}

int main(void) {
    test_gguf_empty_string_array();
    test_kv_append_non_finite();
    test_trellis_sums_nan_weights();
    CHECK_MAIN_END();
}
