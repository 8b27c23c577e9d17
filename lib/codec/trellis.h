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

/* Window j of a coded stream of d symbols (reference form: bit by bit, circular). */
uint32_t tkv_trellis_window_at(const tkv_trellis *t, const uint8_t *stream, uint32_t d, uint32_t j);

/* Bytes of scratch tkv_trellis_encode needs for d coordinates. */
#define TKV_TRELLIS_SCRATCH_BYTES(d) (64 * (size_t)(d) + 64)

/* Code u (d coordinates, ~unit variance each) into stream (d N / 8 bytes): the
 * tail-biting path of least squared error (search described in trellis.c).
 * Writes the reconstruction to uhat (d floats).  scratch: TKV_TRELLIS_SCRATCH_BYTES(d). */
void tkv_trellis_encode(const tkv_trellis *t, const float *u, uint32_t d, uint8_t *stream,
                        float *uhat, uint8_t *scratch);

#endif
