/*
 * test_kernels_tensor.c - weight formats and matmul kernels (lib/tensor).
 *
 *  - sizes and row-byte checks per format;
 *  - reference quantize -> dequantize round trips within per-format error bounds;
 *  - Q8 activation quantization: every ISA bit-identical to the scalar reference;
 *  - matmul/matvec of every ISA against the scalar reference, on quantized Gaussian weights
 *    and on random-byte blocks (every code pattern), for 1..9 activation rows:
 *        |y_isa - y_ref| <= 1e-5 * sum_i |x_i| (|w_i| + max_row |w|) + 1e-6
 *    (float summation order is the only difference; offsets/mins are bounded by max |w|);
 *  - the scalar reference against the float dot of dequantized weights and unquantized x:
 *        |y_ref - w.x| <= sum_i |w_i| d_x(i) / 2 * (1 + 1e-4) + 1e-5 * sum |w_i x_i|
 *    (the activation rounding error is at most half a step d_x per element);
 *  - row ranges, matvec == matmul(n_tok = 1), embedding lookup, dispatch by name.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/half.h"
#include "base/rng.h"
#include "base/status.h"
#include "check.h"
#include "tensor/formats.h"
#include "tensor/matmul.h"

static const int32_t all_types[] = {TKV_TYPE_F32,  TKV_TYPE_F16,  TKV_TYPE_BF16, TKV_TYPE_Q8_0,
                                    TKV_TYPE_Q4_0, TKV_TYPE_Q4_1, TKV_TYPE_Q5_0, TKV_TYPE_Q5_1,
                                    TKV_TYPE_Q2_K, TKV_TYPE_Q3_K, TKV_TYPE_Q4_K, TKV_TYPE_Q5_K,
                                    TKV_TYPE_Q6_K};
#define N_TYPES ((int)(sizeof all_types / sizeof all_types[0]))

static tkv_rng rng;

static float frand(float lo, float hi) {
    return lo + (hi - lo) * (float)((tkv_rng_next(&rng) >> 11) * (1.0 / 9007199254740992.0));
}

static void gaussian(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = scale * (float)tkv_rng_gaussian(&rng);
    }
}

static size_t row_bytes_of(int32_t type, int64_t n) {
    size_t rb = 0;
    CHECK_OK(tkv_type_row_bytes(type, n, &rb));
    return rb;
}

static void test_sizes(void) {
    static const struct {
        int32_t type;
        int be, bb;
    } want[] = {{0, 1, 4},    {1, 1, 2},    {30, 1, 2},     {8, 32, 34},    {2, 32, 18},  {3, 32, 20},
                {6, 32, 22},  {7, 32, 24},  {12, 256, 144}, {13, 256, 176}, {14, 256, 210},
                {10, 256, 84},  {11, 256, 110}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const tkv_type_info *ti = tkv_type_get(want[i].type);
        CHECK(ti != NULL);
        if (ti) {
            CHECK_EQ_INT(ti->block_elems, want[i].be);
            CHECK_EQ_INT(ti->block_bytes, want[i].bb);
        }
    }
    CHECK(tkv_type_get(4) == NULL); /* removed Q4_2 */
    CHECK(tkv_type_get(-1) == NULL);
    size_t rb = 0;
    CHECK_OK(tkv_type_row_bytes(TKV_TYPE_Q4_1, 576, &rb));
    CHECK_EQ_INT(rb, 18 * 20);
    CHECK_OK(tkv_type_row_bytes(TKV_TYPE_Q6_K, 512, &rb));
    CHECK_EQ_INT(rb, 420);
    CHECK_OK(tkv_type_row_bytes(TKV_TYPE_F16, 7, &rb));
    CHECK_EQ_INT(rb, 14);
    CHECK_STATUS(tkv_type_row_bytes(TKV_TYPE_Q4_K, 576, &rb), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_type_row_bytes(TKV_TYPE_Q8_0, -32, &rb), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_type_row_bytes(99, 32, &rb), TKV_ERR_UNSUPPORTED);
}

