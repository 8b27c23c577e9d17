/*
 * trellis.h - the tail-biting bit-shift trellis quantizer of the turbo_kv_Nb_tcq codecs.
 *
 * A vector of d coordinates (d a multiple of 8, >= 16) is coded as d symbols of N bits,
 * symbol j at bits [N j, N j + N) of a little-endian bit stream.  Coordinate j is
 * reconstructed from the window of the last m symbols, read circularly:
 *     w_j = s_{j-m+1} | s_{j-m+2} << N | ... | s_j << (m-1)N      (indices mod d)
 *     value_j = table[tkv_trellis_slot(w_j)]
 * so neighbouring coordinates share symbols and the code is a path through a trellis
 * of 2^((m-1)N) states; the encoder finds the path of least squared error by Viterbi
 * search (trellis-coded quantization, Marcellin & Fischer 1990; the bit-shift form,
 * where a coordinate's window is a plain bit field of the stream, follows QTIP,
 * Tseng et al. 2024).  At the same N bits per coordinate the quantizer reaches ~0.56-0.63x
 * the mean squared error of the Lloyd-Max scalar quantizer on rotated Gaussian-like input
 * (free start, no rescaling: tools/gen_trellis_tables.py); the codec, tail-biting and
 * norm-preserving, measures 0.64-0.70x (docs/CODECS.md).
 */
#ifndef TKV_CODEC_TRELLIS_H
#define TKV_CODEC_TRELLIS_H

#include <stddef.h>
#include <stdint.h>

/* Symbols per window m of the N-bit quantizers (tables: tools/gen_trellis_tables.py) */
#define TKV_TRELLIS_WINDOW_2 4
#define TKV_TRELLIS_WINDOW_3 3
#define TKV_TRELLIS_WINDOW_4 2

typedef struct tkv_trellis {
    uint32_t bits;        /* N: bits per symbol (2, 3 or 4) */
    uint32_t window;      /* m: symbols per window */
    uint32_t state_bits;  /* P = (m - 1) N, < 8 */
    uint32_t window_bits; /* L = m N */
    const float *table;   /* 2^L reconstruction levels, in slot order: q8[w] * q8_scale */
    const int8_t *q8;     /* the same levels as int8, in window order (index = w) */
    float q8_scale;       /* float value of one int8 step */
    /* the levels again in the search's order: for lane group g, dropped symbol a and lane l,
     * search_table[(g 2^N + a) 8 + l] = table[a 2^P + tkv_trellis_lane_state(N, g, l)] */
    const float *search_table;
} tkv_trellis;

/* The quantizer of N-bit symbols, NULL for widths without one. */
const tkv_trellis *tkv_trellis_get(uint32_t bits);

/* 1 if head_dim d can be coded (a multiple of 8, >= 16). */
int tkv_trellis_dim_valid(uint32_t d);

/* Table slot of window w: grouped by the oldest symbol (w mod 2^N), then by the newer
 * m - 1 symbols, so that one encoder step reads the table contiguously. */
static inline uint32_t tkv_trellis_slot(const tkv_trellis *t, uint32_t w) {
    return (w >> t->bits) | ((w & ((1u << t->bits) - 1u)) << t->state_bits);
}

/*
 * The search's state order.  The encoder's Viterbi steps hold the 2^P path costs in
 * groups of 8 states ("lanes"), state tkv_trellis_lane_state(N, g, l) at position 8 g + l,
 * chosen so that the 8 states of a group reach their predecessor for a dropped symbol a,
 * ((s << N) | a) mod 2^P, from one state (N = 4, 3) or from one state per half group
 * (N = 2; a state of 6 bits has only 4 successors per symbol): one broadcast per
 * candidate instead of a gather.  N = 4 (16 states): natural order; N = 3: the 8 states
 * of a group share their low symbol; N = 2: lanes 0-3 and 4-7 each share their low 4 bits.
 */
static inline uint32_t tkv_trellis_lane_state(uint32_t N, uint32_t g, uint32_t l) {
    return N == 4 ? 8 * g + l : N == 3 ? 8 * l + g : 16 * (l & 3) + 2 * g + (l >> 2);
}

/* Position 8 g + l of state s in the search's order (the inverse of the above). */
static inline uint32_t tkv_trellis_lane_pos(uint32_t N, uint32_t s) {
    return N == 4 ? s : N == 3 ? 8 * (s & 7) + (s >> 3) : 4 * (s & 15) + (s >> 4);
}

/* For the state at position i of the search's order: its newest symbol (the coded symbol
 * of the step that reached it) and the position of its predecessor when it dropped symbol
 * a, ((state << N) | a) mod 2^P (the backtrace's walk, trellis.c). */
static inline uint32_t tkv_trellis_lane_newest(uint32_t N, uint32_t i) {
    return N == 4 ? i : N == 3 ? i & 7 : i & 3;
}

static inline uint32_t tkv_trellis_lane_pred(uint32_t N, uint32_t i, uint32_t a) {
    return N == 4 ? a : N == 3 ? 8 * a + (i >> 3) : 16 * ((i >> 2) & 3) + 4 * a + (i >> 4);
}

/* Window j of a coded stream of d symbols (reference form: bit by bit, circular). */
uint32_t tkv_trellis_window_at(const tkv_trellis *t, const uint8_t *stream, uint32_t d, uint32_t j);

/* Bytes of scratch tkv_trellis_encode needs for d coordinates: the search's keys of every
 * step (d arrays of up to 64) and 64 bytes of alignment. */
#define TKV_TRELLIS_SCRATCH_BYTES(d) ((size_t)(d)*64 * sizeof(uint32_t) + 64)

/* The Viterbi steps over x[0..n) (kernels.h, trellis_forward): cost holds the 2^P path
 * costs before the first step and gets those after the last, keys gets n arrays of 2^P
 * (the least key of each state at each step), both in the search's order. */
typedef void (*tkv_trellis_forward_fn)(const tkv_trellis *t, const float *x, uint32_t n,
                                       float *cost, uint32_t *keys);

/* Code u (d coordinates, ~unit variance each, finite) into stream (d N / 8 bytes): the
 * tail-biting path of least squared error (search described in trellis.c).
 * Writes the reconstruction to uhat (d floats).  scratch: TKV_TRELLIS_SCRATCH_BYTES(d). */
void tkv_trellis_encode(const tkv_trellis *t, const float *u, uint32_t d, uint8_t *stream,
                        float *uhat, uint8_t *scratch);
/* The same with the given Viterbi steps (tests: every ISA's against the scalar ones). */
void tkv_trellis_encode_with(const tkv_trellis *t, tkv_trellis_forward_fn forward, const float *u,
                             uint32_t d, uint8_t *stream, float *uhat, uint8_t *scratch);

#endif
