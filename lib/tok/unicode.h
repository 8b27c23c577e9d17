/* unicode.h - UTF-8 decoding and the character classes the pre-tokenizers need. */
#ifndef TKV_TOK_UNICODE_H
#define TKV_TOK_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Class bits of a code point; 0 means "other" (punctuation, symbols, marks, controls). */
#define TKV_UCLASS_LETTER 1u /* \p{L} */
#define TKV_UCLASS_NUMBER 2u /* \p{N} */
#define TKV_UCLASS_SPACE 4u  /* \s (White_Space) */

/* Code point given to a byte that starts no valid UTF-8 sequence (class "other"). */
#define TKV_UCP_INVALID 0xFFFDu

/*
 * Decode one character of s[0..len) (len >= 1) into *cp and return its length in
 * bytes (1..4).  Overlong forms, surrogates, values past U+10FFFF and truncated
 * sequences are invalid: then the first byte alone is consumed, *cp is
 * TKV_UCP_INVALID and 1 is returned, so every byte string decodes without error.
 */
size_t tkv_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);

/* Encode cp (<= U+10FFFF) as UTF-8 into out (4 bytes of room); returns the length. */
size_t tkv_utf8_encode(uint32_t cp, unsigned char *out);

/* TKV_UCLASS_* bits of a code point (ASCII by table, the rest by binary search). */
uint32_t tkv_unicode_class(uint32_t cp);

#endif
