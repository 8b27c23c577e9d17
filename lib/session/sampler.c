/*
 * sampler.c - greedy, temperature, top-k, top-p (nucleus), min-p and repetition penalty.
 * The repetition penalty follows the CTRL paper (Keskar et al. 2019): a seen token's
 * positive logit is divided by the penalty, a negative one multiplied.
 */
#include "session/sampler.h"

#include <math.h>
#include <stdlib.h>

/* Sort ids by vals, descending (shell sort: no allocation, no global state). */
static void tkv_sort_ids(int32_t *ids, int32_t n, const float *vals) {
    for (int32_t gap = n / 2; gap > 0; gap /= 2) {
        for (int32_t i = gap; i < n; i++) {
            const int32_t tmp = ids[i];
            int32_t j = i;
            while (j >= gap && vals[ids[j - gap]] < vals[tmp]) {
                ids[j] = ids[j - gap];
                j -= gap;
            }
            ids[j] = tmp;
        }
    }
}

/* The k largest of vals[0..n) into ids[0..k) (unordered), with a min-heap: O(n log k). */
static int32_t tkv_top_k(const float *vals, int32_t n, int32_t k, int32_t *ids) {
    int32_t size = 0;
    for (int32_t i = 0; i < n; i++) {
        if (size < k) {
            int32_t c = size++;
            ids[c] = i;
            while (c > 0 && vals[ids[(c - 1) / 2]] > vals[ids[c]]) {
                const int32_t p = (c - 1) / 2, t = ids[p];
                ids[p] = ids[c];
                ids[c] = t;
                c = p;
            }
        } else if (vals[i] > vals[ids[0]]) {
            ids[0] = i;
            int32_t c = 0;
            for (;;) {
                int32_t l = 2 * c + 1, r = l + 1, m = c;
                if (l < size && vals[ids[l]] < vals[ids[m]]) {
                    m = l;
                }
                if (r < size && vals[ids[r]] < vals[ids[m]]) {
                    m = r;
                }
                if (m == c) {
                    break;
                }
                const int32_t t = ids[m];
                ids[m] = ids[c];
                ids[c] = t;
                c = m;
            }
        }
    }
    return size;
}

int32_t tkv_sample(const tkv_sampling *p, const float *logits, int32_t n_vocab,
                   const int32_t *history, size_t n_history, tkv_rng *rng, float *work_probs,
                   int32_t *work_ids) {
    float *l = work_probs;
    for (int32_t i = 0; i < n_vocab; i++) {
        l[i] = logits[i];
    }
    if (p->repeat_penalty != 1.0f && p->repeat_penalty > 0.0f && n_history > 0) {
        size_t start = 0;
        if (p->repeat_last_n > 0 && n_history > (size_t)p->repeat_last_n) {
            start = n_history - (size_t)p->repeat_last_n;
        }
        for (size_t i = start; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || t >= n_vocab) {
                continue;
            }
            /* apply once per distinct token: mark by checking later duplicates */
            int seen_later = 0;
            for (size_t j = i + 1; j < n_history; j++) {
                seen_later |= history[j] == t;
            }
            if (!seen_later) {
                l[t] = l[t] > 0 ? l[t] / p->repeat_penalty : l[t] * p->repeat_penalty;
            }
        }
    }
    if (p->temperature <= 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < n_vocab; i++) {
            if (l[i] > l[best]) {
                best = i;
            }
        }
        return best;
    }
    /* candidates sorted by logit */
    int32_t n = n_vocab;
    int32_t *ids = work_ids;
    for (int32_t i = 0; i < n; i++) {
        l[i] /= p->temperature;
    }
    if (p->top_k > 0 && p->top_k < n) {
        n = tkv_top_k(l, n, p->top_k, ids);
    } else {
        /* tokens more than 40 nats below the best carry < 1e-17 of the mass: sorting
         * them would cost far more than they can change */
        float mx0 = l[0];
        for (int32_t i = 1; i < n; i++) {
            mx0 = l[i] > mx0 ? l[i] : mx0;
        }
        int32_t kept = 0;
        for (int32_t i = 0; i < n; i++) {
            if (l[i] >= mx0 - 40.0f) {
                ids[kept++] = i;
            }
        }
        n = kept;
    }
    tkv_sort_ids(ids, n, l);
    const float mx = l[ids[0]];
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        sum += exp((double)(l[ids[i]] - mx));
    }
    if (p->top_p < 1.0f && p->top_p > 0.0f) {
        double cum = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += exp((double)(l[ids[i]] - mx)) / sum;
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        int32_t keep = 1;
        const double floor_p = p->min_p; /* relative to the top probability, exp(0) = 1 */
        while (keep < n && exp((double)(l[ids[keep]] - mx)) >= floor_p) {
            keep++;
        }
        n = keep;
    }
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) {
        total += exp((double)(l[ids[i]] - mx));
    }
    double r = tkv_rng_uniform(rng) * total;
    for (int32_t i = 0; i < n; i++) {
        r -= exp((double)(l[ids[i]] - mx));
        if (r <= 0.0) {
            return ids[i];
        }
    }
    return ids[n - 1];
}