/* Round trip bounds.  Block formats: per element, against the block's range r = max - min
 * and magnitude a = max |x|:  Q8_0 a/254, Q4_0 a/8 (the far side clamps at +7), Q5_0 a/16,
 * Q4_1 r/30, Q5_1 r/62, all +0.2% for fp16 scales.  K-quants (6-bit sub-block scales):
 * relative RMS error on Gaussian data. */
static void test_round_trip(void) {
    const int64_t n = 4096;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    void *q = malloc(n * 4);
    gaussian(x, n, 1.0f);
    for (int i = 0; i < 64; i++) { /* a zero block and a constant block */
        x[i] = i < 32 ? 0.0f : 0.75f;
    }
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int32_t type = all_types[ti];
        tkv_quantize_row(type, x, q, n);
        tkv_dequantize_row(type, q, y, n);
        double se = 0, sx = 0;
        int bad = 0;
        for (int64_t b = 0; b < n / 32; b++) {
            const float *xb = x + 32 * b, *yb = y + 32 * b;
            float mn = xb[0], mx = xb[0], a = 0;
            for (int j = 0; j < 32; j++) {
                mn = fminf(mn, xb[j]);
                mx = fmaxf(mx, xb[j]);
                a = fmaxf(a, fabsf(xb[j]));
            }
            double bound;
            switch (type) {
            case TKV_TYPE_F32: bound = 0; break;
            case TKV_TYPE_F16: bound = a * 0x1p-11; break;
            case TKV_TYPE_BF16: bound = a * 0x1p-8; break;
            case TKV_TYPE_Q8_0: bound = a / 254.0; break;
            case TKV_TYPE_Q4_0: bound = a / 8.0; break;
            case TKV_TYPE_Q5_0: bound = a / 16.0; break;
            case TKV_TYPE_Q4_1: bound = (mx - mn) / 30.0 + fabsf(mn) * 0x1p-11; break;
            case TKV_TYPE_Q5_1: bound = (mx - mn) / 62.0 + fabsf(mn) * 0x1p-11; break;
            default: bound = INFINITY; break;
            }
            bound = bound * 1.002 + 1e-7;
            for (int j = 0; j < 32; j++) {
                const double e = fabs((double)xb[j] - yb[j]);
                bad += !(e <= bound);
                se += e * e;
                sx += (double)xb[j] * xb[j];
            }
        }
        const double rel = sqrt(se / sx);
        CHECK_MSG(bad == 0, "%s: %d elements beyond the bound", tkv_type_get(type)->name, bad);
        const double rel_max = type == TKV_TYPE_Q2_K ? 0.45 : type == TKV_TYPE_Q3_K ? 0.25
                               : type == TKV_TYPE_Q4_K ? 0.12 : type == TKV_TYPE_Q5_K ? 0.06
                               : type == TKV_TYPE_Q6_K ? 0.03 : 1.0;
        CHECK_MSG(rel <= rel_max, "%s: relative rms error %.4f > %.3f", tkv_type_get(type)->name,
                  rel, rel_max);
        printf("round trip %-5s rel rms error %.5f\n", tkv_type_get(type)->name, rel);
    }
    free(x);
    free(y);
    free(q);
}

