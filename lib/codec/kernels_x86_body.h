/*
 * kernels_x86_body.h - the codec kernels that are one algorithm at every x86 vector width,
 * written once: the float formats (fp32 / fp16 / bf16), q8_0 / q4_0, the QJL sketch terms,
 * fwht, matvec, matvec_t and softmax.  Included once by kernels_avx2.c (8 floats per
 * register) and kernels_avx512.c (16), after they define
 *
 *   TKV_FN(name)        the ISA's name of an entry (tkv_<name>_avx2, ...)
 *   TKV_INLINE          static inline, always inlined
 *   TKV_VW, TKV_VF      floats per register (8 or 16) and the register type
 *   TKV_VZERO(), TKV_VSET1(x), TKV_VLOAD(p), TKV_VSTORE(p, v) (unaligned),
 *   TKV_VADD(a, b), TKV_VSUB(a, b), TKV_VMUL(a, b), TKV_VMAX(a, b),
 *   TKV_VFMA(a, b, c)   a b + c, one rounding;  TKV_VFNMA(a, b, c)  c - a b, one rounding
 *   TKV_VROUND(v)       to the nearest integer (ties to even)
 *   TKV_VHSUM(v), TKV_VHMAX(v)  horizontal sum / maximum
 *   TKV_MASKED_TAIL     1: the last, partial register of a vector is read and written under
 *                       a lane mask: TKV_VMASK (type), TKV_VMASK_N(r) (lanes 0..r-1),
 *                       TKV_VMLOAD(m, p) (zero outside m, no fault past the data),
 *                       TKV_VMSTORE(p, m, v), TKV_VMKEEP(m, v) (v, zero outside m);
 *                       0: no masked memory access (AVX2), the elements past the last full
 *                       register take a scalar loop after the horizontal sum
 *
 * and the static inline helpers
 *   tkv_load_flt(fmt, p, j)    elements j..j+VW-1 of an fp32 / fp16 / bf16 vector p
 *   tkv_block_vals(four_bit, qs, x)  the 32 values of a full q4_0 (four_bit) or q8_0 block
 *                              without its scale, x[r] holding elements VW r .. VW r + VW-1
 *   tkv_signs(v, b)            v with the lanes whose bit of b is clear negated
 *   tkv_select(pos, neg, b)    per lane: its bit of b set ? pos : neg
 *   tkv_fwht_lanes(v)          the Walsh-Hadamard butterflies of span < VW, in the register
 *   tkv_exp2i(p, k)            p 2^k, k integral floats in [-126, 0]
 *   and with masked tails:
 *   tkv_load_flt_m(fmt, p, j, m)  tkv_load_flt, lanes outside m zero
 *   tkv_block_part(four_bit, qs, t, x, m, off1)  a partial block of t < 32 values as two
 *                              registers: x[0] under mask m[0] holds elements 0.., x[1] under
 *                              m[1] elements *off1..
 *
 * A kernel makes the same operations in the same order at any width, up to the reduction
 * (TKV_VHSUM) and the tail: results differ from kernels_scalar.c by float rounding only.
 */
#include <math.h>
#include <string.h>

_Static_assert(TKV_VW == 8 || TKV_VW == 16, "kernels_x86_body.h: 8 or 16 floats per register");

static inline float tkv_h2f(const uint8_t *p) {
    return _cvtsh_ss(tkv_kc_u16(p));
}

/* The VW sign bits of elements j.. (j a multiple of VW) of a P1 plane. */
static inline uint32_t tkv_sign_bits(const uint8_t *p, uint32_t j) {
    return TKV_VW == 8 ? p[j / 8] : tkv_kc_u16(p + j / 8);
}

/* Scores and weighted sums of n codes, one row at a time through dot / axpy (arg: the
 * format or the block kind). */
#define TKV_ROW_KERNELS(name, dot, axpy, arg)                                                      \
    static void TKV_FN(scores_##name)(const tkv_code_layout *L, const float *q,                    \
                                      const uint8_t *codes, size_t n, float *out) {                \
        for (size_t i = 0; i < n; i++) {                                                           \
            out[i] = dot(arg, q, codes + i * L->stride, L->d);                                     \
        }                                                                                          \
    }                                                                                              \
    static void TKV_FN(accum_##name)(const tkv_code_layout *L, const float *w, float threshold,    \
                                     const uint8_t *codes, size_t n, float *acc) {                 \
        for (size_t i = 0; i < n; i++) {                                                           \
            if (fabsf(w[i]) >= threshold) {                                                        \
                axpy(arg, acc, codes + i * L->stride, L->d, w[i]);                                 \
            }                                                                                      \
        }                                                                                          \
    }

