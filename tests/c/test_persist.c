/*
 * test_persist.c - saved caches and session state: the hash, the container's checks,
 * bit-exact continuation after save + load for every codec and lever combination
 * (TKV_TEST_MODEL), and bad files of every kind giving typed errors.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/hash.h"
#include "base/rng.h"
#include "check.h"
#include "kv/cache_file.h"
#include "kv/kv_file.h"
#include "turbokv.h"

static char g_path[256];

static const uint8_t *find_bytes(const uint8_t *hay, size_t n, const char *needle) {
    const size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(hay + i, needle, k) == 0) {
            return hay + i;
        }
    }
    return NULL;
}

static void test_hash(void) {
    CHECK(tkv_hash64("", 0, 0) == 0xEF46DB3751D8E999ull);
    CHECK(tkv_hash64("abc", 3, 0) == 0x44BC2CF5AD770999ull);
    uint8_t buf[100];
    for (int i = 0; i < 100; i++) {
        buf[i] = (uint8_t)i;
    }
    /* every length through the 32-byte stripes and the 8/4/1-byte tails differs */
    uint64_t prev = 0;
    for (size_t n = 0; n <= 100; n++) {
        const uint64_t h = tkv_hash64(buf, n, 0);
        CHECK(h != prev);
        prev = h;
    }
    CHECK(tkv_hash64(buf, 100, 1) != tkv_hash64(buf, 100, 0));
}

/* The definition hash of every codec at head_dim 64, pinned: a change of any codec's name,
 * size, codebook or trellis table changes its hash, and caches saved by an earlier library
 * are then refused.  Such a change must be deliberate: bump the version and say in
 * docs/PERSISTENCE.md which saved caches it refuses, then update this table. */
static void test_codec_definitions_pinned(void) {
    static const uint64_t pinned[TKV_CODEC_COUNT] = {
        0x2AB3B098BCD80B49ull, 0x22F34A1D5F660264ull, 0x32DDEA2B4A2B8961ull,
        0x95D76CDAB607E0C6ull, 0x7B78AE9E6A5E414Bull, 0xC7BEBA041ECC31E5ull,
        0x39E8E90644CF5C25ull, 0xBF60EB5F6D15D81Bull, 0x90FB2C003E937C3Full,
        0x0F9596B658792B24ull, 0x01AD9BDB2EF55BDBull, 0x86FEC1E7A959CF07ull,
        0xB5A7B94979B66D60ull, 0x7A37C043C1209360ull, 0x6E255DDB94223B94ull,
        0x67F3358CA06FB076ull, 0x6B868FABB1AC17CEull,
    };
    for (int32_t id = 0; id < TKV_CODEC_COUNT; id++) {
        uint64_t h = 0;
        CHECK_OK(tkv_kv_codec_definition_hash(id, 64, &h));
        if (h != pinned[id]) {
            printf("codec %d (%s): definition hash 0x%016llXull, pinned 0x%016llXull\n", id,
                   tkv_codec_name(id), (unsigned long long)h, (unsigned long long)pinned[id]);
        }
        CHECK(h == pinned[id]);
    }
}

/* A file image with one section holding `body`. */
static size_t make_file(uint8_t *out, const char *body) {
    tkv_wbuf w = {0};
    size_t at = tkv_wbuf_section_begin(&w, TKV_KV_TAG_MODEL);
    tkv_wbuf_put(&w, body, strlen(body));
    tkv_wbuf_section_end(&w, at);
    tkv_kv_file_header(&w, 42, 0, 7, out);
    memcpy(out + TKV_KV_FILE_HEADER_SIZE, w.data, w.len);
    const size_t n = TKV_KV_FILE_HEADER_SIZE + w.len;
    tkv_wbuf_release(&w);
    return n;
}

