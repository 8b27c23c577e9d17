/*
 * codebook.c - Lloyd-Max quantizers of N(0,1), solved by Lloyd iteration.
 *
 * For a symmetric density the optimal 2^b-level quantizer satisfies (Max 1960):
 *   boundary t_k = (c_k + c_{k+1}) / 2                       (nearest neighbour)
 *   centroid c_k = E[x | t_{k-1} < x <= t_k]
 *               = (phi(t_{k-1}) - phi(t_k)) / (Phi(t_k) - Phi(t_{k-1}))   (centroid)
 * We alternate the two until no centroid moves by more than 1e-13, in double.
 * The distortion at the fixed point is 1 - sum_k P_k c_k^2 (x has unit variance
 * and each c_k is the mean of its cell).  TurboQuant scales the rotated unit
 * vector by sqrt(head_dim), which makes each coordinate close to N(0,1).
 */
#include "codec/codebook.h"

#include <math.h>
#include <pthread.h>

static tkv_codebook tkv_codebooks[TKV_CODEBOOK_MAX_BITS + 1];
static pthread_once_t tkv_codebooks_once = PTHREAD_ONCE_INIT;

static double tkv_normal_pdf(double x) { return exp(-0.5 * x * x) * 0.39894228040143267794; }

/* Phi(x), written with erfc so that the tails keep their relative precision */
static double tkv_normal_cdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }

static void tkv_lloyd_max(tkv_codebook *cb, uint32_t bits) {
    const int n = 1 << bits;
    double c[32], t[33];
    /* start from evenly spaced levels over [-3, 3]; Lloyd converges from any ordered start */
    for (int k = 0; k < n; k++) {
        c[k] = n == 1 ? 0.0 : -3.0 + 6.0 * (k + 0.5) / n;
    }
    int iters_used = -1;
    for (int iter = 0; iter < 200000; iter++) {
        t[0] = -INFINITY;
        t[n] = INFINITY;
        for (int k = 1; k < n; k++) {
            t[k] = 0.5 * (c[k - 1] + c[k]);
        }
        double moved = 0.0;
        for (int k = 0; k < n; k++) {
            double pa = isinf(t[k]) ? 0.0 : tkv_normal_pdf(t[k]);
            double pb = isinf(t[k + 1]) ? 0.0 : tkv_normal_pdf(t[k + 1]);
            double mass = tkv_normal_cdf(t[k + 1]) - tkv_normal_cdf(t[k]);
            double nc = (pa - pb) / mass;
            moved = fmax(moved, fabs(nc - c[k]));
            /* Plain Lloyd contracts slowly here (rate near 1 at 4-5 bits); over-relaxing
             * the step keeps the same fixed point and reaches it far sooner. */
            c[k] = c[k] + 1.8 * (nc - c[k]);
        }
        if (moved < 1e-14) {
            iters_used = iter;
            break;
        }
    }
    double explained = 0.0;
    for (int k = 1; k < n; k++) {
        t[k] = 0.5 * (c[k - 1] + c[k]);
    }
    t[0] = -INFINITY;
    t[n] = INFINITY;
    for (int k = 0; k < n; k++) {
        double mass = tkv_normal_cdf(t[k + 1]) - tkv_normal_cdf(t[k]);
        explained += mass * c[k] * c[k];
    }
    cb->bits = bits;
    cb->n = (uint32_t)n;
    for (int k = 0; k < n; k++) {
        cb->centroids[k] = (float)c[k];
    }
    for (int k = 0; k + 1 < n; k++) {
        cb->boundaries[k] = (float)t[k + 1];
    }
    cb->distortion = 1.0 - explained;
    cb->iterations = iters_used;
}

static void tkv_codebooks_init(void) {
    for (uint32_t b = 1; b <= TKV_CODEBOOK_MAX_BITS; b++) {
        tkv_lloyd_max(&tkv_codebooks[b], b);
    }
}

const tkv_codebook *tkv_codebook_get(uint32_t bits) {
    if (bits < 1 || bits > TKV_CODEBOOK_MAX_BITS) {
        return 0;
    }
    pthread_once(&tkv_codebooks_once, tkv_codebooks_init);
    return &tkv_codebooks[bits];
}
