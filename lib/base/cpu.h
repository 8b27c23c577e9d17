/* cpu.h - CPU feature detection (CPUID + OS support via XGETBV). */
#ifndef TKV_BASE_CPU_H
#define TKV_BASE_CPU_H

#include <stdint.h>

/* TKV_CPU_* bits; computed once, cached. */
uint32_t tkv_cpu_detect(void);

#endif
