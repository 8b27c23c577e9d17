/*
 * kernels_trellis_step_body.h - the trellis encoder's Viterbi step (kernels.h,
 * trellis_step) written once for any vector width, included by kernels_trellis_avx2.c and
 * kernels_trellis_avx512.c after defining
 *
 *   TKV_STEP(name)      the variant's name for a function (tkv_<name>_avx2, ...)
 *   TKV_LANES           states per vector (8 or 16)
 *   TKV_VF, TKV_VI      float and int32 vector types
 *   TKV_F_SET1(x), TKV_F_LOAD(p), TKV_F_SUB(a, b), TKV_F_MUL(a, b), TKV_F_ADD(a, b)
 *   TKV_I_SET1(x), TKV_I_AND(a, b), TKV_I_MINU(a, b) (unsigned min), TKV_F_BITS(v)
 *   TKV_KEY(c, low, a)  (bits of c & ~low) | a
 *   TKV_I_STORE(p, v)   store the lanes; TKV_STORE_BYTES(p, v) their low bytes
 *   TKV_PRED_LOCALS     declarations the next two use (may be empty)
 *   TKV_PRED_SETUP(cost, N, P, pred)  prepares the predecessor costs, returns R = S / K
 *                       (or 1): tkv_kc_trellis_preds's pred array, or registers
 *   TKV_PRED(pred, R, cost, a, s0)  the predecessor costs of states s0.. for dropped
 *                       symbol a
 *
 * The operations are the scalar step's (product, then sum, then the unsigned min of the
 * keys), so every width produces the scalar bits.
 */

TKV_INLINE void TKV_STEP(trellis_step_n)(const float *tab, float x, const float *cost, float *next,
                                         uint8_t *back, const uint32_t N, const uint32_t P) {
    const uint32_t S = 1u << P, K = 1u << N;
    float pred[64];
    TKV_PRED_LOCALS
    const uint32_t R = TKV_PRED_SETUP(cost, N, P, pred);
    const TKV_VF xv = TKV_F_SET1(x);
    const TKV_VI low = TKV_I_SET1((int)(K - 1u));
    for (uint32_t s0 = 0; s0 < S; s0 += TKV_LANES) {
        TKV_VI best = TKV_I_SET1(-1);
        for (uint32_t a = 0; a < K; a++) {
            const TKV_VF pv = TKV_PRED(pred, R, cost, a, s0);
            const TKV_VF e = TKV_F_SUB(xv, TKV_F_LOAD(tab + (size_t)a * S + s0));
            const TKV_VF c = TKV_F_ADD(pv, TKV_F_MUL(e, e));
            best = TKV_I_MINU(best, TKV_KEY(TKV_F_BITS(c), low, TKV_I_SET1((int)a)));
        }
        TKV_I_STORE(next + s0, TKV_I_ANDNOT(low, best));
        TKV_STORE_BYTES(back + s0, TKV_I_AND(best, low));
    }
}

/* The step for the codec's width (literal N and P), scalar where a width has fewer states
 * than one vector. */
void TKV_STEP(trellis_step)(const tkv_trellis *t, float x, const float *cost, float *next,
                            uint8_t *back) {
    if ((1u << t->state_bits) % TKV_LANES != 0) {
        tkv_trellis_step_scalar(t, x, cost, next, back);
        return;
    }
    switch (t->bits) {
    case 2:
        TKV_STEP(trellis_step_n)(t->table, x, cost, next, back, 2, 2 * (TKV_TRELLIS_WINDOW_2 - 1));
        break;
    case 3:
        TKV_STEP(trellis_step_n)(t->table, x, cost, next, back, 3, 3 * (TKV_TRELLIS_WINDOW_3 - 1));
        break;
    case 4:
        TKV_STEP(trellis_step_n)(t->table, x, cost, next, back, 4, 4 * (TKV_TRELLIS_WINDOW_4 - 1));
        break;
    default:
        tkv_trellis_step_scalar(t, x, cost, next, back);
        break;
    }
}