/* ---------------------------------------------------------------------------------
 * fp32 / fp16 / bf16
 * --------------------------------------------------------------------------------- */

#if !TKV_MASKED_TAIL
TKV_INLINE float tkv_elem_flt(const tkv_code_format fmt, const uint8_t *p, uint32_t j) {
    if (fmt == TKV_FMT_F32) {
        float f;
        memcpy(&f, p + 4 * (size_t)j, sizeof f);
        return f;
    }
    const uint16_t h = tkv_kc_u16(p + 2 * (size_t)j);
    if (fmt == TKV_FMT_F16) {
        return _cvtsh_ss(h);
    }
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#endif

TKV_INLINE float tkv_dot_flt(const tkv_code_format fmt, const float *q, const uint8_t *p,
                             uint32_t d) {
    /* two accumulators hide the FMA latency */
    TKV_VF a0 = TKV_VZERO(), a1 = TKV_VZERO();
    uint32_t j = 0;
    for (; j + 2 * TKV_VW <= d; j += 2 * TKV_VW) {
        a0 = TKV_VFMA(TKV_VLOAD(q + j), tkv_load_flt(fmt, p, j), a0);
        a1 = TKV_VFMA(TKV_VLOAD(q + j + TKV_VW), tkv_load_flt(fmt, p, j + TKV_VW), a1);
    }
    if (j + TKV_VW <= d) {
        a0 = TKV_VFMA(TKV_VLOAD(q + j), tkv_load_flt(fmt, p, j), a0);
        j += TKV_VW;
    }
#if TKV_MASKED_TAIL
    if (j < d) {
        const TKV_VMASK m = TKV_VMASK_N(d - j);
        a0 = TKV_VFMA(TKV_VMLOAD(m, q + j), tkv_load_flt_m(fmt, p, j, m), a0);
    }
    return TKV_VHSUM(TKV_VADD(a0, a1));
#else
    float s = TKV_VHSUM(TKV_VADD(a0, a1));
    for (; j < d; j++) {
        s += q[j] * tkv_elem_flt(fmt, p, j);
    }
    return s;
#endif
}

TKV_INLINE void tkv_axpy_flt(const tkv_code_format fmt, float *acc, const uint8_t *p, uint32_t d,
                             float w) {
    const TKV_VF vw = TKV_VSET1(w);
    uint32_t j = 0;
    for (; j + TKV_VW <= d; j += TKV_VW) {
        TKV_VSTORE(acc + j, TKV_VFMA(vw, tkv_load_flt(fmt, p, j), TKV_VLOAD(acc + j)));
    }
#if TKV_MASKED_TAIL
    if (j < d) {
        const TKV_VMASK m = TKV_VMASK_N(d - j);
        TKV_VMSTORE(acc + j, m, TKV_VFMA(vw, tkv_load_flt_m(fmt, p, j, m), TKV_VMLOAD(m, acc + j)));
    }
#else
    for (; j < d; j++) {
        acc[j] += w * tkv_elem_flt(fmt, p, j);
    }
#endif
}

TKV_ROW_KERNELS(f32, tkv_dot_flt, tkv_axpy_flt, TKV_FMT_F32)
TKV_ROW_KERNELS(f16, tkv_dot_flt, tkv_axpy_flt, TKV_FMT_F16)
TKV_ROW_KERNELS(bf16, tkv_dot_flt, tkv_axpy_flt, TKV_FMT_BF16)

/* ---------------------------------------------------------------------------------
 * q8_0 / q4_0: blocks of 32 (fp16 scale first), the last block holds d % 32.  A full block
 * is 32 / VW registers (tkv_block_vals); its products with q are summed in 32 / VW / 2
 * chains of a product and FMAs, then scaled by one FMA per block.
 * --------------------------------------------------------------------------------- */

#define TKV_BLOCK_REGS (32 / TKV_VW)
#define TKV_BLOCK_CHAINS (TKV_BLOCK_REGS / 2)

#if !TKV_MASKED_TAIL
/* Element k of a partial block of t values (without the scale): q4_0 holds elements
 * 0..t/2-1 in the low nibbles, the rest in the high ones. */
static inline float tkv_block_elem(int four_bit, const uint8_t *qs, uint32_t t, uint32_t k) {
    if (!four_bit) {
        return (float)(int8_t)qs[k];
    }
    const uint32_t half = t / 2;
    return k < half ? (float)((int)(qs[k] & 15) - 8) : (float)((int)(qs[k - half] >> 4) - 8);
}
#endif

TKV_INLINE float tkv_dot_block(const int four_bit, const float *q, const uint8_t *p, uint32_t d) {
    TKV_VF acc = TKV_VZERO();
    uint32_t b0 = 0;
    for (; b0 + 32 <= d; b0 += 32) {
        TKV_VF x[TKV_BLOCK_REGS], s[2] = {TKV_VZERO(), TKV_VZERO()};
        tkv_block_vals(four_bit, p + 2, x);
        /* sum q*x over the block first, then one FMA with the block scale */
        for (int r = 0; r < TKV_BLOCK_REGS; r++) {
            const TKV_VF qv = TKV_VLOAD(q + b0 + TKV_VW * r);
            const int c = r % TKV_BLOCK_CHAINS;
            s[c] = r < TKV_BLOCK_CHAINS ? TKV_VMUL(qv, x[r]) : TKV_VFMA(qv, x[r], s[c]);
        }
        const TKV_VF bs = TKV_BLOCK_CHAINS == 2 ? TKV_VADD(s[0], s[1]) : s[0];
        acc = TKV_VFMA(TKV_VSET1(tkv_h2f(p)), bs, acc);
        p += four_bit ? 18 : 34;
    }
#if TKV_MASKED_TAIL
    if (b0 < d) {
        TKV_VF x[2];
        TKV_VMASK m[2];
        uint32_t off1;
        tkv_block_part(four_bit, p + 2, d - b0, x, m, &off1);
        TKV_VF bs = TKV_VMUL(TKV_VMLOAD(m[0], q + b0), x[0]);
        bs = TKV_VFMA(TKV_VMLOAD(m[1], q + b0 + off1), x[1], bs);
        acc = TKV_VFMA(TKV_VSET1(tkv_h2f(p)), bs, acc);
    }
    return TKV_VHSUM(acc);
#else
    float s = TKV_VHSUM(acc);
    if (b0 < d) {
        const uint32_t t = d - b0;
        float bs = 0.0f;
        for (uint32_t k = 0; k < t; k++) {
            bs += q[b0 + k] * tkv_block_elem(four_bit, p + 2, t, k);
        }
        s += tkv_h2f(p) * bs;
    }
    return s;
#endif
}

TKV_INLINE void tkv_axpy_block(const int four_bit, float *acc, const uint8_t *p, uint32_t d,
                               float w) {
    uint32_t b0 = 0;
    for (; b0 + 32 <= d; b0 += 32) {
        TKV_VF x[TKV_BLOCK_REGS];
        tkv_block_vals(four_bit, p + 2, x);
        const TKV_VF ws = TKV_VSET1(w * tkv_h2f(p));
        for (int r = 0; r < TKV_BLOCK_REGS; r++) {
            float *a = acc + b0 + TKV_VW * r;
            TKV_VSTORE(a, TKV_VFMA(ws, x[r], TKV_VLOAD(a)));
        }
        p += four_bit ? 18 : 34;
    }
#if TKV_MASKED_TAIL
    if (b0 < d) {
        TKV_VF x[2];
        TKV_VMASK m[2];
        uint32_t off1;
        tkv_block_part(four_bit, p + 2, d - b0, x, m, &off1);
        const TKV_VF ws = TKV_VSET1(w * tkv_h2f(p));
        float *a0 = acc + b0, *a1 = acc + b0 + off1;
        TKV_VMSTORE(a0, m[0], TKV_VFMA(ws, x[0], TKV_VMLOAD(m[0], a0)));
        TKV_VMSTORE(a1, m[1], TKV_VFMA(ws, x[1], TKV_VMLOAD(m[1], a1)));
    }
#else
    if (b0 < d) {
        const uint32_t t = d - b0;
        const float ws = w * tkv_h2f(p);
        for (uint32_t k = 0; k < t; k++) {
            acc[b0 + k] += ws * tkv_block_elem(four_bit, p + 2, t, k);
        }
    }
#endif
}

TKV_ROW_KERNELS(q8_0, tkv_dot_block, tkv_axpy_block, 0)
TKV_ROW_KERNELS(q4_0, tkv_dot_block, tkv_axpy_block, 1)

/* ---------------------------------------------------------------------------------
 * QJL sketch terms of the turbo kernels (signs: a P1 plane of d bits)
 * --------------------------------------------------------------------------------- */

/* sum_j sq_j * (bit j ? +1 : -1); registers alternate between two accumulators. */
static float tkv_qjl_dot(const float *sq, const uint8_t *signs, uint32_t d) {
    TKV_VF a0 = TKV_VZERO(), a1 = TKV_VZERO();
    uint32_t j = 0;
    for (; j + 2 * TKV_VW <= d; j += 2 * TKV_VW) {
        a0 = TKV_VADD(a0, tkv_signs(TKV_VLOAD(sq + j), tkv_sign_bits(signs, j)));
        a1 = TKV_VADD(a1, tkv_signs(TKV_VLOAD(sq + j + TKV_VW), tkv_sign_bits(signs, j + TKV_VW)));
    }
    if (j + TKV_VW <= d) {
        a0 = TKV_VADD(a0, tkv_signs(TKV_VLOAD(sq + j), tkv_sign_bits(signs, j)));
        j += TKV_VW;
    }
#if TKV_MASKED_TAIL
    if (j < d) {
        const TKV_VMASK m = TKV_VMASK_N(d - j);
        a0 = TKV_VADD(a0, tkv_signs(TKV_VMLOAD(m, sq + j), tkv_kc_bits(signs, j, d - j)));
    }
    return TKV_VHSUM(TKV_VADD(a0, a1));
#else
    float s = TKV_VHSUM(TKV_VADD(a0, a1));
    for (; j < d; j++) {
        s += tkv_kc_p1(signs, j) ? sq[j] : -sq[j];
    }
    return s;
#endif
}

/* acc[j] += bit j ? wg : -wg */
static void tkv_qjl_axpy(float *acc, const uint8_t *signs, uint32_t d, float wg) {
    const TKV_VF pos = TKV_VSET1(wg), neg = TKV_VSET1(-wg);
    uint32_t j = 0;
    for (; j + TKV_VW <= d; j += TKV_VW) {
        TKV_VSTORE(acc + j,
                   TKV_VADD(TKV_VLOAD(acc + j), tkv_select(pos, neg, tkv_sign_bits(signs, j))));
    }
#if TKV_MASKED_TAIL
    if (j < d) {
        const TKV_VMASK m = TKV_VMASK_N(d - j);
        TKV_VMSTORE(
            acc + j, m,
            TKV_VADD(TKV_VMLOAD(m, acc + j), tkv_select(pos, neg, tkv_kc_bits(signs, j, d - j))));
    }
#else
    for (; j < d; j++) {
        acc[j] += tkv_kc_p1(signs, j) ? wg : -wg;
    }
#endif
}

/* ---------------------------------------------------------------------------------
 * fwht: the spans below VW stay in one register (tkv_fwht_lanes), the spans h >= VW pair
 * whole registers.  Both are exact sums and differences, as in the scalar transform.
 * Vectors of up to TKV_FWHT_REGS registers (head_dim 64 and 128 with AVX-512, 64 with AVX2)
 * stay in registers from load to store: attention rotates the queries of a GQA group once
 * per calibration block of keys, and the memory version's stores and reloads between the
 * spans were most of that.
 * --------------------------------------------------------------------------------- */

#define TKV_FWHT_REGS 8

/* The transform of NR (a power of two <= TKV_FWHT_REGS) registers at x, in registers (the
 * loops unrolled: with the registers in an indexed array they would stay in memory). */
TKV_INLINE void tkv_fwht_regs(float *x, const uint32_t NR, float scale) {
    TKV_VF v[TKV_FWHT_REGS];
#pragma GCC unroll 8
    for (uint32_t r = 0; r < NR; r++) {
        v[r] = tkv_fwht_lanes(TKV_VLOAD(x + r * TKV_VW));
    }
#pragma GCC unroll 3
    for (uint32_t s = 1; s < NR; s *= 2) { /* span h = s VW: registers r and r + s */
#pragma GCC unroll 8
        for (uint32_t r = 0; r < NR; r++) {
            if (!(r & s)) {
                const TKV_VF a = v[r], b = v[r + s];
                v[r] = TKV_VADD(a, b);
                v[r + s] = TKV_VSUB(a, b);
            }
        }
    }
    const TKV_VF vs = TKV_VSET1(scale);
#pragma GCC unroll 8
    for (uint32_t r = 0; r < NR; r++) {
        TKV_VSTORE(x + r * TKV_VW, TKV_VMUL(v[r], vs));
    }
}

static void TKV_FN(fwht)(float *x, uint32_t d, float scale) {
    if (d < TKV_VW) {
        tkv_fwht_scalar(x, d, scale);
        return;
    }
    switch (d / TKV_VW) {
    case 1:
        tkv_fwht_regs(x, 1, scale);
        return;
    case 2:
        tkv_fwht_regs(x, 2, scale);
        return;
    case 4:
        tkv_fwht_regs(x, 4, scale);
        return;
    case 8:
        tkv_fwht_regs(x, 8, scale);
        return;
    default:
        break;
    }
    for (uint32_t i = 0; i < d; i += TKV_VW) {
        TKV_VSTORE(x + i, tkv_fwht_lanes(TKV_VLOAD(x + i)));
    }
    for (uint32_t h = TKV_VW; h < d; h *= 2) {
        for (uint32_t i = 0; i < d; i += 2 * h) {
            for (uint32_t j = i; j < i + h; j += TKV_VW) {
                const TKV_VF a = TKV_VLOAD(x + j), b = TKV_VLOAD(x + j + h);
                TKV_VSTORE(x + j, TKV_VADD(a, b));
                TKV_VSTORE(x + j + h, TKV_VSUB(a, b));
            }
        }
    }
    const TKV_VF vs = TKV_VSET1(scale);
    for (uint32_t i = 0; i < d; i += TKV_VW) {
        TKV_VSTORE(x + i, TKV_VMUL(TKV_VLOAD(x + i), vs));
    }
}

/* ---------------------------------------------------------------------------------
 * matvec: four rows per pass share each load of x; matvec_t: y += x[r] * row r for
 * four rows per pass, so y is loaded and stored once per four rows.
 * --------------------------------------------------------------------------------- */

static void TKV_FN(matvec)(const float *m, const float *x, uint32_t rows, uint32_t cols, float *y) {
    const uint32_t cv = cols / TKV_VW * TKV_VW;
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = m + (size_t)r * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;
        TKV_VF a0 = TKV_VZERO(), a1 = TKV_VZERO(), a2 = TKV_VZERO(), a3 = TKV_VZERO();
        for (uint32_t c = 0; c < cv; c += TKV_VW) {
            const TKV_VF xv = TKV_VLOAD(x + c);
            a0 = TKV_VFMA(TKV_VLOAD(r0 + c), xv, a0);
            a1 = TKV_VFMA(TKV_VLOAD(r1 + c), xv, a1);
            a2 = TKV_VFMA(TKV_VLOAD(r2 + c), xv, a2);
            a3 = TKV_VFMA(TKV_VLOAD(r3 + c), xv, a3);
        }
#if TKV_MASKED_TAIL
        if (cv < cols) {
            const TKV_VMASK k = TKV_VMASK_N(cols - cv);
            const TKV_VF xv = TKV_VMLOAD(k, x + cv);
            a0 = TKV_VFMA(TKV_VMLOAD(k, r0 + cv), xv, a0);
            a1 = TKV_VFMA(TKV_VMLOAD(k, r1 + cv), xv, a1);
            a2 = TKV_VFMA(TKV_VMLOAD(k, r2 + cv), xv, a2);
            a3 = TKV_VFMA(TKV_VMLOAD(k, r3 + cv), xv, a3);
        }
        y[r] = TKV_VHSUM(a0);
        y[r + 1] = TKV_VHSUM(a1);
        y[r + 2] = TKV_VHSUM(a2);
        y[r + 3] = TKV_VHSUM(a3);
#else
        float s0 = TKV_VHSUM(a0), s1 = TKV_VHSUM(a1), s2 = TKV_VHSUM(a2), s3 = TKV_VHSUM(a3);
        for (uint32_t c = cv; c < cols; c++) {
            s0 += r0[c] * x[c];
            s1 += r1[c] * x[c];
            s2 += r2[c] * x[c];
            s3 += r3[c] * x[c];
        }
        y[r] = s0;
        y[r + 1] = s1;
        y[r + 2] = s2;
        y[r + 3] = s3;
#endif
    }
    for (; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        TKV_VF a = TKV_VZERO();
        for (uint32_t c = 0; c < cv; c += TKV_VW) {
            a = TKV_VFMA(TKV_VLOAD(row + c), TKV_VLOAD(x + c), a);
        }
#if TKV_MASKED_TAIL
        if (cv < cols) {
            const TKV_VMASK k = TKV_VMASK_N(cols - cv);
            a = TKV_VFMA(TKV_VMLOAD(k, row + cv), TKV_VMLOAD(k, x + cv), a);
        }
        y[r] = TKV_VHSUM(a);
#else
        float s = TKV_VHSUM(a);
        for (uint32_t c = cv; c < cols; c++) {
            s += row[c] * x[c];
        }
        y[r] = s;
#endif
    }
}

