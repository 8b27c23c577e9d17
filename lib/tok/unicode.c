/*
 * unicode.c - UTF-8 decoding and character classes for the pre-tokenizers.
 *
 * The classes come from lib/tok/unicode_tables.h (generated from Python's unicodedata by
 * lib/tok/gen_unicode_tables.py): sorted, non-overlapping inclusive ranges, looked up by
 * binary search.  ASCII, by far the most common input, takes a 128-entry table.
 */
#include "tok/unicode.h"

#include "tok/unicode_tables.h"

size_t tkv_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = TKV_UCP_INVALID; /* continuation byte, 0xC0/0xC1 or 0xF5.. */
        return 1;
    }
    if (n > len) {
        *cp = TKV_UCP_INVALID;
        return 1;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = TKV_UCP_INVALID;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = TKV_UCP_INVALID;
        return 1;
    }
    *cp = v;
    return n;
}

size_t tkv_utf8_encode(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static int in_ranges(const tkv_urange *r, size_t n, uint32_t cp) {
    size_t lo = 0;
    size_t hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo) {
            hi = mid;
        } else if (cp > r[mid].hi) {
            lo = mid + 1;
        } else {
            return 1;
        }
    }
    return 0;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

uint32_t tkv_unicode_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) {
            return TKV_UCLASS_LETTER;
        }
        if (cp >= '0' && cp <= '9') {
            return TKV_UCLASS_NUMBER;
        }
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) {
            return TKV_UCLASS_SPACE;
        }
        return 0;
    }
    if (in_ranges(tkv_uranges_letter, NELEM(tkv_uranges_letter), cp)) {
        return TKV_UCLASS_LETTER;
    }
    if (in_ranges(tkv_uranges_number, NELEM(tkv_uranges_number), cp)) {
        return TKV_UCLASS_NUMBER;
    }
    if (in_ranges(tkv_uranges_space, NELEM(tkv_uranges_space), cp)) {
        return TKV_UCLASS_SPACE;
    }
    return 0;
}
