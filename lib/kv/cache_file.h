/*
 * cache_file.h - a cache's contents as sections of a saved-cache file (kv_file.h):
 * MODL (the model it belongs to), CODC (the codecs it uses), CONF (configuration and
 * per-layer codecs) and one LAYR per layer (positions, sinks, codes, window,
 * calibration blocks and statistics).  Layout in docs/PERSISTENCE.md.
 */
#ifndef TKV_KV_CACHE_FILE_H
#define TKV_KV_CACHE_FILE_H

#include <stdint.h>

#include "kv/cache.h"
#include "kv/kv_file.h"

/* Hash of what makes the bytes of codec `id` at head_dim d mean what they mean (the CODC
 * section, see cache_file.c): a saved cache is refused by a library whose hash differs. */
tkv_status tkv_kv_codec_definition_hash(int32_t id, uint32_t d, uint64_t *out);

/* What a file must match to be loaded for a model (the kv layer knows no model). */
typedef struct tkv_kv_model_id {
    uint64_t fingerprint; /* XXH64 of the model's GGUF file */
    uint32_t n_layer;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint32_t n_vocab;
    const char *name;
    const uint32_t *span; /* (n_layer) each layer's sliding window, 0 for a layer that sees
                             every position; NULL: no sliding layer.  A cache read for the
                             model gets its rings (tkv_kv_set_layer_span) from these. */
} tkv_kv_model_id;

/* Append the cache's sections to w (failures of w show in w->failed).  sparse_v: the
 * cache handle's sparse-V threshold, saved with the configuration. */
void tkv_kv_write(const tkv_kv_cache *c, const tkv_kv_model_id *model, float sparse_v,
                  tkv_wbuf *w);
/*
 * Read them from the payload cursor into *c (initialized here; tkv_kv_release it on
 * success, nothing to release on failure).  file_fingerprint and version: the header's
 * (TKV_KV_FILE_MIN_VERSION..TKV_KV_FILE_VERSION).  Returns
 * TKV_ERR_MISMATCH for another model, codec set or a configuration the model cannot
 * have, TKV_ERR_BAD_FORMAT for anything malformed (sizes, counts, non-finite values,
 * codes the encoders never write), each naming the section and field.
 */
tkv_status tkv_kv_read(tkv_rbuf *payload, const tkv_kv_model_id *model, uint64_t file_fingerprint,
                       uint32_t version, tkv_kv_cache *c, float *sparse_v);

#endif
