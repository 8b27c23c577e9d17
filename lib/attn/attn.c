/*
 * attn.c - one query against the cache: scores on codes, a numerically stable
 * softmax (max subtracted), V accumulated on codes.
 *
 * The cache hands out its positions as runs (kv/cache.h): exact fp32 sinks, codes and
 * fp16 window rows, key runs cut at calibration blocks.  Sink and window rows are read
 * unrotated with the fp32 / fp16 kernels, codes with the rotated query.  Queries of one
 * GQA group go together so that turbo and trellis codes are unpacked once for all of them.
 */
#include "attn/attn.h"

#include <math.h>
#include <string.h>

#include "base/prefetch.h"
#include "codec/kernels.h"

/* Value rows prefetched before the softmax (the value sums' first span, kernels_turbo_i8_body.h).
 */
#define TKV_ATTN_PREFETCH_ROWS 256

/* `work` of tkv_attn_group_range by use: per query 6 * head_dim floats, then 2 * head_dim
 * shared (within nq * TKV_ATTN_WORK_FLOATS). */
typedef struct tkv_attn_work {
    float *qprep[TKV_MAX_QUERIES];     /* 2d: the query as a codec takes it (rotated) */
    float *acc[TKV_MAX_QUERIES];       /* 2d: values of the codes, in the codec's domain */
    float *acc_plain[TKV_MAX_QUERIES]; /* d: values of sinks and window, unrotated */
    float *q_scaled[TKV_MAX_QUERIES];  /* d: the query times the block's key scales */
    float *mu;                         /* d: the block's key offset */
    float *s;                          /* d: the block's key scales */
} tkv_attn_work;

static tkv_attn_work tkv_attn_carve(float *work, int nq, uint32_t d) {
    tkv_attn_work w;
    for (int k = 0; k < nq; k++) {
        float *q = work + (size_t)k * 6 * d;
        w.qprep[k] = q;
        w.acc[k] = q + 2 * (size_t)d;
        w.acc_plain[k] = q + 4 * (size_t)d;
        w.q_scaled[k] = q + 5 * (size_t)d;
    }
    w.mu = work + (size_t)nq * 6 * d;
    w.s = w.mu + d;
    return w;
}

/* dots[k] = <q_k, v> for the nq queries (rows of q), each summed in element order: the
 * queries' sums run side by side (one chain of dependent adds per query, not one after the
 * other), since a run's calibration block needs them once per run. */
