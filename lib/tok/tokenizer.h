/*
 * tokenizer.h - text <-> token ids from GGUF tokenizer metadata (internal API).
 *
 * Two models, as GGUF names them in tokenizer.ggml.model:
 *   "gpt2"   byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2): text is split by the regex
 *            of the pre-tokenizer named in tokenizer.ggml.pre, each piece's bytes are
 *            mapped to GPT-2's 256-symbol alphabet and merged by merge rank (bpe.c).
 *   "llama"  SentencePiece BPE (Llama 2, TinyLlama): spaces become U+2581, a leading
 *            U+2581 is added, adjacent symbols merge by highest score, unknown bytes fall
 *            back to <0xXX> tokens (spm.c).
 *
 * The tokenizer is built from plain arrays (what the GGUF reader hands over); it copies
 * everything it keeps, so the arrays may be freed after tkv_tokenizer_create returns.
 *
 * Thread-safety: a tkv_tokenizer is immutable after creation; any number of threads may
 * encode and decode with one at the same time (each call allocates its own scratch).
 */
#ifndef TKV_TOK_TOKENIZER_H
#define TKV_TOK_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "turbokv.h"

typedef struct tkv_tokenizer tkv_tokenizer;

/* Token types (tokenizer.ggml.token_type). */
#define TKV_TOKEN_NORMAL 1
#define TKV_TOKEN_UNKNOWN 2
#define TKV_TOKEN_CONTROL 3
#define TKV_TOKEN_USER_DEFINED 4
#define TKV_TOKEN_UNUSED 5
#define TKV_TOKEN_BYTE 6

typedef struct tkv_tokenizer_desc {
    const char *model;          /* tokenizer.ggml.model: "gpt2" or "llama" */
    const char *pre;            /* tokenizer.ggml.pre (BPE only); NULL or "" = "default" */
    size_t n_tokens;            /* vocabulary size, 1..INT32_MAX */
    const char *const *tokens;  /* (n_tokens) token texts, UTF-8 (any bytes accepted) */
    const size_t *token_lens;   /* (n_tokens) byte lengths, or NULL: texts NUL-terminated */
    const float *scores;        /* (n_tokens) SPM merge scores, or NULL (all 0) */
    const int32_t *token_types; /* (n_tokens) TKV_TOKEN_*, or NULL (all normal) */
    size_t n_merges;            /* BPE: number of merges, in rank order */
    const char *const *merges;  /* (n_merges) "left right" strings */
    const size_t *merge_lens;   /* (n_merges) byte lengths, or NULL: NUL-terminated */
    int32_t bos_id;             /* -1 when absent */
    int32_t eos_id;             /* -1 when absent */
    int32_t unk_id;             /* -1 when absent */
    int32_t pad_id;             /* -1 when absent */
    int32_t eot_id;             /* tokenizer.ggml.eot_token_id (end of turn); -1 when absent */
    int32_t add_bos;            /* tokenizer.ggml.add_bos_token: callers prepend BOS */
    int32_t add_space_prefix;   /* SPM: tokenizer.ggml.add_space_prefix (GGUF default 1) */
} tkv_tokenizer_desc;

/* Zero the desc, special ids -1, add_space_prefix 1 (the GGUF default when absent). */
void tkv_tokenizer_desc_init(tkv_tokenizer_desc *desc);

/*
 * Build a tokenizer.  Pre-tokenizers (BPE): "gpt2" and "default" (GPT-2 regex), "smollm"
 * (each digit alone, then the GPT-2 regex), "llama3"/"llama-bpe"/"llama-v3" (Llama 3
 * regex; a piece that is a whole token skips the merges), "qwen2" (Llama 3 regex with
 * single digits).
 * Returns TKV_OK and *out, or TKV_ERR_INVALID_ARGUMENT (NULL arrays, n_tokens out of
 * range), TKV_ERR_UNSUPPORTED (unknown model or pre-tokenizer), TKV_ERR_BAD_FORMAT
 * (special id out of range), TKV_ERR_OUT_OF_MEMORY; *out is NULL on failure.
 * Merges naming unknown tokens are ignored.
 */