/* Known K-quant bit positions: one non-zero code at a time. */
static void test_k_layout(void) {
    float y[256];
    /* Q4_K: sub-block 5 scale 3 min 0; element 64*2 + 32 + 7 = 167 is the high nibble of
     * qs[32*2 + 7] */
    tkv_block_q4_k b4;
    memset(&b4, 0, sizeof b4);
    b4.d = tkv_f32_to_fp16(1.0f);
    b4.dmin = tkv_f32_to_fp16(1.0f);
    const uint8_t sc[8] = {0, 0, 0, 0, 0, 35, 0, 0}, mn[8] = {0, 0, 0, 0, 0, 0, 0, 17};
    /* pack by hand: j >= 4 keeps its low 4 bits in scales[j+4], top 2 in scales[j-4] >> 6 */
    b4.scales[5 + 4] = (uint8_t)((sc[5] & 15) | (mn[5] & 15) << 4);
    b4.scales[5 - 4] = (uint8_t)((sc[5] >> 4) << 6);
    b4.scales[7 + 4] = (uint8_t)((mn[7] & 15) << 4);
    b4.scales[7] = (uint8_t)((mn[7] >> 4) << 6);
    b4.qs[32 * 2 + 7] = 0x90; /* high nibble 9 */
    tkv_dequantize_row(TKV_TYPE_Q4_K, &b4, y, 256);
    CHECK_NEAR(y[167], 35.0 * 9.0, 0);
    CHECK_NEAR(y[160], 0.0, 0);
    CHECK_NEAR(y[7 * 32 + 3], -17.0, 0);
    /* Q6_K: element 128 + 64 + 5 = 197: half 1, group 2 (high nibble of ql[64 + 5]),
     * qh bits 4-5 of qh[32 + 5]; scale index 197/16 = 12 */
    tkv_block_q6_k b6;
    memset(&b6, 0, sizeof b6);
    b6.d = tkv_f32_to_fp16(0.5f);
    for (int k = 0; k < 16; k++) {
        b6.scales[k] = (int8_t)(k == 12 ? -3 : 1);
    }
    memset(b6.ql, 0, sizeof b6.ql);
    for (int e = 0; e < 256; e++) { /* all codes 32 (value 0): qh bits 1 in every pair */
        const int h = e / 128, g = (e % 128) / 32, l = e % 32;
        b6.qh[32 * h + l] |= (uint8_t)(2 << (2 * g));
    }
    b6.ql[64 + 5] = 0x70;                      /* low 4 bits 7 */
    b6.qh[32 + 5] = (uint8_t)(b6.qh[32 + 5] & ~(3 << 4)) | (3 << 4); /* high bits 3 */
    tkv_dequantize_row(TKV_TYPE_Q6_K, &b6, y, 256);
    CHECK_NEAR(y[197], 0.5 * -3 * (55 - 32), 0);
    int zeros = 0;
    for (int e = 0; e < 256; e++) {
        zeros += y[e] == 0.0f;
    }
    CHECK_EQ_INT(zeros, 255);
}

/* Random bytes with valid, moderate scale fields: every code pattern appears. */
static void random_blocks(int32_t type, void *dst, int64_t n_rows, size_t row_bytes) {
    uint8_t *p = dst;
    for (size_t i = 0; i < (size_t)n_rows * row_bytes; i++) {
        p[i] = (uint8_t)tkv_rng_next(&rng);
    }
    const tkv_type_info *ti = tkv_type_get(type);
    const int64_t nb = (int64_t)(n_rows * row_bytes / (size_t)ti->block_bytes);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = p + b * ti->block_bytes;
        const uint16_t d = tkv_f32_to_fp16(frand(-0.01f, 0.01f));
        const uint16_t m = tkv_f32_to_fp16(frand(-0.2f, 0.2f));
        switch (type) {
        case TKV_TYPE_F16:
        case TKV_TYPE_BF16: {
            const uint16_t v = type == TKV_TYPE_F16 ? tkv_f32_to_fp16(frand(-1, 1))
                                                    : tkv_f32_to_bf16(frand(-1, 1));
            memcpy(blk, &v, 2);
            break;
        }
        case TKV_TYPE_F32: {
            const float v = frand(-1, 1);
            memcpy(blk, &v, 4);
            break;
        }
        case TKV_TYPE_Q6_K: memcpy(blk + 208, &d, 2); break;
        case TKV_TYPE_Q3_K: memcpy(blk + 108, &d, 2); break;
        case TKV_TYPE_Q2_K: {
            const uint16_t dm = tkv_f32_to_fp16(frand(0.0f, 0.01f));
            memcpy(blk + 80, &d, 2);
            memcpy(blk + 82, &dm, 2);
            break;
        }
        case TKV_TYPE_Q4_1:
        case TKV_TYPE_Q5_1:
        case TKV_TYPE_Q4_K:
        case TKV_TYPE_Q5_K: {
            const uint16_t dm = tkv_f32_to_fp16(frand(0.0f, 0.01f));
            memcpy(blk, &d, 2);
            memcpy(blk + 2, type == TKV_TYPE_Q4_K || type == TKV_TYPE_Q5_K ? &dm : &m, 2);
            break;
        }
        default: memcpy(blk, &d, 2); break;
        }
    }
}

