/*
 * spm.c - SentencePiece BPE as GGUF "llama" tokenizers use it (Llama 2, TinyLlama).
 *
 * A stretch of plain text is encoded as:
 *   1. every space becomes U+2581 ("▁"); a leading U+2581 is added at the start of the text
 *      and after each special token when add_space_prefix is set;
 *   2. the text is split into UTF-8 characters (an invalid byte is a symbol of its own);
 *   3. repeatedly, among adjacent symbol pairs whose concatenation is a vocabulary token,
 *      the one whose token has the highest score is merged (leftmost on ties), using a
 *      linked list of symbols and a max-heap of candidate pairs; an entry is stale when
 *      either side changed length since it was pushed;
 *   4. each final symbol is its token; a symbol that is no token (a character missing from
 *      the vocabulary) falls back to the <0xXX> tokens of its bytes, or to unk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "tok/tok_impl.h"
#include "tok/unicode.h"

void tkv_spm_init(tkv_tokenizer *tok) {
    for (unsigned b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_token[b] = tkv_tok_lookup(tok, name, 6);
    }
}

typedef struct bigram {
    float score;
    int32_t left, right; /* symbol indices */
    size_t size;         /* bytes of left + right when pushed */
} bigram;

typedef struct spm_state {
    const tkv_tokenizer *tok;
    const char *buf; /* the escaped text */
    size_t *start;   /* (n symbols) byte offset in buf */
    size_t *len;     /* (n) byte length, 0 once merged away */
    int32_t *prev, *next;
    bigram *heap;
    size_t heap_n;
} spm_state;

static int bigram_before(const bigram *a, const bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void push_bigram(spm_state *st, int32_t left, int32_t right) {
    size_t size = st->len[left] + st->len[right];
    int32_t id = tkv_tok_lookup(st->tok, st->buf + st->start[left], size);
    if (id < 0) {
        return;
    }
    bigram e = {st->tok->scores[id], left, right, size};
    size_t i = st->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&e, &st->heap[parent])) {
            break;
        }
        st->heap[i] = st->heap[parent];
        i = parent;
    }
    st->heap[i] = e;
}

static bigram pop_bigram(spm_state *st) {
    bigram top = st->heap[0];
    bigram last = st->heap[--st->heap_n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= st->heap_n) {
            break;
        }
        if (child + 1 < st->heap_n && bigram_before(&st->heap[child + 1], &st->heap[child])) {
            child++;
        }
        if (!bigram_before(&st->heap[child], &last)) {
            break;
        }
        st->heap[i] = st->heap[child];
        i = child;
    }
    if (st->heap_n > 0) {
        st->heap[i] = last;
    }
    return top;
}

tkv_status tkv_spm_encode(const tkv_tokenizer *tok, const char *text, size_t len, int prefix_space,
                          tkv_tok_out *out) {
    TKV_REQUIRE(len <= (SIZE_MAX - 3) / 3 && len < INT32_MAX / 4, TKV_ERR_INVALID_ARGUMENT,
                "tokenizer: text of %zu bytes is too long", len);
    size_t cap = 3 * len + 3; /* every byte a space -> 3 bytes, plus the prefix */
    char *buf = malloc(cap);
    spm_state st = {tok, buf, NULL, NULL, NULL, NULL, NULL, 0};
    st.start = malloc(cap * sizeof *st.start);
    st.len = malloc(cap * sizeof *st.len);
    st.prev = malloc(cap * sizeof *st.prev);
    st.next = malloc(cap * sizeof *st.next);
    st.heap = malloc(3 * cap * sizeof *st.heap);
    tkv_status status = TKV_OK;
    if (!buf || !st.start || !st.len || !st.prev || !st.next || !st.heap) {
        status = tkv_fail(TKV_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu bytes", len);
        goto done;
    }

    size_t m = 0;
    if (prefix_space) {
        memcpy(buf, "\xE2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + m, "\xE2\x96\x81", 3);
            m += 3;
        } else {
            buf[m++] = text[i];
        }
    }

    size_t n = 0;
    for (size_t p = 0; p < m;) {
        uint32_t cp;
        size_t l = tkv_utf8_decode((const unsigned char *)buf + p, m - p, &cp);
        st.start[n] = p;
        st.len[n] = l;
        st.prev[n] = (int32_t)n - 1;
        st.next[n] = (int32_t)n + 1;
        n++;
        p += l;
    }
    if (n == 0) {
        goto done;
    }
    st.next[n - 1] = -1;
    for (size_t i = 0; i + 1 < n; i++) {
        push_bigram(&st, (int32_t)i, (int32_t)i + 1);
    }
    while (st.heap_n > 0) {
        bigram e = pop_bigram(&st);
        if (st.len[e.left] == 0 || st.len[e.right] == 0 || st.next[e.left] != e.right ||
            st.len[e.left] + st.len[e.right] != e.size) {
            continue; /* stale: a side was merged since this pair was pushed */
        }
        st.len[e.left] += st.len[e.right];
        st.len[e.right] = 0;
        st.next[e.left] = st.next[e.right];
        if (st.next[e.right] >= 0) {
            st.prev[st.next[e.right]] = e.left;
        }
        if (st.prev[e.left] >= 0) {
            push_bigram(&st, st.prev[e.left], e.left);
        }
        if (st.next[e.left] >= 0) {
            push_bigram(&st, e.left, st.next[e.left]);
        }
    }
    for (int32_t i = 0; i >= 0; i = st.next[i]) {
        int32_t id = tkv_tok_lookup(tok, buf + st.start[i], st.len[i]);
        if (id >= 0) {
            tkv_tok_emit(out, id);
            continue;
        }
        for (size_t k = 0; k < st.len[i]; k++) {
            int32_t b = tok->byte_token[(unsigned char)buf[st.start[i] + k]];
            if (b >= 0) {
                tkv_tok_emit(out, b);
            } else if (tok->unk >= 0) {
                tkv_tok_emit(out, tok->unk);
            }
        }
    }
done:
    free(buf);
    free(st.start);
    free(st.len);
    free(st.prev);
    free(st.next);
    free(st.heap);
    return status;
}
