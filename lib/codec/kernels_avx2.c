/* kernels_avx2.c - avx2 codec kernels (being written: scalar entries for now). */
#include "codec/kernels.h"

const tkv_codec_kernels tkv_codec_kernels_avx2 = {
    .isa = "avx2",
    .scores = {tkv_scores_scalar, tkv_scores_scalar, tkv_scores_scalar, tkv_scores_scalar,
               tkv_scores_scalar, tkv_scores_scalar},
    .accum = {tkv_accum_scalar, tkv_accum_scalar, tkv_accum_scalar, tkv_accum_scalar,
              tkv_accum_scalar, tkv_accum_scalar},
    .fwht = tkv_fwht_scalar,
    .matvec = tkv_matvec_scalar,
    .matvec_t = tkv_matvec_t_scalar,
};
