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
#include <string.h>

#define TKV_MM_PANEL_BYTES 32768

/* How far ahead of the rows being computed the driver asks for weight bytes, into L2.  A
 * kernel's loads sit behind its arithmetic in the out-of-order window, so on its own it has
 * too few misses in flight to stream from DRAM at the memory's speed; prefetches issued
 * this far ahead (hundreds of ns of compute) keep the memory busy. */
#ifndef TKV_MM_PREFETCH_BYTES
#define TKV_MM_PREFETCH_BYTES 32768
#endif

/* Prefetch [p, p + n) of the weights into L2, clipped to `end`. */
static void tkv_prefetch_l2(const char *p, size_t n, const char *end) {
    const char *stop = p + n < end ? p + n : end;
    for (; p < stop; p += 64) {
        __builtin_prefetch(p, 0, 2);
    }
}

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
    const char *w_end = w + (size_t)row_end * row_bytes;
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
                if (t0 == 0) { /* the first token group brings the panel in */
                    const int64_t nr = r1 - r < step ? r1 - r : step;
                    tkv_prefetch_l2(w + (size_t)r * row_bytes + TKV_MM_PREFETCH_BYTES,
                                    (size_t)nr * row_bytes, w_end);
                }
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

/* ---- packed weights ---------------------------------------------------------------------- */

/* Elements and packed bytes per row of one packed block of the type (layouts in matmul.h). */
static void tkv_packed_block(int32_t type, int64_t *elems, size_t *bytes) {
    *elems = TKV_QK_K;
    switch (type) {
    case TKV_TYPE_Q2_K:
        *bytes = 84;
        return; /* the same fields, rearranged */
    case TKV_TYPE_Q3_K:
        *bytes = 114;
        return; /* 16 six-bit scales unpacked to bytes: +4 */
    case TKV_TYPE_Q4_K:
        *bytes = 148;
        return; /* 8 scales + 8 mins unpacked to bytes: +4 */
    case TKV_TYPE_Q5_K:
        *bytes = 180;
        return; /* likewise */
    case TKV_TYPE_Q6_K:
        *bytes = 210;
        return; /* the same fields, rearranged */
    default:
        *elems = TKV_QK;
        *bytes = (size_t)tkv_type_get(type)->block_bytes;
        return;
    }
}

size_t tkv_matmul_packed_bytes(const tkv_matmul_kernels *k, int32_t type, int64_t n_rows,
                               int64_t n_cols) {
    const tkv_type_info *ti = tkv_type_get(type);
    if (ti == NULL || k->packed[type] == NULL || n_rows % TKV_MM_PACK_ROWS != 0) {
        return 0;
    }
    int64_t elems;
    size_t bytes;
    tkv_packed_block(type, &elems, &bytes);
    if (n_cols % elems != 0) {
        return 0;
    }
    return (size_t)n_rows * (size_t)(n_cols / elems) * bytes;
}

/* Copy 4-byte lanes: lane k of the row's bytes src[4k .. 4k + 3] (k < n) to dst[k][row]
 * (lanes of the 16 rows, 64 bytes per k), the unit every packed layout is made of. */
static void tkv_pack_lanes(uint8_t *dst, const uint8_t *src, int n, int row) {
    for (int k = 0; k < n; k++) {
        memcpy(dst + ((size_t)k * TKV_MM_PACK_ROWS + (size_t)row) * 4, src + 4 * k, 4);
    }
}

/* One K-quant super-block of 16 rows, i.e. row r's block at blk(r) (layouts in matmul.h). */
static void tkv_pack_k(int32_t type, const uint8_t *W, size_t row_bytes, int64_t g, int64_t i,
                       uint8_t *o) {
    const int R = TKV_MM_PACK_ROWS;
    const size_t bb = (size_t)tkv_type_get(type)->block_bytes;
    for (int r = 0; r < R; r++) {
        const uint8_t *blk = W + (size_t)(g * R + r) * row_bytes + (size_t)i * bb;
        switch (type) {
        case TKV_TYPE_Q2_K: { /* scales[16] | qs[64] | d | dmin */
            memcpy(o + 2 * r, blk + 80, 2);
            memcpy(o + 2 * R + 2 * r, blk + 82, 2);
            for (int j = 0; j < 16; j++) {
                o[4 * R + j * R + r] = blk[j];
            }
            tkv_pack_lanes(o + 20 * R, blk + 16, 16, r);
            break;
        }
        case TKV_TYPE_Q3_K: { /* hmask[32] | qs[64] | scales[12] | d */
            memcpy(o + 2 * r, blk + 108, 2);
            for (int j = 0; j < 16; j++) {
                o[2 * R + j * R + r] = (uint8_t)(int8_t)tkv_q3_k_scale(blk + 96, j);
            }
            tkv_pack_lanes(o + 18 * R, blk, 8, r);
            tkv_pack_lanes(o + 50 * R, blk + 32, 16, r);
            break;
        }
        case TKV_TYPE_Q6_K: { /* ql[128] | qh[64] | scales[16] | d */
            memcpy(o + 2 * r, blk + 208, 2);
            for (int j = 0; j < 16; j++) {
                o[2 * R + j * R + r] = blk[192 + j];
            }
            tkv_pack_lanes(o + 18 * R, blk, 32, r);
            tkv_pack_lanes(o + 146 * R, blk + 128, 16, r);
            break;
        }
        default: { /* Q4_K, Q5_K: d | dmin | scales[12] | (Q5_K: qh[32] |) qs[128] */
            const int five = type == TKV_TYPE_Q5_K;
            memcpy(o + 2 * r, blk, 2);
            memcpy(o + 2 * R + 2 * r, blk + 2, 2);
            for (int j = 0; j < 8; j++) {
                tkv_q_k_scale_min(blk + 4, j, o + 4 * R + j * R + r, o + 12 * R + j * R + r);
            }
            if (five) {
                tkv_pack_lanes(o + 20 * R, blk + 16, 8, r);
            }
            tkv_pack_lanes(o + (five ? 52 : 20) * R, blk + (five ? 48 : 16), 32, r);
            break;
        }
        }
    }
}

