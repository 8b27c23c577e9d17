/*
 * forward.c - the llama-family transformer forward pass, read top to bottom:
 *
 *   x = embed(tokens) * embd_scale                      (Gemma: sqrt(n_embd))
 *   for each layer:
 *       h = rmsnorm(x) * attn_norm
 *       q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)
 *       q, k = rmsnorm per head * q_norm, k_norm         (Qwen3, Gemma 3)
 *       rope(q, k)                                       (global or sliding-window table)
 *       cache.append(k, v);  a = attention(q, cache)     (GQA: n_head / n_head_kv per group;
 *                                                          sliding layers: last n_swa only,
 *                                                          appended and attended in
 *                                                          sub-batches their ring holds)
 *       x += [rmsnorm](a Wo) [* attn_post_norm]          (Gemma 3: post norm)
 *       h = rmsnorm(x) * ffn_norm
 *       x += [rmsnorm](act(h Wgate) * (h Wup)) Wdown [* ffn_post_norm]
 *                                                        (act: SiLU, Gemma: tanh GELU)
 *   logits = (rmsnorm(x) * output_norm) Wout  [softcap c: c tanh(logits / c)]
 *
 * Matmuls split weight rows over the thread pool; attention splits (token, head)
 * pairs.  Nothing here allocates: buffers live in tkv_forward_state.
 */
#include "model/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "base/alloc.h"
#include "base/clock.h"
#include "base/status.h"
#include "tensor/formats.h"
#include "tensor/matmul.h"

/* Positions split into chunks of this many for attention: a fixed size, so the chunks of a
 * token, their partial results and the order they merge in depend only on its position, and
 * the logits are the same bits for any thread count. */
#define TKV_ATTN_CHUNK 1024
/* Batches of at most this many tokens also split each query head's positions over the pool
 * (decode: a few heads alone would leave threads idle); larger batches split by head. */
#define TKV_ATTN_SPLIT_TOKENS 4

static uint32_t tkv_attn_n_chunks(uint32_t pos) {
    return pos / TKV_ATTN_CHUNK + 1; /* positions 0..pos */
}

/* Floats of one chunk's partial result of a run of query heads (tkv_attn_merge's part). */
static size_t tkv_attn_part_floats(uint32_t d) {
    return TKV_ATTN_PART_FLOATS(d);
}

/* YaRN's correction dimension of `n_rot` rotations over the original context (ggml). */
static double tkv_yarn_corr_dim(const tkv_hparams *hp, double base, double rotations) {
    const double pi = 3.14159265358979323846;
    return hp->n_rot * log(hp->n_ctx_orig / (rotations * 2.0 * pi)) / (2.0 * log(base));
}

/* The angle per position of each of the n_rot / 2 pairs, as ggml's rope computes it:
 * theta_i = base^(-2i/n_rot) / factor_i (extrapolated), freq_scale times that (interpolated),
 * mixed by YaRN's ramp between the correction dimensions when ext_factor != 0.  The angle
 * is linear in the position, so one number per pair holds it. */
static void tkv_rope_table(const tkv_rope_params *r, const tkv_hparams *hp, const float *factors,
                           float *inv_freq) {
    double lo = 0.0, hi = 0.0;
    if (r->ext_factor != 0.0f) {
        lo = floor(tkv_yarn_corr_dim(hp, r->base, hp->yarn_beta_fast));
        hi = ceil(tkv_yarn_corr_dim(hp, r->base, hp->yarn_beta_slow));
        lo = lo > 0.0 ? lo : 0.0;
        hi = hi < hp->n_rot - 1 ? hi : hp->n_rot - 1;
    }
    for (uint32_t i = 0; i < hp->n_rot / 2; i++) {
        const double extrap = pow((double)r->base, -2.0 * i / (double)hp->n_rot) /
                              (factors ? (double)factors[i] : 1.0);
        const double interp = r->freq_scale * extrap;
        double theta = interp;
        if (r->ext_factor != 0.0f) {
            double y = (i - lo) / (hi - lo > 0.001 ? hi - lo : 0.001);
            y = y < 0.0 ? 0.0 : (y > 1.0 ? 1.0 : y);
            const double mix = (1.0 - y) * r->ext_factor;
            theta = interp * (1.0 - mix) + extrap * mix;
        }
        inv_freq[i] = (float)theta;
    }
}

