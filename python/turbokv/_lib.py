"""The ctypes binding of libturbokv: the only module that imports ctypes.

Every C function is bound by a typed Python stub that carries its C prototype:
``@_c_function`` sets the foreign function's ``argtypes`` / ``restype`` and returns it in
place of the stub, so calls cost what a plain ctypes call costs while type checkers see
the stub's signature.  Opaque handles are ``c_void_p`` (Python ints at the call sites).
The library is found next to this file (installed wheel) or through the
``TURBOKV_LIBRARY`` environment variable (a build tree, for development).
"""
from __future__ import annotations

import ctypes
import os
import sys
from ctypes import (POINTER, Structure, c_char_p, c_double, c_float, c_int32, c_int64,
                    c_size_t, c_uint32, c_uint64, c_void_p)
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, NewType, Optional, TypeVar, Union

from ._errors import STATUS_ERRORS, Status, TurboKVError

#: The major version of the C ABI this package was written for.
ABI_MAJOR = 0

if TYPE_CHECKING:  # what the stubs accept for pointer arguments: a ctypes pointer or byref()
    from ctypes import _CArgObject, _Pointer
    Ref = Union["_Pointer[Any]", _CArgObject]
else:
    Ref = Any

#: Opaque handles (the address ctypes returns for a ``c_void_p``).
ModelHandle = NewType("ModelHandle", int)
CacheHandle = NewType("CacheHandle", int)
SessionHandle = NewType("SessionHandle", int)
CodecHandle = NewType("CodecHandle", int)


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


_dll = _load()

F = TypeVar("F", bound=Callable[..., Any])


def _c_function(argtypes: list, restype: Any) -> Callable[[F], F]:
    """Bind the C function named like the decorated stub; the stub's docstring (its C
    prototype) and name are copied onto the foreign function, which replaces it."""

    def bind(stub: F) -> F:
        fn = getattr(_dll, stub.__name__)
        fn.argtypes = argtypes
        fn.restype = restype
        fn.__doc__ = stub.__doc__
        fn.__name__ = stub.__name__
        return fn  # type: ignore[no-any-return]

    return bind


# ---- version and errors ----------------------------------------------------------------------

@_c_function([], c_uint32)
def tkv_version_number() -> int:
    """uint32_t tkv_version_number(void);"""


@_c_function([], c_char_p)
def tkv_version_string() -> bytes:
    """const char *tkv_version_string(void);"""


@_c_function([c_int32], c_char_p)
def tkv_status_name(status: int) -> bytes:
    """const char *tkv_status_name(tkv_status status);"""


@_c_function([], c_char_p)
def tkv_last_error() -> bytes:
    """const char *tkv_last_error(void);"""


_version = tkv_version_number()
if _version // 10000 != ABI_MAJOR:
    raise ImportError(
        f"turbokv: library version {tkv_version_string().decode()} (major {_version // 10000}) "
        f"does not match the Python package (ABI major {ABI_MAJOR})"
    )


def check(status: int) -> None:
    """Raise the typed exception of a negative status, with the C message."""
    if status < 0:
        message = tkv_last_error().decode("utf-8", "replace")
        name = tkv_status_name(status).decode()
        try:
            cls = STATUS_ERRORS.get(Status(status), TurboKVError)
        except ValueError:  # a status this package does not know yet
            cls = TurboKVError
        raise cls(status, f"{message} [{name}]")


# ---- codecs ----------------------------------------------------------------------------------

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


float_p = POINTER(c_float)
int32_p = POINTER(c_int32)


@_c_function([], c_int32)
def tkv_codec_count() -> int:
    """int32_t tkv_codec_count(void);"""


@_c_function([c_int32], c_char_p)
def tkv_codec_name(codec: int) -> Optional[bytes]:
    """const char *tkv_codec_name(int32_t codec);"""


@_c_function([c_char_p, POINTER(c_int32)], c_int32)
def tkv_codec_from_name(name: bytes, out_codec: Ref) -> int:
    """tkv_status tkv_codec_from_name(const char *name, int32_t *out_codec);"""


