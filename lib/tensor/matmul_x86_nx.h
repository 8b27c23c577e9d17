/*
 * matmul_x86_nx.h - the entry points of the x86 matmul kernels, shared by matmul_x86_body.h
 * and matmul_avx512_body.h: each turns the run-time activation-row count nx (1..TKV_MM_NX)
 * into a compile-time constant of an always_inline body, so the body's per-row accumulators
 * stay in registers.  The macros name functions through the including variant's TKV_FN and
 * TKV_ATTR, read where a macro is used, so one definition serves every variant.
 *
 *   TKV_NX_DISPATCH(name, body, fmt)     row kernel (tkv_rowdot_fn) name calling
 *                                        body(n, w, x, xs, nx, y, ys, fmt)
 *   TKV_PK_DISPATCH(name, body, fmt)     packed kernel (tkv_packdot_fn) name calling
 *                                        body(n, wg, x, xs, nx, y, ys, r_begin, r_end, fmt)
 * fmt is a constant that selects the format when one body serves several (0 otherwise).
 */
#ifndef TKV_TENSOR_MATMUL_X86_NX_H
#define TKV_TENSOR_MATMUL_X86_NX_H

#define TKV_NX_DISPATCH(name, body, fmt)                                                           \
    static TKV_ATTR void TKV_FN(name)(int64_t n, const void *w, const void *x, size_t xs, int nx,  \
                                      float *y, size_t ys) {                                       \
        switch (nx) {                                                                              \
        case 1:                                                                                    \
            TKV_FN(body)(n, w, x, xs, 1, y, ys, fmt);                                              \
            break;                                                                                 \
        case 2:                                                                                    \
            TKV_FN(body)(n, w, x, xs, 2, y, ys, fmt);                                              \
            break;                                                                                 \
        case 3:                                                                                    \
            TKV_FN(body)(n, w, x, xs, 3, y, ys, fmt);                                              \
            break;                                                                                 \
        default:                                                                                   \
            TKV_FN(body)(n, w, x, xs, 4, y, ys, fmt);                                              \
            break;                                                                                 \
        }                                                                                          \
    }

#define TKV_PK_DISPATCH(name, body, fmt)                                                           \
    static TKV_ATTR void TKV_FN(name)(int64_t n, const void *wg, const void *x, size_t xs, int nx, \
                                      float *y, size_t ys, int rb, int re) {                       \
        switch (nx) {                                                                              \
        case 1:                                                                                    \
            TKV_FN(body)(n, wg, x, xs, 1, y, ys, rb, re, fmt);                                     \
            break;                                                                                 \
        case 2:                                                                                    \
            TKV_FN(body)(n, wg, x, xs, 2, y, ys, rb, re, fmt);                                     \
            break;                                                                                 \
        case 3:                                                                                    \
            TKV_FN(body)(n, wg, x, xs, 3, y, ys, rb, re, fmt);                                     \
            break;                                                                                 \
        default:                                                                                   \
            TKV_FN(body)(n, wg, x, xs, 4, y, ys, rb, re, fmt);                                     \
            break;                                                                                 \
        }                                                                                          \
    }

#endif
