/*
 * kernels_trellis_step_body.h - the trellis encoder's Viterbi steps (kernels.h,
 * trellis_forward) written once in 256-bit vectors, included by kernels_trellis_avx2.c
 * and kernels_trellis_avx512.c (whose flags give the compiler 32 registers and embedded
 * broadcasts) after defining
 *
 *   TKV_STEP(name)       the variant's name for a function (tkv_<name>_avx2, ...)
 *   TKV_KEY(c, low, a)   (c & ~low) | a on 8 int32 lanes
 *
 * Eight states per vector in the search's order (trellis.h, tkv_trellis_lane_state), so
 * that the predecessor cost of a candidate is one broadcast from the previous step's
 * costs (two at 2 bits) and its level one load from the reordered table: per candidate a
 * subtraction, a product, a sum (the scalar step's operations: no fused multiply-add),
 * the key and an unsigned min, with the costs of one step in a small buffer the next
 * step reads.  The least keys go to the caller's array whole (no packing: the backtrace
 * reads their low bits).
 *
 * Eight lanes under AVX-512 too: 16 would hold states of two predecessor groups per
 * vector, and on Zen 4 a 512-bit operation is two 256-bit ones.
 */

static inline __attribute__((always_inline)) void
TKV_STEP(trellis_forward_n)(const float *lt, const float *x, uint32_t n, float *cost,
                            uint32_t *keys, const uint32_t N, const uint32_t P) {
    const uint32_t S = 1u << P, K = 1u << N;
    _Alignas(32) float buf[2][64];
    memcpy(buf[0], cost, S * sizeof(float));
    const __m256i low = _mm256_set1_epi32((int)(K - 1u));
    for (uint32_t j = 0; j < n; j++) {
        const float *cur = buf[j & 1];
        float *next = buf[(j + 1) & 1];
        uint32_t *key = keys + (size_t)j * S;
        const __m256 xv = _mm256_set1_ps(x[j]);
#pragma GCC unroll 8
        for (uint32_t g = 0; g < S / 8; g++) {
            /* the predecessors of lanes 0-3 and 4-7 for symbol a: states s0 | a and s4 | a */
            const uint32_t s0 = tkv_trellis_lane_state(N, g, 0) << N;
            const uint32_t s4 = tkv_trellis_lane_state(N, g, 4) << N;
            __m256i best0 = low, best1 = low;
#pragma GCC unroll 16
            for (uint32_t a = 0; a < K; a++) {
                const uint32_t lo = tkv_trellis_lane_pos(N, (s0 | a) & (S - 1));
                const uint32_t hi = tkv_trellis_lane_pos(N, (s4 | a) & (S - 1));
                const __m256 p =
                    lo == hi
                        ? _mm256_broadcast_ss(cur + lo)
                        : _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(cur + lo)),
                                               _mm_broadcast_ss(cur + hi), 1);
                const __m256 e = _mm256_sub_ps(xv, _mm256_loadu_ps(lt + (size_t)(g * K + a) * 8));
                const __m256 c = _mm256_add_ps(p, _mm256_mul_ps(e, e));
                const __m256i k = TKV_KEY(_mm256_castps_si256(c), low, _mm256_set1_epi32((int)a));
                /* two running minima: a shorter chain of dependent operations */
                if (a == 0) {
                    best0 = k;
                } else if (a == 1) {
                    best1 = k;
                } else if (a % 2 == 0) {
                    best0 = _mm256_min_epu32(best0, k);
                } else {
                    best1 = _mm256_min_epu32(best1, k);
                }
            }
            const __m256i best = _mm256_min_epu32(best0, best1);
            _mm256_storeu_si256((__m256i *)(void *)(key + 8 * g), best);
            _mm256_store_ps(next + 8 * g, _mm256_castsi256_ps(_mm256_andnot_si256(low, best)));
        }
    }
    memcpy(cost, buf[n & 1], S * sizeof(float));
}

/* The steps for the codec's width (literal N and P, so the loops unroll). */
void TKV_STEP(trellis_forward)(const tkv_trellis *t, const float *x, uint32_t n, float *cost,
                               uint32_t *keys) {
    switch (t->bits) {
    case 2:
        TKV_STEP(trellis_forward_n)
        (t->search_table, x, n, cost, keys, 2, 2 * (TKV_TRELLIS_WINDOW_2 - 1));
        break;
    case 3:
        TKV_STEP(trellis_forward_n)
        (t->search_table, x, n, cost, keys, 3, 3 * (TKV_TRELLIS_WINDOW_3 - 1));
        break;
    case 4:
        TKV_STEP(trellis_forward_n)
        (t->search_table, x, n, cost, keys, 4, 4 * (TKV_TRELLIS_WINDOW_4 - 1));
        break;
    default:
        tkv_trellis_forward_scalar(t, x, n, cost, keys);
        break;
    }
}
