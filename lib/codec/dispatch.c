/*
 * dispatch.c - picks the codec kernel table once per process.
 *
 * The best table the CPU (and OS) can run wins; TKV_ISA=scalar|avx2|avx512 asks
 * for a lower one (tkv_isa_choose in lib/base/cpu.c, shared with the matmul dispatch).
 *
 * The avx2 / avx512 tables handed out are copies of the per-ISA tables with the entries
 * that need a finer feature check or live in their own files swapped in once: turbo scores
 * on int8 queries and value sums with int8 weights (kernels_turbo_avx2.c, and
 * kernels_turbo_avx512.c on CPUs with VNNI), bf16 value sums with AVX512_BF16 for the
 * layouts the int8 ones do not take.
 */
#include <pthread.h>
#include <string.h>

#include "base/cpu.h"
#include "codec/kernels.h"
#include "turbokv.h"

static const tkv_codec_kernels *tkv_active_kernels;
static pthread_once_t tkv_kernels_once = PTHREAD_ONCE_INIT;

#if defined(TKV_HAVE_X86_KERNELS)
static tkv_codec_kernels tkv_tuned_avx2, tkv_tuned_avx512;
static pthread_once_t tkv_tuned_once = PTHREAD_ONCE_INIT;

static void tkv_tuned_init(void) {
    const uint32_t f = tkv_cpu_detect();
    tkv_tuned_avx2 = tkv_codec_kernels_avx2;
    tkv_tuned_avx2.scores[TKV_FMT_TURBO] = tkv_scores_turbo_i8_avx2;
    tkv_tuned_avx2.scores_multi[TKV_FMT_TURBO] = tkv_scores_turbo_multi_i8_avx2;
    tkv_tuned_avx2.accum[TKV_FMT_TURBO] = tkv_accum_turbo_i8_avx2;
    tkv_tuned_avx2.accum_multi[TKV_FMT_TURBO] = tkv_accum_turbo_multi_i8_avx2;
    tkv_tuned_avx512 = tkv_codec_kernels_avx512;
    const int vnni = (f & TKV_CPU_AVX512) && (f & TKV_CPU_AVX512VNNI);
    tkv_tuned_avx512.scores[TKV_FMT_TURBO] =
        vnni ? tkv_scores_turbo_i8_vnni : tkv_scores_turbo_i8_avx2;
    tkv_tuned_avx512.scores_multi[TKV_FMT_TURBO] =
        vnni ? tkv_scores_turbo_multi_i8_vnni : tkv_scores_turbo_multi_i8_avx2;
    if (vnni && tkv_cpu_has_avx512bf16()) {
        tkv_tuned_avx512.accum[TKV_FMT_TURBO] = tkv_accum_turbo_i8_bf16;
        tkv_tuned_avx512.accum_multi[TKV_FMT_TURBO] = tkv_accum_turbo_multi_i8_bf16;
    } else if (vnni) {
        tkv_tuned_avx512.accum[TKV_FMT_TURBO] = tkv_accum_turbo_i8_vnni;
        tkv_tuned_avx512.accum_multi[TKV_FMT_TURBO] = tkv_accum_turbo_multi_i8_vnni;
    } else if (tkv_cpu_has_avx512bf16()) {
        tkv_tuned_avx512.accum[TKV_FMT_TURBO] = tkv_accum_turbo_bf16;
        tkv_tuned_avx512.accum_multi[TKV_FMT_TURBO] = tkv_accum_turbo_multi_bf16;
    }
}
#endif

const tkv_codec_kernels *tkv_codec_kernels_for_isa(const char *isa) {
    if (!isa) {
        return NULL;
    }
    if (strcmp(isa, "scalar") == 0) {
        return &tkv_codec_kernels_scalar;
    }
#if defined(TKV_HAVE_X86_KERNELS)
    const uint32_t f = tkv_cpu_detect();
    pthread_once(&tkv_tuned_once, tkv_tuned_init);
    if (strcmp(isa, "avx2") == 0 && (f & TKV_CPU_AVX2)) {
        return &tkv_tuned_avx2;
    }
    if (strcmp(isa, "avx512") == 0 && (f & TKV_CPU_AVX512)) {
        return &tkv_tuned_avx512;
    }
#endif
    return NULL;
}

static const void *tkv_codec_table_for(const char *isa) {
    return tkv_codec_kernels_for_isa(isa);
}

static void tkv_kernels_choose(void) {
    static const char *const isas[] = {"avx512", "avx2", "scalar"};
    tkv_active_kernels = tkv_isa_choose(isas, sizeof isas / sizeof isas[0], tkv_codec_table_for);
}

const tkv_codec_kernels *tkv_codec_kernels_active(void) {
    pthread_once(&tkv_kernels_once, tkv_kernels_choose);
    return tkv_active_kernels;
}

const char *tkv_kernel_isa(void) { return tkv_codec_kernels_active()->isa; }
