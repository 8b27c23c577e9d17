/*
 * bpe.c - GPT-2 style byte-level BPE ("gpt2" in tokenizer.ggml.model).
 *
 * Encoding a stretch of plain text:
 *   1. decode it into code points with their classes (unicode.c; an invalid byte is one
 *      "other" character);
 *   2. split it into pieces with the regex of the pre-tokenizer, hand-written below as one
 *      matcher per regex that returns where the match starting at a position ends;
 *   3. map each piece's bytes to GPT-2's byte-level alphabet (printable Latin-1 bytes stand
 *      for themselves, the other 68 bytes for U+0100..U+0143 in byte order);
 *   4. merge adjacent symbols, always the pair of lowest merge rank first (leftmost on
 *      ties), with a doubly linked list of symbols and a binary heap of candidate pairs;
 *      stale heap entries are recognised and skipped when popped.  O(n log n) per piece.
 *
 * The regexes (alternatives tried in order, first match wins):
 *   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   qwen2   llama3 with \p{N} instead of \p{N}{1,3}
 *   smollm  every \p{N} character is a piece of its own (HF Digits(individual_digits));
 *           the gpt2 regex runs on each stretch in between (HF ByteLevel), so its
 *           lookahead stops at a digit.
 * "(?i:...)" is ASCII case folding here.
 */
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tok/tok_impl.h"
#include "tok/unicode.h"

/* ---- byte-level alphabet ------------------------------------------------------------ */

static uint32_t byte_to_symbol(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) {
        return b;
    }
    if (b <= 32) {
        return 256 + b; /* 0..32 -> U+0100..U+0120 */
    }
    if (b >= 127 && b <= 160) {
        return b + 162; /* 127..160 -> U+0121..U+0142 */
    }
    return 323; /* 173 (soft hyphen) -> U+0143 */
}

int tkv_bpe_symbol_byte(uint32_t cp) {
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) {
        return (int)cp;
    }
    if (cp >= 256 && cp <= 288) {
        return (int)(cp - 256);
    }
    if (cp >= 289 && cp <= 322) {
        return (int)(cp - 162);
    }
    if (cp == 323) {
        return 173;
    }
    return -1;
}

int32_t tkv_bpe_pre_from_name(const char *name) {
    static const struct {
        const char *name;
        int32_t pre;
    } names[] = {
        {"default", TKV_PRE_GPT2},  {"gpt2", TKV_PRE_GPT2},        {"smollm", TKV_PRE_SMOLLM},
        {"llama3", TKV_PRE_LLAMA3}, {"llama-bpe", TKV_PRE_LLAMA3}, {"llama-v3", TKV_PRE_LLAMA3},
        {"qwen2", TKV_PRE_QWEN2},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name) == 0) {
            return names[i].pre;
        }
    }
    return 0;
}

/* ---- merge table: (left id, right id) -> (rank, merged id) ----------------------------- */

static size_t pair_hash(uint64_t key) {
    key ^= key >> 31;
    key *= 0x9E3779B97F4A7C15ull;
    key ^= key >> 29;
    return (size_t)key;
}

static int merge_find(const tkv_tokenizer *tok, int32_t left, int32_t right, int32_t *rank,
                      int32_t *result) {
    if (!tok->merge_keys || left < 0 || right < 0) {
        return 0;
    }
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = pair_hash(key) & tok->merge_mask;
    while (tok->merge_rank[i] >= 0) {
        if (tok->merge_keys[i] == key) {
            *rank = tok->merge_rank[i];
            *result = tok->merge_result[i];
            return 1;
        }
        i = (i + 1) & tok->merge_mask;
    }
    return 0;
}

/* Split "left right" at the space that separates the two tokens.  Byte-level tokens
 * contain no raw space, so the first space after the first byte is the separator. */
static const char *merge_split(const char *s, size_t len) {
    for (size_t i = 1; i + 1 < len; i++) {
        if (s[i] == ' ') {
            return s + i;
        }
    }
    return NULL;
}

