/*
 * cache_file.c - the cache sections of a saved-cache file.  The per-layer content
 * (tkv_kv_write_layer / tkv_kv_read_layer) is the only code here that knows how the cache
 * stores positions; the rest checks that a file belongs to this model and codec set.
 *
 * MODL: u64 fingerprint, u32 n_layer, n_head_kv, head_dim, n_vocab, u32 name length,
 *       name bytes.
 * CODC: u32 count, then per codec: i32 id, u32 bytes per vector, u64 definition hash,
 *       u32 name length, name bytes.  The definition hash is XXH64 over the name, the
 *       bytes per vector, the codebook centroids and (trellis codecs) the window length and
 *       int8 table with its scale, so a library whose codec of that id codes differently
 *       is refused rather than read as garbage.
 * CONF: u32 capacity, window, n_sink, calibration block, levers (bit 0 centering, bit 1
 *       smoothing), f32 smoothing alpha, f32 sparse-V threshold, u64 seed, then per layer
 *       i32 K codec id, i32 V codec id, u32 span, u32 ring (the layer's sliding window and
 *       its ring of code rows, 0 = none; version 2 on: version 1 files take them from the
 *       model).
 * LAYR: u32 n, n_comp, n_calib, stat_block, stat_n, n_lost (version 2 on); when n > 0, per
 *       KV head: K sink rows and V sink rows (s0 x d f32, s0 = min(n_sink, n_comp)), K
 *       codes and V codes of positions [c0, n_comp), c0 = min(max(s0, n_lost), n_comp): a
 *       ring layer's codes before n_lost were overwritten (version 1: c0 = s0, and a ring
 *       layer keeps what its ring holds of them) (each vector as its codec writes it), K
 *       and V fp16 window
 *       rows of positions [n_comp, n) in position order; then the layer's calibration
 *       (kv/calib.h), block-major: with centering n_calib x n_head_kv x d fp16 offsets,
 *       with smoothing as many fp16 scales, and with a lever and calibration blocks on
 *       n_head_kv x 3 x d f64 running sums (k, k^2, q^2 of the block being filled).
 *       Everything the cache reads again is saved as its bits, so a loaded cache
 *       continues exactly as the saved one would have.
 */
#include "kv/cache_file.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "base/status.h"
#include "codec/codec.h"

#define TKV_KV_FILE_MAX_NAME 255
#define TKV_KV_FILE_MAX_CODECS 64

tkv_status tkv_kv_codec_definition_hash(int32_t id, uint32_t d, uint64_t *out) {
    struct tkv_codec codec;
    TKV_TRY(tkv_codec_init(&codec, id, d, 0));
    tkv_wbuf w = {0};
    tkv_wbuf_put(&w, codec.desc->name, strlen(codec.desc->name));
    tkv_wbuf_u32(&w, (uint32_t)codec.layout.stride);
    for (int i = 0; i < 32; i++) {
        tkv_wbuf_f32(&w, codec.centroids[i]);
    }
    if (codec.trellis) { /* its reconstruction levels are the trellis codecs' codebook */
        const tkv_trellis *t = codec.trellis;
        tkv_wbuf_u32(&w, t->window);
        tkv_wbuf_put(&w, t->q8, (size_t)1 << t->window_bits);
        tkv_wbuf_f32(&w, t->q8_scale);
    }
    tkv_codec_release(&codec);
    TKV_REQUIRE(!w.failed, TKV_ERR_OUT_OF_MEMORY, "cache file: out of memory");
    *out = tkv_hash64(w.data, w.len, 0);
    tkv_wbuf_release(&w);
    return TKV_OK;
}

static void tkv_put_name(tkv_wbuf *w, const char *name) {
    size_t n = strlen(name);
    if (n > TKV_KV_FILE_MAX_NAME) {
        n = TKV_KV_FILE_MAX_NAME;
    }
    tkv_wbuf_u32(w, (uint32_t)n);
    tkv_wbuf_put(w, name, n);
}

