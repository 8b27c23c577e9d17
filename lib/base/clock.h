/* clock.h - the library's one clock, for the timings it reports. */
#ifndef TKV_BASE_CLOCK_H
#define TKV_BASE_CLOCK_H

#include <stdint.h>

/* Monotonic time in nanoseconds (CLOCK_MONOTONIC: not moved by changes of the wall
 * clock); only differences mean anything. */
uint64_t tkv_now_ns(void);

#endif