static void test_container(void) {
    uint8_t img[256];
    const size_t n = make_file(img, "hello");
    CHECK_EQ_INT(n, 64 + 16 + 8);
    tkv_kv_file f;
    CHECK_OK(tkv_kv_file_parse(img, n, &f));
    CHECK(f.fingerprint == 42 && f.n_tokens == 7 && f.payload_size == 24);
    tkv_rbuf payload = {f.payload, f.payload_size, 0, "payload"}, sec;
    CHECK_OK(tkv_rbuf_section(&payload, TKV_KV_TAG_MODEL, "model", &sec));
    CHECK_EQ_INT(sec.len, 5);
    CHECK_OK(tkv_rbuf_done(&payload));
    uint32_t u;
    sec.off = 4;
    CHECK_STATUS(tkv_rbuf_u32(&sec, "x", &u), TKV_ERR_BAD_FORMAT); /* 1 byte left */
    payload.off = 0;
    CHECK_STATUS(tkv_rbuf_section(&payload, TKV_KV_TAG_CONFIG, "config", &sec), TKV_ERR_BAD_FORMAT);

    CHECK_STATUS(tkv_kv_file_parse(img, 0, &f), TKV_ERR_BAD_FORMAT);
    CHECK_STATUS(tkv_kv_file_parse((const uint8_t *)"GGUF\3\0\0\0xxxxxxxxxxxx", 20, &f),
                 TKV_ERR_BAD_FORMAT);
    CHECK(strstr(tkv_last_error(), "not a turbokv cache file"));
    for (size_t cut = 0; cut < n; cut++) {
        CHECK_STATUS(tkv_kv_file_parse(img, cut, &f), TKV_ERR_BAD_FORMAT);
    }
    /* every single-bit flip anywhere is refused (a flip in the version word may read as a
     * newer version) */
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < 8; b++) {
            img[i] ^= (uint8_t)(1u << b);
            const tkv_status st = tkv_kv_file_parse(img, n, &f);
            CHECK_MSG(st == TKV_ERR_BAD_FORMAT || (st == TKV_ERR_UNSUPPORTED && i >= 8 && i < 12),
                      "byte %zu bit %d: %s", i, b, tkv_status_name(st));
            img[i] ^= (uint8_t)(1u << b);
        }
    }
    /* a newer version, with a header that is otherwise whole */
    uint8_t newer[256];
    memcpy(newer, img, n);
    newer[8] = TKV_KV_FILE_VERSION + 1;
    CHECK_STATUS(tkv_kv_file_parse(newer, n, &f), TKV_ERR_UNSUPPORTED);
    CHECK(strstr(tkv_last_error(), "version 3"));
    /* version 1 (before the sliding-window rings) is still read; 0 never existed */
    uint8_t older[256];
    memcpy(older, img, n);
    for (uint32_t v = 0; v < 2; v++) {
        older[8] = (uint8_t)v;
        const uint64_t hs = tkv_hash64(older, 56, 0);
        for (int i = 0; i < 8; i++) {
            older[56 + i] = (uint8_t)(hs >> (8 * i));
        }
        CHECK_STATUS(tkv_kv_file_parse(older, n, &f), v == 1 ? TKV_OK : TKV_ERR_BAD_FORMAT);
        CHECK(v == 0 || f.version == 1);
    }
    CHECK_OK(tkv_kv_file_parse(img, n, &f));
    CHECK_EQ_INT(f.version, TKV_KV_FILE_VERSION);
    /* appended bytes */
    img[n] = 0;
    CHECK_STATUS(tkv_kv_file_parse(img, n + 1, &f), TKV_ERR_BAD_FORMAT);
    /* files */
    snprintf(g_path, sizeof g_path, "/tmp/tkv_test_persist_%d.tkv", (int)getpid());
    CHECK_STATUS(tkv_kv_file_open("/nonexistent/dir/x.tkv", &f), TKV_ERR_IO);
    CHECK_STATUS(tkv_kv_file_open("/tmp", &f), TKV_ERR_IO);
    FILE *fp = fopen(g_path, "wb");
    fwrite(img, 1, 10, fp);
    fclose(fp);
    CHECK_STATUS(tkv_kv_file_open(g_path, &f), TKV_ERR_BAD_FORMAT);
    CHECK(strstr(tkv_last_error(), "truncated"));
    remove(g_path);
}

/* ---- sliding-window rings in the file (no model needed) ----------------------------------- */

#define RL 2  /* layers: 0 global, 1 sliding */
#define RH 2  /* KV heads */
#define RD 32 /* head_dim */

static tkv_kv_cache ring_cache(const uint32_t *span, uint32_t window) {
    tkv_kv_cache c;
    CHECK_OK(tkv_kv_init(&c, RL, RH, RD, 1024, TKV_CODEC_TURBO_4B, TKV_CODEC_Q4_0_ROT, window, 9));
    const tkv_calib_params cp = {.center_keys = 1,
                                 .smooth_keys = 1,
                                 .smooth_alpha = TKV_DEFAULT_KEY_SMOOTHING,
                                 .block = 256};
    CHECK_OK(tkv_kv_set_levers(&c, 2, &cp));
    for (uint32_t l = 0; span && l < RL; l++) {
        if (span[l]) {
            CHECK_OK(tkv_kv_set_layer_span(&c, l, span[l], TKV_KV_SLIDING_BATCH));
        }
    }
    return c;
}

/* Positions [p, p + m) of every layer: keys and values a function of (layer, position). */
static void ring_feed(tkv_kv_cache *c, uint32_t p, uint32_t m) {
    static float k[256 * RH * RD], v[256 * RH * RD], scratch[TKV_KV_SCRATCH_FLOATS(RD)];
    for (uint32_t l = 0; l < RL; l++) {
        tkv_rng rng;
        for (uint32_t t = 0; t < m; t++) {
            tkv_rng_init(&rng, (uint64_t)l << 32 | (p + t));
            for (uint32_t i = 0; i < RH * RD; i++) {
                k[t * RH * RD + i] = (float)tkv_rng_gaussian(&rng) + 0.5f * (float)(i % RD);
                v[t * RH * RD + i] = (float)tkv_rng_gaussian(&rng);
            }
        }
        CHECK_OK(tkv_kv_calibrate(c, l, p, k, RH, k, m));
        for (uint32_t t = 0; t < m; t++) {
            CHECK_OK(tkv_kv_append(c, l, p + t, k + t * RH * RD, v + t * RH * RD, scratch));
        }
    }
}

