/*
 * fuzz_cache_file.c - libFuzzer target: the saved-cache loader (lib/kv/kv_file.c,
 * lib/kv/cache_file.c), then attention, an append and a save of what it loaded.
 *
 * Input: one mode byte, then a cache file.  Mode bit 0 set: before parsing, the header's
 * payload size and both checksums are rewritten to fit the bytes, so mutations reach the
 * section readers instead of stopping at the checksum (bit 0 clear tests that check).
 * The model the file must match is the one its MODL section names, when that is small
 * (<= 4 layers, <= 4 KV heads, head_dim <= 128): the loader then checks everything
 * below the model check.  Its sliding windows are the ones the CONF section names
 * (version 2), or for a version 1 file with mode bit 1 set a window of 4 on the odd
 * layers (a version 1 file read into rings).  A file that loads must be safe to use: attention over
 * every (layer, head), a fork (which must attend to the same bits), one more position appended
 * (calibration included), and saved again, which must load again with the same
 * positions.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "base/hash.h"
#include "fuzz.h"
#include "kv/cache_file.h"
#include "kv/kv_file.h"

static volatile float sink;
static uint32_t g_span[4];

static void le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* The sliding windows of the model: CONF's per-layer spans (version 2), else by mode. */
static void spans_of(const tkv_kv_file *f, uint8_t mode, tkv_kv_model_id *id) {
    memset(g_span, 0, sizeof g_span);
    id->span = g_span;
    if (f->version < 2) {
        for (uint32_t l = 1; (mode & 2) && l < id->n_layer; l += 2) {
            g_span[l] = 4;
        }
        return;
    }
    tkv_rbuf payload = {f->payload, f->payload_size, 0, "payload"}, r;
    const uint32_t tags[3] = {TKV_KV_TAG_MODEL, TKV_KV_TAG_CODECS, TKV_KV_TAG_CONFIG};
    for (int i = 0; i < 3; i++) {
        if (tkv_rbuf_section(&payload, tags[i], "section", &r) != TKV_OK) {
            return;
        }
    }
    const uint8_t *skip;
    if (tkv_rbuf_take(&r, 36, "fixed", &skip) != TKV_OK) { /* capacity .. seed */
        return;
    }
    for (uint32_t l = 0; l < id->n_layer; l++) {
        uint32_t k, v, span, ring;
        if (tkv_rbuf_u32(&r, "k", &k) != TKV_OK || tkv_rbuf_u32(&r, "v", &v) != TKV_OK ||
            tkv_rbuf_u32(&r, "span", &span) != TKV_OK ||
            tkv_rbuf_u32(&r, "ring", &ring) != TKV_OK) {
            return;
        }
        g_span[l] = span;
    }
}

/* The model id the file names in its MODL section, if small enough to run. */
static int model_of(const tkv_kv_file *f, tkv_kv_model_id *id) {
    tkv_rbuf payload = {f->payload, f->payload_size, 0, "payload"}, r;
    uint64_t fp;
    if (tkv_rbuf_section(&payload, TKV_KV_TAG_MODEL, "model", &r) != TKV_OK ||
        tkv_rbuf_u64(&r, "fp", &fp) != TKV_OK || tkv_rbuf_u32(&r, "l", &id->n_layer) != TKV_OK ||
        tkv_rbuf_u32(&r, "h", &id->n_head_kv) != TKV_OK ||
        tkv_rbuf_u32(&r, "d", &id->head_dim) != TKV_OK ||
        tkv_rbuf_u32(&r, "v", &id->n_vocab) != TKV_OK) {
        return 0;
    }
    id->fingerprint = fp;
    id->name = "fuzz";
    id->span = NULL;
    return id->n_layer >= 1 && id->n_layer <= 4 && id->n_head_kv >= 1 && id->n_head_kv <= 4 &&
           id->head_dim >= 2 && id->head_dim <= 128 && id->head_dim % 2 == 0;
}

/* Attention of a query at the last position over what (layer, head) holds: a ring layer
 * from its oldest code position (sinks and later). */
static void attend(const tkv_kv_cache *c, uint32_t l, uint32_t h, const float *q, float *out,
                   float *scores, float *work) {
    const uint32_t n = tkv_kv_n_tokens(c), lost = c->layers[l].n_lost;
    const uint32_t t0 = lost < n ? lost : n - 1;
    tkv_attn_group_range(c, l, h, q, 1, n - 1, t0, n, 0.25f, 0.0f, out, NULL, scores, n, work);
}

