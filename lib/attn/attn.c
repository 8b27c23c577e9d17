/*
 * attn.c - one query against the cache: scores on codes, a numerically stable
 * softmax (max subtracted), V accumulated on codes.
 *
 * Positions [0, s0) are attention sinks kept in fp32 (s0 = min(n_sink, n_comp)),
 * [s0, n_comp) are compressed, [n_comp, pos] sit in the fp16 window ring (slot
 * t % window); sinks and window are read unrotated with the fp32 / fp16 kernels.
 * Queries of one GQA group go together so that turbo and trellis codes are unpacked once
 * for all of them.
 */
#include "attn/attn.h"

#include <math.h>
#include <string.h>

#include "codec/kernels.h"

void tkv_attn_group(const tkv_kv_cache *cache, uint32_t layer, uint32_t head, const float *q,
                    int nq, uint32_t pos, float scale, float sparse_threshold, float *out,
                    float *scores, size_t stride, float *work) {
    const tkv_kv_layer *L = &cache->layers[layer];
    const tkv_kv_head *hd = &cache->heads[(size_t)layer * cache->n_head_kv + head];
    const tkv_codec_kernels *kern = tkv_codec_kernels_active();
    const uint32_t d = cache->head_dim;
    const uint32_t n = pos + 1;
    const uint32_t n_comp = L->n_comp < n ? L->n_comp : n;
    const uint32_t s0 = cache->n_sink < n_comp ? cache->n_sink : n_comp;
    const uint32_t W = cache->window;
    const tkv_code_layout f16 = {.format = TKV_FMT_F16, .d = d, .stride = 2 * d};
    const tkv_code_layout f32 = {.format = TKV_FMT_F32, .d = d, .stride = 4 * d};
    const tkv_code_layout *kl = &hd->k_codec.layout, *vl = &hd->v_codec.layout;
    /* per query: qprep (2d) | acc (2d) | window acc (d) | smoothed query (d) */
    float *qprep[TKV_MAX_QUERIES], *acc[TKV_MAX_QUERIES], *row[TKV_MAX_QUERIES];
    float *crow[TKV_MAX_QUERIES]; /* row[k] + s0: the compressed positions' scores */
    for (int k = 0; k < nq; k++) {
        float *w = work + (size_t)k * TKV_ATTN_WORK_FLOATS(d);
        qprep[k] = w;
        acc[k] = w + 2 * (size_t)d;
        row[k] = scores + (size_t)k * stride;
        crow[k] = row[k] + s0;
    }
    /* with key smoothing, keys are stored as k / s: score with q * s */
    const float *qs = tkv_kv_query_scales(cache, layer, head);
    const float *qk[TKV_MAX_QUERIES];
    for (int k = 0; k < nq; k++) {
        qk[k] = q + (size_t)k * d;
        if (qs) {
            float *smoothed = work + (size_t)k * TKV_ATTN_WORK_FLOATS(d) + 5 * (size_t)d;
            for (uint32_t j = 0; j < d; j++) {
                smoothed[j] = qk[k][j] * qs[j];
            }
            qk[k] = smoothed;
        }
    }

    const uint8_t *k_codes = hd->k_codes + (size_t)s0 * kl->stride;
    const uint8_t *v_codes = hd->v_codes + (size_t)s0 * vl->stride;
    for (int k = 0; s0 > 0 && k < nq; k++) {
        kern->scores[TKV_FMT_F32](&f32, qk[k], (const uint8_t *)hd->k_sink, s0, row[k]);
    }
    if (n_comp > s0) {
        for (int k = 0; k < nq; k++) {
            tkv_codec_prepare_query(&hd->k_codec, qk[k], qprep[k]);
        }
        if (kern->scores_multi[kl->format] && nq > 1) {
            kern->scores_multi[kl->format](kl, (const float *const *)qprep, nq, k_codes,
                                           n_comp - s0, crow);
        } else {
            for (int k = 0; k < nq; k++) {
                kern->scores[kl->format](kl, qprep[k], k_codes, n_comp - s0, crow[k]);
            }
        }
    }
    /* window positions, as (up to) two contiguous runs of ring slots, unrotated fp16 */
    for (uint32_t t = n_comp; t < n;) {
        const uint32_t slot = t % W;
        const uint32_t run = W - slot < n - t ? W - slot : n - t;
        for (int k = 0; k < nq; k++) {
            kern->scores[TKV_FMT_F16](&f16, qk[k],
                                      (const uint8_t *)(hd->k_window + (size_t)slot * d), run,
                                      row[k] + t);
        }
        t += run;
    }
    for (int k = 0; k < nq; k++) {
        kern->softmax(row[k], n, scale);
        memset(out + (size_t)k * d, 0, d * sizeof *out);
    }
    if (n_comp > s0) {
        const uint32_t width = tkv_codec_work_width(&hd->v_codec);
        for (int k = 0; k < nq; k++) {
            memset(acc[k], 0, width * sizeof(float));
        }
        if (kern->accum_multi[vl->format] && nq > 1) {
            kern->accum_multi[vl->format](vl, (const float *const *)crow, nq, sparse_threshold,
                                          v_codes, n_comp - s0, acc);
        } else {
            for (int k = 0; k < nq; k++) {
                kern->accum[vl->format](vl, crow[k], sparse_threshold, v_codes, n_comp - s0,
                                        acc[k]);
            }
        }
        for (int k = 0; k < nq; k++) {
            tkv_codec_finish_accum(&hd->v_codec, acc[k], out + (size_t)k * d);
        }
    }
    if (s0 > 0 || n_comp < n) {
        for (int k = 0; k < nq; k++) {
            float *acc_w = acc[k] + 2 * (size_t)d; /* sinks and window, unrotated */
            memset(acc_w, 0, d * sizeof *acc_w);
            if (s0 > 0) {
                kern->accum[TKV_FMT_F32](&f32, row[k], sparse_threshold,
                                         (const uint8_t *)hd->v_sink, s0, acc_w);
            }
            for (uint32_t t = n_comp; t < n;) {
                const uint32_t slot = t % W;
                const uint32_t run = W - slot < n - t ? W - slot : n - t;
                kern->accum[TKV_FMT_F16](&f16, row[k] + t, sparse_threshold,
                                         (const uint8_t *)(hd->v_window + (size_t)slot * d), run,
                                         acc_w);
                t += run;
            }
            float *o = out + (size_t)k * d;
            for (uint32_t j = 0; j < d; j++) {
                o[j] += acc_w[j];
            }
        }
    }
}
