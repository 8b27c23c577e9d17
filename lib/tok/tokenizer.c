/*
 * tokenizer.c - the tokenizer object: vocabulary storage, the text -> id hash table,
 * special-token splitting, decoding and the getters.  The model-specific work lives in
 * bpe.c (byte-level BPE) and spm.c (SentencePiece BPE).
 *
 * Encoding first cuts special tokens out of the text (leftmost position, longest token
 * there), then hands each stretch of plain text to the model's encoder.
 */
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/status.h"
#include "tok/tok_impl.h"
#include "tok/unicode.h"

void tkv_tokenizer_desc_init(tkv_tokenizer_desc *desc) {
    memset(desc, 0, sizeof *desc);
    desc->bos_id = desc->eos_id = desc->unk_id = desc->pad_id = desc->eot_id = -1;
    desc->add_space_prefix = 1;
}

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

int32_t tkv_tok_lookup(const tkv_tokenizer *tok, const char *s, size_t len) {
    size_t i = (size_t)hash_bytes(s, len) & tok->vocab_mask;
    for (;;) {
        int32_t id = tok->vocab_slots[i];
        if (id < 0) {
            return -1;
        }
        if (tok->text_len[id] == len && memcmp(tok->text + tok->text_off[id], s, len) == 0) {
            return id;
        }
        i = (i + 1) & tok->vocab_mask;
    }
}

static size_t string_len(const char *const *strs, const size_t *lens, size_t i) {
    return lens ? lens[i] : strlen(strs[i]);
}

/* Store the texts, types and scores, and fill the hash table (first id wins on duplicates). */
static tkv_status build_vocab(tkv_tokenizer *tok, const tkv_tokenizer_desc *d) {
    size_t n = d->n_tokens;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        TKV_REQUIRE(d->tokens[i] != NULL, TKV_ERR_INVALID_ARGUMENT, "token %zu is NULL", i);
        size_t l = string_len(d->tokens, d->token_lens, i);
        TKV_REQUIRE(l <= UINT32_MAX && tkv_add_size(total, l + 1, &total) == 0,
                    TKV_ERR_INVALID_ARGUMENT, "token texts too long");
    }
    tok->text = malloc(total ? total : 1);
    tok->text_off = malloc(n * sizeof *tok->text_off);
    tok->text_len = malloc(n * sizeof *tok->text_len);
    tok->types = malloc(n * sizeof *tok->types);
    tok->scores = malloc(n * sizeof *tok->scores);
    size_t slots = 16;
    while (slots < 2 * n) {
        slots *= 2;
    }
    tok->vocab_slots = malloc(slots * sizeof *tok->vocab_slots);
    TKV_REQUIRE(tok->text && tok->text_off && tok->text_len && tok->types && tok->scores &&
                    tok->vocab_slots,
                TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu tokens", n);
    tok->vocab_mask = slots - 1;
    memset(tok->vocab_slots, 0xff, slots * sizeof *tok->vocab_slots);

    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = string_len(d->tokens, d->token_lens, i);
        memcpy(tok->text + off, d->tokens[i], l);
        tok->text[off + l] = '\0';
        tok->text_off[i] = off;
        tok->text_len[i] = (uint32_t)l;
        tok->types[i] = d->token_types ? d->token_types[i] : TKV_TOKEN_NORMAL;
        tok->scores[i] = d->scores ? d->scores[i] : 0.0f;
        off += l + 1;

        size_t h = (size_t)hash_bytes(d->tokens[i], l) & tok->vocab_mask;
        while (tok->vocab_slots[h] >= 0) {
            int32_t o = tok->vocab_slots[h];
            if (tok->text_len[o] == l &&
                memcmp(tok->text + tok->text_off[o], d->tokens[i], l) == 0) {
                break;
            }
            h = (h + 1) & tok->vocab_mask;
        }
        if (tok->vocab_slots[h] < 0) {
            tok->vocab_slots[h] = (int32_t)i;
        }
    }
    return TKV_OK;
}

static int is_special_type(int32_t type) {
    return type == TKV_TOKEN_CONTROL || type == TKV_TOKEN_USER_DEFINED || type == TKV_TOKEN_UNKNOWN;
}