static void ring_feed_to(tkv_kv_cache *c, uint32_t from, uint32_t to) {
    for (uint32_t p = from; p < to; p += 200 < to - p ? 200 : to - p) {
        ring_feed(c, p, 200 < to - p ? 200 : to - p);
    }
}

/* Positions [t0, t1) of (layer, head) read through a's runs equal b's, row by row. */
static int rows_equal(const tkv_kv_cache *a, const tkv_kv_cache *b, uint32_t l, uint32_t h,
                      uint32_t t0, uint32_t t1) {
    for (int keys = 0; keys < 2; keys++) {
        for (uint32_t t = t0; t < t1;) {
            tkv_kv_run ra;
            (keys ? tkv_kv_key_run : tkv_kv_value_run)(a, l, h, t, t1, &ra);
            for (uint32_t i = 0; i < ra.n; i++) {
                tkv_kv_run rb;
                (keys ? tkv_kv_key_run : tkv_kv_value_run)(b, l, h, t + i, t + i + 1, &rb);
                if (ra.store != rb.store || ra.block != rb.block ||
                    memcmp(ra.rows + (size_t)i * ra.layout->stride, rb.rows, rb.layout->stride)) {
                    return 0;
                }
            }
            t += ra.n;
        }
    }
    return 1;
}

/* What a sliding layer attends to at the last position ([n - span, n)) and every position
 * of the global layer read the same in a and b. */
static int windows_equal(const tkv_kv_cache *a, const tkv_kv_cache *b, uint32_t span) {
    const uint32_t n = tkv_kv_n_tokens(a);
    int ok = n == tkv_kv_n_tokens(b);
    for (uint32_t h = 0; ok && h < RH; h++) {
        ok = rows_equal(a, b, 0, h, 0, n) && rows_equal(a, b, 1, h, n - span, n);
    }
    return ok;
}

static tkv_status ring_read(const tkv_wbuf *w, const uint32_t *span, uint32_t version,
                            tkv_kv_cache *out) {
    const tkv_kv_model_id id = {77, RL, RH, RD, 100, "ring", span};
    tkv_rbuf r = {w->data, w->len, 0, "payload"};
    float sv;
    return tkv_kv_read(&r, &id, 77, version, out, &sv);
}

/* The version 1 form of a version 2 payload of a cache without rings: CONF without each
 * layer's window and ring, LAYR without n_lost. */
static void to_version1(const tkv_wbuf *v2, tkv_wbuf *v1) {
    tkv_rbuf payload = {v2->data, v2->len, 0, "payload"}, r;
    const uint32_t tags[3] = {TKV_KV_TAG_MODEL, TKV_KV_TAG_CODECS, TKV_KV_TAG_CONFIG};
    for (int i = 0; i < 3 + RL; i++) {
        const uint32_t tag = i < 3 ? tags[i] : TKV_KV_TAG_LAYER;
        CHECK_OK(tkv_rbuf_section(&payload, tag, "section", &r));
        const size_t at = tkv_wbuf_section_begin(v1, tag);
        if (tag == TKV_KV_TAG_CONFIG) {
            tkv_wbuf_put(v1, r.data, 36); /* capacity .. seed */
            for (uint32_t l = 0; l < RL; l++) {
                tkv_wbuf_put(v1, r.data + 36 + 16 * l, 8); /* K, V codec ids */
            }
        } else if (tag == TKV_KV_TAG_LAYER) {
            tkv_wbuf_put(v1, r.data, 20); /* n .. stat_n */
            tkv_wbuf_put(v1, r.data + 24, r.len - 24);
        } else {
            tkv_wbuf_put(v1, r.data, r.len);
        }
        tkv_wbuf_section_end(v1, at);
    }
}

