/* cpu.h - CPU feature detection (CPUID + OS support via XGETBV) and the ISA choice of
 * the kernel dispatchers. */
#ifndef TKV_BASE_CPU_H
#define TKV_BASE_CPU_H

#include <stddef.h>
#include <stdint.h>

/* TKV_CPU_* bits; computed once, cached. */
uint32_t tkv_cpu_detect(void);

/* 1 if the CPU has AVX512_BF16 (vdpbf16ps) on top of TKV_CPU_AVX512; internal (the codec
 * dispatch uses it), not one of the public TKV_CPU_* bits. */
int tkv_cpu_has_avx512bf16(void);

/*
 * The one ISA choice of the kernel dispatchers (codec and tensor).  isas: the n ISA names
 * of a kernel family, best first, the last one portable; table_for(name): that family's
 * table for the ISA, NULL when this CPU cannot run it.  Returns the table of the first ISA
 * that runs here, trying from the one the environment variable TKV_ISA names downwards
 * (from the best when TKV_ISA is unset or names none of them), so a request above what the
 * CPU has falls back instead of faulting on an illegal instruction.
 */
const void *tkv_isa_choose(const char *const *isas, size_t n,
                           const void *(*table_for)(const char *isa));

#endif
