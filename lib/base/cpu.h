/* cpu.h - CPU feature detection (CPUID + OS support via XGETBV). */
#ifndef TKV_BASE_CPU_H
#define TKV_BASE_CPU_H

#include <stdint.h>

/* TKV_CPU_* bits; computed once, cached. */
uint32_t tkv_cpu_detect(void);

/* 1 if the CPU has AVX512_BF16 (vdpbf16ps) on top of TKV_CPU_AVX512; internal (the codec
 * dispatch uses it), not one of the public TKV_CPU_* bits. */
int tkv_cpu_has_avx512bf16(void);

#endif