static void test_ring_files(void) {
    const uint32_t span[RL] = {0, 20}, ring = 20 - 1 + TKV_KV_SLIDING_BATCH, n = 700;
    const tkv_kv_model_id id = {77, RL, RH, RD, 100, "ring", span};
    for (uint32_t window = 0; window <= 8; window += 8) {
        /* a ring cache past its wrap, saved and loaded: the same positions, rows and
         * bytes, and the same after both continue */
        tkv_kv_cache c = ring_cache(span, window), plain = ring_cache(NULL, window);
        ring_feed_to(&c, 0, n);
        ring_feed_to(&plain, 0, n);
        CHECK_EQ_INT(c.layers[1].ring, ring);
        CHECK_EQ_INT(c.layers[1].n_lost, c.layers[1].n_comp - ring);
        tkv_wbuf w = {0}, wp = {0};
        tkv_kv_write(&c, &id, 0.0f, &w);
        tkv_kv_write(&plain, &id, 0.0f, &wp);
        CHECK(!w.failed && !wp.failed);
        /* the file lacks the lost positions' codes (to the sections' 8-byte padding) */
        const size_t lost_bytes =
            (size_t)(c.layers[1].n_lost - 2) * tkv_kv_bytes_per_token(&c) / RL;
        CHECK(wp.len - w.len + 8 > lost_bytes && wp.len - w.len < lost_bytes + 8);
        tkv_kv_cache l = {0};
        CHECK_OK(ring_read(&w, span, TKV_KV_FILE_VERSION, &l));
        CHECK_EQ_INT(l.layers[1].n_lost, c.layers[1].n_lost);
        CHECK_EQ_INT(l.layers[1].n_comp, c.layers[1].n_comp);
        CHECK_EQ_INT(tkv_kv_bytes_used(&l), tkv_kv_bytes_used(&c));
        CHECK_EQ_INT(tkv_kv_truncate_floor(&l), tkv_kv_truncate_floor(&c));
        CHECK(windows_equal(&l, &c, 20) && windows_equal(&l, &plain, 20));
        ring_feed_to(&c, n, n + 300);
        ring_feed_to(&l, n, n + 300);
        ring_feed_to(&plain, n, n + 300);
        CHECK(windows_equal(&l, &c, 20) && windows_equal(&l, &plain, 20));
        CHECK_EQ_INT(l.layers[1].n_lost, c.layers[1].n_lost);
        tkv_kv_release(&l);
        /* another model's windows: refused by name */
        const uint32_t other[RL] = {0, 21};
        CHECK_STATUS(ring_read(&w, other, TKV_KV_FILE_VERSION, &l), TKV_ERR_MISMATCH);
        CHECK(strstr(tkv_last_error(), "sliding window of 20 positions in a ring of 275"));
        CHECK_STATUS(ring_read(&w, NULL, TKV_KV_FILE_VERSION, &l), TKV_ERR_MISMATCH);
        /* a version 1 file (every position's codes) read for a model with a sliding layer:
         * the ring keeps the last of them, as if it had been there all along; without
         * sliding layers it is the cache it was */
        tkv_wbuf w1 = {0};
        tkv_kv_cache p = ring_cache(NULL, window);
        ring_feed_to(&p, 0, n);
        tkv_wbuf_release(&wp);
        tkv_kv_write(&p, &id, 0.0f, &wp);
        to_version1(&wp, &w1);
        CHECK_OK(ring_read(&w1, NULL, 1, &l));
        CHECK(windows_equal(&l, &p, n));
        tkv_kv_release(&l);
        tkv_kv_cache r1 = {0};
        CHECK_OK(ring_read(&w1, span, 1, &r1));
        CHECK_EQ_INT(r1.layers[1].ring, ring);
        CHECK_EQ_INT(r1.layers[1].n_lost, p.layers[1].n_comp - ring);
        tkv_kv_cache r0 = ring_cache(span, window); /* a ring cache fed the same */
        ring_feed_to(&r0, 0, n);
        CHECK_EQ_INT(tkv_kv_bytes_used(&r1), tkv_kv_bytes_used(&r0));
        CHECK(windows_equal(&r1, &p, 20) && windows_equal(&r1, &r0, 20));
        ring_feed_to(&r1, n, n + 50);
        ring_feed_to(&r0, n, n + 50);
        CHECK(windows_equal(&r1, &r0, 20));
        /* a crafted n_lost that leaves the ring more positions than it has rows */
        tkv_wbuf_release(&w);
        tkv_kv_write(&r0, &id, 0.0f, &w);
        tkv_rbuf pr = {w.data, w.len, 0, "payload"}, sec;
        const uint32_t order[5] = {TKV_KV_TAG_MODEL, TKV_KV_TAG_CODECS, TKV_KV_TAG_CONFIG,
                                   TKV_KV_TAG_LAYER, TKV_KV_TAG_LAYER};
        for (int i = 0; i < 5; i++) { /* ends on layer 1's section */
            CHECK_OK(tkv_rbuf_section(&pr, order[i], "section", &sec));
        }
        uint8_t *lost = (uint8_t *)sec.data + 20;
        lost[0] = (uint8_t)(lost[0] - 1); /* n_lost - 1 (n_lost is > 256 here) */
        CHECK_STATUS(ring_read(&w, span, TKV_KV_FILE_VERSION, &l), TKV_ERR_BAD_FORMAT);
        CHECK(strstr(tkv_last_error(), "ring of 275 code rows"));
        tkv_kv_release(&r0);
        tkv_kv_release(&r1);
        tkv_kv_release(&p);
        tkv_wbuf_release(&w1);
        tkv_wbuf_release(&w);
        tkv_wbuf_release(&wp);
        tkv_kv_release(&c);
        tkv_kv_release(&plain);
    }
}

