"""A compressed KV cache for one model (owns one ``tkv_cache`` handle)."""
from __future__ import annotations

import ctypes
from typing import Optional

from ._lib import check, lib
from .codec import codec_id
from .model import Model

CACHE_FLAG_CENTER_KEYS = 1


class KVCache:
    """Keys and values of one sequence, compressed with a K codec and a V codec.

    Args:
        model: the model (kept alive by the cache).
        k, v: codec names for keys and values (default ``turbo_kv_4b``).
        n_ctx: capacity in tokens; 0 = the model's training context.  Memory grows
            in blocks as tokens arrive, nothing is reserved up front.
        fp16_window: most recent tokens kept in fp16 before compression (0 = off).
        seed: rotation seeds derive from it per (layer, head).
        sparse_v_threshold: skip values whose softmax weight is below it (0 = off).
        center_keys: subtract a fixed per-(layer, head) vector (the mean of the first
            batch's keys) from every key before coding; attention is unchanged in exact
            arithmetic, and the codec stops spending bits on the keys' shared offset.
            On by default, as in tkv_cache_default_params().
        layer_codecs: {layer: (k_codec, v_codec)} overrides, e.g. {0: ("q8_0", "q8_0")}.
    """

    def __init__(self, model: Model, *, k: str = "turbo_kv_4b", v: str = "turbo_kv_4b",
                 n_ctx: int = 0, fp16_window: int = 0, seed: int = 0,
                 sparse_v_threshold: float = 0.0, center_keys: bool = True,
                 layer_codecs: Optional[dict[int, tuple[str, str]]] = None) -> None:
        self._handle: Optional[int] = None
        self.model = model
        params = lib.tkv_cache_default_params()
        params.k_codec = codec_id(k)
        params.v_codec = codec_id(v)
        if n_ctx < 0 or fp16_window < 0 or seed < 0:
            raise ValueError("n_ctx, fp16_window and seed must be >= 0")
        params.n_ctx = int(n_ctx)
        params.fp16_window = int(fp16_window)
        params.seed = int(seed)
        params.sparse_v_threshold = float(sparse_v_threshold)
        params.flags = CACHE_FLAG_CENTER_KEYS if center_keys else 0
        handle = ctypes.c_void_p()
        check(lib.tkv_cache_create(model.handle, ctypes.byref(params), ctypes.byref(handle)))
        self._handle = handle.value
        model._open_children += 1
        self.k_codec, self.v_codec = k, v
        self.center_keys = bool(center_keys)
        try:
            for layer, (lk, lv) in (layer_codecs or {}).items():
                check(lib.tkv_cache_set_layer_codecs(self._handle, int(layer), codec_id(lk),
                                                     codec_id(lv)))
        except Exception:
            self.close()
            raise

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("cache is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            lib.tkv_cache_free(self._handle)
            self._handle = None
            self.model._open_children -= 1

    def __enter__(self) -> "KVCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __len__(self) -> int:
        return int(lib.tkv_cache_n_tokens(self.handle))

    @property
    def capacity(self) -> int:
        return int(lib.tkv_cache_capacity(self.handle))

    @property
    def bytes_used(self) -> int:
        """Bytes the stored tokens take."""
        return int(lib.tkv_cache_bytes_used(self.handle))

    @property
    def bytes_per_token(self) -> int:
        """Bytes one compressed token takes (all layers and heads, K + V)."""
        return int(lib.tkv_cache_bytes_per_token(self.handle))

    @property
    def bytes_allocated(self) -> int:
        return int(lib.tkv_cache_bytes_allocated(self.handle))

    def truncate(self, n_tokens: int) -> None:
        """Drop every token at position >= n_tokens."""
        check(lib.tkv_cache_truncate(self.handle, int(n_tokens)))

    def __repr__(self) -> str:
        return (f"KVCache(k={self.k_codec}, v={self.v_codec}, tokens={len(self)}, "
                f"{self.bytes_per_token} B/token)")
