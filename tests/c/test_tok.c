/*
 * test_tok.c - tokenizers: UTF-8 and classes, byte-level BPE and SentencePiece BPE on tiny
 * hand-built vocabularies, and (when TKV_TEST_VOCAB and TKV_TEST_TOKCASES are set) exact
 * agreement with reference ids from the Hugging Face tokenizers package:
 *     python3 tests/tools/dump_vocab.py model.gguf /tmp/m.vocab
 *     python3 tests/tools/make_tok_cases.py /tmp/m.vocab /tmp/m.cases [--pre NAME]
 *     TKV_TEST_VOCAB=/tmp/m.vocab TKV_TEST_TOKCASES=/tmp/m.cases ./test_tok
 * TKV_TEST_TOKCASES may list several files separated by ':'.
 */
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "check.h"
#include "tok/tok_impl.h"
#include "tok/tokenizer.h"
#include "tok/unicode.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* Encode s (NUL-terminated) into ids (room for 256); returns the count or -1. */
static long enc(const tkv_tokenizer *tok, const char *s, int parse_special, int32_t *ids) {
    size_t n = 0;
    tkv_status st = tkv_tokenizer_encode(tok, s, strlen(s), parse_special, ids, 256, &n);
    return st == TKV_OK ? (long)n : -1;
}

static int ids_equal(const int32_t *got, long n, const int32_t *want, long m) {
    return n == m && (n == 0 || memcmp(got, want, (size_t)n * sizeof *got) == 0);
}

#define CHECK_IDS(tok, text, ps, ...)                                                              \
    do {                                                                                           \
        static const int32_t want_[] = {__VA_ARGS__};                                              \
        int32_t got_[256];                                                                         \
        long n_ = enc((tok), (text), (ps), got_);                                                  \
        CHECK_MSG(ids_equal(got_, n_, want_, (long)(sizeof want_ / sizeof want_[0])),              \
                  "encode(\"%s\") gave %ld ids, first %d", (text), n_, n_ > 0 ? got_[0] : -1);     \
    } while (0)

/* decode(encode(s)) == s */
static int round_trip(const tkv_tokenizer *tok, const char *s, size_t len, int parse_special) {
    size_t n = 0;
    tkv_tokenizer_encode(tok, s, len, parse_special, NULL, 0, &n);
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    char *back = malloc(len + 16);
    size_t m = 0;
    int ok = ids && back &&
             tkv_tokenizer_encode(tok, s, len, parse_special, ids, n, &n) == TKV_OK &&
             tkv_tokenizer_decode(tok, ids, n, 1, back, len + 16, &m) == TKV_OK && m == len &&
             memcmp(back, s, len) == 0;
    free(ids);
    free(back);
    return ok;
}

/* ---- unicode ------------------------------------------------------------------------------ */

static void test_unicode(void) {
    uint32_t cp;
    CHECK_EQ_INT(tkv_utf8_decode((const unsigned char *)"A", 1, &cp), 1);
    CHECK_EQ_INT(cp, 'A');
    CHECK_EQ_INT(tkv_utf8_decode((const unsigned char *)"\xC3\xA9", 2, &cp), 2);
    CHECK_EQ_INT(cp, 0xE9);
    CHECK_EQ_INT(tkv_utf8_decode((const unsigned char *)"\xE4\xBD\xA0", 3, &cp), 3);
    CHECK_EQ_INT(cp, 0x4F60);
    CHECK_EQ_INT(tkv_utf8_decode((const unsigned char *)"\xF0\x9F\x98\x80", 4, &cp), 4);
    CHECK_EQ_INT(cp, 0x1F600);
    /* invalid: truncated, lone continuation, overlong, surrogate, > U+10FFFF, 0xFF */
    static const char *bad[] = {
        "\xE4\xBD", "\x80", "\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(tkv_utf8_decode((const unsigned char *)bad[i], strlen(bad[i]), &cp), 1);
        CHECK_EQ_INT(cp, TKV_UCP_INVALID);
    }
    unsigned char u[4];
    for (uint32_t c = 0; c <= 0x10FFFF; c += 0x3FF) {
        if (c >= 0xD800 && c <= 0xDFFF) {
            continue;
        }
        size_t l = tkv_utf8_encode(c, u);
        uint32_t back;
        CHECK(tkv_utf8_decode(u, l, &back) == l && back == c);
    }
    CHECK_EQ_INT(tkv_unicode_class('a'), TKV_UCLASS_LETTER);
    CHECK_EQ_INT(tkv_unicode_class('7'), TKV_UCLASS_NUMBER);
    CHECK_EQ_INT(tkv_unicode_class('\t'), TKV_UCLASS_SPACE);
    CHECK_EQ_INT(tkv_unicode_class('!'), 0);
    CHECK_EQ_INT(tkv_unicode_class(0xE9), TKV_UCLASS_LETTER);   /* é */
    CHECK_EQ_INT(tkv_unicode_class(0x4F60), TKV_UCLASS_LETTER); /* 你 */
    CHECK_EQ_INT(tkv_unicode_class(0x0663), TKV_UCLASS_NUMBER); /* Arabic-Indic 3 */
    CHECK_EQ_INT(tkv_unicode_class(0x00BD), TKV_UCLASS_NUMBER); /* ½ (No) */
    CHECK_EQ_INT(tkv_unicode_class(0x216B), TKV_UCLASS_NUMBER); /* Ⅻ (Nl) */
    CHECK_EQ_INT(tkv_unicode_class(0x00A0), TKV_UCLASS_SPACE);
    CHECK_EQ_INT(tkv_unicode_class(0x3000), TKV_UCLASS_SPACE);
    CHECK_EQ_INT(tkv_unicode_class(0x0085), TKV_UCLASS_SPACE);
    CHECK_EQ_INT(tkv_unicode_class(0x200B), 0);  /* zero width space: Cf */
    CHECK_EQ_INT(tkv_unicode_class(0x0301), 0);  /* combining acute: Mn */
    CHECK_EQ_INT(tkv_unicode_class(0x1F600), 0); /* emoji: So */
    CHECK_EQ_INT(tkv_unicode_class(0x10FFFF), 0);
}