/* ---- real model ---------------------------------------------------------------------------- */

#define PREFIX 185
#define TAIL 10

typedef struct config {
    int32_t k, v;
    uint32_t flags, window, sink, calib_block;
    uint32_t cut; /* truncate to this many tokens before saving (0: no) */
} config;

static int32_t token_at(int i, uint32_t n_vocab) { return (int32_t)((i * 7919 + 13) % (int)n_vocab); }

/* Evaluate tail tokens one by one after the session's position, sampling as it goes;
 * logits of every step into out (TAIL x n_vocab), sampled tokens into toks. */
static int continue_run(tkv_session *s, uint32_t n_vocab, float *out, int32_t *toks) {
    tkv_sampler_params sp = tkv_sampler_default_params();
    sp.seed = 5;
    for (int i = 0; i < TAIL; i++) {
        if (tkv_session_sample(s, &sp, &toks[i]) != TKV_OK) {
            return 0;
        }
        int32_t t = token_at(1000 + i, n_vocab);
        if (tkv_session_eval(s, &t, 1, 0) != TKV_OK) {
            return 0;
        }
        memcpy(out + (size_t)i * n_vocab, tkv_session_logits(s, -1), n_vocab * sizeof(float));
    }
    return 1;
}

static tkv_session *new_session(tkv_cache *c) {
    tkv_session_params p = tkv_session_default_params();
    p.n_threads = 1; /* logits do not depend on the thread count */
    p.n_batch = 64;
    tkv_session *s = NULL;
    tkv_session_create(c, &p, &s);
    return s;
}

static void test_exact(tkv_model *m, const config *cf) {
    const uint32_t n_vocab = tkv_model_n_vocab(m);
    tkv_cache_params cp = tkv_cache_default_params();
    cp.k_codec = cf->k;
    cp.v_codec = cf->v;
    cp.n_ctx = 512;
    cp.flags = cf->flags;
    cp.fp16_window = cf->window;
    cp.sink_tokens = cf->sink;
    cp.calibration_block = cf->calib_block;
    cp.seed = 11;
    tkv_cache *c = NULL;
    CHECK_OK(tkv_cache_create(m, &cp, &c));
    if (!c) {
        return;
    }
    if (cf->k == TKV_CODEC_TURBO_4B) { /* a per-layer override travels with the file */
        CHECK_OK(tkv_cache_set_layer_codecs(c, 0, TKV_CODEC_Q8_0, TKV_CODEC_FP16));
    }
    tkv_session *s = new_session(c);
    int32_t prompt[PREFIX];
    for (int i = 0; i < PREFIX; i++) {
        prompt[i] = token_at(i, n_vocab);
    }
    CHECK_OK(tkv_session_eval(s, prompt, 100, 0)); /* two evals: batches end mid-block */
    CHECK_OK(tkv_session_eval(s, prompt + 100, PREFIX - 100, 0));
    if (cf->cut) {
        CHECK_OK(tkv_cache_truncate(c, cf->cut));
        CHECK_OK(tkv_session_eval(s, prompt + cf->cut, 3, 0));
    }
    CHECK_OK(tkv_session_save(s, g_path));
    float *want = malloc((size_t)TAIL * n_vocab * sizeof(float));
    float *got = malloc((size_t)TAIL * n_vocab * sizeof(float));
    int32_t want_tok[TAIL], got_tok[TAIL];
    CHECK(continue_run(s, n_vocab, want, want_tok));
    const size_t used = tkv_cache_bytes_used(c);
    tkv_session_free(s);
    tkv_cache_free(c);

    tkv_cache *c2 = NULL;
    CHECK_OK(tkv_cache_load(m, g_path, &c2));
    tkv_session *s2 = c2 ? new_session(c2) : NULL;
    if (s2) {
        CHECK_OK(tkv_session_load_state(s2, g_path));
        size_t nt = 0;
        CHECK_STATUS(tkv_session_tokens(s2, NULL, 0, &nt), TKV_ERR_BUFFER_TOO_SMALL);
        CHECK_EQ_INT(nt, cf->cut ? cf->cut + 3 : PREFIX);
        int32_t toks[PREFIX];
        CHECK_OK(tkv_session_tokens(s2, toks, PREFIX, &nt));
        CHECK(memcmp(toks, prompt, nt * sizeof *toks) == 0);
        CHECK(continue_run(s2, n_vocab, got, got_tok));
        CHECK_EQ_INT(tkv_cache_bytes_used(c2), used);
        CHECK_MSG(memcmp(want, got, (size_t)TAIL * n_vocab * sizeof(float)) == 0,
                  "logits differ after load: codecs %d/%d flags %u window %u sink %u block %u cut %u",
                  cf->k, cf->v, cf->flags, cf->window, cf->sink, cf->calib_block, cf->cut);
        CHECK(memcmp(want_tok, got_tok, sizeof want_tok) == 0);
        /* the state only goes onto the cache loaded with it, unchanged */
        CHECK_STATUS(tkv_session_load_state(s2, g_path), TKV_ERR_MISMATCH);
    }
    tkv_session_free(s2);
    tkv_cache_free(c2);
    free(want);
    free(got);
}