tkv_status tkv_forward_state_init(tkv_forward_state *s, const struct tkv_model *m,
                                  uint32_t n_batch, uint32_t n_threads, uint32_t capacity) {
    memset(s, 0, sizeof *s);
    const tkv_hparams *hp = &m->hp;
    s->n_batch = n_batch;
    s->n_threads = n_threads;
    s->capacity = capacity;
    const size_t B = n_batch, E = hp->n_embd, QD = (size_t)hp->n_head * hp->head_dim,
                 KD = (size_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff, V = hp->n_vocab;
    s->x = tkv_calloc_aligned(B * E, sizeof(float));
    s->xn = tkv_calloc_aligned(B * E, sizeof(float));
    s->q = tkv_calloc_aligned(B * QD, sizeof(float));
    s->k = tkv_calloc_aligned(B * KD, sizeof(float));
    s->v = tkv_calloc_aligned(B * KD, sizeof(float));
    s->att = tkv_calloc_aligned(B * QD, sizeof(float));
    s->gate = tkv_calloc_aligned(B * F, sizeof(float));
    s->up = tkv_calloc_aligned(B * F, sizeof(float));
    s->logits = tkv_calloc_aligned(V, sizeof(float));
    s->logits_rows = 1;
    s->scores = tkv_calloc_aligned((size_t)n_threads * TKV_MAX_QUERIES * capacity, sizeof(float));
    s->work = tkv_calloc_aligned((size_t)n_threads * TKV_MAX_QUERIES *
                                     TKV_ATTN_WORK_FLOATS(hp->head_dim), sizeof(float));
    s->kv_scratch = tkv_calloc_aligned((size_t)n_threads * TKV_KV_SCRATCH_FLOATS(hp->head_dim),
                                       sizeof(float)); /* one per pool part */
    { /* chunk results: one item's chunks per thread, or every item's of a split batch */
        const uint32_t group = hp->n_head / hp->n_head_kv;
        const size_t items =
            (size_t)hp->n_head_kv * ((group + TKV_MAX_QUERIES - 1) / TKV_MAX_QUERIES);
        const size_t per_thread = n_threads, split = TKV_ATTN_SPLIT_TOKENS * items;
        s->attn_part = tkv_calloc_aligned((per_thread > split ? per_thread : split) *
                                              tkv_attn_n_chunks(capacity ? capacity - 1 : 0) *
                                              tkv_attn_part_floats(hp->head_dim),
                                          sizeof(float));
    }
    s->rope_inv_freq = tkv_calloc_aligned(hp->n_rot, sizeof(float));
    /* the largest quantized-activation scratch over every matmul of the model (the output
     * layer included); each weight's own type and width decide its size */
    size_t mm = tkv_matmul_scratch_bytes(m->output.type, m->output.cols, (int64_t)B);
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const tkv_layer_weights *L = &m->layers[l];
        const tkv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            size_t b = tkv_matmul_scratch_bytes(ws[i]->type, ws[i]->cols, (int64_t)B);
            mm = b > mm ? b : mm;
        }
    }
    s->mm_scratch_bytes = mm;
    s->mm_scratch = tkv_calloc_aligned(mm ? mm : 64, 1);
    if (!s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->gate || !s->up || !s->logits ||
        !s->scores || !s->work || !s->attn_part || !s->kv_scratch || !s->rope_inv_freq ||
        !s->mm_scratch) {
        tkv_forward_state_release(s);
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "session: out of memory for activations "
                        "(n_batch %u, capacity %u)", n_batch, capacity);
    }
    /* LongRoPE: the long factors when the context exceeds the original one (llama.cpp's
     * rule, by the context size the session is made for) */
    const float *factors = m->rope_freqs ? m->rope_freqs
                           : m->rope_long
                               ? (capacity > hp->n_ctx_orig ? m->rope_long : m->rope_short)
                               : NULL;
    tkv_rope_table(&hp->rope, hp, factors, s->rope_inv_freq);
    tkv_rope_table(&hp->rope_swa, hp, factors, s->rope_inv_freq + hp->n_rot / 2);
    return TKV_OK;
}