/* ---- pre-tokenizers ------------------------------------------------------------------------- */

typedef struct pieces {
    char buf[512]; /* pieces joined by '|' */
    size_t n;
} pieces;

static tkv_status collect(void *ctx, const char *piece, size_t len) {
    pieces *p = ctx;
    if (p->n && p->n < sizeof p->buf - 1) {
        p->buf[p->n++] = '|';
    }
    for (size_t i = 0; i < len && p->n < sizeof p->buf - 1; i++) {
        p->buf[p->n++] = piece[i];
    }
    p->buf[p->n] = '\0';
    return TKV_OK;
}

static void check_split(int32_t pre, const char *text, const char *want) {
    pieces p = {{0}, 0};
    CHECK_OK(tkv_bpe_pretokenize(pre, text, strlen(text), collect, &p));
    CHECK_MSG(strcmp(p.buf, want) == 0, "split(%d, \"%s\") = \"%s\", want \"%s\"", (int)pre, text,
              p.buf, want);
}

static void test_pretokenizers(void) {
    int32_t g = tkv_bpe_pre_from_name("gpt2");
    int32_t s = tkv_bpe_pre_from_name("smollm");
    int32_t l = tkv_bpe_pre_from_name("llama-bpe");
    int32_t q = tkv_bpe_pre_from_name("qwen2");
    CHECK(g == TKV_PRE_GPT2 && tkv_bpe_pre_from_name("default") == TKV_PRE_GPT2);
    CHECK(s == TKV_PRE_SMOLLM && l == TKV_PRE_LLAMA3 && q == TKV_PRE_QWEN2);
    CHECK_EQ_INT(tkv_bpe_pre_from_name("nope"), 0);

    check_split(g, "Hello world", "Hello| world");
    check_split(g, "I'm here, they'll go", "I|'m| here|,| they|'ll| go");
    check_split(g, "DON'T", "DON|'|T");
    check_split(g, "a   b\n\n\tc", "a|  | b|\n\n|\t|c");
    check_split(g, "x  ", "x|  ");
    check_split(g, "1234567 89", "1234567| 89");
    check_split(g, "foo(bar) += 1;", "foo|(|bar|)| +=| 1|;");
    check_split(g, "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD", "caf\xC3\xA9| \xE4\xBD\xA0\xE5\xA5\xBD");
    check_split(g, "hi \xF0\x9F\x98\x80\xF0\x9F\x98\x80!", "hi| \xF0\x9F\x98\x80\xF0\x9F\x98\x80!");
    check_split(g,
                "a\xFF"
                "b",
                "a|\xFF|b"); /* an invalid byte is "other" */
    check_split(g, "", "");

    check_split(s, "1234567", "1|2|3|4|5|6|7");
    check_split(s, "a 12 b", "a| |1|2| b");
    check_split(s, "x  1", "x|  |1");
    check_split(s, "abc123def", "abc|1|2|3|def");

    check_split(l, "1234567", "123|456|7");
    check_split(l, "DON'T I'M", "DON|'T| I|'M");
    check_split(l, "(hello) \tworld", "(hello|)| |\tworld");
    check_split(l, "a\n\n  b", "a|\n\n| | b");
    check_split(l, "a  \n  b", "a|  \n| | b");
    check_split(l, "x.\n\ny", "x|.\n\n|y");
    check_split(q, "1234567", "1|2|3|4|5|6|7");
}

/* ---- byte-level BPE on a tiny vocabulary ----------------------------------------------------- */

/* GPT-2's byte -> symbol map, derived here independently: the printable Latin-1 bytes keep
 * their code point, the others take U+0100, U+0101, ... in byte order. */
static uint32_t test_symbol(unsigned b) {
    uint32_t next = 256;
    for (unsigned x = 0; x < 256; x++) {
        int printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE);
        if (x == b) {
            return printable ? x : next;
        }
        next += !printable;
    }
    return 0;
}

