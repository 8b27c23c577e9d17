"""A compressed KV cache for one model (owns one ``tkv_cache`` handle)."""
from __future__ import annotations

import ctypes
import os
from typing import Mapping, Optional, Union

import numpy as np

from . import _args, _lib
from ._errors import InvalidArgument
from ._handle import Handle
from ._lib import check
from .codec import codec_id
from .config import (CACHE_FLAG_CENTER_KEYS, CALIBRATION_ONCE, DEFAULT_CODEC, DEFAULT_V_CODEC,
                     UNSET, CacheConfig, as_config)
from .model import Model

PathLike = Union[str, "os.PathLike[str]"]


def file_path(path: PathLike, name: str = "path") -> bytes:
    """A file path argument as the C library takes it (bytes without NUL)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{name} must be a str or a path, got {type(path).__name__}")
    raw = os.fsencode(path)
    if not raw or b"\0" in raw:
        raise InvalidArgument(-1, f"{name} must be a non-empty path without NUL bytes")
    return raw


def _codec_name(codec: int) -> str:
    return _lib.tkv_codec_name(codec).decode()


def _f32(x: float) -> float:
    """A C float as the shortest decimal that reads back to it (0.001, not 0.0010000000475)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="0"))


class KVCache(Handle):
    """Keys and values of one sequence, compressed with a K codec and a V codec.

    Lifetime (the same rule as Model): ``close()`` refuses (InUseError, naming them)
    while a Session on the cache is open; leaving the cache's ``with`` block closes its
    sessions first, and a Session used after that raises ClosedError.  Every method of
    a closed cache raises ClosedError.

    Args:
        model: the model (kept alive by the cache).
        config: a :class:`~turbokv.CacheConfig` or a spec string (``"turbo_kv_4b+nosmooth"``);
            or leave it None and give the settings as keywords, the fields of CacheConfig:
            ``k``, ``v`` (codec names, each defaulting to the library's ``turbo_kv_4b``),
            ``center_keys``, ``smooth_keys``, ``sink_tokens``, ``calibration_block``,
            ``fp16_window``, ``sparse_v_threshold``, ``layer_codecs``, ``seed``.  Levers left
            unset follow the one rule of CacheConfig (on where storage is lossy).
        n_ctx: capacity in tokens; 0 = the model's training context.  Memory grows
            in blocks as tokens arrive, nothing is reserved up front.

    Integer arguments are checked against their C types before any C call (n_ctx,
    fp16_window, sink_tokens: uint32; seed: uint64): TypeError for a non-integer (bool,
    float), InvalidArgument (a ValueError) naming the argument when out of range.
    """

    def __init__(self, model: Model, config: Union[None, str, CacheConfig] = None, *,
                 n_ctx: int = 0, k: Optional[str] = None, v: Optional[str] = None,
                 center_keys: Optional[bool] = None,
                 smooth_keys: Union[None, bool, float] = None,
                 sink_tokens: Optional[int] = None, calibration_block: Optional[int] = UNSET,
                 fp16_window: Optional[int] = None, sparse_v_threshold: Optional[float] = None,
                 layer_codecs: Optional[Mapping[int, tuple[str, str]]] = None,
                 seed: Optional[int] = None) -> None:
        self.model = model
        if config is None:  # each codec defaults on its own: KVCache(k="fp32") keeps V's
            k = DEFAULT_CODEC if k is None else k
            v = DEFAULT_V_CODEC if v is None else v
        cfg = as_config(config, k=k, v=v, center_keys=center_keys, smooth_keys=smooth_keys,
                        sink_tokens=sink_tokens, calibration_block=calibration_block,
                        fp16_window=fp16_window, sparse_v_threshold=sparse_v_threshold,
                        layer_codecs=layer_codecs, seed=seed)
        params = cfg.params(n_ctx)
        handle = ctypes.c_void_p()
        check(_lib.tkv_cache_create(model.handle, ctypes.byref(params), ctypes.byref(handle)))
        self._adopt(handle.value, model)
        self.config = cfg
        try:
            for layer, lk, lv in cfg.layer_codecs:
                check(_lib.tkv_cache_set_layer_codecs(self._handle, layer, codec_id(lk),
                                                      codec_id(lv)))
        except Exception:
            self.close()
            raise

    @property
    def k_codec(self) -> str:
        return self.config.k

    @property
    def v_codec(self) -> str:
        return str(self.config.v)

    @property
    def center_keys(self) -> bool:
        return bool(self.config.center_keys)

    @property
    def key_smoothing(self) -> float:
        """The key smoothing exponent (0.0 = off)."""
        return float(self.config.smooth_keys or 0.0)

    @property
    def sink_tokens(self) -> int:
        return int(self.config.sink_tokens or 0)

    @property
    def calibration_block(self) -> Optional[int]:
        """Positions per calibration block, None = calibrated once."""
        return self.config.calibration_block

    _kind = "KVCache"

    @classmethod
    def _wrap(cls, handle: int, model: Model) -> "KVCache":
        """A KVCache owning a handle the library made (load, fork), its config read back."""
        self = cls.__new__(cls)
        self.model = model
        self._adopt(handle, model)
        try:
            self.config = self._read_config()
        except BaseException:
            self.close()
            raise
        return self

    def _read_config(self) -> CacheConfig:
        """The CacheConfig of what the C cache holds (a loaded or forked one's)."""
        p = _lib.tkv_cache_default_params()
        check(_lib.tkv_cache_get_params(self.handle, ctypes.byref(p)))
        k, v = ctypes.c_int32(), ctypes.c_int32()
        layers = {}
        for layer in range(self.model.n_layer):
            check(_lib.tkv_cache_layer_codecs(self.handle, layer, ctypes.byref(k),
                                              ctypes.byref(v)))
            if (k.value, v.value) != (p.k_codec, p.v_codec):
                layers[layer] = (_codec_name(k.value), _codec_name(v.value))
        return CacheConfig(
            _codec_name(p.k_codec), _codec_name(p.v_codec),
            center_keys=bool(p.flags & CACHE_FLAG_CENTER_KEYS),
            smooth_keys=_f32(p.key_smoothing), sink_tokens=int(p.sink_tokens),
            calibration_block=(None if p.calibration_block == CALIBRATION_ONCE
                               else int(p.calibration_block)),
            fp16_window=int(p.fp16_window), sparse_v_threshold=_f32(p.sparse_v_threshold),
            layer_codecs=layers, seed=int(p.seed))

    @classmethod
    def load(cls, model: Model, path: PathLike) -> "KVCache":
        """A cache saved by :meth:`save` (or :meth:`Session.save`) for ``model``, with its
        configuration (``config``, per-layer codecs included) and every stored position;
        it continues exactly as the saved cache would have (the same logits, bit for bit,
        on the same kernel ISA and library version).

        Raises FileAccessError (cannot be read), FormatError (not a cache file, truncated,
        damaged), UnsupportedError (a newer file version), MismatchError (saved for another
        model or with another codec set); the message says which (docs/PERSISTENCE.md).
        """
        raw = file_path(path)
        handle = ctypes.c_void_p()
        check(_lib.tkv_cache_load(model.handle, raw, ctypes.byref(handle)))
        return cls._wrap(handle.value, model)

    def save(self, path: PathLike) -> None:
        """Save the cache to ``path`` (written to a temporary name, then renamed over it);
        load it with :meth:`KVCache.load`.  Format: docs/PERSISTENCE.md."""
        check(_lib.tkv_cache_save(self.handle, file_path(path)))

    def fork(self) -> "KVCache":
        """A cache holding the same positions that shares this one's compressed positions
        instead of copying them (one document, many questions); each then continues on its
        own, and the shared part is freed with the last cache that reads it.  Bit-identical
        to an unforked cache except for the trellis codecs on AVX-512 (tkv_cache_fork)."""
        handle = ctypes.c_void_p()
        check(_lib.tkv_cache_fork(self.handle, ctypes.byref(handle)))
        return type(self)._wrap(handle.value, self.model)

    def _free(self, handle: int) -> None:
        _lib.tkv_cache_free(handle)

    def __enter__(self) -> "KVCache":
        return self

    def __len__(self) -> int:
        return int(_lib.tkv_cache_n_tokens(self.handle))

    @property
    def capacity(self) -> int:
        return int(_lib.tkv_cache_capacity(self.handle))

    @property
    def bytes_used(self) -> int:
        """Bytes the stored tokens take."""
        return int(_lib.tkv_cache_bytes_used(self.handle))

    @property
    def bytes_per_token(self) -> int:
        """Bytes one compressed token takes (all layers and heads, K + V)."""
        return int(_lib.tkv_cache_bytes_per_token(self.handle))

    @property
    def bytes_allocated(self) -> int:
        return int(_lib.tkv_cache_bytes_allocated(self.handle))

    def truncate(self, n_tokens: int) -> None:
        """Drop every token at position >= n_tokens (0 <= n_tokens < 2**32; a count at or
        above the length is a no-op).  Sessions on the cache continue at the new length."""
        check(_lib.tkv_cache_truncate(self.handle, _args.u32(n_tokens, "n_tokens")))

    def __repr__(self) -> str:
        if self._handle is None:
            return f"KVCache(k={self.k_codec}, v={self.v_codec}, closed)"
        return (f"KVCache(k={self.k_codec}, v={self.v_codec}, tokens={len(self)}, "
                f"{self.bytes_per_token} B/token)")