/* sum_i |x_i| (|w_i| + max |w|) per (token, row) and the activation error bound */
static void reference_bounds(int32_t type, const float *Wd, int64_t n_rows, int64_t n_cols,
                             const float *X, const float *Xq, int64_t n_tok, double *absref,
                             double *ydot, double *qbound) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *w = Wd + r * n_cols;
        float wmax = 0;
        for (int64_t i = 0; i < n_cols; i++) {
            wmax = fmaxf(wmax, fabsf(w[i]));
        }
        for (int64_t t = 0; t < n_tok; t++) {
            const float *x = X + t * n_cols, *xq = Xq + t * n_cols;
            double a = 0, dt = 0, qb = 0, aw = 0;
            for (int64_t i = 0; i < n_cols; i++) {
                a += fabs((double)xq[i]) * (fabs((double)w[i]) + wmax);
                dt += (double)w[i] * x[i];
                aw += fabs((double)w[i] * x[i]);
                if (i % 32 == 0 && tkv_matmul_uses_q8(type)) {
                    float amax = 0;
                    for (int j = 0; j < 32; j++) {
                        amax = fmaxf(amax, fabsf(x[i + j]));
                    }
                    double sw = 0;
                    for (int j = 0; j < 32; j++) {
                        sw += fabs((double)w[i + j]);
                    }
                    qb += sw * amax / 254.0 * (1 + 1e-4);
                }
            }
            absref[t * n_rows + r] = a;
            ydot[t * n_rows + r] = dt;
            qbound[t * n_rows + r] = qb + 1e-5 * aw + 1e-6;
        }
    }
}

/* Dequantized Q8 activations (what the kernels actually multiply with). */
static void dequant_q8_act(const void *xq, int64_t n, float *out) {
    const int8_t *q = xq;
    const float *d = (const float *)((const char *)xq + n);
    for (int64_t i = 0; i < n; i++) {
        out[i] = d[i / 32] * q[i];
    }
}