/* Bytes -> byte-level symbols as UTF-8, into a static ring of buffers. */
static const char *sym(const char *bytes) {
    static char ring[64][64];
    static int k;
    char *out = ring[k++ % 64];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)bytes; *p; p++) {
        n += tkv_utf8_encode(test_symbol(*p), (unsigned char *)out + n);
    }
    out[n] = '\0';
    return out;
}

enum {
    T_HE = 256,
    T_LL,
    T_HELL,
    T_HELLO,
    T_GW,
    T_OR,
    T_GWOR,
    T_LD,
    T_GWORLD,
    T_AA,
    T_BC,
    T_AB,
    T_GG,
    T_12,
    T_E1,
    T_E2,
    T_EMOJI,
    T_IM_START,
    T_IM,
    T_TOOL,
    T_IM_END,
    T_NVOCAB
};

#define EMOJI "\xF0\x9F\x98\x80" /* U+1F600 */

static tkv_tokenizer *make_bpe(const char *pre) {
    static const char *const extra_bytes[] = {"he",   "ll", "hell",     "hello",        " w", "or",
                                              " wor", "ld", " world",   "aa",           "bc", "ab",
                                              "  ",   "12", "\xF0\x9F", "\xF0\x9F\x98", EMOJI};
    static const char *const merge_bytes[][2] = {{"h", "e"},
                                                 {"l", "l"},
                                                 {"he", "ll"},
                                                 {"hell", "o"},
                                                 {" ", "w"},
                                                 {"o", "r"},
                                                 {" w", "or"},
                                                 {"l", "d"},
                                                 {" wor", "ld"},
                                                 {"a", "a"},
                                                 {"b", "c"},
                                                 {"a", "b"},
                                                 {" ", " "},
                                                 {"1", "2"},
                                                 {"\xF0", "\x9F"},
                                                 {"\xF0\x9F", "\x98"},
                                                 {"\xF0\x9F\x98", "\x80"}};
    static char texts[T_NVOCAB][32];
    static const char *tokens[T_NVOCAB];
    static int32_t types[T_NVOCAB];
    static char merge_text[17][64];
    static const char *merges[17];
    for (unsigned b = 0; b < 256; b++) {
        size_t l = tkv_utf8_encode(test_symbol(b), (unsigned char *)texts[b]);
        texts[b][l] = '\0';
    }
    for (int i = 0; i < 17; i++) {
        strcpy(texts[256 + i], sym(extra_bytes[i]));
        snprintf(merge_text[i], sizeof merge_text[i], "%s %s", sym(merge_bytes[i][0]),
                 sym(merge_bytes[i][1]));
        merges[i] = merge_text[i];
    }
    strcpy(texts[T_IM_START], "<|im_start|>");
    strcpy(texts[T_IM], "<|im");
    strcpy(texts[T_TOOL], "<tool>");
    strcpy(texts[T_IM_END], "<|im_end|>");
    for (int i = 0; i < T_NVOCAB; i++) {
        tokens[i] = texts[i];
        types[i] = TKV_TOKEN_NORMAL;
    }
    types[T_IM_START] = types[T_IM] = types[T_IM_END] = TKV_TOKEN_CONTROL;
    types[T_TOOL] = TKV_TOKEN_USER_DEFINED;

    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = "gpt2";
    d.pre = pre;
    d.n_tokens = T_NVOCAB;
    d.tokens = tokens;
    d.token_types = types;
    d.n_merges = 17;
    d.merges = merges;
    d.bos_id = T_IM_START;
    d.eos_id = T_IM_END;
    tkv_tokenizer *tok = NULL;
    CHECK_OK(tkv_tokenizer_create(&d, &tok));
    return tok;
}

