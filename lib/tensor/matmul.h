/*
 * matmul.h - the matrix products of the forward pass: Y = X W^T for a weight matrix W of
 * n_rows_w rows (any tkv format) and float activations X of n_tok rows.
 *
 *   W  (n_rows_w, n_cols) in `type`, rows row_bytes apart (row_bytes >= tkv_type_row_bytes)
 *   X  (n_tok, n_cols) float, dense
 *   Y  (n_tok, n_rows_w) float, dense: Y[t * n_rows_w + r] = dot(W row r, X row t)
 *
 * Semantics (defined by the scalar reference, matmul_scalar.c):
 *   - F32/F16/BF16 weights: float dot of the converted weights with X.
 *   - quantized weights: X is first quantized to "Q8 activations" (below); each block
 *     contributes d_w * d_x * (exact int32 dot of the integer codes) plus, for formats with
 *     an offset (Q4_0/Q5_0: -8/-16 folded into the int dot; Q4_1/Q5_1/Q4_K/Q5_K: the min
 *     m_w, -dmin*m), m_w * (d_x * sum of the activation codes).
 *   ISA variants quantize activations bit-identically and differ from the reference only in
 *   float summation order: |y_isa - y_ref| <= 1e-5 * sum |terms| (what the tests check).
 *
 * Threading: the kernels are reentrant.  A thread pool splits [0, n_rows_w) into row ranges:
 * one thread calls tkv_matmul_prepare (fills the scratch), then every thread calls
 * tkv_matmul_rows on its own range with the same read-only scratch.  tkv_matmul does both
 * for one caller.
 */
#ifndef TKV_TENSOR_MATMUL_H
#define TKV_TENSOR_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "tensor/formats.h"

/*
 * Q8 activations: one quantized row of n_cols floats (n_cols a multiple of 32) is
 *   int8  q[n_cols]      codes, |q| <= 127, q = round_to_nearest_even(x * 127 / amax)
 *   float d[n_cols/32]   per-32 scale amax / 127 (0 for an all-zero block)
 *   float ds[n_cols/32]  d * (sum of the block's 32 codes), for offset/min terms
 * at offsets 0, n_cols and n_cols + 4*(n_cols/32); rows are tkv_q8_row_stride() bytes apart
 * (a multiple of 64, so a row starts on a cache line when the scratch does).
 */
size_t tkv_q8_row_stride(int64_t n_cols);

/* Kernel of one weight row against n_x <= TKV_MM_NX activation rows:
 *   y[t * y_stride] = dot(w, x_t),  x_t = (const char *)x + t * x_stride,
 * where x_t is a float row (F32/F16/BF16 weights) or a Q8 activation row (quantized). */
typedef void (*tkv_rowdot_fn)(int64_t n_cols, const void *w, const void *x, size_t x_stride,
                              int n_x, float *y, size_t y_stride);

/* Quantize one float row of n (multiple of 32) into the Q8 activation layout at xq. */
typedef void (*tkv_quantize_q8_fn)(const float *x, int64_t n, void *xq);

#define TKV_MM_NX 4 /* activation rows per kernel call: each weight block is unpacked once */

/* Kernel of a tile: n_w <= TKV_MM_NW consecutive weight rows (w, w + row_bytes, ...) against
 * n_x <= TKV_MM_NX activation rows (as for tkv_rowdot_fn):
 *   y[t * y_stride + r] = dot(w_r, x_t).
 * Optional per type; kernels may process fewer rows than n_w at once but compute them all. */
typedef void (*tkv_tiledot_fn)(int64_t n_cols, const void *w, size_t row_bytes, int n_w,
                               const void *x, size_t x_stride, int n_x, float *y,
                               size_t y_stride);

#define TKV_MM_NW 4 /* weight rows per tile call: each activation load serves them all */

