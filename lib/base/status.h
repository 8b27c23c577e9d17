/* status.h - internal error helpers: set the thread-local message and return a code. */
#ifndef TKV_BASE_STATUS_H
#define TKV_BASE_STATUS_H

#include "turbokv.h"

#if defined(_MSC_VER)
#  define TKV_THREAD_LOCAL __declspec(thread)
#else
#  define TKV_THREAD_LOCAL _Thread_local
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define TKV_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#  define TKV_PRINTF(fmt_idx, arg_idx)
#endif

/* Record a printf-style message as the calling thread's last error and return code. */
tkv_status tkv_fail(tkv_status code, const char *fmt, ...) TKV_PRINTF(2, 3);

/* Prefix the current last-error message with "prefix: " (for context from callers). */
void tkv_error_prefix(const char *fmt, ...) TKV_PRINTF(1, 2);

/* Clear the calling thread's message (used by tests). */
void tkv_error_clear(void);

#define TKV_TRY(expr)                 \
    do {                              \
        tkv_status s_ = (expr);       \
        if (s_ < 0) {                 \
            return s_;                \
        }                             \
    } while (0)

#define TKV_REQUIRE(cond, code, ...)             \
    do {                                         \
        if (!(cond)) {                           \
            return tkv_fail((code), __VA_ARGS__); \
        }                                        \
    } while (0)

#endif