tkv_status tkv_tokenizer_create(const tkv_tokenizer_desc *desc, tkv_tokenizer **out);

/* Free a tokenizer; NULL is a no-op. */
void tkv_tokenizer_free(tkv_tokenizer *tok);

/*
 * Encode len bytes of text (any bytes: invalid UTF-8 is encoded byte by byte) into ids.
 * Special tokens are cut out of the text first, leftmost then longest match: user-defined
 * tokens always, control and unknown tokens only when parse_special is non-zero.  No BOS
 * is added: callers prepend tkv_tokenizer_bos() when tkv_tokenizer_add_bos() says so.
 * Byte-level BPE rejects a byte whose symbol the vocabulary lacks (TKV_ERR_INVALID_ARGUMENT
 * naming its offset; Hugging Face's BPE drops it silently); SPM falls back to <0xXX>
 * tokens, then to unk.
 * Two-call protocol: *n_out is always the number of ids the text needs; when it exceeds
 * cap, the first cap ids are written and TKV_ERR_BUFFER_TOO_SMALL is returned (out may be
 * NULL when cap is 0).  Returns TKV_OK, TKV_ERR_BUFFER_TOO_SMALL or TKV_ERR_OUT_OF_MEMORY.
 */
tkv_status tkv_tokenizer_encode(const tkv_tokenizer *tok, const char *text, size_t len,
                                int parse_special, int32_t *out, size_t cap, size_t *n_out);

/*
 * UTF-8 bytes of one token: byte-level symbols mapped back to bytes, U+2581 to a space,
 * <0xXX> byte tokens to their byte, user-defined tokens as written.  Control and unknown
 * tokens give their text when render_special is non-zero, else nothing.  A piece may be
 * part of a UTF-8 character.  Same two-call protocol as encode (in bytes, no NUL added).
 * Returns TKV_OK, TKV_ERR_BUFFER_TOO_SMALL or TKV_ERR_INVALID_ARGUMENT (id out of range).
 */
tkv_status tkv_tokenizer_token_to_piece(const tkv_tokenizer *tok, int32_t id, int render_special,
                                        char *out, size_t cap, size_t *n_out);

/*
 * Concatenated pieces of n ids (see token_to_piece); for SPM with add_space_prefix the
 * space that starts the first piece is dropped, undoing the prefix encode added.
 * Same two-call protocol; returns TKV_ERR_INVALID_ARGUMENT for an id out of range.
 */
tkv_status tkv_tokenizer_decode(const tkv_tokenizer *tok, const int32_t *ids, size_t n,
                                int render_special, char *out, size_t cap, size_t *n_out);

/* Id of the token whose text is exactly text[0..len), or -1 (e.g. "<|im_start|>"). */
int32_t tkv_tokenizer_find(const tkv_tokenizer *tok, const char *text, size_t len);

int32_t tkv_tokenizer_n_vocab(const tkv_tokenizer *tok);
int32_t tkv_tokenizer_bos(const tkv_tokenizer *tok); /* -1 when absent */
int32_t tkv_tokenizer_eos(const tkv_tokenizer *tok);
int32_t tkv_tokenizer_unk(const tkv_tokenizer *tok);
int32_t tkv_tokenizer_pad(const tkv_tokenizer *tok);
int tkv_tokenizer_add_bos(const tkv_tokenizer *tok);

/* 1 when generation ends at id: EOS, the end-of-turn id of the metadata, or the end-of-turn
 * marker of a chat form the library knows (ChatML "<|im_end|>", Llama 3 "<|eot_id|>", and
 * "<|endoftext|>") when the vocabulary has it.  The one stop rule of every generator. */
int tkv_tokenizer_is_end(const tkv_tokenizer *tok, int32_t id);

/* TKV_TOKEN_* type of id, 0 when out of range. */
int32_t tkv_tokenizer_token_type(const tkv_tokenizer *tok, int32_t id);

/* Stored text of id (NUL-terminated, *len its length if len is non-NULL), NULL when out of
 * range.  Lifetime: valid until the tokenizer is freed. */
const char *tkv_tokenizer_token_text(const tkv_tokenizer *tok, int32_t id, size_t *len);

#endif