static void test_bpe(void) {
    tkv_tokenizer *tok = make_bpe("gpt2");
    if (!tok) {
        return;
    }
    CHECK_EQ_INT(tkv_tokenizer_n_vocab(tok), T_NVOCAB);
    CHECK_EQ_INT(tkv_tokenizer_bos(tok), T_IM_START);
    CHECK_EQ_INT(tkv_tokenizer_eos(tok), T_IM_END);
    CHECK_EQ_INT(tkv_tokenizer_unk(tok), -1);
    CHECK_EQ_INT(tkv_tokenizer_pad(tok), -1);
    CHECK_EQ_INT(tkv_tokenizer_add_bos(tok), 0);
    /* the stop rule: EOS (here also the ChatML end of turn), nothing else of this vocab */
    CHECK_EQ_INT(tkv_tokenizer_is_end(tok, T_IM_END), 1);
    CHECK_EQ_INT(tkv_tokenizer_is_end(tok, T_IM_START), 0);
    CHECK_EQ_INT(tkv_tokenizer_is_end(tok, T_TOOL), 0);
    CHECK_EQ_INT(tkv_tokenizer_is_end(tok, -1), 0);
    CHECK_EQ_INT(tkv_tokenizer_is_end(tok, T_NVOCAB), 0);
    CHECK_EQ_INT(tkv_tokenizer_find(tok, "<|im_start|>", 12), T_IM_START);
    CHECK_EQ_INT(tkv_tokenizer_find(tok, sym("hello"), 5), T_HELLO);
    CHECK_EQ_INT(tkv_tokenizer_find(tok, "nope", 4), -1);
    CHECK_EQ_INT(tkv_tokenizer_token_type(tok, T_TOOL), TKV_TOKEN_USER_DEFINED);
    CHECK_EQ_INT(tkv_tokenizer_token_type(tok, -1), 0);
    CHECK(tkv_tokenizer_token_text(tok, T_NVOCAB, NULL) == NULL);

    CHECK_IDS(tok, "hello world", 0, T_HELLO, T_GWORLD);
    CHECK_IDS(tok, "aaa", 0, T_AA, 'a'); /* equal ranks: leftmost pair first */
    CHECK_IDS(tok, "abc", 0, 'a', T_BC); /* "b c" (rank 10) before "a b" (rank 11) */
    CHECK_IDS(tok, "aab", 0, T_AA, 'b');
    CHECK_IDS(tok, "world", 0, 'w', T_OR, T_LD); /* no leading space: no " w" merges */
    CHECK_IDS(tok, "  ", 0, T_GG);
    CHECK_IDS(tok, "a   b", 0, 'a', T_GG, ' ', 'b'); /* "a|  | b": the last space joins b */
    CHECK_IDS(tok, "1212", 0, T_12, T_12);
    CHECK_IDS(tok, EMOJI EMOJI, 0, T_EMOJI, T_EMOJI);
    CHECK_IDS(tok, "\xFF\xFE", 0, 0xFF, 0xFE); /* invalid UTF-8: byte by byte */
    CHECK_IDS(tok, "\n", 0, '\n');

    /* special tokens: longest match; control only with parse_special; user-defined always */
    CHECK_IDS(tok, "hello<|im_start|>world", 1, T_HELLO, T_IM_START, 'w', T_OR, T_LD);
    CHECK_IDS(tok, "<|im_end|><|im_start|>", 1, T_IM_END, T_IM_START);
    CHECK_IDS(tok, "<|im_x", 1, T_IM, '_', 'x');
    CHECK_IDS(tok, "a<tool>b", 0, 'a', T_TOOL, 'b');
    int32_t ids[256];
    long n = enc(tok, "hello<|im_start|>", 0, ids);
    CHECK(n > 2);
    for (long i = 0; i < n; i++) {
        CHECK(ids[i] != T_IM_START && ids[i] != T_IM);
    }

    /* empty input and the two-call protocol */
    size_t need = 99;
    CHECK_OK(tkv_tokenizer_encode(tok, "", 0, 1, NULL, 0, &need));
    CHECK_EQ_INT(need, 0);
    CHECK_STATUS(tkv_tokenizer_encode(tok, "hello world", 11, 0, NULL, 0, &need),
                 TKV_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(need, 2);
    ids[0] = ids[1] = -7;
    CHECK_STATUS(tkv_tokenizer_encode(tok, "hello world", 11, 0, ids, 1, &need),
                 TKV_ERR_BUFFER_TOO_SMALL);
    CHECK(need == 2 && ids[0] == T_HELLO && ids[1] == -7);
    CHECK_OK(tkv_tokenizer_encode(tok, "hello world", 11, 0, ids, 2, &need));

    /* decoding */
    char buf[64];
    size_t m = 0;
    const int32_t hw[] = {T_HELLO, T_GWORLD, T_IM_END};
    CHECK_OK(tkv_tokenizer_decode(tok, hw, 3, 0, buf, sizeof buf, &m));
    CHECK(m == 11 && memcmp(buf, "hello world", 11) == 0);
    CHECK_OK(tkv_tokenizer_decode(tok, hw, 3, 1, buf, sizeof buf, &m));
    CHECK(m == 21 && memcmp(buf, "hello world<|im_end|>", 21) == 0);
    CHECK_STATUS(tkv_tokenizer_decode(tok, hw, 2, 0, buf, 4, &m), TKV_ERR_BUFFER_TOO_SMALL);
    CHECK(m == 11 && memcmp(buf, "hell", 4) == 0);
    CHECK_OK(tkv_tokenizer_token_to_piece(tok, T_GW, 0, buf, sizeof buf, &m));
    CHECK(m == 2 && memcmp(buf, " w", 2) == 0);
    CHECK_OK(tkv_tokenizer_token_to_piece(tok, T_E1, 0, buf, sizeof buf, &m));
    CHECK(m == 2 && memcmp(buf, "\xF0\x9F", 2) == 0); /* part of a character */
    CHECK_OK(tkv_tokenizer_token_to_piece(tok, T_IM_START, 0, buf, sizeof buf, &m));
    CHECK_EQ_INT(m, 0);
    CHECK_OK(tkv_tokenizer_token_to_piece(tok, T_TOOL, 0, buf, sizeof buf, &m));
    CHECK(m == 6 && memcmp(buf, "<tool>", 6) == 0);
    CHECK_STATUS(tkv_tokenizer_token_to_piece(tok, T_NVOCAB, 0, buf, sizeof buf, &m),
                 TKV_ERR_INVALID_ARGUMENT);
    const int32_t bad[] = {1, -3};
    CHECK_STATUS(tkv_tokenizer_decode(tok, bad, 2, 0, buf, sizeof buf, &m),
                 TKV_ERR_INVALID_ARGUMENT);

    /* round trips, including random bytes (every byte has a symbol) */
    static const char *const texts[] = {"hello world",
                                        "a   b\n\n\tc",
                                        "  lead and trail  ",
                                        "I'm 1234567 'll",
                                        "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD " EMOJI "!",
                                        "\xC3(\xA0\xA1\xF0\x28\x8C\x28",
                                        "x<tool>y<|im_start|>z"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        CHECK_MSG(round_trip(tok, texts[i], strlen(texts[i]), 1), "round trip of \"%s\"", texts[i]);
    }
    uint64_t state = 42;
    int failures = 0;
    for (int t = 0; t < 300; t++) {
        char s[80];
        size_t len = (size_t)(t % 79) + 1;
        for (size_t i = 0; i < len; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            s[i] = (char)(state >> 56);
        }
        failures += !round_trip(tok, s, len, 0);
    }
    CHECK_EQ_INT(failures, 0);
    tkv_tokenizer_free(tok);

    /* the other pre-tokenizers build and split digits their way */
    tok = make_bpe("smollm");
    if (tok) {
        CHECK_IDS(tok, "1212", 0, '1', '2', '1', '2');
        tkv_tokenizer_free(tok);
    }
    tok = make_bpe("llama3");
    if (tok) {
        CHECK_IDS(tok, "12121", 0, T_12, '1', '2', '1'); /* "121|21" */
        tkv_tokenizer_free(tok);
    }
    tkv_tokenizer_free(NULL);
}

static void test_create_errors(void) {
    const char *tokens[] = {"a", "b"};
    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = "gpt2";
    d.tokens = tokens;
    d.n_tokens = 2;
    tkv_tokenizer *tok = (tkv_tokenizer *)&d;
    CHECK_STATUS(tkv_tokenizer_create(NULL, &tok), TKV_ERR_INVALID_ARGUMENT);
    CHECK(tok == NULL);
    CHECK_STATUS(tkv_tokenizer_create(&d, NULL), TKV_ERR_INVALID_ARGUMENT);
    d.model = "wordpiece";
    CHECK_STATUS(tkv_tokenizer_create(&d, &tok), TKV_ERR_UNSUPPORTED);
    d.model = "gpt2";
    d.pre = "klingon";
    CHECK_STATUS(tkv_tokenizer_create(&d, &tok), TKV_ERR_UNSUPPORTED);
    CHECK(strstr(tkv_last_error(), "klingon") != NULL);
    d.pre = NULL;
    d.bos_id = 2;
    CHECK_STATUS(tkv_tokenizer_create(&d, &tok), TKV_ERR_BAD_FORMAT);
    d.bos_id = -1;
    d.n_tokens = 0;
    CHECK_STATUS(tkv_tokenizer_create(&d, &tok), TKV_ERR_INVALID_ARGUMENT);
    d.n_tokens = 2;
    const char *merges[] = {"a b", "x y", "ab", ""}; /* unknown tokens, no space: ignored */
    d.merges = merges;
    d.n_merges = 4;
    CHECK_OK(tkv_tokenizer_create(&d, &tok));
    tkv_tokenizer_free(tok);
}

/* ---- SentencePiece BPE on a tiny vocabulary -------------------------------------------------- */

#define SP "\xE2\x96\x81" /* U+2581 */

enum {
    S_UNK,
    S_BOS,
    S_EOS,
    S_BYTE0,
    S_SP = S_BYTE0 + 256,
    S_H,
    S_E,
    S_L,
    S_O,
    S_W,
    S_R,
    S_D,
    S_A,
    S_B,
    S_C,
    S_HE,
    S_LL,
    S_HELL,
    S_HELLO,
    S_SPHELLO,
    S_SPW,
    S_OR,
    S_SPWOR,
    S_LD,
    S_SPWORLD,
    S_AB,
    S_BC,
    S_NVOCAB
};

static tkv_tokenizer *make_spm(int add_space_prefix) {
    static const char *const normal[] = {SP,       "h",    "e",        "l",        "o",    "w",
                                         "r",      "d",    "a",        "b",        "c",    "he",
                                         "ll",     "hell", "hello",    SP "hello", SP "w", "or",
                                         SP "wor", "ld",   SP "world", "ab",       "bc"};
    static const float normal_scores[] = {-1, -2, -2, -2, -2, -2, -2,  -2,  -2,  -2, -2, -3,
                                          -4, -5, -6, -7, -8, -9, -10, -11, -12, -5, -3};
    static char bytes[256][8];
    static const char *tokens[S_NVOCAB];
    static float scores[S_NVOCAB];
    static int32_t types[S_NVOCAB];
    tokens[S_UNK] = "<unk>";
    tokens[S_BOS] = "<s>";
    tokens[S_EOS] = "</s>";
    types[S_UNK] = TKV_TOKEN_UNKNOWN;
    types[S_BOS] = types[S_EOS] = TKV_TOKEN_CONTROL;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        tokens[S_BYTE0 + b] = bytes[b];
        types[S_BYTE0 + b] = TKV_TOKEN_BYTE;
    }
    for (int i = 0; i < S_NVOCAB - S_SP; i++) {
        tokens[S_SP + i] = normal[i];
        scores[S_SP + i] = normal_scores[i];
        types[S_SP + i] = TKV_TOKEN_NORMAL;
    }
    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = "llama";
    d.pre = "default";
    d.n_tokens = S_NVOCAB;
    d.tokens = tokens;
    d.scores = scores;
    d.token_types = types;
    d.unk_id = S_UNK;
    d.bos_id = S_BOS;
    d.eos_id = S_EOS;
    d.add_bos = 1;
    d.add_space_prefix = add_space_prefix;
    tkv_tokenizer *tok = NULL;
    CHECK_OK(tkv_tokenizer_create(&d, &tok));
    return tok;
}