static int cmp_special(const void *a, const void *b, const tkv_tokenizer *tok) {
    int32_t x = *(const int32_t *)a;
    int32_t y = *(const int32_t *)b;
    unsigned char fx = (unsigned char)tok->text[tok->text_off[x]];
    unsigned char fy = (unsigned char)tok->text[tok->text_off[y]];
    if (fx != fy) {
        return fx < fy ? -1 : 1;
    }
    if (tok->text_len[x] != tok->text_len[y]) {
        return tok->text_len[x] > tok->text_len[y] ? -1 : 1;
    }
    return x < y ? -1 : (x > y);
}

/* Insertion sort: special tokens are few (tens to hundreds) and qsort has no context. */
static void sort_specials(tkv_tokenizer *tok) {
    for (size_t i = 1; i < tok->n_special; i++) {
        int32_t v = tok->special[i];
        size_t j = i;
        while (j > 0 && cmp_special(&tok->special[j - 1], &v, tok) > 0) {
            tok->special[j] = tok->special[j - 1];
            j--;
        }
        tok->special[j] = v;
    }
}

static tkv_status build_specials(tkv_tokenizer *tok) {
    size_t count = 0;
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        count += is_special_type(tok->types[i]) && tok->text_len[i] > 0;
    }
    tok->special = malloc((count ? count : 1) * sizeof *tok->special);
    TKV_REQUIRE(tok->special, TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        if (is_special_type(tok->types[i]) && tok->text_len[i] > 0) {
            tok->special[tok->n_special++] = i;
        }
    }
    sort_specials(tok);
    size_t k = 0;
    for (unsigned b = 0; b <= 256; b++) {
        while (k < tok->n_special && (unsigned char)tok->text[tok->text_off[tok->special[k]]] < b) {
            k++;
        }
        tok->special_first[b] = (uint32_t)k;
    }
    return TKV_OK;
}

static tkv_status check_id(int32_t id, int32_t n, const char *what) {
    TKV_REQUIRE(id >= -1 && id < n, TKV_ERR_BAD_FORMAT,
                "tokenizer: %s id %d out of range (n_vocab %d)", what, (int)id, (int)n);
    return TKV_OK;
}

static void add_end_token(tkv_tokenizer *tok, int32_t id) {
    if (id < 0) {
        return;
    }
    for (int i = 0; i < tok->n_end; i++) {
        if (tok->end[i] == id) {
            return;
        }
    }
    tok->end[tok->n_end++] = id;
}

/* A model's EOS is one of its end markers, not always the one it emits: a ChatML model
 * may end a turn with <|im_end|> and a text with <|endoftext|> whichever of them the
 * metadata names EOS, and Llama 3 ends a turn with <|eot_id|>.  A generator that stopped
 * at EOS alone would run past the end of the answer. */