tkv_status tkv_forward_reserve_logits(tkv_forward_state *s, const struct tkv_model *m,
                                      uint32_t rows) {
    if (rows <= s->logits_rows) {
        return TKV_OK;
    }
    float *grown = tkv_calloc_aligned((size_t)rows * m->hp.n_vocab, sizeof(float));
    TKV_REQUIRE(grown, TKV_ERR_OUT_OF_MEMORY, "session: out of memory for %u rows of logits",
                rows);
    tkv_free_aligned(s->logits);
    s->logits = grown;
    s->logits_rows = rows;
    return TKV_OK;
}

void tkv_forward_state_release(tkv_forward_state *s) {
    float *bufs[] = {s->x,          s->xn,           s->q,      s->k,      s->v,    s->att,
                     s->gate,       s->up,           s->logits, s->scores, s->work, s->attn_part,
                     s->kv_scratch, s->rope_inv_freq};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        tkv_free_aligned(bufs[i]);
    }
    tkv_free_aligned(s->mm_scratch);
    memset(s, 0, sizeof *s);
}

/* ---- matmul over the pool ------------------------------------------------------------ */

#define TKV_MAX_FUSED 3

/* Several products of the same input X, split by rows over the pool in one section:
 * Y_i (n_tok, w_i->rows) = X (n_tok, cols) W_i^T.  Fusing Q/K/V and gate/up halves the
 * number of synchronizations per layer, which dominate single-token decode. */
typedef struct {
    const tkv_matmul_kernels *k;
    const tkv_weight *w[TKV_MAX_FUSED];
    float *Y[TKV_MAX_FUSED];
    int n_w;
    int64_t total_rows;
    const float *X;
    int64_t n_tok;
    const void *scratch;
} tkv_mm_job;

static void tkv_mm_task(void *p, int ith, int nth) {
    tkv_mm_job *j = p;
    int64_t b, e;
    tkv_split_range(j->total_rows, ith, nth, &b, &e);
    int64_t base = 0;
    for (int i = 0; i < j->n_w && b < e; i++) {
        const tkv_weight *w = j->w[i];
        const int64_t lo = b > base ? b - base : 0;
        const int64_t hi = e - base < w->rows ? e - base : w->rows;
        if (lo < hi && w->packed) {
            tkv_matmul_rows_packed(j->k, w->type, w->packed, w->rows, w->cols, j->n_tok, j->scratch,
                                   j->Y[i], lo, hi);
        } else if (lo < hi) {
            tkv_matmul_rows(j->k, w->type, w->data, w->row_bytes, w->rows, w->cols, j->X, j->n_tok,
                            j->scratch, j->Y[i], lo, hi);
        }
        base += w->rows;
    }
}

/* Y_i = X W_i^T for n_w weights with the same number of columns. */
static void tkv_linear_multi(tkv_pool *pool, tkv_forward_state *s, const tkv_weight *const *ws,
                             float *const *Ys, int n_w, const float *X, int64_t n_tok) {
    uint64_t t0 = tkv_now_ns();
    const tkv_matmul_kernels *k = tkv_matmul_kernels_get();
    tkv_mm_job job = {.k = k, .n_w = n_w, .X = X, .n_tok = n_tok, .scratch = s->mm_scratch};
    int quantized_done = 0;
    for (int i = 0; i < n_w; i++) {
        job.w[i] = ws[i];
        job.Y[i] = Ys[i];
        job.total_rows += ws[i]->rows;
        /* Q8 activations depend only on X, so one quantization serves every quantized W */
        if (tkv_matmul_uses_q8(ws[i]->type) && !quantized_done) {
            tkv_matmul_prepare(k, ws[i]->type, ws[i]->cols, X, n_tok, s->mm_scratch);
            quantized_done = 1;
        }
    }
    tkv_pool_run(pool, tkv_mm_task, &job);
    s->times.matmul_ns += tkv_now_ns() - t0;
}