/* Which tokens end a generation: the metadata's EOS and end-of-turn ids and the known
 * end-of-turn markers, whatever the EOS is. */
static void test_end_tokens(void) {
    const char *texts[] = {"a", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|im_start|>"};
    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = "gpt2";
    d.n_tokens = 5;
    d.tokens = texts;
    d.eot_id = 2;
    tkv_tokenizer *tok = NULL;
    CHECK_OK(tkv_tokenizer_create(&d, &tok));
    if (tok) {
        const int want[] = {0, 1, 1, 1, 0};
        for (int i = 0; i < 5; i++) {
            CHECK_EQ_INT(tkv_tokenizer_is_end(tok, i), want[i]);
        }
        tkv_tokenizer_free(tok);
    }
    d.eot_id = 5;
    CHECK_STATUS(tkv_tokenizer_create(&d, &tok), TKV_ERR_BAD_FORMAT);
}

static void test_spm(void) {
    tkv_tokenizer *tok = make_spm(1);
    if (!tok) {
        return;
    }
    CHECK_EQ_INT(tkv_tokenizer_add_bos(tok), 1);
    CHECK_IDS(tok, "hello world", 0, S_SPHELLO, S_SPWORLD);
    CHECK_IDS(tok, "hello", 0, S_SPHELLO);
    CHECK_IDS(tok, "abc", 0, S_SP, S_A, S_BC); /* "bc" (-3) outscores "ab" (-5) */
    CHECK_IDS(tok, "ab", 0, S_SP, S_AB);
    CHECK_IDS(tok, "  hello", 0, S_SP, S_SP, S_SPHELLO);
    CHECK_IDS(tok, "h\xC3\xA9", 0, S_SP, S_H, S_BYTE0 + 0xC3, S_BYTE0 + 0xA9); /* byte fallback */
    CHECK_IDS(tok, "\xF0\x9F\x98\x80", 0, S_SP, S_BYTE0 + 0xF0, S_BYTE0 + 0x9F, S_BYTE0 + 0x98,
              S_BYTE0 + 0x80);
    CHECK_IDS(tok,
              "\xFF"
              "a",
              0, S_SP, S_BYTE0 + 0xFF, S_A); /* invalid UTF-8 */
    CHECK_IDS(tok, "<s>hello</s>", 1, S_BOS, S_SPHELLO, S_EOS);
    int32_t ids[256];
    CHECK_EQ_INT(enc(tok, "", 1, ids), 0);
    long n = enc(tok, "<s>", 0, ids);
    CHECK(n == 4 && ids[0] == S_SP && ids[1] == S_BYTE0 + '<');

    char buf[64];
    size_t m = 0;
    const int32_t hw[] = {S_BOS, S_SPHELLO, S_SPWORLD, S_BYTE0 + '!'};
    CHECK_OK(tkv_tokenizer_decode(tok, hw, 4, 0, buf, sizeof buf, &m));
    CHECK(m == 12 && memcmp(buf, "hello world!", 12) == 0);
    CHECK_OK(tkv_tokenizer_decode(tok, hw, 4, 1, buf, sizeof buf, &m));
    CHECK(m == 16 && memcmp(buf, "<s> hello world!", 16) == 0);
    CHECK_OK(tkv_tokenizer_token_to_piece(tok, S_SPWORLD, 0, buf, sizeof buf, &m));
    CHECK(m == 6 && memcmp(buf, " world", 6) == 0);
    CHECK_OK(tkv_tokenizer_token_to_piece(tok, S_BYTE0 + 0x0A, 0, buf, sizeof buf, &m));
    CHECK(m == 1 && buf[0] == '\n');

    static const char *const texts[] = {
        "hello world",  "  two  spaces ", "h\xC3\xA9llo \xE4\xBD\xA0", "\xF0\x9F\x98\x80 emoji",
        "\xFF\xFE bad", "a\nb\tc"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        CHECK_MSG(round_trip(tok, texts[i], strlen(texts[i]), 0), "round trip of \"%s\"", texts[i]);
    }
    tkv_tokenizer_free(tok);

    tok = make_spm(0);
    if (tok) {
        CHECK_IDS(tok, "hello world", 0, S_HELLO, S_SPWORLD);
        tkv_tokenizer_free(tok);
    }
}

/* ---- reference cases from the Hugging Face tokenizers package -------------------------------- */

static int hex_to_bytes(const char *hex, char **out, size_t *len) {
    if (strcmp(hex, "-") == 0) {
        *out = malloc(1);
        *len = 0;
        return *out != NULL;
    }
    size_t n = strlen(hex);
    if (n % 2) {
        return 0;
    }
    *out = malloc(n / 2 + 1);
    if (!*out) {
        return 0;
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            free(*out);
            return 0;
        }
        (*out)[i] = (char)v;
    }
    (*out)[n / 2] = '\0';
    *len = n / 2;
    return 1;
}

