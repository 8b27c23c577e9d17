/*
 * dispatch_tensor.c - picks the matmul kernel table once per process from the CPU features
 * (tkv_cpu_detect, which also checks that the OS saves the vector state) and TKV_ISA, by
 * the rule the codec dispatch uses (tkv_isa_choose).
 */
#include <pthread.h>
#include <string.h>

#include "base/cpu.h"
#include "tensor/matmul.h"

const char *const tkv_matmul_isa_names[] = {"scalar", "avx2", "avx512", "avx512vnni", NULL};

const tkv_matmul_kernels *tkv_matmul_kernels_for_isa(const char *isa) {
    if (isa == NULL) {
        return NULL;
    }
    if (strcmp(isa, "scalar") == 0) {
        return &tkv_matmul_kernels_scalar;
    }
#if defined(TKV_HAVE_X86_KERNELS)
    const uint32_t f = tkv_cpu_detect();
    if (strcmp(isa, "avx2") == 0 && (f & TKV_CPU_AVX2)) {
        return &tkv_matmul_kernels_avx2;
    }
    if (strcmp(isa, "avx512") == 0 && (f & TKV_CPU_AVX512)) {
        return &tkv_matmul_kernels_avx512;
    }
    if (strcmp(isa, "avx512vnni") == 0 && (f & TKV_CPU_AVX512) && (f & TKV_CPU_AVX512VNNI)) {
        return &tkv_matmul_kernels_avx512vnni;
    }
#endif
    return NULL;
}

static const tkv_matmul_kernels *tkv_matmul_chosen;
static pthread_once_t tkv_matmul_once = PTHREAD_ONCE_INIT;

static const void *tkv_matmul_table_for(const char *isa) {
    return tkv_matmul_kernels_for_isa(isa);
}

static void tkv_matmul_choose(void) {
    static const char *const isas[] = {"avx512vnni", "avx512", "avx2", "scalar"};
    tkv_matmul_chosen = tkv_isa_choose(isas, sizeof isas / sizeof isas[0], tkv_matmul_table_for);
}

const tkv_matmul_kernels *tkv_matmul_kernels_get(void) {
    pthread_once(&tkv_matmul_once, tkv_matmul_choose);
    return tkv_matmul_chosen;
}