_Static_assert(TKV_MAX_QUERIES == 4, "tkv_attn_dots keeps 4 sums");
static void tkv_attn_dots(const float *q, int nq, uint32_t d, const float *v, float *dots) {
    const float *qk[TKV_MAX_QUERIES];
    for (int k = 0; k < TKV_MAX_QUERIES; k++) {
        qk[k] = q + (size_t)(k < nq ? k : 0) * d; /* the unused sums repeat query 0 */
    }
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (uint32_t j = 0; j < d; j++) {
        a0 += qk[0][j] * v[j];
        a1 += qk[1][j] * v[j];
        a2 += qk[2][j] * v[j];
        a3 += qk[3][j] * v[j];
    }
    const float a[4] = {a0, a1, a2, a3};
    for (int k = 0; k < nq; k++) {
        dots[k] = a[k];
    }
}

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
    (void)pos; /* runs stop at t1 <= pos + 1 */
    const tkv_codec_kernels *kern = tkv_codec_kernels_active();
    const uint32_t d = cache->head_dim;
    const tkv_attn_work w = tkv_attn_carve(work, nq, d);
    float *row[TKV_MAX_QUERIES];
    const float *qk[TKV_MAX_QUERIES]; /* the query each stored key is scored with */
    for (int k = 0; k < nq; k++) {
        row[k] = scores + (size_t)k * stride;
        qk[k] = q + (size_t)k * d;
    }
    tkv_kv_run run;

    /* Scores, run by run: keys of calibration block b are stored as (k - mu_b) / s_b
     * (kv/calib.h), so they are scored with q * s_b, and <q, mu_b - mu_0> puts them on the
     * scale of block 0 (every score then differs from <q, k> by the same <q, mu_0>). */
    const int calibrated = tkv_kv_has_calibration(cache);
    const int centered = tkv_kv_keys_centered(cache);
    float q_mu0[TKV_MAX_QUERIES] = {0}, shift[TKV_MAX_QUERIES] = {0};
    if (calibrated) {
        tkv_kv_block_calibration(cache, layer, head, 0, w.mu, w.s);
        tkv_attn_dots(q, nq, d, w.mu, q_mu0);
    }
    uint32_t block = UINT32_MAX; /* the block qk and shift are set for */
    for (uint32_t t = t0; t < t1; t += run.n) {
        tkv_kv_key_run(cache, layer, head, t, t1, &run);
        if (calibrated && run.block != block) {
            block = run.block;
            tkv_kv_block_calibration(cache, layer, head, block, w.mu, w.s);
            float dot[TKV_MAX_QUERIES];
            tkv_attn_dots(q, nq, d, w.mu, dot);
            for (int k = 0; k < nq; k++) {
                const float *qq = q + (size_t)k * d;
                for (uint32_t j = 0; j < d; j++) {
                    w.q_scaled[k][j] = qq[j] * w.s[j];
                }
                qk[k] = w.q_scaled[k];
                shift[k] = dot[k] - q_mu0[k];
            }
        }
        float *at[TKV_MAX_QUERIES]; /* the run's scores */
        for (int k = 0; k < nq; k++) {
            at[k] = row[k] + t;
        }
        const tkv_code_layout *kl = run.layout;
        if (run.store == TKV_KV_STORE_CODES) {
            for (int k = 0; k < nq; k++) {
                tkv_codec_prepare_query(run.codec, qk[k], w.qprep[k]);
            }
            if (kern->scores_multi[kl->format] && nq > 1) {
                kern->scores_multi[kl->format](kl, (const float *const *)w.qprep, nq, run.rows,
                                               run.n, at);
            } else {
                for (int k = 0; k < nq; k++) {
                    kern->scores[kl->format](kl, w.qprep[k], run.rows, run.n, at[k]);
                }
            }
        } else { /* sinks and window: unrotated */
            for (int k = 0; k < nq; k++) {
                kern->scores[kl->format](kl, qk[k], run.rows, run.n, at[k]);
            }
        }
        for (int k = 0; run.block > 0 && centered && k < nq; k++) { /* shift 0 otherwise */
            for (uint32_t i = 0; i < run.n; i++) {
                at[k][i] += shift[k];
            }
        }
    }
    /* the value sums prefetch each span's successor, not their first span: its rows are
     * fetched while the softmax runs */
    for (uint32_t t = t0; t < t1; t += run.n) {
        tkv_kv_value_run(cache, layer, head, t, t1, &run);
        if (run.store == TKV_KV_STORE_CODES) {
            const size_t bytes =
                (size_t)(run.n < TKV_ATTN_PREFETCH_ROWS ? run.n : TKV_ATTN_PREFETCH_ROWS) *
                run.layout->stride;
            TKV_PREFETCH_BYTES(run.rows, bytes, 3);
            break;
        }
    }
    for (int k = 0; k < nq; k++) {
        const float l = kern->softmax(row[k] + t0, t1 - t0, scale);
        if (lse) {
            lse[k] = l;
        }
        memset(out + (size_t)k * d, 0, d * sizeof *out);
    }

    /* Values: codes summed in the codec's domain and finished once, then sinks and window
     * summed unrotated and added. */
    const struct tkv_codec *v_codec = NULL;
    int plain = 0; /* sink or window runs seen */
    for (uint32_t t = t0; t < t1; t += run.n) {
        tkv_kv_value_run(cache, layer, head, t, t1, &run);
        if (run.store != TKV_KV_STORE_CODES) {
            plain = 1;
            continue;
        }
        const tkv_code_layout *vl = run.layout;
        if (!v_codec) {
            v_codec = run.codec;
            const uint32_t width = tkv_codec_work_width(v_codec);
            for (int k = 0; k < nq; k++) {
                memset(w.acc[k], 0, width * sizeof(float));
            }
        }
        float *at[TKV_MAX_QUERIES]; /* the run's weights */
        for (int k = 0; k < nq; k++) {
            at[k] = row[k] + t;
        }
        if (kern->accum_multi[vl->format] && nq > 1) {
            kern->accum_multi[vl->format](vl, (const float *const *)at, nq, sparse_threshold,
                                          run.rows, run.n, w.acc);
        } else {
            for (int k = 0; k < nq; k++) {
                kern->accum[vl->format](vl, at[k], sparse_threshold, run.rows, run.n, w.acc[k]);
            }
        }
    }
    for (int k = 0; v_codec && k < nq; k++) {
        tkv_codec_finish_accum(v_codec, w.acc[k], out + (size_t)k * d);
    }
    if (plain) {
        for (int k = 0; k < nq; k++) {
            memset(w.acc_plain[k], 0, d * sizeof(float));
        }
        for (uint32_t t = t0; t < t1; t += run.n) {
            tkv_kv_value_run(cache, layer, head, t, t1, &run);
            for (int k = 0; run.store != TKV_KV_STORE_CODES && k < nq; k++) {
                kern->accum[run.layout->format](run.layout, row[k] + t, sparse_threshold, run.rows,
                                                run.n, w.acc_plain[k]);
            }
        }
        for (int k = 0; k < nq; k++) {
            float *o = out + (size_t)k * d;
            for (uint32_t j = 0; j < d; j++) {
                o[j] += w.acc_plain[k][j];
            }
        }
    }
}

void tkv_attn_merge(const float *part, uint32_t n_parts, int nq, uint32_t d, float *out) {
    const size_t ps = TKV_ATTN_PART_FLOATS(d);
    const float *lse = part + (size_t)TKV_MAX_QUERIES * d; /* of part 0 */
    for (int k = 0; k < nq; k++) {
        float L = lse[k];
        for (uint32_t p = 1; p < n_parts; p++) {
            const float l = lse[p * ps + k];
            L = l > L ? l : L;
        }
        float sum = 0.0f;
        for (uint32_t p = 0; p < n_parts; p++) {
            sum += expf(lse[p * ps + k] - L);
        }
        const float inv = 1.0f / sum;
        float *o = out + (size_t)k * d;
        memset(o, 0, d * sizeof *o);
        for (uint32_t p = 0; p < n_parts; p++) {
            const float f = expf(lse[p * ps + k] - L) * inv;
            const float *op = part + p * ps + (size_t)k * d;
            for (uint32_t j = 0; j < d; j++) {
                o[j] += f * op[j];
            }
        }
    }
}
