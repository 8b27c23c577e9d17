/* fuzz.h - what every libFuzzer target here shares: the entry point's prototype (the
 * library is built with -Wmissing-prototypes) and REQUIRE, which traps so libFuzzer
 * records a broken invariant as a finding, with its input. */
#ifndef TKV_TESTS_FUZZ_H
#define TKV_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#endif