typedef struct vocab_file {
    char model[256], pre[256];
    int32_t bos, eos, unk, pad, add_bos, add_space_prefix;
    size_t n_tokens, n_merges;
    char **tokens;
    size_t *token_lens;
    float *scores;
    int32_t *types;
    char **merges;
    size_t *merge_lens;
} vocab_file;

static void vocab_free(vocab_file *v) {
    for (size_t i = 0; v->tokens && i < v->n_tokens; i++) {
        free(v->tokens[i]);
    }
    for (size_t i = 0; v->merges && i < v->n_merges; i++) {
        free(v->merges[i]);
    }
    free(v->tokens);
    free(v->token_lens);
    free(v->scores);
    free(v->types);
    free(v->merges);
    free(v->merge_lens);
}

static int vocab_load(const char *path, vocab_file *v) {
    FILE *f = fopen(path, "r");
    if (!f) {
        return 0;
    }
    char key[64];
    char val[256];
    int ok = fscanf(f, "%63s %255s", key, val) == 2 && strcmp(key, "tkv-vocab") == 0;
    while (ok && fscanf(f, "%63s %255s", key, val) == 2) {
        if (strcmp(key, "model") == 0) {
            snprintf(v->model, sizeof v->model, "%s", val);
        } else if (strcmp(key, "pre") == 0) {
            snprintf(v->pre, sizeof v->pre, "%s", val);
        } else if (strcmp(key, "tokens") == 0) {
            v->n_tokens = strtoul(val, NULL, 10);
            v->tokens = calloc(v->n_tokens, sizeof *v->tokens);
            v->token_lens = calloc(v->n_tokens, sizeof *v->token_lens);
            v->scores = calloc(v->n_tokens, sizeof *v->scores);
            v->types = calloc(v->n_tokens, sizeof *v->types);
            ok = v->tokens && v->token_lens && v->scores && v->types;
            for (size_t i = 0; ok && i < v->n_tokens; i++) {
                char score[64];
                char hex[4096];
                int type;
                ok = fscanf(f, "%d %63s %4095s", &type, score, hex) == 3 &&
                     hex_to_bytes(hex, &v->tokens[i], &v->token_lens[i]);
                v->types[i] = type;
                v->scores[i] = strtof(score, NULL);
            }
        } else if (strcmp(key, "merges") == 0) {
            v->n_merges = strtoul(val, NULL, 10);
            v->merges = calloc(v->n_merges + 1, sizeof *v->merges);
            v->merge_lens = calloc(v->n_merges + 1, sizeof *v->merge_lens);
            ok = v->merges && v->merge_lens;
            for (size_t i = 0; ok && i < v->n_merges; i++) {
                char hex[4096];
                ok = fscanf(f, "%4095s", hex) == 1 &&
                     hex_to_bytes(hex, &v->merges[i], &v->merge_lens[i]);
            }
        } else {
            int32_t x = (int32_t)strtol(val, NULL, 10);
            if (strcmp(key, "bos") == 0) {
                v->bos = x;
            } else if (strcmp(key, "eos") == 0) {
                v->eos = x;
            } else if (strcmp(key, "unk") == 0) {
                v->unk = x;
            } else if (strcmp(key, "pad") == 0) {
                v->pad = x;
            } else if (strcmp(key, "add_bos") == 0) {
                v->add_bos = x;
            } else if (strcmp(key, "add_space_prefix") == 0) {
                v->add_space_prefix = x;
            }
        }
    }
    fclose(f);
    return ok && v->tokens;
}

