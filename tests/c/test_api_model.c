/*
 * test_api_model.c - misuse of the model / cache / session API must give clear errors:
 * NULL handles, bad struct_size, non-zero reserved words, missing or malformed files.
 * (Real models are exercised from Python, tests/python/test_forward.py and
 * test_real_model.py.)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "turbokv.h"

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

static int32_t count_tokens(int32_t token, void *user) {
    (void)token;
    (*(int *)user)++;
    return 0;
}

/* The whole path on a real model (TKV_TEST_MODEL=path.gguf), meant for the sanitizer
 * build: load, tokenize, prefill, decode, sample, generate, truncate, with several
 * cache configurations. */
static void test_real_model(const char *path) {
    tkv_model_params mp = tkv_model_default_params();
    tkv_model *m = NULL;
    CHECK_OK(tkv_model_load(path, &mp, &m));
    if (!m) {
        return;
    }
    const char *text = "The capital of France is Paris, and the capital of Italy is"; /* > 8 tokens */
    int32_t toks[64];
    size_t n = 0;
    CHECK_STATUS(tkv_model_tokenize(m, text, strlen(text), TKV_TOKENIZE_ADD_BOS, toks, 1, &n),
                 TKV_ERR_BUFFER_TOO_SMALL);
    CHECK_OK(tkv_model_tokenize(m, text, strlen(text), TKV_TOKENIZE_ADD_BOS, toks, 64, &n));
    CHECK(n >= 10);
    char buf[256];
    size_t len = 0;
    CHECK_OK(tkv_model_detokenize(m, toks, n, 0, buf, sizeof buf, &len));
    CHECK(len == strlen(text) && memcmp(buf, text, len) == 0);
    CHECK_STATUS(tkv_model_meta_string(m, "general.architecture", buf, 3, &len),
                 TKV_ERR_BUFFER_TOO_SMALL);
    CHECK_OK(tkv_model_meta_string(m, "general.architecture", buf, sizeof buf, &len));
    CHECK_STATUS(tkv_model_meta_string(m, "no.such.key", buf, sizeof buf, &len),
                 TKV_ERR_INVALID_ARGUMENT);

    const int32_t codecs[][2] = {{TKV_CODEC_FP32, TKV_CODEC_FP32},
                                 {TKV_CODEC_TURBO_4B, TKV_CODEC_TURBO_3B},
                                 {TKV_CODEC_TURBO_4B_QJL, TKV_CODEC_Q4_0_ROT},
                                 {TKV_CODEC_TURBO_3B_TCQ, TKV_CODEC_TURBO_4B_TCQ}};
    for (int i = 0; i < 4; i++) {
        tkv_cache_params cp = tkv_cache_default_params();
        cp.k_codec = codecs[i][0];
        cp.v_codec = codecs[i][1];
        cp.n_ctx = 40;
        cp.fp16_window = i == 1 ? 3 : 0;
        cp.flags = i == 0 ? 0
                 : i == 1 ? TKV_CACHE_FLAG_SMOOTH_KEYS
                          : TKV_CACHE_FLAG_CENTER_KEYS | TKV_CACHE_FLAG_SMOOTH_KEYS;
        cp.key_smoothing = i == 2 ? 0.35f : 0.0f;
        cp.sink_tokens = (uint32_t)i; /* 0, 1 (with the window), 2 and 3 */
        tkv_cache *c = NULL;
        if (i == 1) {
            cp.key_smoothing = 1.5f;
            CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            cp.key_smoothing = 0.0f;
            cp.sink_tokens = 65;
            CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            cp.sink_tokens = 1;
            cp.flags |= 1u << 7;
            CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            cp.flags &= ~(1u << 7);
            cp.calibration_block = 63; /* blocks hold the sinks: at least 64 positions */
            CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            CHECK(strstr(tkv_last_error(), "calibration_block of 63") != NULL);
            cp.calibration_block = (1u << 24) + 1;
            CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            cp.calibration_block = 0; /* the default */
            cp.sink_tokens = 65;
            CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            CHECK(strstr(tkv_last_error(), "65 sink tokens") != NULL);
            cp.sink_tokens = 64;
            CHECK_OK(tkv_cache_create(m, &cp, &c));
            tkv_cache_free(c);
            cp.sink_tokens = 1;
            const float bad_alpha[] = {-0.1f, 1.5f, NAN};
            for (int a = 0; a < 3; a++) {
                cp.key_smoothing = bad_alpha[a];
                CHECK_STATUS(tkv_cache_create(m, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
            }
            cp.key_smoothing = 0.0f; /* the default alpha */
            cp.calibration_block = TKV_CALIBRATION_ONCE;
        }
        CHECK_OK(tkv_cache_create(m, &cp, &c));
        CHECK_STATUS(tkv_cache_set_layer_codecs(c, 1000, 0, 0), TKV_ERR_INVALID_ARGUMENT);
        CHECK_OK(tkv_cache_set_layer_codecs(c, 0, TKV_CODEC_Q8_0, TKV_CODEC_FP16));
        tkv_session_params sp = tkv_session_default_params();
        sp.n_threads = 2;
        sp.n_batch = i == 2 ? 16 : 4; /* i < 2: the prompt goes through in several chunks */
        tkv_session *s = NULL;
        CHECK_OK(tkv_session_create(c, &sp, &s));
        if (!s) {
            tkv_cache_free(c);
            continue;
        }
        CHECK(tkv_session_logits(s, -1) == NULL);
        CHECK_OK(tkv_session_eval(s, toks, (int64_t)n, 0));
        CHECK(tkv_session_logits(s, -1) != NULL && tkv_session_logits(s, 1) == NULL);
        CHECK_STATUS(tkv_cache_set_layer_codecs(c, 0, 0, 0), TKV_ERR_INVALID_ARGUMENT);
        tkv_sampler_params smp = tkv_sampler_default_params();
        smp.seed = 7;
        int32_t next = -1;
        CHECK_OK(tkv_session_sample(s, &smp, &next));
        CHECK(next >= 0 && next < (int32_t)tkv_model_n_vocab(m));
        smp.struct_size = 3;
        CHECK_STATUS(tkv_session_sample(s, &smp, &next), TKV_ERR_ABI);
        smp = tkv_sampler_default_params();
        smp.top_p = 0.0f;
        CHECK_STATUS(tkv_session_sample(s, &smp, &next), TKV_ERR_INVALID_ARGUMENT);
        smp = tkv_sampler_default_params();
        int generated = 0;
        int64_t n_gen = 0;
        CHECK_OK(tkv_session_generate(s, &smp, 6, count_tokens, &generated, &n_gen));
        CHECK(n_gen == generated && generated <= 6);
        int32_t bad = -5;
        CHECK_STATUS(tkv_session_eval(s, &bad, 1, 0), TKV_ERR_INVALID_ARGUMENT);
        int32_t many[40] = {0};
        CHECK_STATUS(tkv_session_eval(s, many, 40, 0), TKV_ERR_CACHE_FULL);
        if (sp.n_batch < 5) {
            CHECK_STATUS(tkv_session_eval(s, many, 5, TKV_EVAL_LOGITS_ALL),
                         TKV_ERR_INVALID_ARGUMENT);
        }
        const uint32_t before = tkv_cache_n_tokens(c);
        CHECK_OK(tkv_cache_truncate(c, 2));
        CHECK_EQ_INT(tkv_cache_n_tokens(c), 2);
        CHECK_OK(tkv_session_eval(s, toks + 2, 3, TKV_EVAL_LOGITS_ALL));
        CHECK(tkv_session_logits(s, 2) != NULL);
        CHECK(before >= n);
        CHECK(tkv_cache_bytes_used(c) > 0 && tkv_cache_bytes_allocated(c) >= tkv_cache_bytes_used(c));
        tkv_timings t;
        CHECK_OK(tkv_session_timings(s, &t));
        CHECK(t.prefill_tokens >= (int64_t)n && t.matmul_seconds > 0);
        tkv_session_free(s);
        tkv_cache_free(c);
    }
    tkv_model_free(m);
}

/* Calibration blocks of 64 positions on the real model: batches that cross block
 * boundaries, decode, a truncation into a block and its rewrite (the ASan run checks the
 * growth of the per-block arrays); bytes_used counts the blocks in use. */
/* Contracts a new user tripped over (issue 10): a model or cache freed while dependants
 * live stays alive for them (ASan would see the use after free); logits(-2) is NULL;
 * meta_string's NULL buffer and wrong-type key; invalid UTF-8 the vocabulary cannot hold. */
static void test_contracts(const char *path) {
    tkv_model_params mp = tkv_model_default_params();
    tkv_model *m = NULL;
    CHECK_OK(tkv_model_load(path, &mp, &m));
    if (!m) {
        return;
    }
    /* the memory report: the whole file mapped; the repacked copies within a few % of the
     * matrices' own bytes (none with the scalar kernels) */
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    if (fp) {
        fseek(fp, 0, SEEK_END);
        CHECK(tkv_model_bytes_mapped(m) == (uint64_t)ftell(fp));
        fclose(fp);
    }
    CHECK(tkv_model_bytes_packed(m) < tkv_model_bytes_mapped(m) * 11 / 10);
    CHECK(tkv_model_bytes_mapped(NULL) == 0 && tkv_model_bytes_packed(NULL) == 0);
    size_t n = 0;
    char buf[64];
    CHECK_STATUS(tkv_model_meta_string(m, "general.architecture", NULL, 64, &n),
                 TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_model_meta_string(m, "general.architecture", NULL, 0, &n),
                 TKV_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(n, 5);
    CHECK_STATUS(tkv_model_meta_string(m, "llama.block_count", buf, sizeof buf, &n),
                 TKV_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(tkv_last_error(),
                 "tkv_model_meta_string: metadata key 'llama.block_count' holds u32, not a "
                 "string") == 0);

    int32_t toks[16];
    CHECK_STATUS(tkv_model_tokenize(m, "ab\xff\xfe\xc0\x80", 6, 0, toks, 16, &n),
                 TKV_ERR_INVALID_ARGUMENT);
    CHECK(strstr(tkv_last_error(), "byte 0xFF at offset 2") != NULL);
    CHECK_OK(tkv_model_tokenize(m, "caf\xc3\xa9", 5, 0, toks, 16, &n)); /* valid UTF-8 */

    tkv_cache_params cp = tkv_cache_default_params();
    cp.n_ctx = 64;
    tkv_cache *c = NULL;
    CHECK_OK(tkv_cache_create(m, &cp, &c));
    tkv_session_params sp = tkv_session_default_params();
    sp.n_threads = 1;
    tkv_session *s = NULL;
    CHECK_OK(tkv_session_create(c, &sp, &s));
    if (!c || !s) {
        tkv_session_free(s);
        tkv_cache_free(c);
        tkv_model_free(m);
        return;
    }
    /* the owner lets go of both parents: the session keeps them alive */
    tkv_model_free(m);
    tkv_cache_free(c);
    const int32_t prompt[3] = {1, 2, 3};
    CHECK_OK(tkv_session_eval(s, prompt, 3, TKV_EVAL_LOGITS_ALL));
    CHECK(tkv_session_logits(s, -1) == tkv_session_logits(s, 2));
    CHECK(tkv_session_logits(s, 0) != NULL);
    CHECK(tkv_session_logits(s, -2) == NULL);
    CHECK(tkv_session_logits(s, INT64_MIN) == NULL);
    CHECK(tkv_session_logits(s, 3) == NULL);
    CHECK_EQ_INT(tkv_session_n_tokens(s), 3);
    tkv_session_free(s); /* releases the cache, then the model */
}

static void test_calibration_blocks(const char *path) {
    tkv_model_params mp = tkv_model_default_params();
    tkv_model *m = NULL;
    CHECK_OK(tkv_model_load(path, &mp, &m));
    if (!m) {
        return;
    }
    int32_t toks[200];
    for (int i = 0; i < 200; i++) {
        toks[i] = 100 + (i * 7919) % 20000;
    }
    tkv_cache_params cp = tkv_cache_default_params();
    cp.k_codec = TKV_CODEC_TURBO_3B;
    cp.v_codec = TKV_CODEC_TURBO_3B;
    cp.n_ctx = 256;
    cp.flags = TKV_CACHE_FLAG_CENTER_KEYS | TKV_CACHE_FLAG_SMOOTH_KEYS;
    cp.calibration_block = 64;
    tkv_cache *c = NULL;
    CHECK_OK(tkv_cache_create(m, &cp, &c));
    tkv_session_params sp = tkv_session_default_params();
    sp.n_threads = 2;
    sp.n_batch = 48;
    tkv_session *s = NULL;
    CHECK_OK(tkv_session_create(c, &sp, &s));
    if (s) {
        CHECK_OK(tkv_session_eval(s, toks, 150, 0));
        for (int i = 150; i < 160; i++) {
            CHECK_OK(tkv_session_eval(s, toks + i, 1, 0));
        }
        const size_t blocks =
            3 * tkv_model_n_layer(m) * tkv_model_n_head_kv(m) * tkv_model_head_dim(m) * 2 * 2;
        const size_t sinks =
            tkv_model_n_layer(m) * tkv_model_n_head_kv(m) * (tkv_model_head_dim(m) * 2 * 4) -
            tkv_cache_bytes_per_token(c);
        CHECK(tkv_cache_bytes_used(c) == 160 * tkv_cache_bytes_per_token(c) + sinks + blocks);
        CHECK_OK(tkv_cache_truncate(c, 100));
        CHECK_OK(tkv_session_eval(s, toks + 100, 100, 0));
        const float *lg = tkv_session_logits(s, -1);
        CHECK(lg != NULL && isfinite(lg[0]));
        CHECK(tkv_cache_bytes_allocated(c) >= tkv_cache_bytes_used(c));
    }
    tkv_session_free(s);
    tkv_cache_free(c);
    tkv_model_free(m);
}

/* tkv_cache_params_check: every model-free check of tkv_cache_create, each range at both
 * ends. */
static void test_cache_params_check(void) {
    tkv_cache_params cp = tkv_cache_default_params();
    CHECK_OK(tkv_cache_params_check(&cp));
    CHECK_STATUS(tkv_cache_params_check(NULL), TKV_ERR_INVALID_ARGUMENT);
    cp.struct_size = 8;
    CHECK_STATUS(tkv_cache_params_check(&cp), TKV_ERR_ABI);
    cp = tkv_cache_default_params();
    cp.reserved[5] = 1;
    CHECK_STATUS(tkv_cache_params_check(&cp), TKV_ERR_ABI);
    const struct {
        uint32_t sink, block, n_ctx, window;
        float alpha, sparse;
        int32_t k;
        uint32_t flags;
        tkv_status want;
        const char *msg;
    } t[] = {
        {64, 256, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""},
        {65, 256, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT, "sink"},
        {1, 64, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""},
        {1, 63, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "calibration_block"},
        {1, 1u << 24, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""},
        {1, (1u << 24) + 1, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "calibration_block"},
        {1, TKV_CALIBRATION_ONCE, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""},
        {1, 0, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""},
        {1, 256, 1u << 24, 64, 1.0f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""},
        {1, 256, (1u << 24) + 1, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "n_ctx"},
        {1, 256, 32, 33, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "fp16_window"},
        {1, 256, 0, 100000, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_OK, ""}, /* n_ctx 0: later */
        {1, 256, 0, 0, 1.01f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "key_smoothing"},
        {1, 256, 0, 0, -0.1f, 0.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "key_smoothing"},
        {1, 256, 0, 0, 0.35f, 1.0f, TKV_CODEC_TURBO_4B, 3, TKV_ERR_INVALID_ARGUMENT,
         "sparse_v_threshold"},
        {1, 256, 0, 0, 0.35f, 0.0f, TKV_CODEC_COUNT, 3, TKV_ERR_INVALID_ARGUMENT, "K codec"},
        {1, 256, 0, 0, 0.35f, 0.0f, TKV_CODEC_TURBO_4B, 4, TKV_ERR_INVALID_ARGUMENT, "flags"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        cp = tkv_cache_default_params();
        cp.sink_tokens = t[i].sink;
        cp.calibration_block = t[i].block;
        cp.n_ctx = t[i].n_ctx;
        cp.fp16_window = t[i].window;
        cp.key_smoothing = t[i].alpha;
        cp.sparse_v_threshold = t[i].sparse;
        cp.k_codec = t[i].k;
        cp.flags = t[i].flags;
        CHECK_STATUS(tkv_cache_params_check(&cp), t[i].want);
        CHECK_MSG(strstr(tkv_last_error(), t[i].msg) != NULL, "case %zu: %s", i, tkv_last_error());
    }
}

int main(void) {
    tkv_model *m = (tkv_model *)0x1;
    tkv_model_params mp = tkv_model_default_params();
    CHECK_EQ_INT(mp.struct_size, sizeof mp);
    CHECK_STATUS(tkv_model_load(NULL, &mp, &m), TKV_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL);
    CHECK_STATUS(tkv_model_load("x.gguf", NULL, &m), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_model_load("x.gguf", &mp, NULL), TKV_ERR_INVALID_ARGUMENT);
    mp.struct_size = 4;
    CHECK_STATUS(tkv_model_load("x.gguf", &mp, &m), TKV_ERR_ABI);
    mp = tkv_model_default_params();
    mp.reserved[7] = 3;
    CHECK_STATUS(tkv_model_load("x.gguf", &mp, &m), TKV_ERR_ABI);
    mp = tkv_model_default_params();
    CHECK_STATUS(tkv_model_load("/nonexistent/dir/model.gguf", &mp, &m), TKV_ERR_IO);
    CHECK(strstr(tkv_last_error(), "/nonexistent/dir/model.gguf") != NULL);

    char path[] = "/tmp/tkv_test_modelXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    write_file(path, "GGUF", 4);
    CHECK_STATUS(tkv_model_load(path, &mp, &m), TKV_ERR_BAD_FORMAT);
    write_file(path, "not a gguf file at all, just text", 33);
    CHECK_STATUS(tkv_model_load(path, &mp, &m), TKV_ERR_BAD_FORMAT);
    remove(path);
    /* a FIFO used to block in open() for a writer that never comes: alarm() turns a
     * regression into a failure instead of a hang */
    CHECK(mkfifo(path, 0600) == 0);
    alarm(30);
    CHECK_STATUS(tkv_model_load(path, &mp, &m), TKV_ERR_IO);
    alarm(0);
    CHECK(strstr(tkv_last_error(), "is a pipe, not a regular file") != NULL);
    remove(path);
    CHECK_STATUS(tkv_model_load("/tmp", &mp, &m), TKV_ERR_IO);
    CHECK(strstr(tkv_last_error(), "is a directory") != NULL);
    CHECK(m == NULL);

    /* getters and frees on NULL */
    tkv_model_free(NULL);
    tkv_cache_free(NULL);
    tkv_session_free(NULL);
    CHECK_EQ_INT(tkv_model_n_layer(NULL), 0);
    CHECK(strcmp(tkv_model_arch(NULL), "") == 0);
    CHECK_EQ_INT(tkv_model_token_eos(NULL), -1);
    CHECK_EQ_INT(tkv_model_token_find(NULL, "x"), -1);
    CHECK_EQ_INT(tkv_cache_n_tokens(NULL), 0);
    CHECK_EQ_INT(tkv_cache_bytes_used(NULL), 0);
    CHECK_EQ_INT(tkv_session_n_tokens(NULL), 0);
    CHECK(tkv_session_logits(NULL, -1) == NULL);

    size_t n = 0;
    int32_t tok = 0;
    CHECK_STATUS(tkv_model_tokenize(NULL, "a", 1, 0, &tok, 1, &n), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_model_detokenize(NULL, &tok, 1, 0, NULL, 0, &n), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_model_meta_string(NULL, "k", NULL, 0, &n), TKV_ERR_INVALID_ARGUMENT);

    tkv_cache *c = (tkv_cache *)0x1;
    tkv_cache_params cp = tkv_cache_default_params();
    CHECK_EQ_INT(cp.k_codec, TKV_CODEC_TURBO_4B);
    CHECK_STATUS(tkv_cache_create(NULL, &cp, &c), TKV_ERR_INVALID_ARGUMENT);
    CHECK(c == NULL);
    CHECK_STATUS(tkv_cache_set_layer_codecs(NULL, 0, 0, 0), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_cache_truncate(NULL, 0), TKV_ERR_INVALID_ARGUMENT);
    test_cache_params_check();

    tkv_session *s = (tkv_session *)0x1;
    tkv_session_params sp = tkv_session_default_params();
    CHECK_STATUS(tkv_session_create(NULL, &sp, &s), TKV_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);
    CHECK_STATUS(tkv_session_eval(NULL, &tok, 1, 0), TKV_ERR_INVALID_ARGUMENT);
    tkv_sampler_params smp = tkv_sampler_default_params();
    CHECK_STATUS(tkv_session_sample(NULL, &smp, &tok), TKV_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(tkv_session_generate(NULL, &smp, 1, NULL, NULL, NULL), TKV_ERR_INVALID_ARGUMENT);
    tkv_timings t;
    CHECK_STATUS(tkv_session_timings(NULL, &t), TKV_ERR_INVALID_ARGUMENT);
    tkv_session_reset_timings(NULL);

    const char *model_path = getenv("TKV_TEST_MODEL");
    if (model_path && *model_path) {
        test_real_model(model_path);
        test_contracts(model_path);
        test_calibration_blocks(model_path);
    } else {
        printf("TKV_TEST_MODEL not set: real-model API checks skipped\n");
    }
    CHECK_MAIN_END();
}
