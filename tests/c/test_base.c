/* test_base.c - status names, last error, version, half conversions, rng. */
#include <string.h>

#include "base/half.h"
#include "base/rng.h"
#include "base/status.h"
#include "check.h"

static void test_status(void) {
    CHECK(strcmp(tkv_status_name(TKV_OK), "TKV_OK") == 0);
    CHECK(strcmp(tkv_status_name(TKV_ERR_ABI), "TKV_ERR_ABI") == 0);
    CHECK(strcmp(tkv_status_name(12345), "TKV_ERR_UNKNOWN") == 0);
    tkv_error_clear();
    CHECK(strcmp(tkv_last_error(), "") == 0);
    CHECK_EQ_INT(tkv_fail(TKV_ERR_IO, "file %s missing", "x.gguf"), TKV_ERR_IO);
    CHECK(strcmp(tkv_last_error(), "file x.gguf missing") == 0);
    tkv_error_prefix("open");
    CHECK(strcmp(tkv_last_error(), "open: file x.gguf missing") == 0);
    CHECK_EQ_INT(tkv_version_number(), TKV_VERSION_NUMBER);
    CHECK(strcmp(tkv_version_string(), TKV_VERSION_STRING) == 0);
}

static void test_half(void) {
    /* every finite fp16 value survives fp16 -> f32 -> fp16 */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        uint16_t v = (uint16_t)h;
        if ((v & 0x7c00u) == 0x7c00u && (v & 0x3ffu)) {
            continue; /* nan payloads are not preserved bit-exactly */
        }
        if (tkv_f32_to_fp16(tkv_fp16_to_f32(v)) != v) {
            bad++;
        }
    }
    CHECK_EQ_INT(bad, 0);
    /* the row conversion gives the same bits for every pattern, NaN payloads included */
    static uint16_t all[0x10000];
    static float row[0x10000];
    for (uint32_t h = 0; h < 0x10000u; h++) {
        all[h] = (uint16_t)h;
    }
    tkv_fp16_row_to_f32(all, row, 0x10000);
    for (uint32_t h = 0; h < 0x10000u; h++) {
        bad += tkv_f32_bits(row[h]) != tkv_f32_bits(tkv_fp16_to_f32(all[h]));
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_NEAR(tkv_fp16_to_f32(tkv_f32_to_fp16(1.0f / 3.0f)), 0.333251953125, 0);
    CHECK_EQ_INT(tkv_f32_to_fp16(65520.0f), 0x7c00);
    CHECK_EQ_INT(tkv_f32_to_fp16(65519.0f), 0x7bff);
    CHECK_EQ_INT(tkv_f32_to_fp16(5.96046448e-08f), 0x0001); /* smallest subnormal */
    CHECK_EQ_INT(tkv_f32_to_fp16(2.98023224e-08f), 0x0000); /* tie to even: zero */
    CHECK_EQ_INT(tkv_f32_to_bf16(1.0f), 0x3f80);
    CHECK_NEAR(tkv_bf16_to_f32(tkv_f32_to_bf16(3.14159f)), 3.140625, 0);
}

static void test_rng(void) {
    tkv_rng a, b;
    tkv_rng_init(&a, 42);
    tkv_rng_init(&b, 42);
    int same = 1;
    for (int i = 0; i < 100; i++) {
        same &= tkv_rng_next(&a) == tkv_rng_next(&b);
    }
    CHECK(same);
    /* Known first output of SplitMix64 with seed 0 */
    tkv_rng_init(&a, 0);
    CHECK(tkv_rng_next(&a) == 0xE220A8397B1DCDAFULL);
    /* Gaussian moments */
    double s = 0, s2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double g = tkv_rng_gaussian(&a);
        s += g;
        s2 += g * g;
    }
    CHECK_NEAR(s / n, 0.0, 0.01);
    CHECK_NEAR(s2 / n, 1.0, 0.02);
    /* bits are balanced */
    int ones = 0;
    for (int i = 0; i < 1000; i++) {
        ones += __builtin_popcountll(tkv_rng_next(&a));
    }
    CHECK_NEAR(ones / 64000.0, 0.5, 0.01);
}

int main(void) {
    test_status();
    test_half();
    test_rng();
    CHECK_MAIN_END();
}