static tkv_cache *fork_cache(tkv_model *m, int32_t codec, uint32_t window) {
    tkv_cache_params cp = tkv_cache_default_params();
    cp.k_codec = cp.v_codec = codec;
    cp.n_ctx = 512;
    cp.fp16_window = window;
    cp.calibration_block = 64;
    tkv_cache *c = NULL;
    CHECK_OK(tkv_cache_create(m, &cp, &c));
    return c;
}

/* Bit-identical logits, or with `tol` > 0 within tol of each other. */
static int same_logits(tkv_session *a, tkv_session *b, uint32_t n_vocab, float tol) {
    const float *x = tkv_session_logits(a, -1), *y = tkv_session_logits(b, -1);
    if (!x || !y) {
        return 0;
    }
    if (getenv("TKV_DEBUG_FORK")) {
        float mx = 0.0f;
        for (uint32_t i = 0; i < n_vocab; i++) {
            mx = fmaxf(mx, fabsf(x[i] - y[i]));
        }
        fprintf(stderr, "max |logit diff| %g\n", mx);
    }
    if (tol == 0.0f) {
        return memcmp(x, y, n_vocab * sizeof *x) == 0;
    }
    for (uint32_t i = 0; i < n_vocab; i++) {
        if (!(fabsf(x[i] - y[i]) <= tol)) {
            return 0;
        }
    }
    return 1;
}

/* A fork continues exactly as an unforked cache with the same history would, whatever
 * the original does meanwhile, after its original is freed, after a truncation into the
 * shared prefix, and through a save and load.  tol: 0 for codecs whose value kernels sum
 * row by row; the AVX-512 trellis value sums keep partial sums per call, so a fork (two
 * calls) rounds differently there (tkv_cache_fork). */
static void test_fork(tkv_model *m, int32_t codec, uint32_t window, float tol) {
    const uint32_t n_vocab = tkv_model_n_vocab(m);
    int32_t doc[PREFIX], q1[6], q2[6];
    for (int i = 0; i < PREFIX; i++) {
        doc[i] = token_at(i, n_vocab);
    }
    for (int i = 0; i < 6; i++) {
        q1[i] = token_at(500 + i, n_vocab);
        q2[i] = token_at(700 + i, n_vocab);
    }
    tkv_cache *a = fork_cache(m, codec, window), *b = fork_cache(m, codec, window);
    tkv_session *sa = new_session(a), *sb = new_session(b);
    CHECK_OK(tkv_session_eval(sa, doc, 120, 0));
    CHECK_OK(tkv_session_eval(sa, doc + 120, PREFIX - 120, 0));
    CHECK_OK(tkv_session_eval(sb, doc, 120, 0));
    CHECK_OK(tkv_session_eval(sb, doc + 120, PREFIX - 120, 0));
    tkv_cache *f = NULL;
    CHECK_OK(tkv_cache_fork(a, &f));
    tkv_session *sf = new_session(f);
    CHECK_STATUS(tkv_session_copy_state(sf, sb), TKV_ERR_MISMATCH); /* b is no fork of a */
    CHECK_OK(tkv_session_copy_state(sf, sa));
    CHECK(same_logits(sf, sa, n_vocab, 0.0f));
    CHECK_EQ_INT(tkv_cache_bytes_used(f), tkv_cache_bytes_used(a));
    CHECK(tkv_cache_bytes_allocated(f) <= tkv_cache_bytes_allocated(b));
    CHECK_OK(tkv_session_eval(sa, q1, 6, 0));
    CHECK_OK(tkv_session_eval(sf, q2, 6, 0));
    CHECK_OK(tkv_session_eval(sb, q2, 6, 0));
    CHECK_MSG(same_logits(sf, sb, n_vocab, tol), "fork differs from unforked: codec %d window %u",
              codec, window);
    tkv_session_free(sa); /* the prefix outlives the cache it came from */
    tkv_cache_free(a);
    CHECK_OK(tkv_session_eval(sf, q1, 3, 0));
    CHECK_OK(tkv_session_eval(sb, q1, 3, 0));
    CHECK(same_logits(sf, sb, n_vocab, tol));
    CHECK_OK(tkv_cache_truncate(f, 70));
    CHECK_OK(tkv_cache_truncate(b, 70));
    CHECK_OK(tkv_session_eval(sf, q2, 6, 0));
    CHECK_OK(tkv_session_eval(sb, q2, 6, 0));
    /* with tol > 0 (trellis on AVX-512) the rounding differences compound over the steps:
     * only the bit-exact codecs are compared from here on */
    CHECK(tol > 0.0f || same_logits(sf, sb, n_vocab, 0.0f));
    CHECK_OK(tkv_session_save(sf, g_path));
    tkv_cache *l = NULL;
    CHECK_OK(tkv_cache_load(m, g_path, &l));
    tkv_session *sl = l ? new_session(l) : NULL;
    if (sl) {
        CHECK_OK(tkv_session_load_state(sl, g_path));
        CHECK_OK(tkv_session_eval(sl, q1, 6, 0));
        CHECK_OK(tkv_session_eval(sb, q1, 6, 0));
        CHECK(tol > 0.0f || same_logits(sl, sb, n_vocab, 0.0f));
    }
    tkv_session_free(sl);
    tkv_cache_free(l);
    tkv_session_free(sf);
    tkv_cache_free(f);
    tkv_session_free(sb);
    tkv_cache_free(b);
    remove(g_path);
}