static tkv_tokenizer *vocab_tokenizer(const vocab_file *v, const char *pre) {
    tkv_tokenizer_desc d;
    tkv_tokenizer_desc_init(&d);
    d.model = v->model;
    d.pre = pre;
    d.n_tokens = v->n_tokens;
    d.tokens = (const char *const *)v->tokens;
    d.token_lens = v->token_lens;
    d.scores = v->scores;
    d.token_types = v->types;
    d.n_merges = v->n_merges;
    d.merges = (const char *const *)v->merges;
    d.merge_lens = v->merge_lens;
    d.bos_id = v->bos;
    d.eos_id = v->eos;
    d.unk_id = v->unk;
    d.pad_id = v->pad;
    d.add_bos = v->add_bos;
    d.add_space_prefix = v->add_space_prefix;
    tkv_tokenizer *tok = NULL;
    CHECK_OK(tkv_tokenizer_create(&d, &tok));
    return tok;
}

/* One cases file; returns the number of cases, *matched the exact matches. */
static size_t run_cases(const vocab_file *v, const char *path, size_t *matched) {
    FILE *f = fopen(path, "r");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) {
        return 0;
    }
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    tkv_tokenizer *tok = NULL;
    char pre[256];
    snprintf(pre, sizeof pre, "%s", v->pre);
    size_t cases = 0;
    int shown = 0;
    *matched = 0;
    while ((got = getline(&line, &line_cap, f)) > 0) {
        if (strncmp(line, "pre ", 4) == 0) {
            sscanf(line + 4, "%255s", pre);
            continue;
        }
        if (!tok && !(tok = vocab_tokenizer(v, pre))) {
            break;
        }
        char *p = line;
        int parse_special = (int)strtol(p, &p, 10);
        char hex[1 << 18];
        int used = 0;
        if (sscanf(p, " %262143s%n", hex, &used) != 1) {
            break;
        }
        p += used;
        size_t n_want = strtoul(p, &p, 10);
        int32_t *want = malloc((n_want + 1) * sizeof *want);
        for (size_t i = 0; i < n_want; i++) {
            want[i] = (int32_t)strtol(p, &p, 10);
        }
        char *text = NULL;
        size_t len = 0;
        CHECK(hex_to_bytes(hex, &text, &len));
        size_t n_got = 0;
        tkv_tokenizer_encode(tok, text, len, parse_special, NULL, 0, &n_got);
        int32_t *ids = malloc((n_got + 1) * sizeof *ids);
        CHECK_OK(tkv_tokenizer_encode(tok, text, len, parse_special, ids, n_got, &n_got));
        int same = n_got == n_want && memcmp(ids, want, n_got * sizeof *ids) == 0;
        *matched += same;
        cases++;
        if (!same && shown++ < 5) {
            size_t k = 0;
            while (k < n_got && k < n_want && ids[k] == want[k]) {
                k++;
            }
            fprintf(stderr,
                    "%s (pre %s) case %zu differs at id %zu: got %d, want %d; text: %.200s\n", path,
                    pre, cases, k, k < n_got ? ids[k] : -1, k < n_want ? want[k] : -1, text);
        }
        /* byte-level BPE loses only the bytes whose symbol the vocabulary lacks */
        char *back = malloc(len + 1);
        size_t m = 0;
        size_t kept = 0;
        for (size_t i = 0; i < len; i++) {
            if (tok->kind != TKV_TOK_BPE || tok->byte_token[(unsigned char)text[i]] >= 0) {
                text[kept++] = text[i];
            }
        }
        CHECK_OK(tkv_tokenizer_decode(tok, ids, n_got, 1, back, len + 1, &m));
        CHECK(tok->kind != TKV_TOK_BPE || (m == kept && memcmp(back, text, kept) == 0));
        free(back);
        free(ids);
        free(text);
        free(want);
    }
    free(line);
    fclose(f);
    tkv_tokenizer_free(tok);
    CHECK_EQ_INT(*matched, cases);
    printf("reference: %zu/%zu cases match (%s, pre-tokenizer %s)\n", *matched, cases, path, pre);
    return cases;
}