tkv_status tkv_bpe_init(tkv_tokenizer *tok, const tkv_tokenizer_desc *d) {
    for (unsigned b = 0; b < 256; b++) {
        unsigned char u[4];
        size_t l = tkv_utf8_encode(byte_to_symbol(b), u);
        tok->byte_token[b] = tkv_tok_lookup(tok, (const char *)u, l);
    }
    if (d->n_merges == 0) {
        return TKV_OK;
    }
    TKV_REQUIRE(d->n_merges <= INT32_MAX, TKV_ERR_INVALID_ARGUMENT,
                "tokenizer: %zu merges (at most INT32_MAX)", d->n_merges);
    size_t slots = 16;
    while (slots < 2 * d->n_merges) {
        slots *= 2;
    }
    tok->merge_keys = malloc(slots * sizeof *tok->merge_keys);
    tok->merge_rank = malloc(slots * sizeof *tok->merge_rank);
    tok->merge_result = malloc(slots * sizeof *tok->merge_result);
    size_t cat_cap = 256;
    char *cat = malloc(cat_cap);
    if (!tok->merge_keys || !tok->merge_rank || !tok->merge_result || !cat) {
        free(cat);
        return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu merges",
                        d->n_merges);
    }
    tok->merge_mask = slots - 1;
    memset(tok->merge_rank, 0xff, slots * sizeof *tok->merge_rank);

    for (size_t r = 0; r < d->n_merges; r++) {
        const char *s = d->merges[r];
        if (!s) {
            continue;
        }
        size_t len = d->merge_lens ? d->merge_lens[r] : strlen(s);
        const char *sp = merge_split(s, len);
        if (!sp) {
            continue;
        }
        size_t ll = (size_t)(sp - s);
        size_t rl = len - ll - 1;
        int32_t left = tkv_tok_lookup(tok, s, ll);
        int32_t right = tkv_tok_lookup(tok, sp + 1, rl);
        if (ll + rl > cat_cap) {
            char *bigger = realloc(cat, ll + rl);
            if (!bigger) {
                free(cat);
                return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
            }
            cat = bigger;
            cat_cap = ll + rl;
        }
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t merged = tkv_tok_lookup(tok, cat, ll + rl);
        if (left < 0 || right < 0 || merged < 0) {
            continue; /* a merge naming an unknown token can never apply */
        }
        uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
        size_t i = pair_hash(key) & tok->merge_mask;
        while (tok->merge_rank[i] >= 0 && tok->merge_keys[i] != key) {
            i = (i + 1) & tok->merge_mask;
        }
        if (tok->merge_rank[i] < 0) { /* a repeated pair keeps its first (lowest) rank */
            tok->merge_keys[i] = key;
            tok->merge_rank[i] = (int32_t)r;
            tok->merge_result[i] = merged;
        }
    }
    free(cat);
    return TKV_OK;
}

/* ---- pre-tokenizer regexes ------------------------------------------------------------ */

/* The decoded text: code points, their TKV_UCLASS_* bits and byte offsets (n + 1). */
typedef struct chars {
    uint32_t *cp;
    uint8_t *cls;
    size_t *off;
    size_t n;
} chars;

static size_t run_of(const chars *c, size_t i, size_t end, uint32_t cls) {
    while (i < end && c->cls[i] == cls) {
        i++;
    }
    return i;
}

static int is_crlf(uint32_t cp) {
    return cp == '\r' || cp == '\n';
}

/* 's 't 're 've 'm 'll 'd at i (which holds an apostrophe); returns the end or 0. */
static size_t contraction(const chars *c, size_t i, size_t end, int fold) {
    if (i + 1 >= end) {
        return 0;
    }
    uint32_t a = c->cp[i + 1];
    if (fold && a >= 'A' && a <= 'Z') {
        a += 'a' - 'A';
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        return i + 2;
    }
    if (i + 2 >= end) {
        return 0;
    }
    uint32_t b = c->cp[i + 2];
    if (fold && b >= 'A' && b <= 'Z') {
        b += 'a' - 'A';
    }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        return i + 3;
    }
    return 0;
}

/* \s+(?!\S)|\s+ at i (a space character): the run, minus its last character when a
 * non-space follows and the run is longer than one. */
static size_t space_run(const chars *c, size_t i, size_t end) {
    size_t k = run_of(c, i, end, TKV_UCLASS_SPACE);
    if (k == end || k - i < 2) {
        return k;
    }
    return k - 1;
}

/* End of the GPT-2 regex match at i, the match confined to [i, end). */
static size_t match_gpt2(const chars *c, size_t i, size_t end) {
    if (c->cp[i] == '\'') {
        size_t k = contraction(c, i, end, 0);
        if (k) {
            return k;
        }
    }
    size_t j = (c->cp[i] == ' ' && i + 1 < end) ? i + 1 : i; /* the optional leading space */
    switch (c->cls[j]) {
    case TKV_UCLASS_LETTER:
        return run_of(c, j, end, TKV_UCLASS_LETTER);
    case TKV_UCLASS_NUMBER:
        return run_of(c, j, end, TKV_UCLASS_NUMBER);
    case 0:
        return run_of(c, j, end, 0);
    default:
        return space_run(c, i, end); /* c[i] is a space character */
    }
}