/* Y (n_tok, w->rows) = X (n_tok, w->cols) W^T */
static void tkv_linear(tkv_pool *pool, tkv_forward_state *s, const tkv_weight *w, const float *X,
                       int64_t n_tok, float *Y) {
    tkv_linear_multi(pool, s, &w, &Y, 1, X, n_tok);
}

/* ---- small blocks ---------------------------------------------------------------------- */

static void tkv_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps) {
    double ss = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        ss += (double)x[i] * x[i];
    }
    const float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (uint32_t i = 0; i < n; i++) {
        out[i] = x[i] * inv * w[i];
    }
}

/* cos and sin of pos * inv_freq[i] times mscale, for i < n_rot / 2, interleaved in cs: once
 * per token and layer, for all its query and key heads. */
static void tkv_rope_angles(uint32_t n_rot, uint32_t pos, const float *inv_freq, float mscale,
                            float *cs) {
    for (uint32_t i = 0; i < n_rot / 2; i++) {
        const float angle = (float)pos * inv_freq[i];
        cs[2 * i] = cosf(angle) * mscale;
        cs[2 * i + 1] = sinf(angle) * mscale;
    }
}

/* Rotate the first n_rot dimensions of each head by the angles of cs (tkv_rope_angles):
 * adjacent pairs (2i, 2i+1), or (i, i + n_rot/2) in NeoX order; the other dimensions pass
 * unchanged (partial RoPE). */
static void tkv_rope(float *v, uint32_t n_heads, uint32_t d, uint32_t n_rot, const float *cs,
                     int neox) {
    for (uint32_t h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * d;
        for (uint32_t i = 0; i < n_rot / 2; i++) {
            const float c = cs[2 * i], sn = cs[2 * i + 1];
            const uint32_t a = neox ? i : 2 * i;
            const uint32_t b = neox ? i + n_rot / 2 : 2 * i + 1;
            const float x0 = x[a], x1 = x[b];
            x[a] = x0 * c - x1 * sn;
            x[b] = x0 * sn + x1 * c;
        }
    }
}

/* x += y for n rows of E, y first RMS-normed and scaled by post_norm when given (Gemma 3's
 * norms of the attention and FFN outputs). */
static void tkv_add_residual(float *x, float *y, const float *post_norm, uint32_t n, uint32_t E,
                             float eps) {
    for (uint32_t t = 0; post_norm && t < n; t++) {
        tkv_rmsnorm(y + (size_t)t * E, y + (size_t)t * E, post_norm, E, eps);
    }
    for (size_t i = 0; i < (size_t)n * E; i++) {
        x[i] += y[i];
    }
}

/* ---- attention over the pool ------------------------------------------------------------ */

typedef struct {
    const struct tkv_model *m;
    const tkv_kv_cache *cache;
    tkv_forward_state *s;
    uint32_t layer;
    uint32_t t0;   /* the job's token t is row t0 + t of the batch's q and att */
    uint32_t n;    /* tokens */
    uint32_t pos0; /* position of the job's token 0 */
    float sparse_threshold;
    uint32_t split; /* 1: work items are (token, run, chunk), merged after the pool run */
} tkv_attn_job;

/* Work items are (token, run of up to TKV_MAX_QUERIES query heads of one KV head): the
 * query heads of a GQA group are adjacent in q, so a run is one contiguous block. */
