/* sampler.h - next-token sampling from logits. */
#ifndef TKV_SESSION_SAMPLER_H
#define TKV_SESSION_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "base/rng.h"

typedef struct tkv_sampling {
    float temperature;    /* <= 0: greedy (argmax) */
    int32_t top_k;        /* 0: off */
    float top_p;          /* 1: off */
    float min_p;          /* 0: off */
    float repeat_penalty; /* 1: off */
    int32_t repeat_last_n;
} tkv_sampling;

/*
 * Pick a token from logits (n_vocab).  history: the last tokens (for the repetition
 * penalty).  work: 2 * n_vocab floats/ints of scratch.  Order: repetition penalty,
 * temperature, top-k, softmax, top-p, min-p, draw.
 */
int32_t tkv_sample(const tkv_sampling *p, const float *logits, int32_t n_vocab,
                   const int32_t *history, size_t n_history, tkv_rng *rng, float *work_probs,
                   int32_t *work_ids);

#endif