static void TKV_FN(matvec_t)(const float *m, const float *x, uint32_t rows, uint32_t cols,
                             float *y) {
    const uint32_t cv = cols / TKV_VW * TKV_VW;
    memset(y, 0, cols * sizeof *y);
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = m + (size_t)r * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;
        const TKV_VF x0 = TKV_VSET1(x[r]), x1 = TKV_VSET1(x[r + 1]);
        const TKV_VF x2 = TKV_VSET1(x[r + 2]), x3 = TKV_VSET1(x[r + 3]);
        for (uint32_t c = 0; c < cv; c += TKV_VW) {
            TKV_VF a = TKV_VLOAD(y + c);
            a = TKV_VFMA(x0, TKV_VLOAD(r0 + c), a);
            a = TKV_VFMA(x1, TKV_VLOAD(r1 + c), a);
            a = TKV_VFMA(x2, TKV_VLOAD(r2 + c), a);
            a = TKV_VFMA(x3, TKV_VLOAD(r3 + c), a);
            TKV_VSTORE(y + c, a);
        }
#if TKV_MASKED_TAIL
        if (cv < cols) {
            const TKV_VMASK k = TKV_VMASK_N(cols - cv);
            TKV_VF a = TKV_VMLOAD(k, y + cv);
            a = TKV_VFMA(x0, TKV_VMLOAD(k, r0 + cv), a);
            a = TKV_VFMA(x1, TKV_VMLOAD(k, r1 + cv), a);
            a = TKV_VFMA(x2, TKV_VMLOAD(k, r2 + cv), a);
            a = TKV_VFMA(x3, TKV_VMLOAD(k, r3 + cv), a);
            TKV_VMSTORE(y + cv, k, a);
        }
#else
        for (uint32_t c = cv; c < cols; c++) {
            y[c] += x[r] * r0[c] + x[r + 1] * r1[c] + x[r + 2] * r2[c] + x[r + 3] * r3[c];
        }
#endif
    }
    for (; r < rows; r++) {
        const float *row = m + (size_t)r * cols;
        const TKV_VF xr = TKV_VSET1(x[r]);
        for (uint32_t c = 0; c < cv; c += TKV_VW) {
            TKV_VSTORE(y + c, TKV_VFMA(xr, TKV_VLOAD(row + c), TKV_VLOAD(y + c)));
        }
#if TKV_MASKED_TAIL
        if (cv < cols) {
            const TKV_VMASK k = TKV_VMASK_N(cols - cv);
            TKV_VMSTORE(y + cv, k, TKV_VFMA(xr, TKV_VMLOAD(k, row + cv), TKV_VMLOAD(k, y + cv)));
        }
#else
        for (uint32_t c = cv; c < cols; c++) {
            y[c] += x[r] * row[c];
        }
#endif
    }
}