void tkv_matmul_pack(int32_t type, const void *W, size_t row_bytes, int64_t n_rows, int64_t n_cols,
                     void *out) {
    const size_t bb = (size_t)tkv_type_get(type)->block_bytes;
    const int R = TKV_MM_PACK_ROWS;
    uint8_t *o = out;
    int64_t elems;
    size_t bytes;
    tkv_packed_block(type, &elems, &bytes);
    if (elems == TKV_QK_K) {
        for (int64_t g = 0; g < n_rows / R; g++) {
            for (int64_t i = 0; i < n_cols / TKV_QK_K; i++) {
                tkv_pack_k(type, W, row_bytes, g, i, o);
                o += (size_t)R * bytes;
            }
        }
        return;
    }
    const int64_t nb = n_cols / TKV_QK;
    /* header bytes (scales, mins) and code offset inside an original block */
    const size_t head = type == TKV_TYPE_Q4_1 ? 4 : 2;
    const size_t ncode = bb - head; /* 16 nibble bytes or 32 codes */
    for (int64_t g = 0; g < n_rows / R; g++) {
        for (int64_t b = 0; b < nb; b++) {
            for (int r = 0; r < R; r++) {
                const uint8_t *blk =
                    (const uint8_t *)W + (size_t)(g * R + r) * row_bytes + (size_t)b * bb;
                memcpy(o + 2 * r, blk, 2); /* d */
                if (head == 4) {
                    memcpy(o + 2 * R + 2 * r, blk + 2, 2); /* m */
                }
                for (size_t k = 0; k < ncode / 4; k++) {
                    uint8_t *dst = o + head / 2 * 2 * R + (k * R + (size_t)r) * 4;
                    for (int j = 0; j < 4; j++) {
                        const uint8_t c = blk[head + 4 * k + (size_t)j];
                        dst[j] = type == TKV_TYPE_Q8_0 ? (uint8_t)(c ^ 0x80) : c;
                    }
                }
            }
            o += (size_t)R * bb;
        }
    }
}

void tkv_matmul_rows_packed(const tkv_matmul_kernels *k, int32_t type, const void *Wp,
                            int64_t n_rows_w, int64_t n_cols, int64_t n_tok, const void *scratch,
                            float *Y, int64_t row_begin, int64_t row_end) {
    const tkv_packdot_fn fn = k->packed[type];
    assert(fn != NULL && n_rows_w % TKV_MM_PACK_ROWS == 0);
    const int64_t R = TKV_MM_PACK_ROWS;
    int64_t elems;
    size_t bytes;
    tkv_packed_block(type, &elems, &bytes);
    const size_t group_bytes = (size_t)R * (size_t)(n_cols / elems) * bytes;
    const size_t x_stride = tkv_q8_row_stride(n_cols);
    const char *w = Wp;
    for (int64_t g = row_begin / R; g * R < row_end; g++) {
        const int rb = (int)(g * R < row_begin ? row_begin - g * R : 0);
        const int re = (int)((g + 1) * R > row_end ? row_end - g * R : R);
        const char *wg = w + (size_t)g * group_bytes; /* the kernels prefetch */
        for (int64_t t0 = 0; t0 < n_tok; t0 += TKV_MM_NX) {
            const int nx = (int)(n_tok - t0 < TKV_MM_NX ? n_tok - t0 : TKV_MM_NX);
            fn(n_cols, wg, (const char *)scratch + (size_t)t0 * x_stride, x_stride, nx,
               Y + t0 * n_rows_w + g * R, (size_t)n_rows_w, rb, re);
        }
    }
}