typedef struct {
    uint32_t d, H, group, runs_per_group, run_len, items_per_token, max_chunks;
    uint32_t window; /* a sliding-window layer's n_swa, 0 for a global layer */
    float scale;
} tkv_attn_shape;

static tkv_attn_shape tkv_attn_shape_of(const tkv_attn_job *j) {
    const tkv_hparams *hp = &j->m->hp;
    tkv_attn_shape a;
    a.d = hp->head_dim;
    a.H = hp->n_head;
    a.group = hp->n_head / hp->n_head_kv;
    a.runs_per_group = (a.group + TKV_MAX_QUERIES - 1) / TKV_MAX_QUERIES;
    a.run_len = (a.group + a.runs_per_group - 1) / a.runs_per_group;
    a.items_per_token = hp->n_head_kv * a.runs_per_group;
    a.max_chunks = tkv_attn_n_chunks(j->s->capacity - 1);
    a.window = j->m->layers[j->layer].sliding ? hp->n_swa : 0;
    a.scale = hp->attn_scale;
    return a;
}

/* The first position a query at pos sees: pos - window + 1 in a sliding-window layer. */
static uint32_t tkv_attn_first(const tkv_attn_shape *a, uint32_t pos) {
    return a->window && pos + 1 > a->window ? pos + 1 - a->window : 0;
}

/* Chunks of the fixed grid that hold the positions a query at pos sees. */
static uint32_t tkv_attn_chunks_of(const tkv_attn_shape *a, uint32_t pos) {
    return pos / TKV_ATTN_CHUNK - tkv_attn_first(a, pos) / TKV_ATTN_CHUNK + 1;
}

/* The KV head and query heads [h0, h1) of item `item` of a token. */
static void tkv_attn_item_heads(const tkv_attn_shape *a, uint32_t item, uint32_t *kvh, uint32_t *h0,
                                uint32_t *h1) {
    *kvh = item / a->runs_per_group;
    *h0 = *kvh * a->group + item % a->runs_per_group * a->run_len;
    const uint32_t end = (*kvh + 1) * a->group;
    *h1 = *h0 + a->run_len < end ? *h0 + a->run_len : end;
}

/* Chunk c of the positions token t sees (counted from the grid chunk of the first of them)
 * for one item into its partial-result slot. */
static void tkv_attn_chunk(const tkv_attn_job *j, const tkv_attn_shape *a, uint32_t t,
                           uint32_t item, uint32_t c, float *part, float *scores, float *work) {
    uint32_t kvh, h0, h1;
    tkv_attn_item_heads(a, item, &kvh, &h0, &h1);
    const uint32_t pos = j->pos0 + t, first = tkv_attn_first(a, pos);
    const uint32_t grid = (first / TKV_ATTN_CHUNK + c) * TKV_ATTN_CHUNK;
    const uint32_t t0 = grid > first ? grid : first;
    const uint32_t t1 = pos + 1 - grid > TKV_ATTN_CHUNK ? grid + TKV_ATTN_CHUNK : pos + 1;
    const float *q = j->s->q + ((size_t)(j->t0 + t) * a->H + h0) * a->d;
    tkv_attn_group_range(j->cache, j->layer, kvh, q, (int)(h1 - h0), pos, t0, t1, a->scale,
                         j->sparse_threshold, part, part + (size_t)TKV_MAX_QUERIES * a->d, scores,
                         j->s->capacity, work);
}