@_c_function([c_int32], c_uint32)
def tkv_codec_flags(codec: int) -> int:
    """uint32_t tkv_codec_flags(int32_t codec);"""


@_c_function([c_int32, c_uint32, POINTER(c_size_t)], c_int32)
def tkv_codec_bytes_per_vector(codec: int, head_dim: int, out_bytes: Ref) -> int:
    """tkv_status tkv_codec_bytes_per_vector(int32_t codec, uint32_t head_dim, size_t *out_bytes);"""


@_c_function([], CodecParams)
def tkv_codec_default_params() -> CodecParams:
    """tkv_codec_params tkv_codec_default_params(void);"""


@_c_function([POINTER(CodecParams), POINTER(c_void_p)], c_int32)
def tkv_codec_create(params: Ref, out: Ref) -> int:
    """tkv_status tkv_codec_create(const tkv_codec_params *params, tkv_codec **out);"""


@_c_function([c_void_p], None)
def tkv_codec_free(codec: Optional[CodecHandle]) -> None:
    """void tkv_codec_free(tkv_codec *codec);"""


@_c_function([c_void_p], c_int32)
def tkv_codec_id(codec: Optional[CodecHandle]) -> int:
    """int32_t tkv_codec_id(const tkv_codec *codec);"""


@_c_function([c_void_p], c_uint32)
def tkv_codec_head_dim(codec: Optional[CodecHandle]) -> int:
    """uint32_t tkv_codec_head_dim(const tkv_codec *codec);"""


@_c_function([c_void_p], c_uint64)
def tkv_codec_seed(codec: Optional[CodecHandle]) -> int:
    """uint64_t tkv_codec_seed(const tkv_codec *codec);"""


@_c_function([c_void_p], c_size_t)
def tkv_codec_vector_bytes(codec: CodecHandle) -> int:
    """size_t tkv_codec_vector_bytes(const tkv_codec *codec);"""


@_c_function([c_void_p, c_int64], c_size_t)
def tkv_codec_encoded_size(codec: CodecHandle, n: int) -> int:
    """size_t tkv_codec_encoded_size(const tkv_codec *codec, int64_t n);"""


@_c_function([c_void_p, float_p, c_int64, c_void_p, c_size_t], c_int32)
def tkv_codec_encode(codec: CodecHandle, x: Ref, n: int, codes: Any, codes_size: int) -> int:
    """tkv_status tkv_codec_encode(const tkv_codec *codec, const float *x, int64_t n,
                                   void *codes, size_t codes_size);"""


@_c_function([c_void_p, c_void_p, c_size_t, c_int64, float_p], c_int32)
def tkv_codec_decode(codec: CodecHandle, codes: Any, codes_size: int, n: int, out: Ref) -> int:
    """tkv_status tkv_codec_decode(const tkv_codec *codec, const void *codes, size_t codes_size,
                                   int64_t n, float *out);"""


@_c_function([c_void_p, float_p, c_void_p, c_size_t, c_int64, float_p], c_int32)
def tkv_codec_scores(codec: CodecHandle, q: Ref, codes: Any, codes_size: int, n: int,
                     scores: Ref) -> int:
    """tkv_status tkv_codec_scores(const tkv_codec *codec, const float *q, const void *codes,
                                   size_t codes_size, int64_t n, float *scores);"""


@_c_function([c_void_p, float_p, c_void_p, c_size_t, c_int64, c_float, float_p], c_int32)
def tkv_codec_weighted_sum(codec: CodecHandle, w: Ref, codes: Any, codes_size: int, n: int,
                           threshold: float, out: Ref) -> int:
    """tkv_status tkv_codec_weighted_sum(const tkv_codec *codec, const float *w, const void *codes,
                                         size_t codes_size, int64_t n, float threshold, float *out);"""


