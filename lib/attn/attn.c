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
    tkv_attn_group_range(cache, layer, head, q, nq, pos, 0, pos + 1, scale, sparse_threshold, out,
                         NULL, scores, stride, work);
}

void tkv_attn_group_range(const tkv_kv_cache *cache, uint32_t layer, uint32_t head, const float *q,
                          int nq, uint32_t pos, uint32_t t0, uint32_t t1, float scale,
                          float sparse_threshold, float *out, float *lse, float *scores,
                          size_t stride, float *work) {
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
    /* per query: qprep (2d) | acc (2d) | window acc (d) | scaled query (d); the first
     * query's area also holds the calibration block's mu (d) and s (d) */
    float *qprep[TKV_MAX_QUERIES], *acc[TKV_MAX_QUERIES], *row[TKV_MAX_QUERIES];
    const float *qk[TKV_MAX_QUERIES]; /* the query each stored key is scored with */
    for (int k = 0; k < nq; k++) {
        float *w = work + (size_t)k * TKV_ATTN_WORK_FLOATS(d);
        qprep[k] = w;
        acc[k] = w + 2 * (size_t)d;
        row[k] = scores + (size_t)k * stride;
        qk[k] = q + (size_t)k * d;
    }
    float *mu = work + 6 * (size_t)d, *s = work + 7 * (size_t)d;

    /* Scores, one calibration block at a time: its keys are stored as (k - mu_b) / s_b
     * (cache.h), so they are scored with q * s_b, and <q, mu_b - mu_0> puts them on the
     * scale of block 0 (every score then differs from <q, k> by the same <q, mu_0>). */
    const int calibrated = tkv_kv_has_calibration(cache);
    const uint32_t B =
        cache->calib_block == TKV_CALIBRATION_ONCE || !calibrated ? n : cache->calib_block;
    float q_mu0[TKV_MAX_QUERIES] = {0};
    if (calibrated && t0 >= B) { /* a range past block 0 still needs block 0's <q, mu_0> */
        tkv_kv_block_calibration(cache, layer, head, 0, mu, s);
        for (int k = 0; k < nq; k++) {
            const float *qq = q + (size_t)k * d;
            float dot = 0.0f;
            for (uint32_t j = 0; j < d; j++) {
                dot += qq[j] * mu[j];
            }
            q_mu0[k] = dot;
        }
    }
    for (uint32_t blo = t0 / B * B; blo < t1; blo += B) {
        /* [lo, hi): the part of block b inside [t0, t1) */
        const uint32_t b = blo / B;
        const uint32_t lo = blo > t0 ? blo : t0;
        const uint32_t hi = t1 - blo > B ? blo + B : t1;
        float shift[TKV_MAX_QUERIES] = {0};
        if (calibrated) {
            tkv_kv_block_calibration(cache, layer, head, b, mu, s);
            for (int k = 0; k < nq; k++) {
                const float *qq = q + (size_t)k * d;
                float *scaled = work + (size_t)k * TKV_ATTN_WORK_FLOATS(d) + 5 * (size_t)d;
                float dot = 0.0f;
                for (uint32_t j = 0; j < d; j++) {
                    scaled[j] = qq[j] * s[j];
                    dot += qq[j] * mu[j];
                }
                qk[k] = scaled;
                if (b == 0) {
                    q_mu0[k] = dot;
                }
                shift[k] = dot - q_mu0[k];
            }
        }
        /* sinks [lo, min(hi, s0)): fp32 rows */
        for (int k = 0; lo < s0 && k < nq; k++) {
            const uint32_t e = hi < s0 ? hi : s0;
            kern->scores[TKV_FMT_F32](&f32, qk[k], (const uint8_t *)(hd->k_sink + (size_t)lo * d),
                                      e - lo, row[k] + lo);
        }
        /* compressed [max(lo, s0), min(hi, n_comp)): codes, with the rotated query */
        const uint32_t c0 = lo > s0 ? lo : s0, c1 = hi < n_comp ? hi : n_comp;
        if (c1 > c0) {
            const uint8_t *k_codes = hd->k_codes + (size_t)c0 * kl->stride;
            float *crow[TKV_MAX_QUERIES];
            for (int k = 0; k < nq; k++) {
                tkv_codec_prepare_query(&hd->k_codec, qk[k], qprep[k]);
                crow[k] = row[k] + c0;
            }
            if (kern->scores_multi[kl->format] && nq > 1) {
                kern->scores_multi[kl->format](kl, (const float *const *)qprep, nq, k_codes,
                                               c1 - c0, crow);
            } else {
                for (int k = 0; k < nq; k++) {
                    kern->scores[kl->format](kl, qprep[k], k_codes, c1 - c0, crow[k]);
                }
            }
        }
        /* window [max(lo, n_comp), hi): unrotated fp16, as (up to) two runs of ring slots */
        for (uint32_t t = lo > n_comp ? lo : n_comp; t < hi;) {
            const uint32_t slot = t % W;
            const uint32_t run = W - slot < hi - t ? W - slot : hi - t;
            for (int k = 0; k < nq; k++) {
                kern->scores[TKV_FMT_F16](&f16, qk[k],
                                          (const uint8_t *)(hd->k_window + (size_t)slot * d), run,
                                          row[k] + t);
            }
            t += run;
        }
        for (int k = 0; b > 0 && cache->center_keys && k < nq; k++) { /* shift 0 otherwise */
            for (uint32_t t = lo; t < hi; t++) {
                row[k][t] += shift[k];
            }
        }
    }
    /* compressed positions of the range: [ca, cb) */
    const uint32_t ca = t0 > s0 ? t0 : s0, cb = t1 < n_comp ? t1 : n_comp;
    const uint8_t *v_codes = hd->v_codes + (size_t)ca * vl->stride;
    float *crow[TKV_MAX_QUERIES]; /* row[k] + ca: the compressed positions' weights */
    for (int k = 0; k < nq; k++) {
        crow[k] = row[k] + ca;
    }
    for (int k = 0; k < nq; k++) {
        float *x = row[k] + t0;
        size_t imax = 0;
        for (size_t i = 1; lse && i < t1 - t0; i++) {
            imax = x[i] > x[imax] ? i : imax;
        }
        const float xmax = x[imax];
        kern->softmax(x, t1 - t0, scale);
        if (lse) { /* the maximum's weight is exp(0) / sum: log sum = -log(weight) */
            lse[k] = scale * xmax - logf(x[imax]);
        }
        memset(out + (size_t)k * d, 0, d * sizeof *out);
    }
    if (cb > ca) {
        const uint32_t width = tkv_codec_work_width(&hd->v_codec);
        for (int k = 0; k < nq; k++) {
            memset(acc[k], 0, width * sizeof(float));
        }
        if (kern->accum_multi[vl->format] && nq > 1) {
            kern->accum_multi[vl->format](vl, (const float *const *)crow, nq, sparse_threshold,
                                          v_codes, cb - ca, acc);
        } else {
            for (int k = 0; k < nq; k++) {
                kern->accum[vl->format](vl, crow[k], sparse_threshold, v_codes, cb - ca, acc[k]);
            }
        }
        for (int k = 0; k < nq; k++) {
            tkv_codec_finish_accum(&hd->v_codec, acc[k], out + (size_t)k * d);
        }
    }
    const uint32_t se = s0 < t1 ? s0 : t1; /* sinks of the range: [t0, se) */
    if (t0 < se || n_comp < t1) {
        for (int k = 0; k < nq; k++) {
            float *acc_w = acc[k] + 2 * (size_t)d; /* sinks and window, unrotated */
            memset(acc_w, 0, d * sizeof *acc_w);
            if (t0 < se) {
                kern->accum[TKV_FMT_F32](&f32, row[k] + t0, sparse_threshold,
                                         (const uint8_t *)(hd->v_sink + (size_t)t0 * d), se - t0,
                                         acc_w);
            }
            for (uint32_t t = n_comp > t0 ? n_comp : t0; t < t1;) {
                const uint32_t slot = t % W;
                const uint32_t run = W - slot < t1 - t ? W - slot : t1 - t;
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
