"""The ctypes binding of libturbokv: the only module that imports ctypes.

Each binding is preceded by its C prototype.  Opaque handles are ``c_void_p``.
The library is found next to this file (installed wheel) or through the
``TURBOKV_LIBRARY`` environment variable (a build tree, for development).
"""
from __future__ import annotations

import ctypes
import os
import sys
from ctypes import (POINTER, Structure, c_char_p, c_float, c_int32, c_int64, c_size_t,
                    c_uint32, c_uint64, c_void_p)
from importlib import resources

from ._errors import STATUS_ERRORS, TurboKVError

#: The major version of the C ABI this package was written for.
ABI_MAJOR = 0


def _library_path() -> str:
    override = os.environ.get("TURBOKV_LIBRARY")
    if override:
        return override
    if sys.platform == "darwin":
        name = "libturbokv.dylib"
    elif sys.platform == "win32":
        name = "turbokv.dll"
    else:
        name = "libturbokv.so"
    return str(resources.files("turbokv").joinpath(name))


def _load() -> ctypes.CDLL:
    path = _library_path()
    try:
        return ctypes.CDLL(path)
    except OSError as exc:
        raise ImportError(
            f"turbokv: cannot load the C library at {path!r} ({exc}). Install the package with "
            "'pip install .' or point TURBOKV_LIBRARY at a built libturbokv.so"
        ) from exc


lib = _load()


def _bind(name: str, restype, argtypes: list) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes


# uint32_t tkv_version_number(void);
_bind("tkv_version_number", c_uint32, [])
# const char *tkv_version_string(void);
_bind("tkv_version_string", c_char_p, [])
# const char *tkv_status_name(tkv_status status);
_bind("tkv_status_name", c_char_p, [c_int32])
# const char *tkv_last_error(void);
_bind("tkv_last_error", c_char_p, [])

_version = lib.tkv_version_number()
if _version // 10000 != ABI_MAJOR:
    raise ImportError(
        f"turbokv: library version {lib.tkv_version_string().decode()} (major {_version // 10000}) "
        f"does not match the Python package (ABI major {ABI_MAJOR})"
    )


def check(status: int) -> None:
    """Raise the typed exception of a negative status, with the C message."""
    if status < 0:
        message = lib.tkv_last_error().decode("utf-8", "replace")
        name = lib.tkv_status_name(status).decode()
        cls = STATUS_ERRORS.get(status, TurboKVError)
        raise cls(status, f"{message} [{name}]")


# ---- codecs --------------------------------------------------------------------------------

class CodecParams(Structure):
    """Mirror of tkv_codec_params."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("codec", c_int32),
        ("head_dim", c_uint32),
        ("flags", c_uint32),
        ("seed", c_uint64),
        ("reserved", c_uint32 * 8),
    ]


# int32_t tkv_codec_count(void);
_bind("tkv_codec_count", c_int32, [])
# const char *tkv_codec_name(int32_t codec);
_bind("tkv_codec_name", c_char_p, [c_int32])
# tkv_status tkv_codec_from_name(const char *name, int32_t *out_codec);
_bind("tkv_codec_from_name", c_int32, [c_char_p, POINTER(c_int32)])
# uint32_t tkv_codec_flags(int32_t codec);
_bind("tkv_codec_flags", c_uint32, [c_int32])
# tkv_status tkv_codec_bytes_per_vector(int32_t codec, uint32_t head_dim, size_t *out_bytes);
_bind("tkv_codec_bytes_per_vector", c_int32, [c_int32, c_uint32, POINTER(c_size_t)])
# tkv_codec_params tkv_codec_default_params(void);
_bind("tkv_codec_default_params", CodecParams, [])
# tkv_status tkv_codec_create(const tkv_codec_params *params, tkv_codec **out);
_bind("tkv_codec_create", c_int32, [POINTER(CodecParams), POINTER(c_void_p)])
# void tkv_codec_free(tkv_codec *codec);
_bind("tkv_codec_free", None, [c_void_p])
# size_t tkv_codec_vector_bytes(const tkv_codec *codec);
_bind("tkv_codec_vector_bytes", c_size_t, [c_void_p])
# size_t tkv_codec_encoded_size(const tkv_codec *codec, int64_t n);
_bind("tkv_codec_encoded_size", c_size_t, [c_void_p, c_int64])
# tkv_status tkv_codec_encode(const tkv_codec *codec, const float *x, int64_t n,
#                             void *codes, size_t codes_size);
_bind("tkv_codec_encode", c_int32, [c_void_p, POINTER(c_float), c_int64, c_void_p, c_size_t])
# tkv_status tkv_codec_decode(const tkv_codec *codec, const void *codes, size_t codes_size,
#                             int64_t n, float *out);
_bind("tkv_codec_decode", c_int32, [c_void_p, c_void_p, c_size_t, c_int64, POINTER(c_float)])
# tkv_status tkv_codec_scores(const tkv_codec *codec, const float *q, const void *codes,
#                             size_t codes_size, int64_t n, float *scores);
_bind("tkv_codec_scores", c_int32,
      [c_void_p, POINTER(c_float), c_void_p, c_size_t, c_int64, POINTER(c_float)])
# tkv_status tkv_codec_weighted_sum(const tkv_codec *codec, const float *w, const void *codes,
#                                   size_t codes_size, int64_t n, float threshold, float *out);
_bind("tkv_codec_weighted_sum", c_int32,
      [c_void_p, POINTER(c_float), c_void_p, c_size_t, c_int64, c_float, POINTER(c_float)])
# tkv_status tkv_codec_attention(const tkv_codec *k_codec, const tkv_codec *v_codec,
#     const float *q, const void *k_codes, size_t k_codes_size, const void *v_codes,
#     size_t v_codes_size, int64_t n, float scale, float threshold, float *out);
_bind("tkv_codec_attention", c_int32,
      [c_void_p, c_void_p, POINTER(c_float), c_void_p, c_size_t, c_void_p, c_size_t, c_int64,
       c_float, c_float, POINTER(c_float)])
# tkv_status tkv_codebook_centroids(uint32_t bits, float *out, size_t n_out, size_t *n_needed);
_bind("tkv_codebook_centroids", c_int32,
      [c_uint32, POINTER(c_float), c_size_t, POINTER(c_size_t)])

# ---- utilities -------------------------------------------------------------------------------
# uint32_t tkv_cpu_features(void);
_bind("tkv_cpu_features", c_uint32, [])
# const char *tkv_kernel_isa(void);
_bind("tkv_kernel_isa", c_char_p, [])

float_p = POINTER(c_float)

# ---- model -------------------------------------------------------------------------------

class ModelParams(Structure):
    """Mirror of tkv_model_params."""

    _fields_ = [("struct_size", c_uint32), ("flags", c_uint32), ("reserved", c_uint32 * 8)]


class CacheParams(Structure):
    """Mirror of tkv_cache_params."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("k_codec", c_int32),
        ("v_codec", c_int32),
        ("n_ctx", c_uint32),
        ("fp16_window", c_uint32),
        ("flags", c_uint32),
        ("seed", c_uint64),
        ("sparse_v_threshold", c_float),
        ("key_smoothing", c_float),
        ("sink_tokens", c_uint32),
        ("calibration_block", c_uint32),
        ("reserved", c_uint32 * 6),
    ]