static void build_end_tokens(tkv_tokenizer *tok, int32_t eot_id) {
    static const char *const markers[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>"};
    tok->n_end = 0;
    add_end_token(tok, tok->eos);
    add_end_token(tok, eot_id);
    for (size_t i = 0; i < sizeof markers / sizeof markers[0]; i++) {
        add_end_token(tok, tkv_tok_lookup(tok, markers[i], strlen(markers[i])));
    }
}

static tkv_status create(const tkv_tokenizer_desc *d, tkv_tokenizer *tok) {
    TKV_REQUIRE(d->model != NULL, TKV_ERR_INVALID_ARGUMENT, "tokenizer: model name is NULL");
    if (strcmp(d->model, "gpt2") == 0) {
        tok->kind = TKV_TOK_BPE;
        const char *pre = (d->pre && d->pre[0]) ? d->pre : "default";
        tok->pre = tkv_bpe_pre_from_name(pre);
        TKV_REQUIRE(tok->pre != 0, TKV_ERR_UNSUPPORTED,
                    "tokenizer: unknown pre-tokenizer \"%s\" (known: default, gpt2, smollm, "
                    "llama3, llama-bpe, llama-v3, qwen2)",
                    pre);
        tok->ignore_merges = tok->pre == TKV_PRE_LLAMA3;
    } else if (strcmp(d->model, "llama") == 0) {
        tok->kind = TKV_TOK_SPM;
    } else {
        return tkv_fail(TKV_ERR_UNSUPPORTED, "tokenizer: unknown model \"%s\" (known: gpt2, llama)",
                        d->model);
    }
    TKV_REQUIRE(d->tokens != NULL && d->n_tokens >= 1 && d->n_tokens <= INT32_MAX,
                TKV_ERR_INVALID_ARGUMENT, "tokenizer: %zu tokens (need 1..INT32_MAX)", d->n_tokens);
    TKV_REQUIRE(d->n_merges == 0 || d->merges != NULL, TKV_ERR_INVALID_ARGUMENT,
                "tokenizer: %zu merges but no merge array", d->n_merges);
    tok->n_vocab = (int32_t)d->n_tokens;
    TKV_TRY(check_id(d->bos_id, tok->n_vocab, "bos"));
    TKV_TRY(check_id(d->eos_id, tok->n_vocab, "eos"));
    TKV_TRY(check_id(d->unk_id, tok->n_vocab, "unk"));
    TKV_TRY(check_id(d->pad_id, tok->n_vocab, "pad"));
    TKV_TRY(check_id(d->eot_id, tok->n_vocab, "eot"));
    tok->bos = d->bos_id;
    tok->eos = d->eos_id;
    tok->unk = d->unk_id;
    tok->pad = d->pad_id;
    tok->add_bos = d->add_bos != 0;
    tok->add_space_prefix = d->add_space_prefix != 0;

    TKV_TRY(build_vocab(tok, d));
    TKV_TRY(build_specials(tok));
    build_end_tokens(tok, d->eot_id);
    if (tok->kind == TKV_TOK_BPE) {
        TKV_TRY(tkv_bpe_init(tok, d));
    } else {
        tkv_spm_init(tok);
    }
    return TKV_OK;
}

tkv_status tkv_tokenizer_create(const tkv_tokenizer_desc *desc, tkv_tokenizer **out) {
    TKV_REQUIRE(out != NULL, TKV_ERR_INVALID_ARGUMENT, "tkv_tokenizer_create: out is NULL");
    *out = NULL;
    TKV_REQUIRE(desc != NULL, TKV_ERR_INVALID_ARGUMENT, "tkv_tokenizer_create: desc is NULL");
    tkv_tokenizer *tok = calloc(1, sizeof *tok);
    TKV_REQUIRE(tok != NULL, TKV_ERR_OUT_OF_MEMORY, "tkv_tokenizer_create: out of memory");
    tkv_status st = create(desc, tok);
    if (st != TKV_OK) {
        tkv_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return TKV_OK;
}

void tkv_tokenizer_free(tkv_tokenizer *tok) {
    if (!tok) {
        return;
    }
    free(tok->text);
    free(tok->text_off);
    free(tok->text_len);
    free(tok->types);
    free(tok->scores);
    free(tok->vocab_slots);
    free(tok->merge_keys);
    free(tok->merge_rank);
    free(tok->merge_result);
    free(tok->special);
    free(tok);
}

/* Longest special token that starts text[0..len) and may be parsed, or -1. */
static int32_t match_special(const tkv_tokenizer *tok, const char *s, size_t len, int parse_special,
                             size_t *mlen) {
    unsigned char b = (unsigned char)s[0];
    for (uint32_t k = tok->special_first[b]; k < tok->special_first[b + 1]; k++) {
        int32_t id = tok->special[k];
        if (!parse_special && tok->types[id] != TKV_TOKEN_USER_DEFINED) {
            continue;
        }
        size_t l = tok->text_len[id];
        if (l <= len && memcmp(s, tok->text + tok->text_off[id], l) == 0) {
            *mlen = l;
            return id;
        }
    }
    return -1;
}

/* Byte-level BPE represents text through one symbol per byte; a byte the vocabulary has
 * no symbol for (byte-level vocabularies often lack 0xC0, 0xC1 and 0xF5..0xFF, which
 * never occur in valid UTF-8) cannot be encoded.  Hugging Face's BPE drops it silently;
 * here it is an error naming the byte, so no input is lost without notice. */
static tkv_status check_bytes(const tkv_tokenizer *tok, const char *text, size_t len,
                              size_t offset) {
    for (size_t i = 0; i < len; i++) {
        const unsigned char b = (unsigned char)text[i];
        TKV_REQUIRE(tok->byte_token[b] >= 0, TKV_ERR_INVALID_ARGUMENT,
                    "tokenizer: byte 0x%02X at offset %zu has no token in this vocabulary "
                    "(the text is not valid UTF-8?)",
                    b, offset + i);
    }
    return TKV_OK;
}

static tkv_status encode_fragment(const tkv_tokenizer *tok, const char *text, size_t len,
                                  size_t offset, int after_special, tkv_tok_out *out) {
    if (tok->kind == TKV_TOK_BPE) {
        TKV_TRY(check_bytes(tok, text, len, offset));
        return len ? tkv_bpe_encode(tok, text, len, out) : TKV_OK;
    }
    if (len == 0) {
        return TKV_OK;
    }
    return tkv_spm_encode(tok, text, len, tok->add_space_prefix && after_special, out);
}

tkv_status tkv_tokenizer_encode(const tkv_tokenizer *tok, const char *text, size_t len,
                                int parse_special, int32_t *out, size_t cap, size_t *n_out) {
    tkv_tok_out o = {out, out ? cap : 0, 0};
    size_t start = 0;
    size_t pos = 0;
    int after_special = 1; /* SPM: the start of the text counts as "after a special" */
    while (pos < len) {
        size_t mlen = 0;
        int32_t id =
            tok->n_special ? match_special(tok, text + pos, len - pos, parse_special, &mlen) : -1;
        if (id < 0) {
            pos++;
            continue;
        }
        TKV_TRY(encode_fragment(tok, text + start, pos - start, start, after_special, &o));
        tkv_tok_emit(&o, id);
        after_special = 1;
        pos += mlen;
        start = pos;
    }
    if (pos > start) {
        TKV_TRY(encode_fragment(tok, text + start, pos - start, start, after_special, &o));
    }
    if (n_out) {
        *n_out = o.n;
    }
    if (o.n > o.cap) {
        return tkv_fail(TKV_ERR_BUFFER_TOO_SMALL,
                        "tkv_tokenizer_encode: %zu ids needed, room for %zu", o.n, cap);
    }
    return TKV_OK;
}

/* Byte output of the two-call protocol. */
typedef struct byte_out {
    char *buf;
    size_t cap;
    size_t n;
} byte_out;

static void put_bytes(byte_out *o, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (o->n < o->cap) {
            o->buf[o->n] = s[i];
        }
        o->n++;
    }
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Append the piece of id.  While *strip_space is set, a U+2581 that starts an SPM piece is
 * dropped (undoing the prefix encode added); it is cleared once a byte is output or dropped. */
static void put_piece(const tkv_tokenizer *tok, int32_t id, int render_special, int *strip_space,
                      byte_out *o) {
    const char *s = tok->text + tok->text_off[id];
    size_t len = tok->text_len[id];
    int32_t type = tok->types[id];
    if (type == TKV_TOKEN_CONTROL || type == TKV_TOKEN_UNKNOWN) {
        if (render_special && len) {
            put_bytes(o, s, len);
            *strip_space = 0;
        }
        return;
    }
    if (type == TKV_TOKEN_USER_DEFINED || tok->kind == TKV_TOK_BPE) {
        *strip_space = 0;
    }
    if (type == TKV_TOKEN_USER_DEFINED) {
        put_bytes(o, s, len);
        return;
    }
    if (tok->kind == TKV_TOK_BPE) {
        size_t i = 0;
        while (i < len) {
            uint32_t cp;
            size_t l = tkv_utf8_decode((const unsigned char *)s + i, len - i, &cp);
            int b = tkv_bpe_symbol_byte(cp);
            if (b >= 0) {
                char c = (char)(unsigned char)b;
                put_bytes(o, &c, 1);
            } else {
                put_bytes(o, s + i, l); /* not a byte-level symbol: keep it as written */
            }
            i += l;
        }
        return;
    }
    if (type == TKV_TOKEN_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
        hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0) {
        char c = (char)(unsigned char)(hex_digit(s[3]) * 16 + hex_digit(s[4]));
        put_bytes(o, &c, 1);
        *strip_space = 0;
        return;
    }
    size_t i = 0;
    while (i < len) {
        if (len - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            if (!*strip_space) {
                put_bytes(o, " ", 1);
            }
            *strip_space = 0;
            i += 3;
        } else {
            *strip_space = 0;
            put_bytes(o, s + i, 1);
            i++;
        }
    }
}

static tkv_status finish_bytes(const byte_out *o, size_t cap, size_t *n_out, const char *fn) {
    if (n_out) {
        *n_out = o->n;
    }
    if (o->n > cap) {
        return tkv_fail(TKV_ERR_BUFFER_TOO_SMALL, "%s: %zu bytes needed, room for %zu", fn, o->n,
                        cap);
    }
    return TKV_OK;
}

tkv_status tkv_tokenizer_token_to_piece(const tkv_tokenizer *tok, int32_t id, int render_special,
                                        char *out, size_t cap, size_t *n_out) {
    TKV_REQUIRE(id >= 0 && id < tok->n_vocab, TKV_ERR_INVALID_ARGUMENT,
                "tkv_tokenizer_token_to_piece: id %d out of range (n_vocab %d)", (int)id,
                (int)tok->n_vocab);
    byte_out o = {out, out ? cap : 0, 0};
    int strip = 0;
    put_piece(tok, id, render_special, &strip, &o);
    return finish_bytes(&o, o.cap, n_out, "tkv_tokenizer_token_to_piece");
}

tkv_status tkv_tokenizer_decode(const tkv_tokenizer *tok, const int32_t *ids, size_t n,
                                int render_special, char *out, size_t cap, size_t *n_out) {
    byte_out o = {out, out ? cap : 0, 0};
    int strip = tok->kind == TKV_TOK_SPM && tok->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        TKV_REQUIRE(ids[i] >= 0 && ids[i] < tok->n_vocab, TKV_ERR_INVALID_ARGUMENT,
                    "tkv_tokenizer_decode: ids[%zu] = %d out of range (n_vocab %d)", i, (int)ids[i],
                    (int)tok->n_vocab);
        put_piece(tok, ids[i], render_special, &strip, &o);
    }
    return finish_bytes(&o, o.cap, n_out, "tkv_tokenizer_decode");
}

int32_t tkv_tokenizer_find(const tkv_tokenizer *tok, const char *text, size_t len) {
    return tkv_tok_lookup(tok, text, len);
}

int32_t tkv_tokenizer_n_vocab(const tkv_tokenizer *tok) {
    return tok->n_vocab;
}
int32_t tkv_tokenizer_bos(const tkv_tokenizer *tok) {
    return tok->bos;
}
int32_t tkv_tokenizer_eos(const tkv_tokenizer *tok) {
    return tok->eos;
}
int32_t tkv_tokenizer_unk(const tkv_tokenizer *tok) {
    return tok->unk;
}
int32_t tkv_tokenizer_pad(const tkv_tokenizer *tok) {
    return tok->pad;
}
int tkv_tokenizer_add_bos(const tkv_tokenizer *tok) {
    return tok->add_bos;
}

int tkv_tokenizer_is_end(const tkv_tokenizer *tok, int32_t id) {
    for (int i = 0; i < tok->n_end; i++) {
        if (tok->end[i] == id) {
            return 1;
        }
    }
    return 0;
}

int32_t tkv_tokenizer_token_type(const tkv_tokenizer *tok, int32_t id) {
    return (id >= 0 && id < tok->n_vocab) ? tok->types[id] : 0;
}

const char *tkv_tokenizer_token_text(const tkv_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_vocab) {
        return NULL;
    }
    if (len) {
        *len = tok->text_len[id];
    }
    return tok->text + tok->text_off[id];
}
