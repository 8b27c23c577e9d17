/*
 * fuzz_model.c - libFuzzer target: model load from a GGUF image, then a short eval.
 *
 * The input is a whole GGUF file.  It is loaded from memory (tkv_model_open_memory, the
 * loader the public tkv_model_load uses), then a cache of 8 positions and a one-thread
 * session evaluate up to 4 tokens (a tokenized prompt, then ids from the input's tail,
 * in range) and the ids are detokenized.  Inputs whose tensors hold more than
 * TKV_FUZZ_MAX_ELEMENTS elements are skipped so one run stays in the millisecond range:
 * the seeds are tiny models (tests/fuzz/make_corpus.py).
 *
 * Random weights may give non-finite logits; that is not a bug, so logits are only read.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "turbokv.h"

#define TKV_FUZZ_MAX_ELEMENTS (1 << 20)

static volatile float sink;

/* Total elements of every tensor, or -1 when the file does not parse. */
static int64_t total_elements(const uint8_t *data, size_t size) {
    tkv_gguf *g;
    if (tkv_gguf_open_memory(data, size, &g) != TKV_OK) {
        return -1;
    }
    int64_t total = 0;
    for (int64_t i = 0; i < tkv_gguf_n_tensors(g) && total <= TKV_FUZZ_MAX_ELEMENTS; i++) {
        total += tkv_gguf_tensor_at(g, i)->n_elements;
    }
    tkv_gguf_close(g);
    return total;
}

static void run(tkv_model *model, const uint8_t *data, size_t size) {
    const uint32_t n_vocab = tkv_model_n_vocab(model);
    REQUIRE(n_vocab > 0);
    tkv_cache_params cp = tkv_cache_default_params();
    cp.n_ctx = 8;
    /* the last byte picks the cache codecs, so every codec's encoder sees model keys */
    const uint8_t sel = size ? data[size - 1] : 0;
    cp.k_codec = sel % TKV_CODEC_COUNT;
    cp.v_codec = (sel / TKV_CODEC_COUNT) % TKV_CODEC_COUNT;
    tkv_cache *cache = NULL;
    if (tkv_cache_create(model, &cp, &cache) != TKV_OK) {
        REQUIRE(cache == NULL);
        return;
    }
    tkv_session_params sp = tkv_session_default_params();
    sp.n_threads = 1;
    sp.n_batch = 4;
    tkv_session *s = NULL;
    if (tkv_session_create(cache, &sp, &s) != TKV_OK) {
        REQUIRE(s == NULL);
        tkv_cache_free(cache);
        return;
    }
    int32_t ids[8];
    size_t n = 0;
    static const char prompt[] = "Hi <|bos|> the";
    tkv_status st = tkv_model_tokenize(model, prompt, sizeof prompt - 1,
                                       TKV_TOKENIZE_ADD_BOS | TKV_TOKENIZE_PARSE_SPECIAL, ids, 2,
                                       &n);
    /* INVALID_ARGUMENT: a byte of the prompt has no token in the fuzzed vocabulary */
    REQUIRE(st == TKV_OK || st == TKV_ERR_BUFFER_TOO_SMALL || st == TKV_ERR_INVALID_ARGUMENT);
    n = st == TKV_ERR_INVALID_ARGUMENT ? 0 : (n < 2 ? n : 2);
    for (size_t i = 0; i < 2 && i < size; i++) {
        ids[n++] = (int32_t)(data[size - 1 - i] % n_vocab);
    }
    for (size_t i = 0; i < n; i++) {
        REQUIRE(ids[i] >= 0 && (uint32_t)ids[i] < n_vocab);
    }
    if (n > 0 && tkv_session_eval(s, ids, (int64_t)n, 0) == TKV_OK) {
        const float *logits = tkv_session_logits(s, -1);
        REQUIRE(logits != NULL);
        sink = logits[0] + logits[n_vocab - 1];
        REQUIRE(tkv_cache_n_tokens(cache) == n);
        /* one decode step after the prefill, as generation does */
        if (tkv_session_eval(s, ids, 1, 0) == TKV_OK) {
            sink = tkv_session_logits(s, -1)[0];
        }
    }
    char text[256];
    size_t len = 0;
    st = tkv_model_detokenize(model, ids, n, 1, text, sizeof text, &len);
    REQUIRE(st == TKV_OK || st == TKV_ERR_BUFFER_TOO_SMALL);
    tkv_session_free(s);
    tkv_cache_free(cache);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const int64_t total = total_elements(data, size);
    if (total < 0 || total > TKV_FUZZ_MAX_ELEMENTS) {
        return 0;
    }
    struct tkv_model *m = (struct tkv_model *)data; /* must be overwritten with NULL */
    if (tkv_model_open_memory(data, size, &m) != TKV_OK) {
        REQUIRE(m == NULL);
        return 0;
    }
    run(m, data, size);
    tkv_model_free(m);
    return 0;
}