class SessionParams(Structure):
    """Mirror of tkv_session_params."""

    _fields_ = [("struct_size", c_uint32), ("n_threads", c_uint32), ("n_batch", c_uint32),
                ("flags", c_uint32), ("reserved", c_uint32 * 8)]


class SamplerParams(Structure):
    """Mirror of tkv_sampler_params."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("repeat_penalty", c_float),
        ("repeat_last_n", c_int32),
        ("seed", c_uint64),
        ("reserved", c_uint32 * 8),
    ]


class Timings(Structure):
    """Mirror of tkv_timings."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("reserved0", c_uint32),
        ("prefill_tokens", c_int64),
        ("decode_tokens", c_int64),
        ("prefill_seconds", ctypes.c_double),
        ("decode_seconds", ctypes.c_double),
        ("matmul_seconds", ctypes.c_double),
        ("attention_seconds", ctypes.c_double),
        ("other_seconds", ctypes.c_double),
        ("sample_seconds", ctypes.c_double),
        ("reserved", c_uint32 * 8),
    ]


int32_p = POINTER(c_int32)

# tkv_model_params tkv_model_default_params(void);
_bind("tkv_model_default_params", ModelParams, [])
# tkv_status tkv_model_load(const char *path, const tkv_model_params *params, tkv_model **out);
_bind("tkv_model_load", c_int32, [c_char_p, POINTER(ModelParams), POINTER(c_void_p)])
# void tkv_model_free(tkv_model *model);
_bind("tkv_model_free", None, [c_void_p])
# uint32_t tkv_model_n_layer(const tkv_model *model); (and the other counts)
for _name in ("n_layer", "n_head", "n_head_kv", "head_dim", "n_embd", "n_vocab", "n_ctx_train"):
    _bind(f"tkv_model_{_name}", c_uint32, [c_void_p])
# const char *tkv_model_arch(const tkv_model *model);
_bind("tkv_model_arch", c_char_p, [c_void_p])
# const char *tkv_model_name(const tkv_model *model);
_bind("tkv_model_name", c_char_p, [c_void_p])
# tkv_status tkv_model_meta_string(const tkv_model *model, const char *key, char *buf,
#                                  size_t cap, size_t *n_out);
_bind("tkv_model_meta_string", c_int32, [c_void_p, c_char_p, c_char_p, c_size_t, POINTER(c_size_t)])
# int32_t tkv_model_token_bos(const tkv_model *model);
_bind("tkv_model_token_bos", c_int32, [c_void_p])
# int32_t tkv_model_token_eos(const tkv_model *model);
_bind("tkv_model_token_eos", c_int32, [c_void_p])
# int32_t tkv_model_token_find(const tkv_model *model, const char *text);
_bind("tkv_model_token_find", c_int32, [c_void_p, c_char_p])
# tkv_status tkv_model_tokenize(const tkv_model *model, const char *text, size_t len,
#                               uint32_t flags, int32_t *tokens, size_t cap, size_t *n_out);
_bind("tkv_model_tokenize", c_int32,
      [c_void_p, c_char_p, c_size_t, c_uint32, int32_p, c_size_t, POINTER(c_size_t)])
