/*
 * trellis.c - Viterbi search of the tail-biting bit-shift trellis (trellis.h).
 *
 * States are the m - 1 most recent symbols, state = w >> N after window w.  One step
 * over coordinate x extends every state by a symbol: the window w = (new state) << N |
 * (dropped oldest symbol a) costs cost[w mod 2^P] + (x - value(w))^2, and each new
 * state keeps its cheapest a.  The steps are a kernel (tkv_codec_kernels.trellis_forward:
 * every ISA writes the scalar step's bits) that keeps, per step and state, the least key
 * (kept cost | dropped symbol), states in the order of tkv_trellis_lane_state; the
 * backtrace reads the symbols from them.
 *
 * Tail-biting (the first window's older symbols are the last symbols of the stream, so
 * no bits are spent on a start state): a first search over the 32 coordinates around
 * the wrap point (the last 16, then the first 16) with a free start picks the state at
 * the wrap; the full search then starts from that state and must end in it.  This is
 * the two-pass heuristic of QTIP (Tseng et al. 2024), not the exact tail-biting optimum;
 * a 16-coordinate first pass measured 2% more error than 32 at 3 bits, d = 64.
 */
#include "codec/trellis.h"

#include <float.h>
#include <pthread.h>
#include <string.h>

#include "codec/kernels.h"
#include "codec/trellis_tables.h"

/* the levels in the search's order (tkv_trellis.search_table), filled once */
static float tkv_trellis_search_2[sizeof tkv_trellis_table_2 / sizeof(float)];
static float tkv_trellis_search_3[sizeof tkv_trellis_table_3 / sizeof(float)];
static float tkv_trellis_search_4[sizeof tkv_trellis_table_4 / sizeof(float)];
static pthread_once_t tkv_trellis_once = PTHREAD_ONCE_INIT;

/* bits N: window of m symbols, 2^(N (m - 1)) states, table, int8 table and its scale, the
 * levels in the search's order */