static void test_bad_files(tkv_model *m) {
    /* a small cache, saved, then damaged in every way */
    tkv_cache_params cp = tkv_cache_default_params();
    cp.n_ctx = 64;
    cp.fp16_window = 4;
    tkv_cache *c = NULL;
    CHECK_OK(tkv_cache_create(m, &cp, &c));
    tkv_session *s = new_session(c);
    int32_t prompt[20];
    for (int i = 0; i < 20; i++) {
        prompt[i] = token_at(i, tkv_model_n_vocab(m));
    }
    CHECK_OK(tkv_session_eval(s, prompt, 20, 0));
    CHECK_OK(tkv_session_save(s, g_path));
    /* a cache file is no session file */
    char cache_only[300];
    snprintf(cache_only, sizeof cache_only, "%s.cache", g_path);
    CHECK_OK(tkv_cache_save(c, cache_only));
    tkv_cache *c3 = NULL;
    CHECK_OK(tkv_cache_load(m, cache_only, &c3));
    tkv_session *s3 = c3 ? new_session(c3) : NULL;
    CHECK_STATUS(tkv_session_load_state(s3, cache_only), TKV_ERR_INVALID_ARGUMENT);
    tkv_session_free(s3);
    tkv_cache_free(c3);
    remove(cache_only);
    tkv_session_free(s);
    tkv_cache_free(c);

    FILE *fp = fopen(g_path, "rb");
    fseek(fp, 0, SEEK_END);
    const size_t n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *img = malloc(n), *bad = malloc(n);
    CHECK(fread(img, 1, n, fp) == n);
    fclose(fp);

    /* flipped bytes anywhere, truncations anywhere: typed errors, never a load */
    for (size_t i = 0; i < n; i += 1 + i / 3) {
        memcpy(bad, img, n);
        bad[i] ^= 0x5a;
        fp = fopen(g_path, "wb");
        fwrite(bad, 1, n, fp);
        fclose(fp);
        tkv_cache *x = NULL;
        const tkv_status st = tkv_cache_load(m, g_path, &x);
        CHECK_MSG(x == NULL && (st == TKV_ERR_BAD_FORMAT || st == TKV_ERR_UNSUPPORTED),
                  "byte %zu: %s", i, tkv_status_name(st));
        tkv_cache_free(x);
        fp = fopen(g_path, "wb");
        fwrite(img, 1, i, fp);
        fclose(fp);
        CHECK_STATUS(tkv_cache_load(m, g_path, &x), TKV_ERR_BAD_FORMAT);
    }

    /* another model: the fingerprint differs (header and model section rewritten with a
     * valid checksum, as another model's file would have them) */
    tkv_kv_file f;
    CHECK_OK(tkv_kv_file_parse(img, n, &f));
    tkv_wbuf w = {0};
    tkv_wbuf_put(&w, f.payload, f.payload_size);
    w.data[16] ^= 1; /* MODL: u64 fingerprint right after the 16-byte section header */
    uint8_t header[TKV_KV_FILE_HEADER_SIZE];
    tkv_kv_file_header(&w, f.fingerprint ^ 1, f.flags, f.n_tokens, header);
    fp = fopen(g_path, "wb");
    fwrite(header, 1, sizeof header, fp);
    fwrite(w.data, 1, w.len, fp);
    fclose(fp);
    tkv_cache *x = NULL;
    CHECK_STATUS(tkv_cache_load(m, g_path, &x), TKV_ERR_MISMATCH);
    CHECK(strstr(tkv_last_error(), "another model"));
    w.data[16] ^= 1;

    /* another codec set: the codec named differently, then defined differently */
    const uint8_t *mod = find_bytes(w.data, w.len, "turbo_kv_4b");
    CHECK(mod != NULL);
    if (mod) {
        uint8_t *name = (uint8_t *)mod;
        name[10] = 'c';
        tkv_kv_file_header(&w, f.fingerprint, f.flags, f.n_tokens, header);
        fp = fopen(g_path, "wb");
        fwrite(header, 1, sizeof header, fp);
        fwrite(w.data, 1, w.len, fp);
        fclose(fp);
        CHECK_STATUS(tkv_cache_load(m, g_path, &x), TKV_ERR_MISMATCH);
        CHECK(strstr(tkv_last_error(), "codec set"));
        name[10] = 'b';
        name[-5] ^= 1; /* the definition hash's last byte (before the u32 name length) */
        tkv_kv_file_header(&w, f.fingerprint, f.flags, f.n_tokens, header);
        fp = fopen(g_path, "wb");
        fwrite(header, 1, sizeof header, fp);
        fwrite(w.data, 1, w.len, fp);
        fclose(fp);
        CHECK_STATUS(tkv_cache_load(m, g_path, &x), TKV_ERR_MISMATCH);
        CHECK(strstr(tkv_last_error(), "differs from this library"));
    }
    tkv_wbuf_release(&w);
    /* a file that is not a cache: the model itself */
    CHECK_STATUS(tkv_cache_load(m, getenv("TKV_TEST_MODEL"), &x), TKV_ERR_BAD_FORMAT);
    CHECK(strstr(tkv_last_error(), "not a turbokv cache file"));
    CHECK_STATUS(tkv_cache_load(m, "/nonexistent.tkv", &x), TKV_ERR_IO);
    CHECK_STATUS(tkv_cache_load(NULL, g_path, &x), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_cache_save(NULL, g_path), TKV_ERR_INVALID_ARGUMENT);
    free(img);
    free(bad);
    remove(g_path);
}