/*
 * Packed weights: a copy of a Q4_0 / Q4_1 / Q8_0 / Q2_K / Q3_K / Q4_K / Q5_K / Q6_K matrix
 * (rows a multiple of 16) made once at load (tkv_matmul_pack) in a layout where one 512-bit
 * register holds 4 codes of each of 16 rows (a 256-bit one: of 8 rows), so an integer
 * dot-product instruction against 4 broadcast activation codes (vpdpbusd, or vpmaddubsw +
 * vpmaddwd) advances every row at once and each row's block sum ends in its own lane; the
 * scales of the 16 rows sit next to each other, so one load and one convert give the scales
 * a float fma needs.  The layout is the same for every ISA (matmul_packed_body.h).  The unit of
 * every layout is a "lane array" L[k][row] of 4-byte lanes: lane k of a row is bytes 4k .. 4k + 3
 * of one of its byte fields (64 bytes per k).  Group g (rows 16g .. 16g + 15), block b (elements
 * 32b .. 32b + 31) of the 32-element formats is, at offset (g * n_blocks + b) * 16 * block_bytes:
 *   uint16_t d[16]        fp16 scales of the 16 rows
 *   uint16_t m[16]        fp16 mins (Q4_1 only)
 *   Q4_0/Q4_1: qs lanes [4][16]    (low nibbles: elements 4k.., high: 16 + 4k..)
 *   Q8_0:      qs lanes [8][16]    codes 4k .. 4k+3, stored as code + 128 (u8)
 * The K-quants are packed by super-block (256 elements): group g, super-block i at offset
 * (g * n_super + i) * 16 * P, with P the packed bytes per row (the file's block bytes, plus
 * 4 where 6-bit scales are unpacked to bytes):
 *   Q4_K (P 148), Q5_K (P 180):
 *     uint16_t d[16], dmin[16]   fp16 super-block scales of the 16 rows
 *     uint8_t  sc[8][16]         [j][row] 6-bit scale of sub-block j (32 elements)
 *     uint8_t  m[8][16]          [j][row] 6-bit min of sub-block j
 *     qh lanes [8][16]           Q5_K only (bit j of a byte: fifth bit of sub-block j)
 *     qs lanes [32][16]          lane 8c + k: low nibbles sub-block 2c, high 2c + 1
 *   Q2_K (P 84):
 *     uint16_t d[16], dmin[16]
 *     uint8_t  sc[16][16]        [j][row] the file's byte: scale (low nibble), min (high)
 *     qs lanes [16][16]          lane 8h + k: bits 2s..2s+1 are elements 128h + 32s + 4k..
 *   Q3_K (P 114):
 *     uint16_t d[16]
 *     int8_t   sc[16][16]        [j][row] signed 6-bit scale (-32..31) of sub-block j
 *     hmask lanes [8][16]        bit 4h + s: third bit of elements 128h + 32s + 4k..
 *     qs lanes [16][16]          as Q2_K
 *   Q6_K (P 210):
 *     uint16_t d[16]
 *     int8_t   sc[16][16]        [j][row] scale of sub-block j (16 elements)
 *     ql lanes [32][16]          lane 16h + k: bytes 64h + 4k.. of the row's ql
 *     qh lanes [16][16]          lane 8h + k: bytes 32h + 4k.. of the row's qh
 * Kernel of one group of 16 rows against n_x <= TKV_MM_NX activation rows, writing only
 * rows [r_begin, r_end) of the group: y[t * y_stride + r] = dot(w_r, x_t).  The result
 * of a row does not depend on r_begin / r_end, so a thread split inside a group changes
 * no bits.
 */
#define TKV_MM_PACK_ROWS 16
typedef void (*tkv_packdot_fn)(int64_t n_cols, const void *wg, const void *x, size_t x_stride,
                               int n_x, float *y, size_t y_stride, int r_begin, int r_end);

typedef struct tkv_matmul_kernels {
    const char *isa;                /* "scalar", "avx2", "avx512", "avx512vnni" */
    tkv_quantize_q8_fn quantize_q8; /* activations -> Q8 */
    tkv_rowdot_fn dot[TKV_TYPE_COUNT]; /* by TKV_TYPE_*; NULL: the scalar table's (or none) */
    tkv_tiledot_fn tile[TKV_TYPE_COUNT]; /* faster multi-row kernels; NULL: use dot */
    tkv_packdot_fn packed[TKV_TYPE_COUNT]; /* kernels on packed weights; NULL: no packing */
} tkv_matmul_kernels;

