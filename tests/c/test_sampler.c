/* test_sampler.c - greedy, temperature, top-k, top-p, min-p and repetition penalty. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "session/sampler.h"

#define V 6

static void frequencies(const tkv_sampling *p, const float *logits, const int32_t *hist,
                        size_t n_hist, int draws, double *freq) {
    float probs[V];
    int32_t ids[V];
    tkv_rng rng;
    tkv_rng_init(&rng, 99);
    memset(freq, 0, V * sizeof *freq);
    for (int i = 0; i < draws; i++) {
        int32_t t = tkv_sample(p, logits, V, hist, n_hist, &rng, probs, ids);
        freq[t] += 1.0 / draws;
    }
}

int main(void) {
    const float logits[V] = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f};
    float probs[V];
    int32_t ids[V];
    tkv_rng rng;
    tkv_rng_init(&rng, 1);
    tkv_sampling greedy = {0.0f, 0, 1.0f, 0.0f, 1.0f, 0};
    CHECK_EQ_INT(tkv_sample(&greedy, logits, V, NULL, 0, &rng, probs, ids), 1);
    /* repetition penalty: token 1 seen, its positive logit 3 / 2 = 1.5 < 2.9 */
    const int32_t hist[] = {1, 1, 5};
    tkv_sampling rep = greedy;
    rep.repeat_penalty = 2.0f;
    CHECK_EQ_INT(tkv_sample(&rep, logits, V, hist, 3, &rng, probs, ids), 4);
    rep.repeat_last_n = 1; /* only token 5 in the window: 1 stays the best */
    CHECK_EQ_INT(tkv_sample(&rep, logits, V, hist, 3, &rng, probs, ids), 1);

    /* plain temperature 1: frequencies follow softmax(logits) */
    double freq[V], z = 0;
    for (int i = 0; i < V; i++) {
        z += exp(logits[i]);
    }
    tkv_sampling t1 = {1.0f, 0, 1.0f, 0.0f, 1.0f, 0};
    frequencies(&t1, logits, NULL, 0, 40000, freq);
    for (int i = 0; i < V; i++) {
        CHECK_NEAR(freq[i], exp(logits[i]) / z, 0.01);
    }
    /* top-k 2: only tokens 1 and 4, in proportion e^3 : e^2.9 */
    tkv_sampling k2 = t1;
    k2.top_k = 2;
    frequencies(&k2, logits, NULL, 0, 20000, freq);
    CHECK_NEAR(freq[1] + freq[4], 1.0, 1e-9);
    CHECK_NEAR(freq[1], exp(3.0) / (exp(3.0) + exp(2.9)), 0.015);
    /* top-p 0.5: the smallest set whose mass reaches 0.5 is {1, 4} */
    tkv_sampling tp = t1;
    tp.top_p = 0.5f;
    frequencies(&tp, logits, NULL, 0, 5000, freq);
    CHECK_NEAR(freq[1] + freq[4], 1.0, 1e-9);
    /* min-p 0.5: keep tokens with p >= 0.5 * p_max: 1 (1.0), 4 (0.905); 2 is 0.37 */
    tkv_sampling mp = t1;
    mp.min_p = 0.5f;
    frequencies(&mp, logits, NULL, 0, 5000, freq);
    CHECK_NEAR(freq[1] + freq[4], 1.0, 1e-9);
    /* a low temperature concentrates on the best token */
    tkv_sampling cold = t1;
    cold.temperature = 0.05f;
    frequencies(&cold, logits, NULL, 0, 2000, freq);
    CHECK(freq[1] > 0.8);
    /* same seed, same draws */
    tkv_rng a, b;
    tkv_rng_init(&a, 5);
    tkv_rng_init(&b, 5);
    int same = 1;
    for (int i = 0; i < 50; i++) {
        same &= tkv_sample(&t1, logits, V, NULL, 0, &a, probs, ids) ==
                tkv_sample(&t1, logits, V, NULL, 0, &b, probs, ids);
    }
    CHECK(same);
    CHECK_MAIN_END();
}