static void tkv_attn_task(void *p, int ith, int nth) {
    tkv_attn_job *j = p;
    const tkv_attn_shape a = tkv_attn_shape_of(j);
    const size_t ps = tkv_attn_part_floats(a.d);
    float *scores = j->s->scores + (size_t)ith * TKV_MAX_QUERIES * j->s->capacity;
    float *work = j->s->work + (size_t)ith * TKV_MAX_QUERIES * TKV_ATTN_WORK_FLOATS(a.d);
    int64_t b, e;
    if (j->split) { /* items (token, run, chunk) of the chunks that exist, each into its slot
                     * of attn_part, spread evenly over the threads */
        int64_t total = 0;
        for (uint32_t t = 0; t < j->n; t++) {
            total += (int64_t)a.items_per_token * tkv_attn_chunks_of(&a, j->pos0 + t);
        }
        tkv_split_range(total, ith, nth, &b, &e);
        uint32_t t = 0;
        int64_t first = 0; /* flat index of token t's first item */
        for (int64_t i = b; i < e; i++) {
            uint32_t nc = tkv_attn_chunks_of(&a, j->pos0 + t);
            while (i - first >= (int64_t)a.items_per_token * nc) {
                first += (int64_t)a.items_per_token * nc;
                nc = tkv_attn_chunks_of(&a, j->pos0 + ++t);
            }
            const uint32_t item = (uint32_t)((i - first) / nc), c = (uint32_t)((i - first) % nc);
            float *slot =
                j->s->attn_part + (((size_t)t * a.items_per_token + item) * a.max_chunks + c) * ps;
            tkv_attn_chunk(j, &a, t, item, c, slot, scores, work);
        }
        return;
    }
    float *part = j->s->attn_part + (size_t)ith * a.max_chunks * ps;
    tkv_split_range((int64_t)j->n * a.items_per_token, ith, nth, &b, &e);
    for (int64_t i = b; i < e; i++) {
        const uint32_t t = (uint32_t)(i / a.items_per_token);
        const uint32_t item = (uint32_t)(i % a.items_per_token);
        const uint32_t nc = tkv_attn_chunks_of(&a, j->pos0 + t);
        uint32_t kvh, h0, h1;
        tkv_attn_item_heads(&a, item, &kvh, &h0, &h1);
        float *out = j->s->att + ((size_t)(j->t0 + t) * a.H + h0) * a.d;
        if (nc == 1) {
            const float *q = j->s->q + ((size_t)(j->t0 + t) * a.H + h0) * a.d;
            const uint32_t pos = j->pos0 + t;
            tkv_attn_group_range(j->cache, j->layer, kvh, q, (int)(h1 - h0), pos,
                                 tkv_attn_first(&a, pos), pos + 1, a.scale, j->sparse_threshold,
                                 out, NULL, scores, j->s->capacity, work);
            continue;
        }
        for (uint32_t c = 0; c < nc; c++) {
            tkv_attn_chunk(j, &a, t, item, c, part + c * ps, scores, work);
        }
        tkv_attn_merge(part, nc, (int)(h1 - h0), a.d, out);
    }
}

/* Attention of the n tokens of a layer over the pool; a small batch (decode) splits the
 * positions of each head too, then merges each head's chunks here, in chunk order. */
static void tkv_attention(tkv_pool *pool, tkv_attn_job *j) {
    const tkv_attn_shape a = tkv_attn_shape_of(j);
    j->split = j->n <= TKV_ATTN_SPLIT_TOKENS && tkv_pool_size(pool) > 1;
    tkv_pool_run(pool, tkv_attn_task, j);
    if (!j->split) {
        return;
    }
    const size_t ps = tkv_attn_part_floats(a.d);
    for (uint32_t t = 0; t < j->n; t++) {
        const uint32_t nc = tkv_attn_chunks_of(&a, j->pos0 + t);
        for (uint32_t item = 0; item < a.items_per_token; item++) {
            uint32_t kvh, h0, h1;
            tkv_attn_item_heads(&a, item, &kvh, &h0, &h1);
            float *out = j->s->att + ((size_t)(j->t0 + t) * a.H + h0) * a.d;
            const float *part =
                j->s->attn_part + ((size_t)t * a.items_per_token + item) * a.max_chunks * ps;
            if (nc == 1) { /* one chunk: the same bits as the unsplit path */
                memcpy(out, part, (size_t)(h1 - h0) * a.d * sizeof *out);
            } else {
                tkv_attn_merge(part, nc, (int)(h1 - h0), a.d, out);
            }
        }
    }
}