static tkv_status tkv_get_name(tkv_rbuf *r, const char *what, char out[TKV_KV_FILE_MAX_NAME + 1]) {
    uint32_t n;
    TKV_TRY(tkv_rbuf_u32(r, what, &n));
    TKV_REQUIRE(n <= TKV_KV_FILE_MAX_NAME, TKV_ERR_BAD_FORMAT, "%s: %s of %u bytes (at most %d)",
                r->where, what, n, TKV_KV_FILE_MAX_NAME);
    TKV_TRY(tkv_rbuf_get(r, out, n, what));
    out[n] = '\0';
    for (uint32_t i = 0; i < n; i++) {
        if (out[i] < 0x20 || out[i] == 0x7f) {
            out[i] = '?'; /* it goes into messages */
        }
    }
    return TKV_OK;
}

/* The distinct codec ids of the cache's layers, in first-use order. */
static uint32_t tkv_codecs_used(const tkv_kv_cache *c, int32_t *ids) {
    uint32_t n = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const int32_t pair[2] = {c->layers[l].k_codec_id, c->layers[l].v_codec_id};
        for (int k = 0; k < 2; k++) {
            uint32_t i = 0;
            while (i < n && ids[i] != pair[k]) {
                i++;
            }
            if (i == n) {
                ids[n++] = pair[k];
            }
        }
    }
    return n;
}

/* ---- per-layer content ------------------------------------------------------------------- */

static size_t tkv_layer_sink_count(const tkv_kv_cache *c, const tkv_kv_layer *L) {
    return L->n_comp < c->n_sink ? L->n_comp : c->n_sink;
}

/* The first compressed position whose codes the layer holds (a ring lost those before
 * n_lost). */
static uint32_t tkv_layer_first_code(const tkv_kv_cache *c, const tkv_kv_layer *L) {
    const uint32_t s0 = (uint32_t)tkv_layer_sink_count(c, L);
    const uint32_t c0 = L->n_lost > s0 ? L->n_lost : s0;
    return c0 < L->n_comp ? c0 : L->n_comp;
}

static int tkv_blocks_on(const tkv_kv_cache *c) {
    return tkv_kv_has_calibration(c) && c->calib.p.block != TKV_CALIBRATION_ONCE;
}

static void tkv_kv_write_layer(const tkv_kv_cache *c, uint32_t l, tkv_wbuf *w) {
    const tkv_kv_layer *L = &c->layers[l];
    const tkv_calib_layer *C = &c->calib.layers[l];
    tkv_wbuf_u32(w, L->n);
    tkv_wbuf_u32(w, L->n_comp);
    tkv_wbuf_u32(w, C->n_set);
    tkv_wbuf_u32(w, C->stat_block);
    tkv_wbuf_u32(w, C->stat_n);
    tkv_wbuf_u32(w, L->n_lost);
    if (L->n == 0) {
        return;
    }
    const uint32_t d = c->head_dim, W = c->window;
    const size_t s0 = tkv_layer_sink_count(c, L);
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        const tkv_kv_head *hd = &c->heads[(size_t)l * c->n_head_kv + h];
        /* fp32 and fp16 arrays are written as their in-memory bytes: the format is
         * little-endian, and so is every host this library builds for (x86-64, arm64) */
        tkv_wbuf_put(w, hd->k_sink, s0 * d * sizeof(float));
        tkv_wbuf_put(w, hd->v_sink, s0 * d * sizeof(float));
        for (int kind = 0; kind < 2; kind++) { /* a fork's shared prefix, then its own */
            const size_t stride = kind ? hd->v_codec.layout.stride : hd->k_codec.layout.stride;
            for (uint32_t t = tkv_layer_first_code(c, L), run; t < L->n_comp; t += run) {
                const uint8_t *codes = tkv_kv_code_run(c, l, h, kind, t, L->n_comp, &run);
                tkv_wbuf_put(w, codes, (size_t)run * stride);
            }
        }
        for (int kind = 0; kind < 2; kind++) {
            const uint16_t *ring = kind == 0 ? hd->k_window : hd->v_window;
            for (uint32_t p = L->n_comp; p < L->n; p++) {
                tkv_wbuf_put(w, ring + (size_t)(p % W) * d, d * sizeof(uint16_t));
            }
        }
    }
    /* the layer's calibration, block-major: (n_set, n_head_kv, d) */
    const size_t bf = (size_t)c->n_head_kv * d;
    if (c->calib.p.center_keys) {
        tkv_wbuf_put(w, C->mu, (size_t)C->n_set * bf * sizeof(uint16_t));
    }
    if (c->calib.p.smooth_keys) {
        tkv_wbuf_put(w, C->scale, (size_t)C->n_set * bf * sizeof(uint16_t));
    }
    if (tkv_blocks_on(c)) {
        for (size_t i = 0; i < 3 * bf; i++) {
            tkv_wbuf_f64(w, C->stats ? C->stats[i] : 0.0);
        }
    }
}