#define TKV_TRELLIS_DEF(N)                                                                         \
    {N,                                                                                            \
     TKV_TRELLIS_WINDOW_##N,                                                                       \
     N * (TKV_TRELLIS_WINDOW_##N - 1),                                                             \
     N * TKV_TRELLIS_WINDOW_##N,                                                                   \
     tkv_trellis_table_##N,                                                                        \
     tkv_trellis_q8_##N,                                                                           \
     TKV_TRELLIS_Q8_SCALE_##N,                                                                     \
     tkv_trellis_search_##N}
static const tkv_trellis tkv_trellis_2 = TKV_TRELLIS_DEF(2);
static const tkv_trellis tkv_trellis_3 = TKV_TRELLIS_DEF(3);
static const tkv_trellis tkv_trellis_4 = TKV_TRELLIS_DEF(4);
#undef TKV_TRELLIS_DEF

/* the decoders take the wrap-around bits from one byte (P < 8); the encoder's arrays
 * hold 2^P <= 64 states */
_Static_assert(2 * (TKV_TRELLIS_WINDOW_2 - 1) < 8 && 3 * (TKV_TRELLIS_WINDOW_3 - 1) < 8 &&
                   4 * (TKV_TRELLIS_WINDOW_4 - 1) < 8,
               "trellis state must fit in fewer than 8 bits");

_Static_assert(sizeof tkv_trellis_table_2 / sizeof(float) == 1u << (2 * TKV_TRELLIS_WINDOW_2) &&
                   sizeof tkv_trellis_table_3 / sizeof(float) == 1u << (3 * TKV_TRELLIS_WINDOW_3) &&
                   sizeof tkv_trellis_table_4 / sizeof(float) == 1u << (4 * TKV_TRELLIS_WINDOW_4),
               "trellis tables do not match the window sizes");

/* tkv_trellis_lane_state's orders are written for these state counts */
_Static_assert(2 * (TKV_TRELLIS_WINDOW_2 - 1) == 6 && 3 * (TKV_TRELLIS_WINDOW_3 - 1) == 6 &&
                   4 * (TKV_TRELLIS_WINDOW_4 - 1) == 4,
               "the search's state orders assume 64 states at 2 and 3 bits, 16 at 4 bits");

#define TKV_TRELLIS_WRAP_SPAN 32

static void tkv_trellis_fill_search(const tkv_trellis *t, float *out) {
    const uint32_t N = t->bits, S = 1u << t->state_bits, K = 1u << N;
    for (uint32_t g = 0; g < S / 8; g++) {
        for (uint32_t a = 0; a < K; a++) {
            for (uint32_t l = 0; l < 8; l++) {
                out[(g * K + a) * 8 + l] = t->table[a * S + tkv_trellis_lane_state(N, g, l)];
            }
        }
    }
}

static void tkv_trellis_init(void) {
    tkv_trellis_fill_search(&tkv_trellis_2, tkv_trellis_search_2);
    tkv_trellis_fill_search(&tkv_trellis_3, tkv_trellis_search_3);
    tkv_trellis_fill_search(&tkv_trellis_4, tkv_trellis_search_4);
}

const tkv_trellis *tkv_trellis_get(uint32_t bits) {
    pthread_once(&tkv_trellis_once, tkv_trellis_init);
    switch (bits) {
    case 2:
        return &tkv_trellis_2;
    case 3:
        return &tkv_trellis_3;
    case 4:
        return &tkv_trellis_4;
    default:
        return NULL;
    }
}

int tkv_trellis_dim_valid(uint32_t d) {
    return d >= 16 && d % 8 == 0;
}

uint32_t tkv_trellis_window_at(const tkv_trellis *t, const uint8_t *stream, uint32_t d,
                               uint32_t j) {
    const uint32_t total = d * t->bits;
    /* first bit of symbol j - m + 1, mod total (added before subtracting: unsigned) */
    const uint32_t start = (j * t->bits + total - t->state_bits) % total;
    uint32_t w = 0;
    for (uint32_t b = 0; b < t->window_bits; b++) {
        const uint32_t p = (start + b) % total;
        w |= (uint32_t)((stream[p >> 3] >> (p & 7)) & 1u) << b;
    }
    return w;
}

/* sym[j] for j = n - 1 down to j_stop, from the state at position i after step n - 1,
 * each step's key giving the symbol its state dropped. */
static inline void tkv_trellis_backtrace(const uint32_t *keys, const uint32_t N, const uint32_t S,
                                         uint32_t n, uint32_t j_stop, uint32_t i, uint8_t *sym) {
    for (uint32_t j = n; j-- > j_stop;) {
        const uint32_t a = keys[(size_t)j * S + i] & ((1u << N) - 1u);
        sym[j] = (uint8_t)tkv_trellis_lane_newest(N, i);
        i = tkv_trellis_lane_pred(N, i, a);
    }
}

/*
 * Least-error path over x[0..n): start_state < 0 lets the path start anywhere,
 * otherwise it starts in start_state and must end in it.  sym[j] gets symbol j for
 * j >= j_stop (the backtrace stops there).  keys: n 2^P words.
 */
static void tkv_trellis_search(const tkv_trellis *t, tkv_trellis_forward_fn forward, const float *x,
                               uint32_t n, int start_state, uint32_t *keys, uint8_t *sym,
                               uint32_t j_stop) {
    const uint32_t N = t->bits, P = t->state_bits;
    const uint32_t S = 1u << P;
    float cost[64];
    for (uint32_t i = 0; i < S; i++) {
        cost[i] = start_state < 0 ? 0.0f : FLT_MAX / 4;
    }
    if (start_state >= 0) {
        cost[tkv_trellis_lane_pos(N, (uint32_t)start_state)] = 0.0f;
    }
    forward(t, x, n, cost, keys);
    /* the end state: the given one, or the least cost's (the smallest state among equal
     * costs; state 0 is at position 0) */
    uint32_t i = start_state < 0 ? 0 : tkv_trellis_lane_pos(N, (uint32_t)start_state);
    for (uint32_t k = 1; start_state < 0 && k < S; k++) {
        if (cost[k] < cost[i] ||
            (cost[k] == cost[i] &&
             tkv_trellis_lane_state(N, k / 8, k % 8) < tkv_trellis_lane_state(N, i / 8, i % 8))) {
            i = k;
        }
    }
    switch (N) { /* literal widths: the walk's arithmetic folds */
    case 2:
        tkv_trellis_backtrace(keys, 2, S, n, j_stop, i, sym);
        break;
    case 3:
        tkv_trellis_backtrace(keys, 3, S, n, j_stop, i, sym);
        break;
    default:
        tkv_trellis_backtrace(keys, 4, S, n, j_stop, i, sym);
        break;
    }
}

void tkv_trellis_encode(const tkv_trellis *t, const float *u, uint32_t d, uint8_t *stream,
                        float *uhat, uint8_t *scratch) {
    tkv_trellis_encode_with(t, tkv_codec_kernels_active()->trellis_forward, u, d, stream, uhat,
                            scratch);
}

void tkv_trellis_encode_with(const tkv_trellis *t, tkv_trellis_forward_fn forward, const float *u,
                             uint32_t d, uint8_t *stream, float *uhat, uint8_t *scratch) {
    const uint32_t N = t->bits, m = t->window;
    /* the keys, 64-byte aligned (the scratch has the slack) */
    uint32_t *keys = (uint32_t *)(void *)(scratch + ((64 - (uintptr_t)scratch % 64) % 64));
    uint8_t sym[1024]; /* d <= TKV_HEAD_DIM_MAX */
    float wrap_x[TKV_TRELLIS_WRAP_SPAN] = {0};
    uint8_t wrap_sym[TKV_TRELLIS_WRAP_SPAN] = {0};

    /* pass 1: the state at the wrap point, from the coordinates around it */
    const uint32_t span = d < TKV_TRELLIS_WRAP_SPAN ? d : TKV_TRELLIS_WRAP_SPAN;
    const uint32_t half = span / 2;
    for (uint32_t i = 0; i < span; i++) {
        wrap_x[i] = u[(d - half + i) % d];
    }
    tkv_trellis_search(t, forward, wrap_x, span, -1, keys, wrap_sym, half - (m - 1));
    uint32_t start = 0; /* symbols d-m+1 .. d-1, oldest in the low bits */
    for (uint32_t i = 0; i + 1 < m; i++) {
        start |= (uint32_t)wrap_sym[half - (m - 1) + i] << (N * i);
    }
    /* pass 2: the full circle from that state back to it */
    tkv_trellis_search(t, forward, u, d, (int)start, keys, sym, 0);

    memset(stream, 0, d * N / 8);
    for (uint32_t j = 0; j < d; j++) {
        const uint32_t p = j * N; /* N divides 8 or not: a symbol may straddle two bytes */
        stream[p >> 3] |= (uint8_t)(sym[j] << (p & 7));
        if ((p & 7) + N > 8) {
            stream[(p >> 3) + 1] |= (uint8_t)(sym[j] >> (8 - (p & 7)));
        }
    }
    /* the reconstruction from the symbols in hand (the bit-wise stream reader is the
     * tests' reference): a rolling window, oldest symbol in the low bits, starting from
     * the last m - 1 symbols (tail-biting) */
    uint32_t w = 0;
    for (uint32_t k = 0; k + 1 < m; k++) {
        w |= (uint32_t)sym[d - (m - 1) + k] << (N * (k + 1));
    }
    for (uint32_t j = 0; j < d; j++) {
        w = (w >> N) | ((uint32_t)sym[j] << (N * (m - 1)));
        uhat[j] = t->table[tkv_trellis_slot(t, w)];
    }
}