static void test_matmul_case(int32_t type, int64_t n_rows, int64_t n_cols, int64_t n_tok,
                             int random_bytes) {
    const char *tname = tkv_type_get(type)->name;
    const size_t rb = row_bytes_of(type, n_cols);
    uint8_t *W = malloc((size_t)n_rows * rb);
    float *Wf = malloc((size_t)(n_rows * n_cols) * sizeof(float));
    float *Wd = malloc((size_t)(n_rows * n_cols) * sizeof(float));
    float *X = malloc((size_t)(n_tok * n_cols) * sizeof(float));
    float *Xq = malloc((size_t)(n_tok * n_cols) * sizeof(float));
    float *Yref = malloc((size_t)(n_tok * n_rows) * sizeof(float));
    float *Y = malloc((size_t)(n_tok * n_rows) * sizeof(float));
    double *absref = malloc((size_t)(n_tok * n_rows) * sizeof(double));
    double *ydot = malloc((size_t)(n_tok * n_rows) * sizeof(double));
    double *qb = malloc((size_t)(n_tok * n_rows) * sizeof(double));
    const size_t sb = tkv_matmul_scratch_bytes(type, n_cols, n_tok);
    void *scratch = tkv_calloc_aligned(sb ? sb : 1, 1);
    if (random_bytes) {
        random_blocks(type, W, n_rows, rb);
    } else {
        gaussian(Wf, n_rows * n_cols, 0.05f);
        for (int64_t r = 0; r < n_rows; r++) {
            tkv_quantize_row(type, Wf + r * n_cols, W + r * rb, n_cols);
        }
    }
    for (int64_t r = 0; r < n_rows; r++) {
        tkv_dequantize_row(type, W + r * rb, Wd + r * n_cols, n_cols);
    }
    gaussian(X, n_tok * n_cols, 1.0f);
    for (int64_t i = 0; i < n_cols / 4 && n_tok > 1; i++) {
        X[n_cols + i] = 0.0f; /* token 1 starts with all-zero blocks */
    }
    const tkv_matmul_kernels *ref = tkv_matmul_kernels_for_isa("scalar");
    tkv_matmul(ref, type, W, rb, n_rows, n_cols, X, n_tok, Yref, 0, n_rows, scratch);
    if (tkv_matmul_uses_q8(type)) {
        for (int64_t t = 0; t < n_tok; t++) {
            dequant_q8_act((const char *)scratch + t * tkv_q8_row_stride(n_cols), n_cols,
                           Xq + t * n_cols);
        }
    } else {
        memcpy(Xq, X, (size_t)(n_tok * n_cols) * sizeof(float));
    }
    reference_bounds(type, Wd, n_rows, n_cols, X, Xq, n_tok, absref, ydot, qb);
    int bad = 0;
    for (int64_t i = 0; i < n_tok * n_rows; i++) {
        bad += !(fabs(Yref[i] - ydot[i]) <= qb[i]);
    }
    CHECK_MSG(bad == 0, "scalar %s %s rows %lld cols %lld tok %lld: %d outputs beyond the "
              "activation-quantization bound", tname, random_bytes ? "random" : "gauss",
              (long long)n_rows, (long long)n_cols, (long long)n_tok, bad);
    for (int k = 0; tkv_matmul_isa_names[k]; k++) {
        const tkv_matmul_kernels *kern = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[k]);
        if (!kern) {
            continue;
        }
        for (int64_t i = 0; i < n_tok * n_rows; i++) {
            Y[i] = NAN;
        }
        tkv_matmul(kern, type, W, rb, n_rows, n_cols, X, n_tok, Y, 0, n_rows, scratch);
        double worst = 0;
        bad = 0;
        for (int64_t i = 0; i < n_tok * n_rows; i++) {
            const double e = fabs((double)Y[i] - Yref[i]);
            const double tol = 1e-5 * absref[i] + 1e-6;
            bad += !(e <= tol);
            worst = fmax(worst, e / tol);
        }
        CHECK_MSG(bad == 0, "%s %s %s rows %lld cols %lld tok %lld: %d mismatches (worst %.2f "
                  "x tol)", kern->isa, tname, random_bytes ? "random" : "gauss",
                  (long long)n_rows, (long long)n_cols, (long long)n_tok, bad, worst);
    }
    tkv_free_aligned(scratch);
    free(W);
    free(Wf);
    free(Wd);
    free(X);
    free(Xq);
    free(Yref);
    free(Y);
    free(absref);
    free(ydot);
    free(qb);
}

static void test_matmul(void) {
    static const int64_t toks[] = {1, 2, 3, 4, 5, 9};
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int32_t type = all_types[ti];
        const int kq = tkv_type_get(type)->block_elems == TKV_QK_K;
        const int64_t cols[] = {kq ? 256 : 96, kq ? 512 : 576, 1536,
                                tkv_matmul_uses_q8(type) ? 1536 : 77};
        for (int c = 0; c < 4; c++) {
            for (int t = 0; t < 6; t++) {
                test_matmul_case(type, 37, cols[c], toks[t], (c + t) % 2);
            }
        }
    }
}