static int tkv_fp16_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

static tkv_status tkv_read_fp16(tkv_rbuf *r, size_t count, uint16_t *dst, int positive,
                                const char *what, uint32_t head) {
    TKV_TRY(tkv_rbuf_get(r, dst, count * sizeof *dst, what));
    for (size_t i = 0; i < count; i++) {
        TKV_REQUIRE(tkv_fp16_finite(dst[i]) && (!positive || (dst[i] > 0 && dst[i] < 0x8000u)),
                    TKV_ERR_BAD_FORMAT, "%s: head %u %s element %zu: fp16 0x%04x is %s", r->where,
                    head, what, i, dst[i], positive ? "not a positive finite scale" : "not finite");
    }
    return TKV_OK;
}

static tkv_status tkv_read_f32(tkv_rbuf *r, size_t count, float *dst, const char *what,
                               uint32_t head) {
    TKV_TRY(tkv_rbuf_get(r, dst, count * sizeof *dst, what));
    for (size_t i = 0; i < count; i++) {
        TKV_REQUIRE(isfinite(dst[i]), TKV_ERR_BAD_FORMAT, "%s: head %u %s element %zu is %g",
                    r->where, head, what, i, (double)dst[i]);
    }
    return TKV_OK;
}

static tkv_status tkv_read_codes(tkv_rbuf *r, const struct tkv_codec *codec, size_t count,
                                 uint8_t *dst, const char *what, uint32_t head, size_t pos0) {
    const size_t stride = codec->layout.stride;
    TKV_REQUIRE(count <= (r->len - r->off) / stride, TKV_ERR_BAD_FORMAT,
                "%s: head %u %s: %zu vectors of %zu bytes, only %zu bytes left", r->where, head,
                what, count, stride, r->len - r->off);
    TKV_TRY(tkv_rbuf_get(r, dst, count * stride, what));
    for (size_t i = 0; i < count; i++) {
        if (tkv_codec_validate_one(codec, dst + i * stride) != TKV_OK) {
            tkv_error_prefix("%s: head %u %s of position %zu", r->where, head, what, pos0 + i);
            return TKV_ERR_BAD_FORMAT;
        }
    }
    return TKV_OK;
}

/* count codes of positions pos.. into the rows the layer keeps them in, run by run (runs
 * end at segment ends; a ring wraps: a version 1 file may hold more positions than the
 * ring, the later ones overwrite). */
static tkv_status tkv_read_code_rows(tkv_rbuf *r, tkv_kv_cache *c, uint32_t l, uint32_t head,
                                     int kind, uint32_t pos, uint32_t count, const char *what) {
    const tkv_kv_head *hd = &c->heads[(size_t)l * c->n_head_kv + head];
    const struct tkv_codec *codec = kind ? &hd->v_codec : &hd->k_codec;
    for (uint32_t p = pos, end = pos + count, run; p < end; p += run) {
        uint8_t *rows = tkv_kv_code_run_mut(c, l, head, kind, p, end, &run);
        TKV_TRY(tkv_read_codes(r, codec, run, rows, what, head, p));
    }
    return TKV_OK;
}

