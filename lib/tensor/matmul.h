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

typedef struct tkv_matmul_kernels {
    const char *isa;                /* "scalar", "avx2", "avx512", "avx512vnni" */
    tkv_quantize_q8_fn quantize_q8; /* activations -> Q8 */
    tkv_rowdot_fn dot[TKV_TYPE_COUNT]; /* by TKV_TYPE_*; NULL: the scalar table's (or none) */
    tkv_tiledot_fn tile[TKV_TYPE_COUNT]; /* faster multi-row kernels; NULL: use dot */
} tkv_matmul_kernels;

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