/* Bytes of the packed copy of a (n_rows, n_cols) matrix for these kernels, or 0 when they
 * have no packed kernel for the type or n_rows is not a multiple of TKV_MM_PACK_ROWS. */
size_t tkv_matmul_packed_bytes(const tkv_matmul_kernels *k, int32_t type, int64_t n_rows,
                               int64_t n_cols);

/* Write the packed copy of W (rows row_bytes apart) to out (tkv_matmul_packed_bytes). */
void tkv_matmul_pack(int32_t type, const void *W, size_t row_bytes, int64_t n_rows, int64_t n_cols,
                     void *out);

/* tkv_matmul_rows on a packed copy Wp (k->packed[type] must exist). */
void tkv_matmul_rows_packed(const tkv_matmul_kernels *k, int32_t type, const void *Wp,
                            int64_t n_rows_w, int64_t n_cols, int64_t n_tok, const void *scratch,
                            float *Y, int64_t row_begin, int64_t row_end);

/* 1 if the type's kernels take Q8 activations (all quantized types), 0 for float types. */
int tkv_matmul_uses_q8(int32_t type);

/* Scratch bytes tkv_matmul_prepare needs (0 for float types).  Allocate with 64-byte
 * alignment (tkv_calloc_aligned) for best speed; any alignment is correct. */
size_t tkv_matmul_scratch_bytes(int32_t type, int64_t n_cols, int64_t n_tok);

/* Quantize X into scratch when the type needs it (no-op for float types). */
void tkv_matmul_prepare(const tkv_matmul_kernels *k, int32_t type, int64_t n_cols,
                        const float *X, int64_t n_tok, void *scratch);

/* Y rows [row_begin, row_end) of every token, from a prepared scratch (unused for float
 * types, where X is read directly; X is unused for quantized types and may be NULL). */
void tkv_matmul_rows(const tkv_matmul_kernels *k, int32_t type, const void *W, size_t row_bytes,
                     int64_t n_rows_w, int64_t n_cols, const float *X, int64_t n_tok,
                     const void *scratch, float *Y, int64_t row_begin, int64_t row_end);

/* prepare + rows: batched product (prefill). */
void tkv_matmul(const tkv_matmul_kernels *k, int32_t type, const void *W, size_t row_bytes,
                int64_t n_rows_w, int64_t n_cols, const float *X, int64_t n_tok, float *Y,
                int64_t row_begin, int64_t row_end, void *scratch);

/* One activation vector (decode): y[r] = dot(W row r, x) for r in [row_begin, row_end). */
void tkv_matvec(const tkv_matmul_kernels *k, int32_t type, const void *W, size_t row_bytes,
                int64_t n_rows_w, int64_t n_cols, const float *x, float *y, int64_t row_begin,
                int64_t row_end, void *scratch);

/* ---- dispatch (dispatch_tensor.c) -------------------------------------------------------- */

/* The kernels chosen once (thread-safe) from tkv_cpu_detect(): the best ISA this CPU runs,
 * or TKV_ISA=scalar|avx2|avx512|avx512vnni when set and runnable (an unknown or unrunnable
 * value is ignored).  "avx512" means AVX-512 F/BW/VL/DQ without VNNI instructions; the
 * automatic choice uses "avx512vnni" when the CPU has VNNI.  Never NULL. */
const tkv_matmul_kernels *tkv_matmul_kernels_get(void);

/* The table for a named ISA, or NULL when the name is unknown or this CPU cannot run it. */
const tkv_matmul_kernels *tkv_matmul_kernels_for_isa(const char *isa);

/* The ISA names known to this build, NULL-terminated (for tests and benchmarks). */
extern const char *const tkv_matmul_isa_names[];

/* The per-ISA tables (defined only in builds that compile the ISA's file). */
extern const tkv_matmul_kernels tkv_matmul_kernels_scalar;
#if defined(TKV_HAVE_X86_KERNELS)
extern const tkv_matmul_kernels tkv_matmul_kernels_avx2;
extern const tkv_matmul_kernels tkv_matmul_kernels_avx512;
extern const tkv_matmul_kernels tkv_matmul_kernels_avx512vnni;
#endif

#endif