static tkv_status tkv_kv_read_layer(tkv_rbuf *r, tkv_kv_cache *c, uint32_t l, uint32_t version) {
    tkv_kv_layer *L = &c->layers[l];
    tkv_calib_layer *C = &c->calib.layers[l];
    uint32_t n, n_comp, n_calib, stat_block, stat_n, n_lost = 0;
    TKV_TRY(tkv_rbuf_u32(r, "position count", &n));
    TKV_TRY(tkv_rbuf_u32(r, "compressed count", &n_comp));
    TKV_TRY(tkv_rbuf_u32(r, "calibration block count", &n_calib));
    TKV_TRY(tkv_rbuf_u32(r, "statistics block", &stat_block));
    TKV_TRY(tkv_rbuf_u32(r, "statistics count", &stat_n));
    if (version >= 2) {
        TKV_TRY(tkv_rbuf_u32(r, "lost positions", &n_lost));
    } else if (L->ring && n_comp > L->ring) {
        n_lost = n_comp - L->ring; /* all of them are in the file; the ring keeps its last */
    }
    const uint32_t first_n = c->layers[0].n;
    TKV_REQUIRE(l == 0 || n == first_n, TKV_ERR_BAD_FORMAT,
                "%s: %u positions, layer 0 has %u (every layer holds the same positions)",
                r->where, n, first_n);
    TKV_REQUIRE(n <= c->capacity, TKV_ERR_BAD_FORMAT, "%s: %u positions exceed the capacity %u",
                r->where, n, c->capacity);
    TKV_REQUIRE(n_comp <= n && n - n_comp <= c->window, TKV_ERR_BAD_FORMAT,
                "%s: %u compressed of %u positions with an fp16 window of %u", r->where, n_comp, n,
                c->window);
    TKV_REQUIRE(n_comp >= (n < c->n_sink ? n : c->n_sink), TKV_ERR_BAD_FORMAT,
                "%s: %u compressed positions, fewer than the %u sink positions", r->where, n_comp,
                n < c->n_sink ? n : c->n_sink);
    const uint32_t keep = n ? tkv_kv_calib_block_of(c, n - 1) + 1 : 0;
    TKV_REQUIRE(n_calib <= (tkv_kv_has_calibration(c) ? keep : 0), TKV_ERR_BAD_FORMAT,
                "%s: %u calibration blocks for %u positions (at most %u)", r->where, n_calib, n,
                tkv_kv_has_calibration(c) ? keep : 0);
    TKV_REQUIRE(n > 0 || (n_comp == 0 && n_calib == 0 && stat_block == 0 && stat_n == 0),
                TKV_ERR_BAD_FORMAT, "%s: an empty layer with calibration state", r->where);
    /* a ring holds n_comp - c0 <= ring distinct rows; a layer without one loses nothing */
    const uint32_t s0_of = n_comp < c->n_sink ? n_comp : c->n_sink;
    const uint32_t c0 = version < 2 ? s0_of : n_lost > s0_of ? n_lost : s0_of;
    TKV_REQUIRE(version < 2 ||
                    (n_lost <= n_comp && (L->ring ? n_comp - c0 <= L->ring : n_lost == 0)),
                TKV_ERR_BAD_FORMAT,
                "%s: %u lost positions of %u compressed, with a ring of %u code rows (0: none)",
                r->where, n_lost, n_comp, L->ring);
    /* stat_n may exceed n by a position whose append failed (its statistics stay) */
    TKV_REQUIRE(stat_n <= c->capacity, TKV_ERR_BAD_FORMAT,
                "%s: statistics of %u positions, capacity %u", r->where, stat_n, c->capacity);
    if (n == 0) {
        return TKV_OK;
    }
    TKV_TRY(tkv_kv_reserve(c, l, n_comp));
    if (tkv_kv_has_calibration(c)) {
        /* every block the positions reach, as the cache would have them (unset ones
         * mu = 0, s = 1, as after growth) */
        TKV_TRY(tkv_calib_reserve(&c->calib, l, keep > 0 ? keep : 1));
    }
    L->n = n;
    L->n_comp = n_comp;
    L->n_lost = n_lost;
    C->n_set = n_calib;
    C->stat_block = stat_block;
    C->stat_n = stat_n;
    const uint32_t d = c->head_dim, W = c->window;
    const size_t s0 = tkv_layer_sink_count(c, L);
    for (uint32_t h = 0; h < c->n_head_kv; h++) {
        tkv_kv_head *hd = &c->heads[(size_t)l * c->n_head_kv + h];
        TKV_TRY(tkv_read_f32(r, s0 * d, hd->k_sink, "K sink rows", h));
        TKV_TRY(tkv_read_f32(r, s0 * d, hd->v_sink, "V sink rows", h));
        if (n_comp > c0) {
            TKV_TRY(tkv_read_code_rows(r, c, l, h, 0, c0, n_comp - c0, "K codes"));
            TKV_TRY(tkv_read_code_rows(r, c, l, h, 1, c0, n_comp - c0, "V codes"));
        }
        for (int kind = 0; kind < 2; kind++) {
            uint16_t *ring = kind == 0 ? hd->k_window : hd->v_window;
            for (uint32_t p = n_comp; p < n; p++) {
                TKV_TRY(tkv_read_fp16(r, d, ring + (size_t)(p % W) * d, 0,
                                      kind == 0 ? "K window row" : "V window row", h));
            }
        }
    }
    const size_t bf = (size_t)c->n_head_kv * d;
    if (c->calib.p.center_keys) {
        TKV_TRY(tkv_read_fp16(r, (size_t)n_calib * bf, C->mu, 0, "key offsets", 0));
    }
    if (c->calib.p.smooth_keys) {
        TKV_TRY(tkv_read_fp16(r, (size_t)n_calib * bf, C->scale, 1, "key scales", 0));
    }
    if (tkv_blocks_on(c)) {
        for (size_t i = 0; i < 3 * bf; i++) {
            double v;
            TKV_TRY(tkv_rbuf_f64(r, "calibration statistics", &v));
            /* (n_head_kv, 3, d): the first d of each head's three are sums of k */
            TKV_REQUIRE(isfinite(v) && (i % (3 * (size_t)d) < d || v >= 0.0), TKV_ERR_BAD_FORMAT,
                        "%s: calibration statistic %zu is %g", r->where, i, v);
            C->stats[i] = v;
        }
    }
    return TKV_OK;
}