# tkv_status tkv_model_detokenize(const tkv_model *model, const int32_t *tokens, size_t n,
#                                 int32_t render_special, char *buf, size_t cap, size_t *n_out);
_bind("tkv_model_detokenize", c_int32,
      [c_void_p, int32_p, c_size_t, c_int32, c_char_p, c_size_t, POINTER(c_size_t)])

# ---- cache -------------------------------------------------------------------------------
# tkv_cache_params tkv_cache_default_params(void);
_bind("tkv_cache_default_params", CacheParams, [])
# tkv_status tkv_cache_create(const tkv_model *model, const tkv_cache_params *params,
#                             tkv_cache **out);
_bind("tkv_cache_create", c_int32, [c_void_p, POINTER(CacheParams), POINTER(c_void_p)])
# void tkv_cache_free(tkv_cache *cache);
_bind("tkv_cache_free", None, [c_void_p])
# tkv_status tkv_cache_set_layer_codecs(tkv_cache *cache, uint32_t layer, int32_t k_codec,
#                                       int32_t v_codec);
_bind("tkv_cache_set_layer_codecs", c_int32, [c_void_p, c_uint32, c_int32, c_int32])
# uint32_t tkv_cache_n_tokens(const tkv_cache *cache);
_bind("tkv_cache_n_tokens", c_uint32, [c_void_p])
# uint32_t tkv_cache_capacity(const tkv_cache *cache);
_bind("tkv_cache_capacity", c_uint32, [c_void_p])
# size_t tkv_cache_bytes_used / bytes_per_token / bytes_allocated(const tkv_cache *cache);
for _name in ("bytes_used", "bytes_per_token", "bytes_allocated"):
    _bind(f"tkv_cache_{_name}", c_size_t, [c_void_p])
# tkv_status tkv_cache_truncate(tkv_cache *cache, uint32_t n_tokens);
_bind("tkv_cache_truncate", c_int32, [c_void_p, c_uint32])

# ---- session -----------------------------------------------------------------------------
TOKEN_CALLBACK = ctypes.CFUNCTYPE(c_int32, c_int32, c_void_p)
# tkv_session_params tkv_session_default_params(void);
_bind("tkv_session_default_params", SessionParams, [])
# tkv_sampler_params tkv_sampler_default_params(void);
_bind("tkv_sampler_default_params", SamplerParams, [])
# tkv_status tkv_session_create(tkv_cache *cache, const tkv_session_params *params,
#                               tkv_session **out);
_bind("tkv_session_create", c_int32, [c_void_p, POINTER(SessionParams), POINTER(c_void_p)])
# void tkv_session_free(tkv_session *session);
_bind("tkv_session_free", None, [c_void_p])
# tkv_status tkv_session_eval(tkv_session *session, const int32_t *tokens, int64_t n,
#                             uint32_t flags);
_bind("tkv_session_eval", c_int32, [c_void_p, int32_p, c_int64, c_uint32])
# const float *tkv_session_logits(const tkv_session *session, int64_t i);
_bind("tkv_session_logits", POINTER(c_float), [c_void_p, c_int64])
# tkv_status tkv_session_sample(tkv_session *session, const tkv_sampler_params *params,
#                               int32_t *out_token);
_bind("tkv_session_sample", c_int32, [c_void_p, POINTER(SamplerParams), int32_p])
# tkv_status tkv_session_generate(tkv_session *session, const tkv_sampler_params *params,
#     int64_t max_tokens, tkv_token_callback callback, void *user_data, int64_t *n_generated);
_bind("tkv_session_generate", c_int32,
      [c_void_p, POINTER(SamplerParams), c_int64, TOKEN_CALLBACK, c_void_p, POINTER(c_int64)])
# tkv_status tkv_session_timings(const tkv_session *session, tkv_timings *out);
_bind("tkv_session_timings", c_int32, [c_void_p, POINTER(Timings)])
# void tkv_session_reset_timings(tkv_session *session);
_bind("tkv_session_reset_timings", None, [c_void_p])
# uint32_t tkv_session_n_tokens(const tkv_session *session);
_bind("tkv_session_n_tokens", c_uint32, [c_void_p])

# ---- [EXPERIMENTAL] --------------------------------------------------------------------------
# tkv_status tkv_session_eval_capture(tkv_session *session, const int32_t *tokens, int64_t n,
#                                     uint32_t flags, float *q, float *k, float *v);
_bind("tkv_session_eval_capture", c_int32,
      [c_void_p, int32_p, c_int64, c_uint32, POINTER(c_float), POINTER(c_float), POINTER(c_float)])
