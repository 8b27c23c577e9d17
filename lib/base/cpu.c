/*
 * cpu.c - which vector extensions this CPU has AND the OS saves.
 *
 * CPUID bits alone are not enough: an OS that does not enable the AVX / AVX-512
 * register state in XCR0 faults on the first such instruction.  We check
 * OSXSAVE, then XCR0 bits 1-2 (SSE/AVX state) for AVX2 and bits 5-7 (opmask,
 * ZMM_Hi256, Hi16_ZMM) for AVX-512.
 */
#include "base/cpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "turbokv.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t tkv_xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t tkv_cpu_detect_x86(void) {
    unsigned a, b, c, d;
    uint32_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        return 0;
    }
    const int has_osxsave = (c >> 27) & 1;
    const int has_fma = (c >> 12) & 1;
    const int has_f16c = (c >> 29) & 1;
    if (!has_osxsave) {
        return 0;
    }
    const uint64_t xcr0 = tkv_xgetbv0();
    const int os_avx = (xcr0 & 0x6) == 0x6;
    const int os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;
    if (__get_cpuid_max(0, 0) < 7) {
        return 0;
    }
    __cpuid_count(7, 0, a, b, c, d);
    const int has_avx2 = (b >> 5) & 1;
    const int has_avx512f = (b >> 16) & 1;
    const int has_avx512dq = (b >> 17) & 1;
    const int has_avx512bw = (b >> 30) & 1;
    const int has_avx512vl = (b >> 31) & 1;
    const int has_vbmi = (c >> 1) & 1;
    const int has_vnni = (c >> 11) & 1;
    if (os_avx && has_avx2 && has_fma && has_f16c) {
        f |= TKV_CPU_AVX2;
        if (os_avx512 && has_avx512f && has_avx512dq && has_avx512bw && has_avx512vl) {
            f |= TKV_CPU_AVX512;
            if (has_vnni) {
                f |= TKV_CPU_AVX512VNNI;
            }
            if (has_vbmi) {
                f |= TKV_CPU_AVX512VBMI;
            }
        }
    }
    return f;
}
#endif

static uint32_t tkv_cpu_flags;
static pthread_once_t tkv_cpu_once = PTHREAD_ONCE_INIT;

static void tkv_cpu_detect_once(void) {
#if defined(__x86_64__) || defined(__i386__)
    tkv_cpu_flags = tkv_cpu_detect_x86();
#elif defined(__aarch64__)
    tkv_cpu_flags = TKV_CPU_NEON;
#else
    tkv_cpu_flags = 0;
#endif
}

/* cached: under a hypervisor every CPUID exits to it (tens of microseconds), and kernels
 * ask per call */
uint32_t tkv_cpu_detect(void) {
    pthread_once(&tkv_cpu_once, tkv_cpu_detect_once);
    return tkv_cpu_flags;
}

int tkv_cpu_has_avx512bf16(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!(tkv_cpu_detect() & TKV_CPU_AVX512) || __get_cpuid_max(0, 0) < 7) {
        return 0;
    }
    __cpuid_count(7, 1, a, b, c, d);
    return (a >> 5) & 1;
#else
    return 0;
#endif
}

uint32_t tkv_cpu_features(void) { return tkv_cpu_detect(); }

const void *tkv_isa_choose(const char *const *isas, size_t n,
                           const void *(*table_for)(const char *isa)) {
    const char *want = getenv("TKV_ISA");
    size_t start = 0;
    for (size_t i = 0; want && i < n; i++) {
        if (strcmp(want, isas[i]) == 0) {
            start = i;
        }
    }
    for (size_t i = start; i < n; i++) {
        const void *table = table_for(isas[i]);
        if (table) {
            return table;
        }
    }
    return NULL;
}