/* ---- the cache ----------------------------------------------------------------------------- */

void tkv_kv_write(const tkv_kv_cache *c, const tkv_kv_model_id *model, float sparse_v,
                  tkv_wbuf *w) {
    size_t at = tkv_wbuf_section_begin(w, TKV_KV_TAG_MODEL);
    tkv_wbuf_u64(w, model->fingerprint);
    tkv_wbuf_u32(w, model->n_layer);
    tkv_wbuf_u32(w, model->n_head_kv);
    tkv_wbuf_u32(w, model->head_dim);
    tkv_wbuf_u32(w, model->n_vocab);
    tkv_put_name(w, model->name);
    tkv_wbuf_section_end(w, at);

    int32_t ids[2 * TKV_KV_FILE_MAX_CODECS];
    const uint32_t n_codecs = tkv_codecs_used(c, ids);
    at = tkv_wbuf_section_begin(w, TKV_KV_TAG_CODECS);
    tkv_wbuf_u32(w, n_codecs);
    for (uint32_t i = 0; i < n_codecs; i++) {
        const tkv_codec_desc *desc = tkv_codec_desc_get(ids[i]);
        uint64_t hash = 0;
        if (tkv_kv_codec_definition_hash(ids[i], c->head_dim, &hash) != TKV_OK) {
            w->failed = 1;
        }
        tkv_wbuf_u32(w, (uint32_t)ids[i]);
        tkv_wbuf_u32(w, (uint32_t)tkv_codec_desc_vector_bytes(desc, c->head_dim));
        tkv_wbuf_u64(w, hash);
        tkv_put_name(w, desc->name);
    }
    tkv_wbuf_section_end(w, at);

    at = tkv_wbuf_section_begin(w, TKV_KV_TAG_CONFIG);
    tkv_wbuf_u32(w, c->capacity);
    tkv_wbuf_u32(w, c->window);
    tkv_wbuf_u32(w, c->n_sink);
    tkv_wbuf_u32(w, c->calib.p.block);
    tkv_wbuf_u32(w, (c->calib.p.center_keys ? 1u : 0u) | (c->calib.p.smooth_keys ? 2u : 0u));
    tkv_wbuf_f32(w, c->calib.p.smooth_alpha);
    tkv_wbuf_f32(w, sparse_v);
    tkv_wbuf_u64(w, c->seed);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        tkv_wbuf_u32(w, (uint32_t)c->layers[l].k_codec_id);
        tkv_wbuf_u32(w, (uint32_t)c->layers[l].v_codec_id);
        tkv_wbuf_u32(w, c->layers[l].span);
        tkv_wbuf_u32(w, c->layers[l].ring);
    }
    tkv_wbuf_section_end(w, at);

    for (uint32_t l = 0; l < c->n_layer; l++) {
        at = tkv_wbuf_section_begin(w, TKV_KV_TAG_LAYER);
        tkv_kv_write_layer(c, l, w);
        tkv_wbuf_section_end(w, at);
    }
}