int main(void) {
    test_hash();
    test_codec_definitions_pinned();
    test_container();
    test_ring_files();
    const char *path = getenv("TKV_TEST_MODEL");
    if (!path) {
        printf("TKV_TEST_MODEL not set: real-model persistence checks skipped\n");
        CHECK_MAIN_END();
    }
    tkv_model_params mp = tkv_model_default_params();
    tkv_model *m = NULL;
    CHECK_OK(tkv_model_load(path, &mp, &m));
    if (!m) {
        CHECK_MAIN_END();
    }
    const uint32_t levers = TKV_CACHE_FLAG_CENTER_KEYS | TKV_CACHE_FLAG_SMOOTH_KEYS;
    /* every codec with the default levers (calibration blocks of 64: the prefix ends in
     * block 2 and the tail enters block 3) */
    for (int32_t k = 0; k < TKV_CODEC_COUNT; k++) {
        const config cf = {k, (k + 3) % TKV_CODEC_COUNT, levers, 0, 1, 64, 0};
        test_exact(m, &cf);
    }
    /* every lever combination, with a window, sinks, calibration once, and truncations
     * (into block 1, onto a block start, into the sinks) */
    for (uint32_t fl = 0; fl < 4; fl++) {
        const int32_t k = TKV_CODEC_TURBO_4B;
        const config a = {k, k, fl, 16, 2, 64, 0};
        const config b = {k, k, fl, 0, 0, TKV_CALIBRATION_ONCE, 0};
        const config t1 = {k, k, fl, 8, 1, 64, 100};
        const config t2 = {k, k, fl, 0, 1, 64, 128};
        test_exact(m, &a);
        test_exact(m, &b);
        test_exact(m, &t1);
        test_exact(m, &t2);
    }
    const config tcq_a = {TKV_CODEC_TURBO_3B_TCQ, TKV_CODEC_TURBO_3B_TCQ, levers, 16, 2, 64, 0};
    const config tcq_t = {TKV_CODEC_TURBO_3B_TCQ, TKV_CODEC_TURBO_3B_TCQ, levers, 8, 1, 64, 100};
    test_exact(m, &tcq_a);
    test_exact(m, &tcq_t);
    const config t0 = {TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_4B, levers, 4, 4, 64, 1};
    test_exact(m, &t0);
    /* The SIMD value sums keep partial sums per kernel call (int8 weights per block of
     * keys, fixed-point trellis chunks), and a fork's shared prefix is a call boundary the
     * unforked cache does not have: bit-identical forks are promised with the scalar
     * kernels only; with SIMD ones the fork rounds like another batch split would, which
     * moves this model's logits by up to ~1.5 (the noise floor in docs/PERSISTENCE.md). A
     * fork reading the wrong prefix differs by far more. */
    const float simd_tol = strcmp(tkv_kernel_isa(), "scalar") == 0 ? 0.0f : 4.0f;
    test_fork(m, TKV_CODEC_TURBO_4B, 0, simd_tol);
    test_fork(m, TKV_CODEC_TURBO_4B, 16, simd_tol);
    test_fork(m, TKV_CODEC_FP16, 8, 0.0f);
    test_fork(m, TKV_CODEC_TURBO_3B_TCQ, 0, simd_tol);
    test_bad_files(m);
    tkv_model_free(m);
    CHECK_MAIN_END();
}