/* ---------------------------------------------------------------------------------
 * softmax with a vectorized exp.  exp(x) = 2^k * exp(r), k = round(x / ln 2),
 * r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in a high and a low part so r is exact
 * to float precision), exp(r) by its degree-6 Taylor polynomial (error < 2e-8 on that
 * interval), and 2^k applied to the exponent.  Inputs below -87 give 0, as expf's
 * subnormal results do not matter next to the maximum's 1.
 * --------------------------------------------------------------------------------- */

static inline TKV_VF tkv_vexp(TKV_VF x) {
    x = TKV_VMAX(x, TKV_VSET1(-87.0f));
    const TKV_VF k = TKV_VROUND(TKV_VMUL(x, TKV_VSET1(1.44269504089f)));
    TKV_VF r = TKV_VFNMA(k, TKV_VSET1(0.693145751953125f), x);
    r = TKV_VFNMA(k, TKV_VSET1(1.428606765330187e-06f), r);
    TKV_VF p = TKV_VSET1(1.0f / 720.0f);
    p = TKV_VFMA(p, r, TKV_VSET1(1.0f / 120.0f));
    p = TKV_VFMA(p, r, TKV_VSET1(1.0f / 24.0f));
    p = TKV_VFMA(p, r, TKV_VSET1(1.0f / 6.0f));
    p = TKV_VFMA(p, r, TKV_VSET1(0.5f));
    p = TKV_VFMA(p, r, TKV_VSET1(1.0f));
    p = TKV_VFMA(p, r, TKV_VSET1(1.0f));
    return tkv_exp2i(p, k);
}