static tkv_status tkv_kv_read_model(tkv_rbuf *payload, const tkv_kv_model_id *model,
                                    uint64_t file_fingerprint) {
    tkv_rbuf r;
    TKV_TRY(tkv_rbuf_section(payload, TKV_KV_TAG_MODEL, "model section", &r));
    uint64_t fp;
    uint32_t n_layer, n_head_kv, head_dim, n_vocab;
    char name[TKV_KV_FILE_MAX_NAME + 1];
    TKV_TRY(tkv_rbuf_u64(&r, "fingerprint", &fp));
    TKV_TRY(tkv_rbuf_u32(&r, "n_layer", &n_layer));
    TKV_TRY(tkv_rbuf_u32(&r, "n_head_kv", &n_head_kv));
    TKV_TRY(tkv_rbuf_u32(&r, "head_dim", &head_dim));
    TKV_TRY(tkv_rbuf_u32(&r, "n_vocab", &n_vocab));
    TKV_TRY(tkv_get_name(&r, "model name", name));
    TKV_TRY(tkv_rbuf_done(&r));
    TKV_REQUIRE(fp == file_fingerprint, TKV_ERR_BAD_FORMAT,
                "cache file: the model section's fingerprint differs from the header's");
    TKV_REQUIRE(fp == model->fingerprint && n_layer == model->n_layer &&
                    n_head_kv == model->n_head_kv && head_dim == model->head_dim &&
                    n_vocab == model->n_vocab,
                TKV_ERR_MISMATCH,
                "the cache was saved for another model: '%s' (%u layers, %u KV heads of %u, "
                "vocabulary %u, GGUF fingerprint %016llx), this is '%s' (%u layers, %u KV heads "
                "of %u, vocabulary %u, fingerprint %016llx)",
                name, n_layer, n_head_kv, head_dim, n_vocab, (unsigned long long)fp, model->name,
                model->n_layer, model->n_head_kv, model->head_dim, model->n_vocab,
                (unsigned long long)model->fingerprint);
    return TKV_OK;
}