static void test_quantize_act(void) {
    const int64_t n = 1536;
    float *x = malloc(n * sizeof(float));
    gaussian(x, n, 3.0f);
    for (int i = 0; i < 32; i++) {
        x[64 + i] = 0.0f;
        x[128 + i] = (i % 2 ? 1.0f : -1.0f) * 0.5f * (float)i; /* exact halves: ties */
    }
    const size_t stride = tkv_q8_row_stride(n);
    CHECK_EQ_INT(stride % 64, 0);
    void *ref = tkv_calloc_aligned(stride, 1), *got = tkv_calloc_aligned(stride, 1);
    tkv_matmul_kernels_scalar.quantize_q8(x, n, ref);
    const int8_t *q = ref;
    int over = 0;
    for (int64_t i = 0; i < n; i++) {
        over += q[i] < -127;
    }
    CHECK_EQ_INT(over, 0);
    for (int k = 0; tkv_matmul_isa_names[k]; k++) {
        const tkv_matmul_kernels *kern = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[k]);
        if (!kern) {
            continue;
        }
        memset(got, 0x5a, stride);
        kern->quantize_q8(x, n, got);
        CHECK_MSG(memcmp(ref, got, n + 8 * (n / 32)) == 0, "%s: Q8 activations differ",
                  kern->isa);
    }
    tkv_free_aligned(ref);
    tkv_free_aligned(got);
    free(x);
}

static void test_rows_and_lookup(void) {
    const int64_t n_rows = 50, n_cols = 576, n_tok = 6;
    const size_t rb = row_bytes_of(TKV_TYPE_Q4_1, n_cols);
    uint8_t *W = malloc(n_rows * rb);
    float *X = malloc(n_tok * n_cols * sizeof(float));
    float *Y = malloc(n_tok * n_rows * sizeof(float)), *Y1 = malloc(n_rows * sizeof(float));
    float *e1 = malloc(n_cols * sizeof(float)), *e2 = malloc(n_cols * sizeof(float));
    random_blocks(TKV_TYPE_Q4_1, W, n_rows, rb);
    gaussian(X, n_tok * n_cols, 1.0f);
    void *scratch = tkv_calloc_aligned(tkv_matmul_scratch_bytes(TKV_TYPE_Q4_1, n_cols, n_tok), 1);
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    CHECK(k != NULL);
    for (int64_t i = 0; i < n_tok * n_rows; i++) {
        Y[i] = -12345.0f;
    }
    /* two "threads": one prepare, two disjoint row ranges */
    tkv_matmul_prepare(k, TKV_TYPE_Q4_1, n_cols, X, n_tok, scratch);
    tkv_matmul_rows(k, TKV_TYPE_Q4_1, W, rb, n_rows, n_cols, NULL, n_tok, scratch, Y, 10, 20);
    tkv_matmul_rows(k, TKV_TYPE_Q4_1, W, rb, n_rows, n_cols, NULL, n_tok, scratch, Y, 20, 33);
    int untouched = 0, written = 0;
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t r = 0; r < n_rows; r++) {
            const int in = r >= 10 && r < 33;
            if (in) {
                written += Y[t * n_rows + r] != -12345.0f;
            } else {
                untouched += Y[t * n_rows + r] == -12345.0f;
            }
        }
    }
    CHECK_EQ_INT(written, n_tok * 23);
    CHECK_EQ_INT(untouched, n_tok * (n_rows - 23));
    /* matvec of token 3 equals row 3 of the batched product, bit for bit (same kernel) */
    tkv_matvec(k, TKV_TYPE_Q4_1, W, rb, n_rows, n_cols, X + 3 * n_cols, Y1, 10, 33, scratch);
    int same = 1;
    for (int64_t r = 10; r < 33; r++) {
        same &= Y1[r] == Y[3 * n_rows + r];
    }
    CHECK(same);
    tkv_embedding_row(TKV_TYPE_Q4_1, W, rb, n_cols, 17, e1);
    tkv_dequantize_row(TKV_TYPE_Q4_1, W + 17 * rb, e2, n_cols);
    CHECK(memcmp(e1, e2, n_cols * sizeof(float)) == 0);
    tkv_free_aligned(scratch);
    free(W);
    free(X);
    free(Y);
    free(Y1);
    free(e1);
    free(e2);
}

