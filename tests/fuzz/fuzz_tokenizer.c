/*
 * fuzz_tokenizer.c - libFuzzer target: tokenizers (lib/tok) on arbitrary text and ids.
 *
 * Five tokenizers are built once from small embedded vocabularies: byte-level BPE with
 * each pre-tokenizer (gpt2, smollm, llama3, qwen2) and SentencePiece BPE.  Each has a
 * few merges, control tokens and a user-defined token, so special-token cutting, merges,
 * byte fallback and the per-pre-tokenizer regexes all run.
 *
 * Input: byte 0 picks the tokenizer (low 3 bits, mod 5), parse_special (bit 3) and
 * render_special (bit 4); the rest is the text.  Checks:
 *   - the two-call protocol: the count with cap 0 equals the count written, a short cap
 *     gives TKV_ERR_BUFFER_TOO_SMALL with the same count;
 *   - every id is in range;
 *   - byte-level BPE round-trips exactly: decode(encode(text), render_special=1) == text
 *     (every byte has a symbol, specials render as written);
 *   - the same bytes read as int32 ids (some out of range) detokenize without a crash,
 *     with TKV_ERR_INVALID_ARGUMENT exactly when an id is out of range.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "tok/tokenizer.h"
#include "turbokv.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

enum { N_TOK = 5, SPM = 4 };
static const char *const pre_names[4] = {"gpt2", "smollm", "llama3", "qwen2"};
static tkv_tokenizer *toks[N_TOK];

/* UTF-8 of code point c into out (c < 0x800 here); returns the length. */
static size_t utf8(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
}

/* GPT-2's byte -> code point map (printable bytes map to themselves, the rest to 256+). */
static uint32_t byte_symbol(int b) {
    static uint32_t map[256];
    static int init;
    if (!init) {
        int n = 0;
        for (int i = 0; i < 256; i++) {
            int printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
            map[i] = printable ? (uint32_t)i : (uint32_t)(256 + n++);
        }
        init = 1;
    }
    return map[b];
}

static tkv_tokenizer *build_bpe(const char *pre) {
    static char sym[256][4];
    const char *tokens[256 + 16];
    int32_t types[256 + 16];
    size_t n = 0;
    for (int b = 0; b < 256; b++) {
        sym[b][utf8(byte_symbol(b), sym[b])] = '\0';
        types[n] = TKV_TOKEN_NORMAL;
        tokens[n++] = sym[b];
    }
    /* merges in rank order; "\xC4\xA0" is the symbol of the space byte */
    static const char *const merges[] = {"t h",   "th e",  "\xC4\xA0 t", "\xC4\xA0t he",
                                         "a n",   "i n",   "1 2",        "\xC4\xA0 \xC4\xA0",
                                         "e r",   "o n"};
    static const char *const merged[] = {"th",  "the", "\xC4\xA0t", "\xC4\xA0the", "an",
                                         "in",  "12",  "\xC4\xA0\xC4\xA0", "er", "on"};
    for (size_t i = 0; i < sizeof merged / sizeof merged[0]; i++) {
        types[n] = TKV_TOKEN_NORMAL;
        tokens[n++] = merged[i];
    }
    const size_t bos = n;
    static const char *const specials[] = {"<|bos|>", "<|eos|>", "<|im_start|>", "<tool>"};
    static const int32_t special_types[] = {TKV_TOKEN_CONTROL, TKV_TOKEN_CONTROL,
                                            TKV_TOKEN_CONTROL, TKV_TOKEN_USER_DEFINED};
    for (size_t i = 0; i < 4; i++) {
        types[n] = special_types[i];
        tokens[n++] = specials[i];
    }
    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = "gpt2";
    d.pre = pre;
    d.n_tokens = n;
    d.tokens = tokens;
    d.token_types = types;
    d.n_merges = sizeof merges / sizeof merges[0];
    d.merges = merges;
    d.bos_id = (int32_t)bos;
    d.eos_id = (int32_t)bos + 1;
    tkv_tokenizer *t = NULL;
    REQUIRE(tkv_tokenizer_create(&d, &t) == TKV_OK);
    return t;
}

