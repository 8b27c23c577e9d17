/*
 * attn.h - attention of the queries of one GQA group over one (layer, KV head) of the
 * compressed cache.
 * The query is rotated once, scores are computed on the codes, values are summed in
 * the rotated domain and rotated back once; fp16-window positions use the fp16 kernels.
 */
#ifndef TKV_ATTN_ATTN_H
#define TKV_ATTN_ATTN_H

#include <stdint.h>

#include "codec/kernels.h"
#include "kv/cache.h"

/* Floats of `work` one query needs besides its row of scores. */
#define TKV_ATTN_WORK_FLOATS(d) (8 * (size_t)(d))

/*
 * out = softmax(scale * <q_k, k_t>) . v_t over positions t = 0..pos of (layer, head),
 * pos < the layer's n, for nq (1..TKV_MAX_QUERIES) queries that share the KV head
 * (grouped-query attention): q and out are (nq, head_dim); scores holds nq rows of
 * `stride` >= pos + 1 floats; work nq * TKV_ATTN_WORK_FLOATS(head_dim).  Weights below
 * sparse_threshold skip their value row.  Turbo codes are unpacked once for all the
 * queries.
 */
void tkv_attn_group(const tkv_kv_cache *cache, uint32_t layer, uint32_t head, const float *q,
                    int nq, uint32_t pos, float scale, float sparse_threshold, float *out,
                    float *scores, size_t stride, float *work);

/*
 * The same over positions [t0, t1) of 0..pos only (t0 < t1 <= pos + 1), to split one head's
 * positions over threads: out is the attention output normalized over that range and, if
 * lse is not NULL, lse[k] the log of its softmax denominator, the scores being on a scale
 * common to every range of the head (calibration blocks are shifted to block 0's), so the
 * parts merge exactly: out = sum_p exp(lse_p - L) out_p with L = log sum_p exp(lse_p).
 * Weights below sparse_threshold are those of the range's own normalization.
 */
void tkv_attn_group_range(const tkv_kv_cache *cache, uint32_t layer, uint32_t head, const float *q,
                          int nq, uint32_t pos, uint32_t t0, uint32_t t1, float scale,
                          float sparse_threshold, float *out, float *lse, float *scores,
                          size_t stride, float *work);

/* Floats of one range's partial result for tkv_attn_merge: out (TKV_MAX_QUERIES, head_dim),
 * then lse (TKV_MAX_QUERIES). */
#define TKV_ATTN_PART_FLOATS(d) ((size_t)TKV_MAX_QUERIES * ((size_t)(d) + 1))

/* out (nq, d) = the n_parts partial results of tkv_attn_group_range over consecutive
 * ranges of one head (part p at part + p * TKV_ATTN_PART_FLOATS(d)) merged in part order:
 * sum_p exp(lse_p - L) out_p / sum_p exp(lse_p - L), L the largest lse. */
void tkv_attn_merge(const float *part, uint32_t n_parts, int nq, uint32_t d, float *out);

#endif
