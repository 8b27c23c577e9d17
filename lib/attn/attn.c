/*
 * attn.c - one query against the cache: scores on codes, a numerically stable
 * softmax (max subtracted), V accumulated on codes.
 *
 * Positions [0, n_comp) are compressed; [n_comp, pos] sit in the fp16 window ring
 * (slot t % window), read unrotated with the fp16 kernels.
 */
#include "attn/attn.h"

#include <math.h>
#include <string.h>

#include "codec/kernels.h"

void tkv_attn_one(const tkv_kv_cache *cache, uint32_t layer, uint32_t head, const float *q,
                  uint32_t pos, float scale, float sparse_threshold, float *out, float *scores,
                  float *work) {
    const tkv_kv_layer *L = &cache->layers[layer];
    const tkv_kv_head *hd = &cache->heads[(size_t)layer * cache->n_head_kv + head];
    const tkv_codec_kernels *kern = tkv_codec_kernels_active();
    const uint32_t d = cache->head_dim;
    const uint32_t n = pos + 1;
    const uint32_t n_comp = L->n_comp < n ? L->n_comp : n;
    float *qprep = work;          /* 2d */
    float *acc = work + 2 * (size_t)d; /* 2d */
    float *acc_w = work + 4 * (size_t)d; /* d */

    if (n_comp > 0) {
        tkv_codec_prepare_query(&hd->k_codec, q, qprep);
        kern->scores[hd->k_codec.layout.format](&hd->k_codec.layout, qprep, hd->k_codes, n_comp,
                                                 scores);
    }
    /* window positions, as (up to) two contiguous runs of ring slots */
    tkv_code_layout f16 = {.format = TKV_FMT_F16, .d = d, .stride = 2 * d};
    const uint32_t W = cache->window;
    for (uint32_t t = n_comp; t < n;) {
        uint32_t slot = t % W;
        uint32_t run = W - slot < n - t ? W - slot : n - t;
        kern->scores[TKV_FMT_F16](&f16, q, (const uint8_t *)(hd->k_window + (size_t)slot * d), run,
                                  scores + t);
        t += run;
    }
    kern->softmax(scores, n, scale);
    memset(out, 0, d * sizeof *out);
    if (n_comp > 0) {
        const uint32_t width = tkv_codec_work_width(&hd->v_codec);
        memset(acc, 0, width * sizeof *acc);
        kern->accum[hd->v_codec.layout.format](&hd->v_codec.layout, scores, sparse_threshold,
                                                hd->v_codes, n_comp, acc);
        tkv_codec_finish_accum(&hd->v_codec, acc, out);
    }
    if (n_comp < n) {
        memset(acc_w, 0, d * sizeof *acc_w);
        for (uint32_t t = n_comp; t < n;) {
            uint32_t slot = t % W;
            uint32_t run = W - slot < n - t ? W - slot : n - t;
            kern->accum[TKV_FMT_F16](&f16, scores + t, sparse_threshold,
                                     (const uint8_t *)(hd->v_window + (size_t)slot * d), run, acc_w);
            t += run;
        }
        for (uint32_t j = 0; j < d; j++) {
            out[j] += acc_w[j];
        }
    }
}