static tkv_tokenizer *build_spm(void) {
    static char bytes[256][8];
    const char *tokens[3 + 256 + 32];
    float scores[3 + 256 + 32];
    int32_t types[3 + 256 + 32];
    size_t n = 0;
    static const char *const head[] = {"<unk>", "<s>", "</s>"};
    static const int32_t head_types[] = {TKV_TOKEN_UNKNOWN, TKV_TOKEN_CONTROL, TKV_TOKEN_CONTROL};
    for (int i = 0; i < 3; i++) {
        types[n] = head_types[i];
        scores[n] = 0.0f;
        tokens[n++] = head[i];
    }
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        types[n] = TKV_TOKEN_BYTE;
        scores[n] = 0.0f;
        tokens[n++] = bytes[b];
    }
    /* "\xE2\x96\x81" is U+2581, SentencePiece's space */
    static const char *const pieces[] = {
        "\xE2\x96\x81", "a", "e", "h", "i", "n", "o", "t", "r", "s", "th", "he", "the",
        "\xE2\x96\x81t", "\xE2\x96\x81the", "in", "an", "er", "on", "\xC3\xA9", "\xE4\xBD\xA0"};
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        types[n] = TKV_TOKEN_NORMAL;
        scores[n] = -(float)i;
        tokens[n++] = pieces[i];
    }
    types[n] = TKV_TOKEN_USER_DEFINED;
    scores[n] = 0.0f;
    tokens[n++] = "<tool>";
    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = "llama";
    d.n_tokens = n;
    d.tokens = tokens;
    d.scores = scores;
    d.token_types = types;
    d.bos_id = 1;
    d.eos_id = 2;
    d.unk_id = 0;
    d.add_bos = 1;
    tkv_tokenizer *t = NULL;
    REQUIRE(tkv_tokenizer_create(&d, &t) == TKV_OK);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < 4; i++) {
        toks[i] = build_bpe(pre_names[i]);
    }
    toks[SPM] = build_spm();
    return 0;
}

static void check_encode(const tkv_tokenizer *t, int is_bpe, const char *text, size_t len,
                         int parse_special) {
    const int32_t n_vocab = tkv_tokenizer_n_vocab(t);
    size_t n = 0;
    tkv_status st = tkv_tokenizer_encode(t, text, len, parse_special, NULL, 0, &n);
    REQUIRE(st == (n == 0 ? TKV_OK : TKV_ERR_BUFFER_TOO_SMALL));
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    REQUIRE(ids != NULL);
    size_t n2 = 0;
    REQUIRE(tkv_tokenizer_encode(t, text, len, parse_special, ids, n, &n2) == TKV_OK && n2 == n);
    for (size_t i = 0; i < n; i++) {
        REQUIRE(ids[i] >= 0 && ids[i] < n_vocab);
    }
    if (n > 1) {
        int32_t first;
        REQUIRE(tkv_tokenizer_encode(t, text, len, parse_special, &first, 1, &n2) ==
                    TKV_ERR_BUFFER_TOO_SMALL &&
                n2 == n && first == ids[0]);
    }
    size_t m = 0;
    st = tkv_tokenizer_decode(t, ids, n, 1, NULL, 0, &m);
    REQUIRE(st == (m == 0 ? TKV_OK : TKV_ERR_BUFFER_TOO_SMALL));
    char *back = malloc(m + 1);
    REQUIRE(back != NULL);
    size_t m2 = 0;
    REQUIRE(tkv_tokenizer_decode(t, ids, n, 1, back, m, &m2) == TKV_OK && m2 == m);
    if (is_bpe) {
        REQUIRE(m == len && memcmp(back, text, len) == 0);
    }
    free(back);
    free(ids);
}

static void check_ids(const tkv_tokenizer *t, const uint8_t *p, size_t size, int render) {
    const int32_t n_vocab = tkv_tokenizer_n_vocab(t);
    const size_t n = size / 2;
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    REQUIRE(ids != NULL);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        /* mostly in range, with a few ids around and past both ends */
        int32_t v = (int32_t)(((uint32_t)p[2 * i] << 8) | p[2 * i + 1]);
        ids[i] = v % (n_vocab + 4) - (v >= 0xFF00 ? 3 : 0);
        bad |= ids[i] < 0 || ids[i] >= n_vocab;
        char piece[64];
        size_t pn = 0;
        tkv_status st = tkv_tokenizer_token_to_piece(t, ids[i], render, piece, sizeof piece, &pn);
        if (ids[i] < 0 || ids[i] >= n_vocab) {
            REQUIRE(st == TKV_ERR_INVALID_ARGUMENT);
        } else {
            REQUIRE(st == TKV_OK && pn <= sizeof piece);
            REQUIRE(tkv_tokenizer_token_text(t, ids[i], NULL) != NULL);
        }
    }
    size_t m = 0;
    tkv_status st = tkv_tokenizer_decode(t, ids, n, render, NULL, 0, &m);
    if (bad) {
        REQUIRE(st == TKV_ERR_INVALID_ARGUMENT);
    } else {
        REQUIRE(st == (m == 0 ? TKV_OK : TKV_ERR_BUFFER_TOO_SMALL));
        char *out = malloc(m + 1);
        REQUIRE(out != NULL);
        size_t m2 = 0;
        REQUIRE(tkv_tokenizer_decode(t, ids, n, render, out, m, &m2) == TKV_OK && m2 == m);
        if (m > 1) {
            REQUIRE(tkv_tokenizer_decode(t, ids, n, render, out, m - 1, &m2) ==
                        TKV_ERR_BUFFER_TOO_SMALL &&
                    m2 == m);
        }
        free(out);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    const int which = (data[0] & 7) % N_TOK;
    const int parse_special = (data[0] >> 3) & 1;
    const int render_special = (data[0] >> 4) & 1;
    const tkv_tokenizer *t = toks[which];
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    check_encode(t, which != SPM, text, len, parse_special);
    check_ids(t, data + 1, len, render_special);
    return 0;
}