static void test_dispatch(void) {
    CHECK(tkv_matmul_kernels_for_isa("scalar") == &tkv_matmul_kernels_scalar);
    CHECK(tkv_matmul_kernels_for_isa("bogus") == NULL);
    CHECK(tkv_matmul_kernels_for_isa(NULL) == NULL);
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    CHECK(k != NULL && k == tkv_matmul_kernels_get());
    if (k) {
        CHECK(tkv_matmul_kernels_for_isa(k->isa) == k); /* never an ISA the CPU lacks */
        printf("dispatch: %s\n", k->isa);
    }
    for (int i = 0; tkv_matmul_isa_names[i]; i++) {
        const tkv_matmul_kernels *t = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[i]);
        printf("isa %-10s %s\n", tkv_matmul_isa_names[i], t ? "available" : "not on this CPU");
        /* every type has a kernel in the scalar table; ISA tables may leave one out (the
         * driver then runs the scalar one) */
        for (int ti = 0; t && ti < N_TYPES; ti++) {
            CHECK(tkv_matmul_kernels_scalar.dot[all_types[ti]] != NULL);
        }
    }
}

/* Packed weights (matmul.h): every ISA with a packed kernel against the scalar reference on
 * the original layout, and row ranges inside a 16-row group giving the same bits as the
 * whole group (what makes the thread split invisible). */
static void test_packed_case(const tkv_matmul_kernels *kern, int32_t type, int64_t n_cols,
                             int64_t n_tok, int random_bytes) {
    const int64_t n_rows = 48;
    const size_t rb = row_bytes_of(type, n_cols);
    const size_t pb = tkv_matmul_packed_bytes(kern, type, n_rows, n_cols);
    /* the same bytes, except unpacked 6-bit scales: 4 more per super-block */
    const int kq = type == TKV_TYPE_Q3_K || type == TKV_TYPE_Q4_K || type == TKV_TYPE_Q5_K;
    CHECK(pb == (size_t)n_rows * rb + (kq ? (size_t)n_rows * (size_t)(n_cols / 256) * 4 : 0));
    CHECK(tkv_matmul_packed_bytes(kern, type, n_rows - 1, n_cols) == 0);
    uint8_t *W = malloc((size_t)n_rows * rb), *Wp = tkv_calloc_aligned(pb, 1);
    float *X = malloc((size_t)(n_tok * n_cols) * sizeof(float));
    float *Yref = malloc((size_t)(n_tok * n_rows) * sizeof(float));
    float *Y = malloc((size_t)(n_tok * n_rows) * sizeof(float));
    float *Y2 = malloc((size_t)(n_tok * n_rows) * sizeof(float));
    double *absref = malloc((size_t)(n_tok * n_rows) * sizeof(double));
    float *Wd = malloc((size_t)n_cols * sizeof(float));
    void *scratch = tkv_calloc_aligned(tkv_matmul_scratch_bytes(type, n_cols, n_tok), 1);
    if (random_bytes) {
        random_blocks(type, W, n_rows, rb);
    } else {
        for (int64_t r = 0; r < n_rows; r++) {
            gaussian(Wd, n_cols, 0.05f);
            tkv_quantize_row(type, Wd, W + r * rb, n_cols);
        }
    }
    gaussian(X, n_tok * n_cols, 1.0f);
    tkv_matmul(&tkv_matmul_kernels_scalar, type, W, rb, n_rows, n_cols, X, n_tok, Yref, 0, n_rows,
               scratch);
    /* sum |terms| of each output, for the tolerance (as test_matmul_case) */
    for (int64_t r = 0; r < n_rows; r++) {
        tkv_dequantize_row(type, W + r * rb, Wd, n_cols);
        for (int64_t t = 0; t < n_tok; t++) {
            double a = 0;
            for (int64_t i = 0; i < n_cols; i++) {
                a += fabs((double)Wd[i] * X[t * n_cols + i]);
            }
            absref[t * n_rows + r] = a;
        }
    }
    tkv_matmul_pack(type, W, rb, n_rows, n_cols, Wp);
    tkv_matmul_prepare(kern, type, n_cols, X, n_tok, scratch);
    for (int64_t i = 0; i < n_tok * n_rows; i++) {
        Y[i] = Y2[i] = NAN;
    }
    tkv_matmul_rows_packed(kern, type, Wp, n_rows, n_cols, n_tok, scratch, Y, 0, n_rows);
    /* three "threads" with boundaries inside groups */
    tkv_matmul_rows_packed(kern, type, Wp, n_rows, n_cols, n_tok, scratch, Y2, 0, 5);
    tkv_matmul_rows_packed(kern, type, Wp, n_rows, n_cols, n_tok, scratch, Y2, 5, 37);
    tkv_matmul_rows_packed(kern, type, Wp, n_rows, n_cols, n_tok, scratch, Y2, 37, n_rows);
    int bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n_tok * n_rows; i++) {
        const double e = fabs((double)Y[i] - Yref[i]);
        const double tol = 1e-5 * absref[i] + 1e-6;
        bad += !(e <= tol);
        worst = fmax(worst, e / tol);
    }
    CHECK_MSG(bad == 0, "packed %s %s %s cols %lld tok %lld: %d mismatches (worst %.2f x tol)",
              kern->isa, tkv_type_get(type)->name, random_bytes ? "random" : "gauss",
              (long long)n_cols, (long long)n_tok, bad, worst);
    CHECK(memcmp(Y, Y2, (size_t)(n_tok * n_rows) * sizeof(float)) == 0);
    tkv_free_aligned(scratch);
    tkv_free_aligned(Wp);
    free(W);
    free(X);
    free(Yref);
    free(Y);
    free(Y2);
    free(absref);
    free(Wd);
}

