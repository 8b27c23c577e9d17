/* status.c - status names and the thread-local last-error message. */
#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define TKV_ERROR_CAPACITY 1024

static TKV_THREAD_LOCAL char tkv_error_text[TKV_ERROR_CAPACITY];

tkv_status tkv_fail(tkv_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tkv_error_text, sizeof tkv_error_text, fmt, ap);
    va_end(ap);
    return code;
}

void tkv_error_prefix(const char *fmt, ...) {
    char prefix[256];
    char old[TKV_ERROR_CAPACITY];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, tkv_error_text, sizeof old);
    /* the result is cut at the capacity: the start of a message matters most */
    size_t np = strlen(prefix);
    size_t no = strlen(old);
    if (np > TKV_ERROR_CAPACITY - 3) {
        np = TKV_ERROR_CAPACITY - 3;
    }
    if (no > TKV_ERROR_CAPACITY - 3 - np) {
        no = TKV_ERROR_CAPACITY - 3 - np;
    }
    memcpy(tkv_error_text, prefix, np);
    memcpy(tkv_error_text + np, ": ", 2);
    memcpy(tkv_error_text + np + 2, old, no);
    tkv_error_text[np + 2 + no] = '\0';
}

void tkv_error_clear(void) { tkv_error_text[0] = '\0'; }

const char *tkv_last_error(void) { return tkv_error_text; }

const char *tkv_status_name(tkv_status status) {
    switch (status) {
    case TKV_OK: return "TKV_OK";
    case TKV_ERR_INVALID_ARGUMENT: return "TKV_ERR_INVALID_ARGUMENT";
    case TKV_ERR_OUT_OF_MEMORY: return "TKV_ERR_OUT_OF_MEMORY";
    case TKV_ERR_IO: return "TKV_ERR_IO";
    case TKV_ERR_BAD_FORMAT: return "TKV_ERR_BAD_FORMAT";
    case TKV_ERR_UNSUPPORTED: return "TKV_ERR_UNSUPPORTED";
    case TKV_ERR_BUFFER_TOO_SMALL: return "TKV_ERR_BUFFER_TOO_SMALL";
    case TKV_ERR_CACHE_FULL: return "TKV_ERR_CACHE_FULL";
    case TKV_ERR_ABI: return "TKV_ERR_ABI";
    case TKV_ERR_INTERNAL: return "TKV_ERR_INTERNAL";
    case TKV_ERR_MISMATCH: return "TKV_ERR_MISMATCH";
    default: return "TKV_ERR_UNKNOWN";
    }
}

uint32_t tkv_version_number(void) { return TKV_VERSION_NUMBER; }

const char *tkv_version_string(void) { return TKV_VERSION_STRING; }