static float TKV_FN(softmax)(float *x, size_t n, float scale) {
    const TKV_VF vs = TKV_VSET1(scale);
    TKV_VF vmax = TKV_VSET1(-INFINITY);
    size_t i = 0;
    for (; i + TKV_VW <= n; i += TKV_VW) {
        const TKV_VF v = TKV_VMUL(TKV_VLOAD(x + i), vs);
        TKV_VSTORE(x + i, v);
        vmax = TKV_VMAX(vmax, v);
    }
    float mx = TKV_VHMAX(vmax);
    for (; i < n; i++) {
        x[i] *= scale;
        mx = x[i] > mx ? x[i] : mx;
    }
    const TKV_VF vm = TKV_VSET1(mx);
    TKV_VF vsum = TKV_VZERO();
    for (i = 0; i + TKV_VW <= n; i += TKV_VW) {
        const TKV_VF e = tkv_vexp(TKV_VSUB(TKV_VLOAD(x + i), vm));
        TKV_VSTORE(x + i, e);
        vsum = TKV_VADD(vsum, e);
    }
#if TKV_MASKED_TAIL
    if (i < n) {
        const TKV_VMASK k = TKV_VMASK_N((uint32_t)(n - i));
        const TKV_VF e = tkv_vexp(TKV_VSUB(TKV_VMLOAD(k, x + i), vm));
        TKV_VMSTORE(x + i, k, e);
        vsum = TKV_VADD(vsum, TKV_VMKEEP(k, e));
    }
    const float sum = TKV_VHSUM(vsum);
#else
    float sum = TKV_VHSUM(vsum);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
#endif
    const float inv = 1.0f / sum;
    const TKV_VF vinv = TKV_VSET1(inv);
    for (i = 0; i + TKV_VW <= n; i += TKV_VW) {
        TKV_VSTORE(x + i, TKV_VMUL(TKV_VLOAD(x + i), vinv));
    }
#if TKV_MASKED_TAIL
    if (i < n) {
        const TKV_VMASK k = TKV_VMASK_N((uint32_t)(n - i));
        TKV_VMSTORE(x + i, k, TKV_VMUL(TKV_VMLOAD(k, x + i), vinv));
    }
#else
    for (; i < n; i++) {
        x[i] *= inv;
    }
#endif
    return mx + logf(sum);
}

#undef TKV_ROW_KERNELS
#undef TKV_BLOCK_REGS
#undef TKV_BLOCK_CHAINS