static void use(tkv_kv_cache *c, const tkv_kv_model_id *id) {
    const uint32_t d = c->head_dim, n = tkv_kv_n_tokens(c);
    float q[128], out[128], work[TKV_ATTN_WORK_FLOATS(128)];
    for (uint32_t j = 0; j < d; j++) {
        q[j] = (float)((int)(j * 37 % 11) - 5) * 0.25f;
    }
    if (n > 0) {
        float *scores = malloc((size_t)n * sizeof *scores);
        REQUIRE(scores);
        for (uint32_t l = 0; l < c->n_layer; l++) {
            for (uint32_t h = 0; h < c->n_head_kv; h++) {
                attend(c, l, h, q, out, scores, work);
                sink += out[0];
            }
        }
        free(scores);
    }
    if (n > 0) { /* a fork shares the codes: it and the original read the same */
        tkv_kv_cache f;
        if (tkv_kv_fork(c, &f) == TKV_OK) {
            float *scores = malloc((size_t)n * sizeof *scores), out2[128];
            REQUIRE(scores);
            for (uint32_t l = 0; l < c->n_layer; l++) {
                attend(c, l, 0, q, out, scores, work);
                attend(&f, l, 0, q, out2, scores, work);
                REQUIRE(memcmp(out, out2, d * sizeof *out) == 0);
            }
            free(scores);
            tkv_kv_release(&f);
        }
    }
    if (n < c->capacity) { /* one more position through calibration and append */
        const size_t kw = (size_t)c->n_head_kv * d;
        float *k = calloc(kw, sizeof *k), *v = calloc(kw, sizeof *v);
        float *scratch = malloc(TKV_KV_SCRATCH_FLOATS(d) * sizeof *scratch);
        REQUIRE(k && v && scratch);
        for (size_t i = 0; i < kw; i++) {
            k[i] = (float)(i % 7) - 3.0f;
            v[i] = (float)(i % 5) * 0.5f;
        }
        int appended = 1;
        for (uint32_t l = 0; appended && l < c->n_layer; l++) {
            appended = tkv_kv_calibrate(c, l, n, k, c->n_head_kv, k, 1) == TKV_OK &&
                       tkv_kv_append(c, l, n, k, v, scratch) == TKV_OK;
        }
        free(k);
        free(v);
        free(scratch);
        if (!appended) {
            tkv_kv_truncate(c, n); /* a refused value: rolled back as a failed eval is */
        }
        for (uint32_t l = 0; l < c->n_layer; l++) {
            REQUIRE(c->layers[l].n == (appended ? n + 1 : n));
        }
    }
    /* what loaded saves, and loads again */
    tkv_wbuf w = {0};
    tkv_kv_write(c, id, 0.0f, &w);
    REQUIRE(!w.failed);
    tkv_rbuf r = {w.data, w.len, 0, "payload"};
    tkv_kv_cache again;
    float sv;
    REQUIRE(tkv_kv_read(&r, id, id->fingerprint, TKV_KV_FILE_VERSION, &again, &sv) == TKV_OK);
    REQUIRE(r.off == r.len && tkv_kv_n_tokens(&again) == tkv_kv_n_tokens(c));
    tkv_kv_release(&again);
    tkv_wbuf_release(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const uint8_t mode = data[0];
    uint8_t *file = malloc(size - 1 ? size - 1 : 1);
    REQUIRE(file);
    memcpy(file, data + 1, size - 1);
    const size_t n = size - 1;
    if ((mode & 1) && n >= TKV_KV_FILE_HEADER_SIZE) {
        le64(file + 16, n - TKV_KV_FILE_HEADER_SIZE);
        le64(file + 24, tkv_hash64(file + TKV_KV_FILE_HEADER_SIZE, n - TKV_KV_FILE_HEADER_SIZE, 0));
        le64(file + 56, tkv_hash64(file, 56, 0));
    }
    tkv_kv_file f;
    tkv_kv_model_id id;
    if (tkv_kv_file_parse(file, n, &f) == TKV_OK && model_of(&f, &id)) {
        REQUIRE(f.payload >= file && f.payload + f.payload_size == file + n);
        spans_of(&f, mode, &id);
        tkv_rbuf payload = {f.payload, f.payload_size, 0, "payload"};
        tkv_kv_cache c;
        float sv = -1.0f;
        if (tkv_kv_read(&payload, &id, f.fingerprint, f.version, &c, &sv) == TKV_OK) {
            REQUIRE(sv >= 0.0f && sv < 1.0f);
            REQUIRE(payload.off <= payload.len);
            use(&c, &id);
            tkv_kv_release(&c);
        }
    }
    free(file);
    return 0;
}