static tkv_status tkv_kv_read_codecs(tkv_rbuf *payload, uint32_t d, int32_t *ids,
                                     uint32_t *n_ids) {
    tkv_rbuf r;
    TKV_TRY(tkv_rbuf_section(payload, TKV_KV_TAG_CODECS, "codec section", &r));
    uint32_t n;
    TKV_TRY(tkv_rbuf_u32(&r, "codec count", &n));
    TKV_REQUIRE(n >= 1 && n <= TKV_KV_FILE_MAX_CODECS, TKV_ERR_BAD_FORMAT,
                "codec section: %u codecs (1..%d)", n, TKV_KV_FILE_MAX_CODECS);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id, bytes;
        uint64_t hash;
        char name[TKV_KV_FILE_MAX_NAME + 1];
        TKV_TRY(tkv_rbuf_u32(&r, "codec id", &id));
        TKV_TRY(tkv_rbuf_u32(&r, "bytes per vector", &bytes));
        TKV_TRY(tkv_rbuf_u64(&r, "definition hash", &hash));
        TKV_TRY(tkv_get_name(&r, "codec name", name));
        const tkv_codec_desc *desc = tkv_codec_desc_get((int32_t)id);
        TKV_REQUIRE(desc, TKV_ERR_MISMATCH,
                    "the cache uses codec id %d ('%s'), which this library does not have (its "
                    "codec set has ids 0..%d)",
                    (int)(int32_t)id, name, TKV_CODEC_COUNT - 1);
        TKV_REQUIRE(strcmp(desc->name, name) == 0, TKV_ERR_MISMATCH,
                    "the cache's codec id %u is '%s', in this library it is '%s': saved by a "
                    "library with another codec set",
                    id, name, desc->name);
        TKV_REQUIRE(tkv_codec_desc_dim_valid(desc, d), TKV_ERR_MISMATCH,
                    "codec '%s' cannot code head_dim %u", name, d);
        uint64_t here;
        TKV_TRY(tkv_kv_codec_definition_hash((int32_t)id, d, &here));
        TKV_REQUIRE(bytes == tkv_codec_desc_vector_bytes(desc, d) && hash == here,
                    TKV_ERR_MISMATCH,
                    "codec '%s' of the cache (%u bytes per vector, definition %016llx) differs "
                    "from this library's (%zu bytes, definition %016llx): saved by a library "
                    "with another codec set",
                    name, bytes, (unsigned long long)hash, tkv_codec_desc_vector_bytes(desc, d),
                    (unsigned long long)here);
        for (uint32_t j = 0; j < i; j++) {
            TKV_REQUIRE(ids[j] != (int32_t)id, TKV_ERR_BAD_FORMAT,
                        "codec section: codec '%s' listed twice", name);
        }
        ids[i] = (int32_t)id;
    }
    *n_ids = n;
    return tkv_rbuf_done(&r);
}

static int tkv_id_listed(const int32_t *ids, uint32_t n, int32_t id) {
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] == id) {
            return 1;
        }
    }
    return 0;
}

