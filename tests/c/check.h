/*
 * check.h - the tiny test harness of the C tests: no framework, just macros.
 * A failed CHECK prints file:line and the condition, counts the failure and goes on;
 * CHECK_MAIN_END prints "N passed, M failed" and returns non-zero on any failure.
 */
#ifndef TKV_TEST_CHECK_H
#define TKV_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int tkv_checks_passed;
static int tkv_checks_failed;

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (cond) {                                                             \
            tkv_checks_passed++;                                                \
        } else {                                                                \
            tkv_checks_failed++;                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                       \
    } while (0)

#define CHECK_MSG(cond, ...)                                                    \
    do {                                                                        \
        if (cond) {                                                             \
            tkv_checks_passed++;                                                \
        } else {                                                                \
            tkv_checks_failed++;                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                      \
    CHECK_MSG((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))

#define CHECK_NEAR(a, b, tol)                                                   \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (double)(tol), "%.9g vs %.9g (tol %.3g)", \
              (double)(a), (double)(b), (double)(tol))

/* status checks: print the library's message on failure */
#define CHECK_OK(expr)                                                          \
    do {                                                                        \
        tkv_status st_ = (expr);                                                \
        CHECK_MSG(st_ == TKV_OK, "%s -> %s: %s", #expr, tkv_status_name(st_),   \
                  tkv_last_error());                                            \
    } while (0)

#define CHECK_STATUS(expr, want)                                                \
    do {                                                                        \
        tkv_status st_ = (expr);                                                \
        CHECK_MSG(st_ == (want), "%s -> %s, wanted %s (%s)", #expr,             \
                  tkv_status_name(st_), tkv_status_name(want), tkv_last_error()); \
    } while (0)

#define CHECK_MAIN_END()                                                        \
    do {                                                                        \
        printf("%d passed, %d failed\n", tkv_checks_passed, tkv_checks_failed); \
        return tkv_checks_failed == 0 ? 0 : 1;                                  \
    } while (0)

#endif