/* Keys and values the cache cannot store: activations that overflowed (weights or
 * metadata out of range).  The same error as non-finite logits (lib/session). */
static tkv_status tkv_check_kv_finite(const float *k, const float *v, size_t n, uint32_t layer,
                                      uint32_t pos0) {
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(k[i]) || !isfinite(v[i])) {
            return tkv_fail(TKV_ERR_BAD_FORMAT,
                            "non-finite %s %g in layer %u from position %u: the model's weights "
                            "or metadata produce NaN or Inf",
                            isfinite(k[i]) ? "value" : "key", (double)(isfinite(k[i]) ? v[i] : k[i]),
                            layer, pos0);
        }
    }
    return TKV_OK;
}

tkv_status tkv_forward(const struct tkv_model *m, tkv_kv_cache *cache, tkv_pool *pool,
                       tkv_forward_state *s, const int32_t *tokens, uint32_t n, uint32_t pos0,
                       int all_logits, float sparse_threshold) {
    const tkv_hparams *hp = &m->hp;
    const uint32_t E = hp->n_embd, d = hp->head_dim, H = hp->n_head, HK = hp->n_head_kv;
    const uint32_t QD = H * d, KD = HK * d, F = hp->n_ff;
    TKV_REQUIRE(!all_logits || n <= s->logits_rows, TKV_ERR_INTERNAL,
                "forward: %u rows of logits asked, %u reserved", n, s->logits_rows);
    uint64_t t_start = tkv_now_ns();
    tkv_phase_times before = s->times;

    for (uint32_t t = 0; t < n; t++) {
        float *x = s->x + (size_t)t * E;
        tkv_embedding_row(m->tok_embd.type, m->tok_embd.data, m->tok_embd.row_bytes, E, tokens[t],
                          x);
        for (uint32_t i = 0; hp->embd_scale != 1.0f && i < E; i++) {
            x[i] *= hp->embd_scale;
        }
    }
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const tkv_layer_weights *L = &m->layers[l];
        for (uint32_t t = 0; t < n; t++) {
            tkv_rmsnorm(s->xn + (size_t)t * E, s->x + (size_t)t * E, L->attn_norm, E, hp->rms_eps);
        }
        const tkv_weight *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_y[3] = {s->q, s->k, s->v};
        tkv_linear_multi(pool, s, qkv_w, qkv_y, 3, s->xn, n);
        for (uint32_t t = 0; t < n; t++) {
            float *q = s->q + (size_t)t * QD, *k = s->k + (size_t)t * KD, *v = s->v + (size_t)t * KD;
            for (uint32_t i = 0; L->bq && i < QD; i++) {
                q[i] += L->bq[i];
            }
            for (uint32_t i = 0; L->bk && i < KD; i++) {
                k[i] += L->bk[i];
            }
            for (uint32_t i = 0; L->bv && i < KD; i++) {
                v[i] += L->bv[i];
            }
            for (uint32_t h = 0; L->attn_q_norm && h < H; h++) {
                tkv_rmsnorm(q + (size_t)h * d, q + (size_t)h * d, L->attn_q_norm, d, hp->rms_eps);
            }
            for (uint32_t h = 0; L->attn_k_norm && h < HK; h++) {
                tkv_rmsnorm(k + (size_t)h * d, k + (size_t)h * d, L->attn_k_norm, d, hp->rms_eps);
            }
            const tkv_rope_params *rp = L->sliding ? &hp->rope_swa : &hp->rope;
            const float *inv_freq = s->rope_inv_freq + (L->sliding ? hp->n_rot / 2 : 0);
            float cs[TKV_HEAD_DIM_MAX]; /* n_rot <= d */
            tkv_rope_angles(hp->n_rot, pos0 + t, inv_freq, rp->mscale, cs);
            tkv_rope(q, H, d, hp->n_rot, cs, hp->rope_neox);
            tkv_rope(k, HK, d, hp->n_rot, cs, hp->rope_neox);
            if (s->capture_q) {
                const size_t row = (size_t)t * hp->n_layer + l;
                memcpy(s->capture_q + row * QD, q, QD * sizeof *q);
                memcpy(s->capture_k + row * KD, k, KD * sizeof *k);
                memcpy(s->capture_v + row * KD, v, KD * sizeof *v);
            }
        }
        /* before the calibration sums see them: a NaN key would poison every later block */
        TKV_TRY(tkv_check_kv_finite(s->k, s->v, (size_t)n * KD, l, pos0));
        TKV_TRY(tkv_kv_calibrate(cache, l, pos0, s->q, H, s->k, n));
        /* a sliding-window layer keeps a ring of its last positions: append at most
         * tkv_kv_append_limit of them before attention reads their windows (each token's
         * attention is the same whatever sub-batch it is in) */
        const uint32_t step = tkv_kv_append_limit(cache, l);
        for (uint32_t a = 0, b; a < n; a = b) {
            b = n - a < step ? n : a + step;
            TKV_TRY(tkv_kv_append_batch(cache, l, pos0 + a, b - a, s->k + (size_t)a * KD,
                                        s->v + (size_t)a * KD, pool, s->kv_scratch));
            uint64_t ta = tkv_now_ns();
            tkv_attn_job job = {m, cache, s, l, a, b - a, pos0 + a, sparse_threshold, 0};
            tkv_attention(pool, &job);
            s->times.attention_ns += tkv_now_ns() - ta;
        }
        tkv_linear(pool, s, &L->wo, s->att, n, s->xn); /* xn reused as the projection output */
        tkv_add_residual(s->x, s->xn, L->attn_post_norm, n, E, hp->rms_eps);
        for (uint32_t t = 0; t < n; t++) {
            tkv_rmsnorm(s->xn + (size_t)t * E, s->x + (size_t)t * E, L->ffn_norm, E, hp->rms_eps);
        }
        const tkv_weight *gu_w[2] = {&L->w_gate, &L->w_up};
        float *gu_y[2] = {s->gate, s->up};
        tkv_linear_multi(pool, s, gu_w, gu_y, 2, s->xn, n);
        if (hp->ffn_act == TKV_FFN_GELU_TANH) { /* GeGLU */
            for (size_t i = 0; i < (size_t)n * F; i++) {
                const float g = s->gate[i];
                const float inner = 0.7978845608f * (g + 0.044715f * g * g * g); /* sqrt(2/pi) */
                s->gate[i] = 0.5f * g * (1.0f + tanhf(inner)) * s->up[i];
            }
        } else {
            for (size_t i = 0; i < (size_t)n * F; i++) {
                const float g = s->gate[i];
                s->gate[i] = g / (1.0f + expf(-g)) * s->up[i]; /* SwiGLU */
            }
        }
        tkv_linear(pool, s, &L->w_down, s->gate, n, s->xn);
        tkv_add_residual(s->x, s->xn, L->ffn_post_norm, n, E, hp->rms_eps);
    }
    const uint32_t first = all_logits ? 0 : n - 1;
    const uint32_t n_out = n - first;
    for (uint32_t t = 0; t < n_out; t++) {
        tkv_rmsnorm(s->xn + (size_t)t * E, s->x + (size_t)(first + t) * E, m->output_norm, E,
                    hp->rms_eps);
    }
    tkv_linear(pool, s, &m->output, s->xn, n_out, s->logits);
    if (hp->final_softcap > 0.0f) {
        const float c = hp->final_softcap;
        for (size_t i = 0; i < (size_t)n_out * hp->n_vocab; i++) {
            s->logits[i] = c * tanhf(s->logits[i] / c);
        }
    }
    uint64_t total = tkv_now_ns() - t_start;
    uint64_t counted = (s->times.matmul_ns - before.matmul_ns) +
                       (s->times.attention_ns - before.attention_ns);
    s->times.other_ns += total > counted ? total - counted : 0;
    return TKV_OK;
}