static void test_reference(void) {
    const char *vocab_path = getenv("TKV_TEST_VOCAB");
    const char *cases_paths = getenv("TKV_TEST_TOKCASES");
    if (!vocab_path || !cases_paths || !*vocab_path || !*cases_paths) {
        printf("reference: skipped (set TKV_TEST_VOCAB and TKV_TEST_TOKCASES)\n");
        return;
    }
    vocab_file v;
    memset(&v, 0, sizeof v);
    v.bos = v.eos = v.unk = v.pad = -1;
    v.add_space_prefix = 1;
    int ok = vocab_load(vocab_path, &v);
    CHECK_MSG(ok, "cannot read vocabulary %s", vocab_path);
    if (ok) {
        char *list = malloc(strlen(cases_paths) + 1);
        strcpy(list, cases_paths);
        size_t total = 0;
        size_t total_matched = 0;
        for (char *path = strtok(list, ":"); path; path = strtok(NULL, ":")) {
            size_t matched = 0;
            total += run_cases(&v, path, &matched);
            total_matched += matched;
        }
        printf("reference: %zu/%zu cases match in all\n", total_matched, total);
        free(list);
    }
    vocab_free(&v);
}

int main(void) {
    test_unicode();
    test_pretokenizers();
    test_bpe();
    test_create_errors();
    test_end_tokens();
    test_spm();
    test_reference();
    CHECK_MAIN_END();
}