static void test_packed(void) {
    static const int32_t types[] = {TKV_TYPE_Q4_0, TKV_TYPE_Q4_1, TKV_TYPE_Q8_0, TKV_TYPE_Q2_K,
                                    TKV_TYPE_Q3_K, TKV_TYPE_Q4_K, TKV_TYPE_Q5_K, TKV_TYPE_Q6_K};
    const int n_types = (int)(sizeof types / sizeof types[0]);
    static const int64_t cols[] = {32, 96, 576, 1536};
    static const int64_t cols_k[] = {256, 512, 768, 1536}; /* super-blocks of 256 */
    static const int64_t toks[] = {1, 2, 3, 4, 5, 9};
    int tested = 0;
    for (int k = 0; tkv_matmul_isa_names[k]; k++) {
        const tkv_matmul_kernels *kern = tkv_matmul_kernels_for_isa(tkv_matmul_isa_names[k]);
        for (int ti = 0; kern && ti < n_types; ti++) {
            if (!kern->packed[types[ti]]) {
                continue;
            }
            tested++;
            const int64_t *cs = tkv_type_get(types[ti])->block_elems == TKV_QK_K ? cols_k : cols;
            for (int c = 0; c < 4; c++) {
                for (int t = 0; t < 6; t++) {
                    test_packed_case(kern, types[ti], cs[c], toks[t], (c + t) % 2);
                }
            }
        }
    }
    CHECK(tkv_matmul_packed_bytes(&tkv_matmul_kernels_scalar, TKV_TYPE_Q4_1, 48, 576) == 0);
    printf("packed kernels tested: %d (format, isa) pairs\n", tested);
}

int main(void) {
    tkv_rng_init(&rng, 20240611);
    test_sizes();
    test_k_layout();
    test_round_trip();
    test_quantize_act();
    test_dispatch();
    test_matmul();
    test_rows_and_lookup();
    test_packed();
    CHECK_MAIN_END();
}
