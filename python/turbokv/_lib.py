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