@_c_function([c_void_p, c_void_p, float_p, c_void_p, c_size_t, c_void_p, c_size_t, c_int64,
              c_float, c_float, float_p], c_int32)
def tkv_codec_attention(k_codec: CodecHandle, v_codec: CodecHandle, q: Ref, k_codes: Any,
                        k_codes_size: int, v_codes: Any, v_codes_size: int, n: int, scale: float,
                        threshold: float, out: Ref) -> int:
    """tkv_status tkv_codec_attention(const tkv_codec *k_codec, const tkv_codec *v_codec,
        const float *q, const void *k_codes, size_t k_codes_size, const void *v_codes,
        size_t v_codes_size, int64_t n, float scale, float threshold, float *out);"""


@_c_function([c_uint32, float_p, c_size_t, POINTER(c_size_t)], c_int32)
def tkv_codebook_centroids(bits: int, out: Ref, n_out: int, n_needed: Ref) -> int:
    """tkv_status tkv_codebook_centroids(uint32_t bits, float *out, size_t n_out, size_t *n_needed);"""


# ---- utilities -------------------------------------------------------------------------------

@_c_function([], c_uint32)
def tkv_cpu_features() -> int:
    """uint32_t tkv_cpu_features(void);"""


@_c_function([], c_char_p)
def tkv_kernel_isa() -> bytes:
    """const char *tkv_kernel_isa(void);"""


# ---- model -----------------------------------------------------------------------------------

class ModelParams(Structure):
    """Mirror of tkv_model_params."""

    _fields_ = [("struct_size", c_uint32), ("flags", c_uint32), ("reserved", c_uint32 * 8)]


@_c_function([], ModelParams)
def tkv_model_default_params() -> ModelParams:
    """tkv_model_params tkv_model_default_params(void);"""


@_c_function([c_char_p, POINTER(ModelParams), POINTER(c_void_p)], c_int32)
def tkv_model_load(path: bytes, params: Ref, out: Ref) -> int:
    """tkv_status tkv_model_load(const char *path, const tkv_model_params *params,
                                 tkv_model **out);"""


