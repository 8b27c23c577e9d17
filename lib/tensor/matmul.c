/*
 * matmul.c - the portable driver of the matrix products: quantizes activations once, then
 * walks the weight rows in cache-sized panels and calls the per-ISA row kernels.
 *
 * Loop order: a panel of weight rows (~32 KiB, L1-resident) is reused across all token
 * groups of TKV_MM_NX activation rows before the next panel is read, so prefill reads the
 * weights from memory once while the (smaller) quantized activations stream from L2.
 */
#include "tensor/matmul.h"

#include <assert.h>

#define TKV_MM_PANEL_BYTES 32768

size_t tkv_q8_row_stride(int64_t n_cols) {
    const size_t bytes = (size_t)n_cols + 2 * sizeof(float) * (size_t)(n_cols / TKV_QK);
    return (bytes + 63) & ~(size_t)63;
}

int tkv_matmul_uses_q8(int32_t type) {
    return !(type == TKV_TYPE_F32 || type == TKV_TYPE_F16 || type == TKV_TYPE_BF16);
}

size_t tkv_matmul_scratch_bytes(int32_t type, int64_t n_cols, int64_t n_tok) {
    if (!tkv_matmul_uses_q8(type)) {
        return 0;
    }
    return tkv_q8_row_stride(n_cols) * (size_t)n_tok;
}

void tkv_matmul_prepare(const tkv_matmul_kernels *k, int32_t type, int64_t n_cols,
                        const float *X, int64_t n_tok, void *scratch) {
    if (!tkv_matmul_uses_q8(type)) {
        return;
    }
    assert(n_cols % TKV_QK == 0);
    const size_t stride = tkv_q8_row_stride(n_cols);
    for (int64_t t = 0; t < n_tok; t++) {
        k->quantize_q8(X + t * n_cols, n_cols, (char *)scratch + (size_t)t * stride);
    }
}

void tkv_matmul_rows(const tkv_matmul_kernels *k, int32_t type, const void *W, size_t row_bytes,
                     int64_t n_rows_w, int64_t n_cols, const float *X, int64_t n_tok,
                     const void *scratch, float *Y, int64_t row_begin, int64_t row_end) {
    /* a type without a kernel in this ISA's table (Q2_K, Q3_K) runs the scalar reference */
    const tkv_rowdot_fn dot = k->dot[type] ? k->dot[type] : tkv_matmul_kernels_scalar.dot[type];
    const tkv_tiledot_fn tile = k->dot[type] ? k->tile[type] : NULL;
    assert(dot != NULL);
    const int q8 = tkv_matmul_uses_q8(type);
    const char *xs = q8 ? (const char *)scratch : (const char *)X;
    const size_t x_stride = q8 ? tkv_q8_row_stride(n_cols) : (size_t)n_cols * sizeof(float);
    const char *w = (const char *)W;
    /* rows per kernel call: a tile kernel shares each activation load among TKV_MM_NW rows */
    const int64_t step = tile ? TKV_MM_NW : 1;
    int64_t panel = (int64_t)(TKV_MM_PANEL_BYTES / (row_bytes ? row_bytes : 1));
    panel = panel < step ? step : panel;
    if (n_tok <= TKV_MM_NX) { /* decode: one pass over the rows */
        panel = row_end - row_begin;
    }
    for (int64_t r0 = row_begin; r0 < row_end; r0 += panel) {
        const int64_t r1 = r0 + panel < row_end ? r0 + panel : row_end;
        for (int64_t t0 = 0; t0 < n_tok; t0 += TKV_MM_NX) {
            const int nx = (int)(n_tok - t0 < TKV_MM_NX ? n_tok - t0 : TKV_MM_NX);
            const char *x = xs + (size_t)t0 * x_stride;
            float *y = Y + t0 * n_rows_w;
            for (int64_t r = r0; r < r1; r += step) {
                if (tile) {
                    const int nw = (int)(r1 - r < step ? r1 - r : step);
                    tile(n_cols, w + (size_t)r * row_bytes, row_bytes, nw, x, x_stride, nx,
                         y + r, (size_t)n_rows_w);
                } else {
                    dot(n_cols, w + (size_t)r * row_bytes, x, x_stride, nx, y + r,
                        (size_t)n_rows_w);
                }
            }
        }
    }
}

void tkv_matmul(const tkv_matmul_kernels *k, int32_t type, const void *W, size_t row_bytes,
                int64_t n_rows_w, int64_t n_cols, const float *X, int64_t n_tok, float *Y,
                int64_t row_begin, int64_t row_end, void *scratch) {
    tkv_matmul_prepare(k, type, n_cols, X, n_tok, scratch);
    tkv_matmul_rows(k, type, W, row_bytes, n_rows_w, n_cols, X, n_tok, scratch, Y, row_begin,
                    row_end);
}

void tkv_matvec(const tkv_matmul_kernels *k, int32_t type, const void *W, size_t row_bytes,
                int64_t n_rows_w, int64_t n_cols, const float *x, float *y, int64_t row_begin,
                int64_t row_end, void *scratch) {
    tkv_matmul(k, type, W, row_bytes, n_rows_w, n_cols, x, 1, y, row_begin, row_end, scratch);
}