static tkv_status tkv_kv_read_config(tkv_rbuf *payload, const tkv_kv_model_id *model,
                                     uint32_t version, const int32_t *ids, uint32_t n_ids,
                                     tkv_kv_cache *c, float *sparse_v) {
    tkv_rbuf r;
    TKV_TRY(tkv_rbuf_section(payload, TKV_KV_TAG_CONFIG, "configuration section", &r));
    uint32_t capacity, window, n_sink, calib_block, levers;
    float alpha, sv;
    uint64_t seed;
    TKV_TRY(tkv_rbuf_u32(&r, "capacity", &capacity));
    TKV_TRY(tkv_rbuf_u32(&r, "fp16 window", &window));
    TKV_TRY(tkv_rbuf_u32(&r, "sink tokens", &n_sink));
    TKV_TRY(tkv_rbuf_u32(&r, "calibration block", &calib_block));
    TKV_TRY(tkv_rbuf_u32(&r, "levers", &levers));
    TKV_TRY(tkv_rbuf_f32(&r, "smoothing exponent", &alpha));
    TKV_TRY(tkv_rbuf_f32(&r, "sparse-V threshold", &sv));
    TKV_TRY(tkv_rbuf_u64(&r, "seed", &seed));
    TKV_REQUIRE(capacity >= 1 && capacity <= (1u << 24) && window <= capacity &&
                    n_sink <= TKV_KV_MAX_SINK && levers <= 3u,
                TKV_ERR_BAD_FORMAT,
                "configuration section: capacity %u (1..16777216), window %u (<= capacity), "
                "%u sink tokens (<= %d), levers 0x%x (<= 3)",
                capacity, window, n_sink, TKV_KV_MAX_SINK, levers);
    TKV_REQUIRE(calib_block == TKV_CALIBRATION_ONCE ||
                    (calib_block >= TKV_KV_MIN_CALIB_BLOCK && calib_block <= (1u << 24)),
                TKV_ERR_BAD_FORMAT, "configuration section: calibration block %u", calib_block);
    TKV_REQUIRE(!(levers & 2u) || (isfinite(alpha) && alpha > 0.0f && alpha <= 1.0f),
                TKV_ERR_BAD_FORMAT, "configuration section: smoothing exponent %g",
                (double)alpha);
    TKV_REQUIRE(isfinite(sv) && sv >= 0.0f && sv < 1.0f, TKV_ERR_BAD_FORMAT,
                "configuration section: sparse-V threshold %g", (double)sv);
    TKV_TRY(tkv_kv_init(c, model->n_layer, model->n_head_kv, model->head_dim, capacity,
                        TKV_CODEC_FP32, TKV_CODEC_FP32, window, seed));
    const tkv_calib_params cp = {.center_keys = (levers & 1u) != 0,
                                 .smooth_keys = (levers & 2u) != 0,
                                 .smooth_alpha = (levers & 2u) ? alpha : 0.0f,
                                 .block = calib_block};
    tkv_status lv = tkv_kv_set_levers(c, n_sink, &cp);
    if (lv != TKV_OK) {
        tkv_kv_release(c);
        return lv;
    }
    *sparse_v = sv;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        uint32_t k, v, span = 0, ring = 0;
        tkv_status st = tkv_rbuf_u32(&r, "layer K codec", &k);
        if (st == TKV_OK) {
            st = tkv_rbuf_u32(&r, "layer V codec", &v);
        }
        if (st == TKV_OK && model->span && model->span[l]) { /* the model's ring */
            st = tkv_kv_set_layer_span(c, l, model->span[l], TKV_KV_SLIDING_BATCH);
        }
        if (st == TKV_OK && version >= 2) {
            st = tkv_rbuf_u32(&r, "layer window", &span);
            if (st == TKV_OK) {
                st = tkv_rbuf_u32(&r, "layer ring", &ring);
            }
            if (st == TKV_OK && (span != c->layers[l].span || ring != c->layers[l].ring)) {
                st = tkv_fail(TKV_ERR_MISMATCH,
                              "configuration section: layer %u was saved with a sliding window "
                              "of %u positions in a ring of %u code rows, this model and "
                              "library give %u and %u (0: none)",
                              l, span, ring, c->layers[l].span, c->layers[l].ring);
            }
        }
        if (st == TKV_OK && (!tkv_id_listed(ids, n_ids, (int32_t)k) ||
                             !tkv_id_listed(ids, n_ids, (int32_t)v))) {
            st = tkv_fail(TKV_ERR_BAD_FORMAT,
                          "configuration section: layer %u uses codec ids %d/%d, not all in the "
                          "codec section", l, (int)(int32_t)k, (int)(int32_t)v);
        }
        if (st != TKV_OK) {
            tkv_kv_release(c);
            return st;
        }
        c->layers[l].k_codec_id = (int32_t)k;
        c->layers[l].v_codec_id = (int32_t)v;
    }
    tkv_status st = tkv_rbuf_done(&r);
    if (st != TKV_OK) {
        tkv_kv_release(c);
    }
    return st;
}

tkv_status tkv_kv_read(tkv_rbuf *payload, const tkv_kv_model_id *model, uint64_t file_fingerprint,
                       uint32_t version, tkv_kv_cache *c, float *sparse_v) {
    memset(c, 0, sizeof *c);
    int32_t ids[TKV_KV_FILE_MAX_CODECS];
    uint32_t n_ids = 0;
    TKV_TRY(tkv_kv_read_model(payload, model, file_fingerprint));
    TKV_TRY(tkv_kv_read_codecs(payload, model->head_dim, ids, &n_ids));
    TKV_TRY(tkv_kv_read_config(payload, model, version, ids, n_ids, c, sparse_v));
    char label[48];
    for (uint32_t l = 0; l < c->n_layer; l++) {
        tkv_rbuf r;
        snprintf(label, sizeof label, "layer section %u", l);
        tkv_status st = tkv_rbuf_section(payload, TKV_KV_TAG_LAYER, label, &r);
        if (st == TKV_OK) {
            st = tkv_kv_read_layer(&r, c, l, version);
        }
        if (st == TKV_OK) {
            st = tkv_rbuf_done(&r);
        }
        if (st != TKV_OK) {
            tkv_kv_release(c);
            return st;
        }
    }
    return TKV_OK;
}