/* End of the Llama 3 (max_digits 3) or Qwen2 (max_digits 1) regex match at i. */
static size_t match_llama3(const chars *c, size_t i, size_t end, size_t max_digits) {
    uint32_t cp = c->cp[i];
    uint32_t cl = c->cls[i];
    if (cp == '\'') {
        size_t k = contraction(c, i, end, 1);
        if (k) {
            return k;
        }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (cl == TKV_UCLASS_LETTER) {
        return run_of(c, i, end, TKV_UCLASS_LETTER);
    }
    if (cl != TKV_UCLASS_NUMBER && !is_crlf(cp) && i + 1 < end &&
        c->cls[i + 1] == TKV_UCLASS_LETTER) {
        return run_of(c, i + 1, end, TKV_UCLASS_LETTER);
    }
    /* \p{N}{1,max} */
    if (cl == TKV_UCLASS_NUMBER) {
        size_t k = i;
        while (k < end && k - i < max_digits && c->cls[k] == TKV_UCLASS_NUMBER) {
            k++;
        }
        return k;
    }
    /* ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t j = (cp == ' ' && i + 1 < end) ? i + 1 : i;
    if (c->cls[j] == 0) {
        size_t k = run_of(c, j, end, 0);
        while (k < end && is_crlf(c->cp[k])) {
            k++;
        }
        return k;
    }
    /* c[i] is a space character: \s*[\r\n]+ ends at the run's last CR/LF, if any */
    size_t k = run_of(c, i, end, TKV_UCLASS_SPACE);
    for (size_t t = k; t > i; t--) {
        if (is_crlf(c->cp[t - 1])) {
            return t;
        }
    }
    return space_run(c, i, end);
}

/* ---- merges ----------------------------------------------------------------------------- */

typedef struct pair_entry {
    int32_t rank;
    int32_t left, right;       /* symbol indices */
    int32_t left_id, right_id; /* their ids when pushed: a mismatch later marks it stale */
    int32_t merged;            /* id of left + right */
} pair_entry;

typedef struct scratch {
    char *mapped; /* a piece in the byte-level alphabet (2 bytes per byte at most) */
    int32_t *id;  /* per symbol: token id, -2 once merged into its left neighbour */
    int32_t *prev, *next;
    pair_entry *heap;
    size_t heap_n;
    size_t cap; /* bytes of the longest piece the arrays hold */
} scratch;

static tkv_status scratch_reserve(scratch *s, size_t n) {
    if (n <= s->cap) {
        return TKV_OK;
    }
    size_t cap = n < 64 ? 64 : n;
    void *p;
    if (!(p = realloc(s->mapped, 2 * cap))) {
        goto oom;
    }
    s->mapped = p;
    if (!(p = realloc(s->id, cap * sizeof *s->id))) {
        goto oom;
    }
    s->id = p;
    if (!(p = realloc(s->prev, cap * sizeof *s->prev))) {
        goto oom;
    }
    s->prev = p;
    if (!(p = realloc(s->next, cap * sizeof *s->next))) {
        goto oom;
    }
    s->next = p;
    if (!(p = realloc(s->heap, 3 * cap * sizeof *s->heap))) {
        goto oom;
    }
    s->heap = p;
    s->cap = cap;
    return TKV_OK;
oom:
    return tkv_fail(TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for a %zu-byte piece", n);
}

static void scratch_free(scratch *s) {
    free(s->mapped);
    free(s->id);
    free(s->prev);
    free(s->next);
    free(s->heap);
}

static int entry_before(const pair_entry *a, const pair_entry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(scratch *s, const tkv_tokenizer *tok, int32_t left, int32_t right) {
    pair_entry e;
    if (!merge_find(tok, s->id[left], s->id[right], &e.rank, &e.merged)) {
        return;
    }
    e.left = left;
    e.right = right;
    e.left_id = s->id[left];
    e.right_id = s->id[right];
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!entry_before(&e, &s->heap[parent])) {
            break;
        }
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = e;
}

static pair_entry heap_pop(scratch *s) {
    pair_entry top = s->heap[0];
    pair_entry last = s->heap[--s->heap_n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= s->heap_n) {
            break;
        }
        if (child + 1 < s->heap_n && entry_before(&s->heap[child + 1], &s->heap[child])) {
            child++;
        }
        if (!entry_before(&s->heap[child], &last)) {
            break;
        }
        s->heap[i] = s->heap[child];
        i = child;
    }
    if (s->heap_n > 0) {
        s->heap[i] = last;
    }
    return top;
}

/* BPE of one piece of n bytes. */
static tkv_status encode_piece(const tkv_tokenizer *tok, const unsigned char *b, size_t n,
                               scratch *s, tkv_tok_out *out) {
    TKV_REQUIRE(n <= INT32_MAX, TKV_ERR_INVALID_ARGUMENT, "tokenizer: piece of %zu bytes", n);
    TKV_TRY(scratch_reserve(s, n));
    if (tok->ignore_merges) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            m += tkv_utf8_encode(byte_to_symbol(b[i]), (unsigned char *)s->mapped + m);
        }
        int32_t whole = tkv_tok_lookup(tok, s->mapped, m);
        if (whole >= 0) {
            tkv_tok_emit(out, whole);
            return TKV_OK;
        }
    }
    /* Bytes without a symbol in the vocabulary were rejected by the caller (tokenizer.c);
     * skipping them here keeps the merge loop from ever seeing id -1. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (tok->byte_token[b[i]] >= 0) {
            s->id[k++] = tok->byte_token[b[i]];
        }
    }
    n = k;
    if (n == 0) {
        return TKV_OK;
    }
    for (size_t i = 0; i < n; i++) {
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        heap_push(s, tok, (int32_t)i, (int32_t)i + 1);
    }
    while (s->heap_n > 0) {
        pair_entry e = heap_pop(s);
        if (s->id[e.left] != e.left_id || s->next[e.left] != e.right ||
            s->id[e.right] != e.right_id) {
            continue; /* one side was merged since this pair was pushed */
        }
        s->id[e.left] = e.merged;
        s->id[e.right] = -2;
        s->next[e.left] = s->next[e.right];
        if (s->next[e.right] >= 0) {
            s->prev[s->next[e.right]] = e.left;
        }
        if (s->prev[e.left] >= 0) {
            heap_push(s, tok, s->prev[e.left], e.left);
        }
        if (s->next[e.left] >= 0) {
            heap_push(s, tok, e.left, s->next[e.left]);
        }
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        tkv_tok_emit(out, s->id[i]);
    }
    return TKV_OK;
}

