/* tok_impl.h - the tokenizer object shared by tokenizer.c, bpe.c and spm.c (private). */
#ifndef TKV_TOK_IMPL_H
#define TKV_TOK_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tok/tokenizer.h"

enum { TKV_TOK_BPE = 1, TKV_TOK_SPM = 2 };

/* Pre-tokenizer regexes of the byte-level BPE (see bpe.c). */
enum { TKV_PRE_GPT2 = 1, TKV_PRE_SMOLLM, TKV_PRE_LLAMA3, TKV_PRE_QWEN2 };

struct tkv_tokenizer {
    int32_t kind; /* TKV_TOK_BPE or TKV_TOK_SPM */
    int32_t pre;  /* TKV_PRE_* (BPE) */
    int32_t n_vocab;
    int32_t bos, eos, unk, pad; /* -1 when absent */
    int32_t end[5];             /* tokens that end a generation (tkv_tokenizer_is_end) */
    int n_end;
    int add_bos;
    int add_space_prefix; /* SPM */
    int ignore_merges;    /* BPE: a piece that is a whole token is emitted as is */

    char *text;         /* token texts back to back, each NUL-terminated */
    size_t *text_off;   /* (n_vocab) offset of each text in `text` */
    uint32_t *text_len; /* (n_vocab) byte length */
    int32_t *types;     /* (n_vocab) TKV_TOKEN_* */
    float *scores;      /* (n_vocab) SPM scores */

    int32_t *vocab_slots; /* open-addressing table text -> id, -1 = empty */
    size_t vocab_mask;    /* slots - 1 (power of two) */

    uint64_t *merge_keys;  /* BPE: open-addressing table (left << 32 | right) -> rank */
    int32_t *merge_rank;   /* -1 = empty slot */
    int32_t *merge_result; /* id of the merged token */
    size_t merge_mask;

    int32_t byte_token[256]; /* BPE: token of each byte's symbol; SPM: <0xXX>; -1 absent */

    int32_t *special; /* control / user-defined / unknown ids with non-empty text,
                         sorted by first byte, then longest first */
    size_t n_special;
    uint32_t special_first[257]; /* special[special_first[b] .. special_first[b+1]) start
                                    with byte b */
};

/* Growing id output of the two-call protocol: counts every id, stores the first cap. */
typedef struct tkv_tok_out {
    int32_t *ids;
    size_t cap;
    size_t n;
} tkv_tok_out;

static inline void tkv_tok_emit(tkv_tok_out *o, int32_t id) {
    if (o->n < o->cap) {
        o->ids[o->n] = id;
    }
    o->n++;
}

/* Id of the token with exactly this text, or -1. */
int32_t tkv_tok_lookup(const tkv_tokenizer *tok, const char *s, size_t len);

/* BPE (bpe.c): pre-tokenizer id of a name (0 if unknown), merge table, encoding, and the
 * byte-level alphabet. */
int32_t tkv_bpe_pre_from_name(const char *name);
tkv_status tkv_bpe_init(tkv_tokenizer *tok, const tkv_tokenizer_desc *desc);
tkv_status tkv_bpe_encode(const tkv_tokenizer *tok, const char *text, size_t len, tkv_tok_out *out);
/* Split text into the pieces of pre-tokenizer pre (TKV_PRE_*), calling fn on each in order;
 * stops at and returns the first failure of fn. */
typedef tkv_status (*tkv_piece_fn)(void *ctx, const char *piece, size_t len);
tkv_status tkv_bpe_pretokenize(int32_t pre, const char *text, size_t len, tkv_piece_fn fn,
                               void *ctx);
/* Byte of a byte-level symbol code point, or -1 if cp is not one of the 256 symbols. */
int tkv_bpe_symbol_byte(uint32_t cp);

/* SPM (spm.c): byte fallback table and the encoding of one fragment of raw text.
 * prefix_space: add the leading U+2581 (start of text or after a special token). */
void tkv_spm_init(tkv_tokenizer *tok);
tkv_status tkv_spm_encode(const tkv_tokenizer *tok, const char *text, size_t len, int prefix_space,
                          tkv_tok_out *out);

#endif
