/*
 * persist.h - saving and loading caches and session state (the file format is in
 * lib/kv/kv_file.h and docs/PERSISTENCE.md).  Arguments are checked in lib/api.
 */
#ifndef TKV_SESSION_PERSIST_H
#define TKV_SESSION_PERSIST_H

#include "session/session.h"

/* Save the cache, and with s (may be NULL) the session state on top of it. */
tkv_status tkv_persist_save(const struct tkv_cache *c, const struct tkv_session *s, const char *path);
/* Read the cache sections of a file saved for model m into *kv (release it with
 * tkv_kv_release; nothing to release on failure); *hash identifies those sections for
 * tkv_persist_load_state. */
tkv_status tkv_persist_load_cache(struct tkv_model *m, const char *path, tkv_kv_cache *kv,
                                  float *sparse_v, uint64_t *hash);
/* Restore the session state of a file onto s, whose cache must hold what was loaded from
 * the same file, unchanged: the evaluated tokens, the last logits and the sampler's
 * generator.  TKV_ERR_INVALID_ARGUMENT when the file has no session state,
 * TKV_ERR_MISMATCH when the cache is not the one saved with it. */
tkv_status tkv_persist_load_state(struct tkv_session *s, const char *path);

/* Give dst the state of src (tokens, last logits, generator); dst's cache holds the same
 * positions (checked by the caller). */
void tkv_persist_copy_state(struct tkv_session *dst, const struct tkv_session *src);

#endif