/* ---- encoding --------------------------------------------------------------------------- */

static tkv_status split_range(int32_t pre, const char *text, const chars *c, size_t a, size_t end,
                              tkv_piece_fn fn, void *ctx) {
    while (a < end) {
        size_t k;
        switch (pre) {
        case TKV_PRE_LLAMA3:
            k = match_llama3(c, a, end, 3);
            break;
        case TKV_PRE_QWEN2:
            k = match_llama3(c, a, end, 1);
            break;
        default:
            k = match_gpt2(c, a, end);
            break;
        }
        TKV_TRY(fn(ctx, text + c->off[a], c->off[k] - c->off[a]));
        a = k;
    }
    return TKV_OK;
}

tkv_status tkv_bpe_pretokenize(int32_t pre, const char *text, size_t len, tkv_piece_fn fn,
                               void *ctx) {
    chars c = {0};
    tkv_status st = TKV_OK;
    c.cp = malloc(len * sizeof *c.cp + 1);
    c.cls = malloc(len + 1);
    c.off = malloc((len + 1) * sizeof *c.off);
    if (!c.cp || !c.cls || !c.off) {
        st = tkv_fail(TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu bytes", len);
        goto done;
    }
    for (size_t p = 0; p < len;) {
        size_t l = tkv_utf8_decode((const unsigned char *)text + p, len - p, &c.cp[c.n]);
        c.cls[c.n] = (uint8_t)tkv_unicode_class(c.cp[c.n]);
        c.off[c.n++] = p;
        p += l;
    }
    c.off[c.n] = len;

    if (pre == TKV_PRE_SMOLLM) {
        size_t a = 0;
        while (a < c.n && st == TKV_OK) {
            size_t end = a + 1; /* a digit is a piece of its own */
            if (c.cls[a] != TKV_UCLASS_NUMBER) {
                while (end < c.n && c.cls[end] != TKV_UCLASS_NUMBER) {
                    end++;
                }
            }
            st = split_range(pre, text, &c, a, end, fn, ctx);
            a = end;
        }
    } else {
        st = split_range(pre, text, &c, 0, c.n, fn, ctx);
    }
done:
    free(c.cp);
    free(c.cls);
    free(c.off);
    return st;
}

typedef struct encode_ctx {
    const tkv_tokenizer *tok;
    scratch s;
    tkv_tok_out *out;
} encode_ctx;

static tkv_status encode_piece_cb(void *ctx, const char *piece, size_t len) {
    encode_ctx *e = ctx;
    return encode_piece(e->tok, (const unsigned char *)piece, len, &e->s, e->out);
}

tkv_status tkv_bpe_encode(const tkv_tokenizer *tok, const char *text, size_t len,
                          tkv_tok_out *out) {
    encode_ctx e = {tok, {0}, out};
    tkv_status st = tkv_bpe_pretokenize(tok->pre, text, len, encode_piece_cb, &e);
    scratch_free(&e.s);
    return st;
}