@_c_function([c_void_p], None)
def tkv_model_free(model: Optional[ModelHandle]) -> None:
    """void tkv_model_free(tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_n_layer(model: ModelHandle) -> int:
    """uint32_t tkv_model_n_layer(const tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_n_head(model: ModelHandle) -> int:
    """uint32_t tkv_model_n_head(const tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_n_head_kv(model: ModelHandle) -> int:
    """uint32_t tkv_model_n_head_kv(const tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_head_dim(model: ModelHandle) -> int:
    """uint32_t tkv_model_head_dim(const tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_n_embd(model: ModelHandle) -> int:
    """uint32_t tkv_model_n_embd(const tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_n_vocab(model: ModelHandle) -> int:
    """uint32_t tkv_model_n_vocab(const tkv_model *model);"""


@_c_function([c_void_p], c_uint32)
def tkv_model_n_ctx_train(model: ModelHandle) -> int:
    """uint32_t tkv_model_n_ctx_train(const tkv_model *model);"""


@_c_function([c_void_p], c_char_p)
def tkv_model_arch(model: ModelHandle) -> bytes:
    """const char *tkv_model_arch(const tkv_model *model);"""


@_c_function([c_void_p], c_char_p)
def tkv_model_name(model: ModelHandle) -> bytes:
    """const char *tkv_model_name(const tkv_model *model);"""


@_c_function([c_void_p, c_char_p, c_char_p, c_size_t, POINTER(c_size_t)], c_int32)
def tkv_model_meta_string(model: ModelHandle, key: bytes, buf: Any, cap: int, n_out: Ref) -> int:
    """tkv_status tkv_model_meta_string(const tkv_model *model, const char *key, char *buf,
                                        size_t cap, size_t *n_out);"""


@_c_function([c_void_p], c_int32)
def tkv_model_token_bos(model: ModelHandle) -> int:
    """int32_t tkv_model_token_bos(const tkv_model *model);"""


@_c_function([c_void_p], c_int32)
def tkv_model_token_eos(model: ModelHandle) -> int:
    """int32_t tkv_model_token_eos(const tkv_model *model);"""


@_c_function([c_void_p, c_char_p], c_int32)
def tkv_model_token_find(model: ModelHandle, text: bytes) -> int:
    """int32_t tkv_model_token_find(const tkv_model *model, const char *text);"""


@_c_function([c_void_p, c_int32], c_int32)
def tkv_model_token_is_end(model: ModelHandle, token: int) -> int:
    """int32_t tkv_model_token_is_end(const tkv_model *model, int32_t token);"""


@_c_function([c_void_p, c_char_p, c_size_t, c_uint32, int32_p, c_size_t, POINTER(c_size_t)],
             c_int32)
def tkv_model_tokenize(model: ModelHandle, text: bytes, len: int, flags: int, tokens: Ref,
                       cap: int, n_out: Ref) -> int:
    """tkv_status tkv_model_tokenize(const tkv_model *model, const char *text, size_t len,
                                     uint32_t flags, int32_t *tokens, size_t cap, size_t *n_out);"""


@_c_function([c_void_p, int32_p, c_size_t, c_int32, c_char_p, c_size_t, POINTER(c_size_t)],
             c_int32)
def tkv_model_detokenize(model: ModelHandle, tokens: Ref, n: int, render_special: int, buf: Any,
                         cap: int, n_out: Ref) -> int:
    """tkv_status tkv_model_detokenize(const tkv_model *model, const int32_t *tokens, size_t n,
                                       int32_t render_special, char *buf, size_t cap,
                                       size_t *n_out);"""


# ---- cache -----------------------------------------------------------------------------------

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


@_c_function([], CacheParams)
def tkv_cache_default_params() -> CacheParams:
    """tkv_cache_params tkv_cache_default_params(void);"""


@_c_function([POINTER(CacheParams)], c_int32)
def tkv_cache_params_check(params: Ref) -> int:
    """tkv_status tkv_cache_params_check(const tkv_cache_params *params);"""


@_c_function([c_void_p, POINTER(CacheParams), POINTER(c_void_p)], c_int32)
def tkv_cache_create(model: ModelHandle, params: Ref, out: Ref) -> int:
    """tkv_status tkv_cache_create(const tkv_model *model, const tkv_cache_params *params,
                                   tkv_cache **out);"""


@_c_function([c_void_p], None)
def tkv_cache_free(cache: Optional[CacheHandle]) -> None:
    """void tkv_cache_free(tkv_cache *cache);"""


@_c_function([c_void_p, c_uint32, c_int32, c_int32], c_int32)
def tkv_cache_set_layer_codecs(cache: CacheHandle, layer: int, k_codec: int, v_codec: int) -> int:
    """tkv_status tkv_cache_set_layer_codecs(tkv_cache *cache, uint32_t layer, int32_t k_codec,
                                             int32_t v_codec);"""


@_c_function([c_void_p], c_uint32)
def tkv_cache_n_tokens(cache: CacheHandle) -> int:
    """uint32_t tkv_cache_n_tokens(const tkv_cache *cache);"""


@_c_function([c_void_p], c_uint32)
def tkv_cache_capacity(cache: CacheHandle) -> int:
    """uint32_t tkv_cache_capacity(const tkv_cache *cache);"""


@_c_function([c_void_p], c_uint64)
def tkv_model_bytes_mapped(model: ModelHandle) -> int:
    """uint64_t tkv_model_bytes_mapped(const tkv_model *model);"""


@_c_function([c_void_p], c_uint64)
def tkv_model_bytes_packed(model: ModelHandle) -> int:
    """uint64_t tkv_model_bytes_packed(const tkv_model *model);"""


@_c_function([c_void_p], c_size_t)
def tkv_cache_bytes_used(cache: CacheHandle) -> int:
    """size_t tkv_cache_bytes_used(const tkv_cache *cache);"""


@_c_function([c_void_p], c_size_t)
def tkv_cache_bytes_per_token(cache: CacheHandle) -> int:
    """size_t tkv_cache_bytes_per_token(const tkv_cache *cache);"""


@_c_function([c_void_p], c_size_t)
def tkv_cache_bytes_allocated(cache: CacheHandle) -> int:
    """size_t tkv_cache_bytes_allocated(const tkv_cache *cache);"""


@_c_function([c_void_p, c_uint32], c_int32)
def tkv_cache_truncate(cache: CacheHandle, n_tokens: int) -> int:
    """tkv_status tkv_cache_truncate(tkv_cache *cache, uint32_t n_tokens);"""


# ---- session ---------------------------------------------------------------------------------

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
        ("prefill_seconds", c_double),
        ("decode_seconds", c_double),
        ("matmul_seconds", c_double),
        ("attention_seconds", c_double),
        ("other_seconds", c_double),
        ("sample_seconds", c_double),
        ("reserved", c_uint32 * 8),
    ]


#: typedef int32_t (*tkv_token_callback)(int32_t token, void *user_data);
TOKEN_CALLBACK = ctypes.CFUNCTYPE(c_int32, c_int32, c_void_p)


@_c_function([], SessionParams)
def tkv_session_default_params() -> SessionParams:
    """tkv_session_params tkv_session_default_params(void);"""


@_c_function([], SamplerParams)
def tkv_sampler_default_params() -> SamplerParams:
    """tkv_sampler_params tkv_sampler_default_params(void);"""


@_c_function([c_void_p, POINTER(SessionParams), POINTER(c_void_p)], c_int32)
def tkv_session_create(cache: CacheHandle, params: Ref, out: Ref) -> int:
    """tkv_status tkv_session_create(tkv_cache *cache, const tkv_session_params *params,
                                     tkv_session **out);"""


@_c_function([c_void_p], None)
def tkv_session_free(session: Optional[SessionHandle]) -> None:
    """void tkv_session_free(tkv_session *session);"""


@_c_function([c_void_p, int32_p, c_int64, c_uint32], c_int32)
def tkv_session_eval(session: SessionHandle, tokens: Ref, n: int, flags: int) -> int:
    """tkv_status tkv_session_eval(tkv_session *session, const int32_t *tokens, int64_t n,
                                   uint32_t flags);"""


@_c_function([c_void_p, c_int64], float_p)
def tkv_session_logits(session: SessionHandle, i: int) -> Any:
    """const float *tkv_session_logits(const tkv_session *session, int64_t i);
    (a ctypes float pointer, false when NULL)"""


@_c_function([c_void_p, POINTER(SamplerParams), int32_p], c_int32)
def tkv_session_sample(session: SessionHandle, params: Ref, out_token: Ref) -> int:
    """tkv_status tkv_session_sample(tkv_session *session, const tkv_sampler_params *params,
                                     int32_t *out_token);"""


@_c_function([c_void_p, POINTER(SamplerParams), c_int64, TOKEN_CALLBACK, c_void_p,
              POINTER(c_int64)], c_int32)
def tkv_session_generate(session: SessionHandle, params: Ref, max_tokens: int, callback: Any,
                         user_data: Optional[int], n_generated: Ref) -> int:
    """tkv_status tkv_session_generate(tkv_session *session, const tkv_sampler_params *params,
        int64_t max_tokens, tkv_token_callback callback, void *user_data, int64_t *n_generated);"""


@_c_function([c_void_p, POINTER(Timings)], c_int32)
def tkv_session_timings(session: SessionHandle, out: Ref) -> int:
    """tkv_status tkv_session_timings(const tkv_session *session, tkv_timings *out);"""


@_c_function([c_void_p], None)
def tkv_session_reset_timings(session: SessionHandle) -> None:
    """void tkv_session_reset_timings(tkv_session *session);"""


@_c_function([c_void_p], c_uint32)
def tkv_session_n_tokens(session: SessionHandle) -> int:
    """uint32_t tkv_session_n_tokens(const tkv_session *session);"""


# ---- persistence and fork -----------------------------------------------------------------

@_c_function([c_void_p, POINTER(CacheParams)], c_int32)
def tkv_cache_get_params(cache: CacheHandle, out: Ref) -> int:
    """tkv_status tkv_cache_get_params(const tkv_cache *cache, tkv_cache_params *out);"""


@_c_function([c_void_p, c_uint32, int32_p, int32_p], c_int32)
def tkv_cache_layer_codecs(cache: CacheHandle, layer: int, k_codec: Ref, v_codec: Ref) -> int:
    """tkv_status tkv_cache_layer_codecs(const tkv_cache *cache, uint32_t layer,
                                         int32_t *k_codec, int32_t *v_codec);"""


@_c_function([c_void_p, c_char_p], c_int32)
def tkv_cache_save(cache: CacheHandle, path: bytes) -> int:
    """tkv_status tkv_cache_save(const tkv_cache *cache, const char *path);"""


@_c_function([c_void_p, c_char_p, POINTER(c_void_p)], c_int32)
def tkv_cache_load(model: ModelHandle, path: bytes, out: Ref) -> int:
    """tkv_status tkv_cache_load(const tkv_model *model, const char *path, tkv_cache **out);"""


@_c_function([c_void_p, POINTER(c_void_p)], c_int32)
def tkv_cache_fork(cache: CacheHandle, out: Ref) -> int:
    """tkv_status tkv_cache_fork(tkv_cache *cache, tkv_cache **out);"""


@_c_function([c_void_p, c_char_p], c_int32)
def tkv_session_save(session: SessionHandle, path: bytes) -> int:
    """tkv_status tkv_session_save(const tkv_session *session, const char *path);"""


@_c_function([c_void_p, c_char_p], c_int32)
def tkv_session_load_state(session: SessionHandle, path: bytes) -> int:
    """tkv_status tkv_session_load_state(tkv_session *session, const char *path);"""


@_c_function([c_void_p, int32_p, c_size_t, POINTER(c_size_t)], c_int32)
def tkv_session_tokens(session: SessionHandle, tokens: Any, cap: int, n_out: Ref) -> int:
    """tkv_status tkv_session_tokens(const tkv_session *session, int32_t *tokens, size_t cap,
                                     size_t *n_out);"""


@_c_function([c_void_p, c_void_p], c_int32)
def tkv_session_copy_state(dst: SessionHandle, src: SessionHandle) -> int:
    """tkv_status tkv_session_copy_state(tkv_session *dst, const tkv_session *src);"""


# ---- [EXPERIMENTAL] --------------------------------------------------------------------------

@_c_function([c_void_p, int32_p, c_int64, c_uint32, float_p, float_p, float_p], c_int32)
def tkv_session_eval_capture(session: SessionHandle, tokens: Ref, n: int, flags: int, q: Ref,
                             k: Ref, v: Ref) -> int:
    """[EXPERIMENTAL] tkv_status tkv_session_eval_capture(tkv_session *session,
        const int32_t *tokens, int64_t n, uint32_t flags, float *q, float *k, float *v);"""


@_c_function([POINTER(CacheParams), c_uint32, c_uint32, float_p, float_p, c_int64, float_p,
              float_p, c_size_t, POINTER(c_size_t)], c_int32)
def tkv_cache_calibrate_keys(params: Ref, head_dim: int, group: int, keys: Ref, queries: Ref,
                             n: int, mu: Ref, scales: Ref, cap: int, n_blocks: Ref) -> int:
    """[EXPERIMENTAL] tkv_status tkv_cache_calibrate_keys(const tkv_cache_params *params,
        uint32_t head_dim, uint32_t group, const float *keys, const float *queries, int64_t n,
        float *mu, float *scales, size_t cap, size_t *n_blocks);"""
