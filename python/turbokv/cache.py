"""A compressed KV cache for one model (owns one ``tkv_cache`` handle)."""
from __future__ import annotations

import ctypes
from typing import Optional, Union

from ._lib import check, lib
from .codec import codec_id
from .model import Model

CACHE_FLAG_CENTER_KEYS = 1
CACHE_FLAG_SMOOTH_KEYS = 2

# The library's defaults (tkv_cache_default_params) are the package's defaults.
_C_DEFAULTS = lib.tkv_cache_default_params()
DEFAULT_CENTER_KEYS = bool(_C_DEFAULTS.flags & CACHE_FLAG_CENTER_KEYS)
DEFAULT_KEY_SMOOTHING = round(float(_C_DEFAULTS.key_smoothing), 6)  # alpha of smooth_keys=True
DEFAULT_SMOOTH_KEYS = bool(_C_DEFAULTS.flags & CACHE_FLAG_SMOOTH_KEYS)
DEFAULT_SINK_TOKENS = int(_C_DEFAULTS.sink_tokens)
CALIBRATION_ONCE = 0xFFFFFFFF  # TKV_CALIBRATION_ONCE: calibrate once, on the first batch
DEFAULT_CALIBRATION_BLOCK = int(_C_DEFAULTS.calibration_block)


def calibration_block_value(calibration_block: Optional[int]) -> int:
    """The C value of a ``calibration_block`` argument (None = once; 0 = the default)."""
    if calibration_block is None:
        return CALIBRATION_ONCE
    b = int(calibration_block)
    if b == 0:
        return DEFAULT_CALIBRATION_BLOCK
    if b == CALIBRATION_ONCE:
        return b
    if not 64 <= b <= 1 << 24:
        raise ValueError(f"calibration_block must be None (once) or 64..16777216, got {b}")
    return b


def smoothing_alpha(smooth_keys: Union[bool, float]) -> float:
    """The smoothing exponent a ``smooth_keys`` argument means (0.0 = off)."""
    if smooth_keys is True:
        return DEFAULT_KEY_SMOOTHING
    if smooth_keys is False or smooth_keys is None:
        return 0.0
    alpha = float(smooth_keys)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_keys must be a bool or an exponent in (0, 1], got {smooth_keys!r}")
    return alpha


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
        center_keys: subtract a per-(layer, head) vector (the mean key of the calibration
            data, see calibration_block) from every key before coding; attention is
            unchanged in exact arithmetic, and the codec stops spending bits on the keys'
            shared offset.  On by default, as in tkv_cache_default_params().
        smooth_keys: divide keys and multiply queries by per-channel scales
            s = (rms k / rms q)^alpha (8 tokens or more of calibration data), so that
            channels with large keys and small queries stop taking the codec's bits;
            scores are unchanged in exact arithmetic.  True = alpha 0.35 (measured best on
            SmolLM2-135M; 0.5 balances keys and queries exactly), a float = alpha.  On by
            default (measured: KL to fp32 KV -25% at 512 tokens, -23% at 4096).
        sink_tokens: the first positions of the sequence kept exact (fp32 K and V, never
            compressed, at most 64; default 1).  They draw a large share of the softmax
            weight in most heads (attention sinks), so their coding error moves every
            output.
        calibration_block: positions per calibration block of centering and smoothing
            (default 256): block 0 is calibrated on the first batch, every later block on
            the keys and queries of the block before it, because RoPE makes the keys'
            statistics drift along the sequence; each block's offsets and scales cost
            2 * head_dim bytes per KV head and lever (fp16).  None = calibrate once on the
            first batch for the whole sequence (the 0.3 behaviour).
        layer_codecs: {layer: (k_codec, v_codec)} overrides, e.g. {0: ("q8_0", "q8_0")}.
    """

    def __init__(self, model: Model, *, k: str = "turbo_kv_4b", v: str = "turbo_kv_4b",
                 n_ctx: int = 0, fp16_window: int = 0, seed: int = 0,
                 sparse_v_threshold: float = 0.0, center_keys: bool = DEFAULT_CENTER_KEYS,
                 smooth_keys: Union[bool, float] = DEFAULT_SMOOTH_KEYS,
                 sink_tokens: int = DEFAULT_SINK_TOKENS,
                 calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK,
                 layer_codecs: Optional[dict[int, tuple[str, str]]] = None) -> None:
        self._handle: Optional[int] = None
        self.model = model
        params = lib.tkv_cache_default_params()
        params.k_codec = codec_id(k)
        params.v_codec = codec_id(v)
        if n_ctx < 0 or fp16_window < 0 or seed < 0 or sink_tokens < 0:
            raise ValueError("n_ctx, fp16_window, sink_tokens and seed must be >= 0")
        params.n_ctx = int(n_ctx)
        params.fp16_window = int(fp16_window)
        params.seed = int(seed)
        params.sparse_v_threshold = float(sparse_v_threshold)
        alpha = smoothing_alpha(smooth_keys)
        params.flags = ((CACHE_FLAG_CENTER_KEYS if center_keys else 0)
                        | (CACHE_FLAG_SMOOTH_KEYS if alpha > 0 else 0))
        params.key_smoothing = alpha
        params.sink_tokens = int(sink_tokens)
        params.calibration_block = calibration_block_value(calibration_block)
        handle = ctypes.c_void_p()
        check(lib.tkv_cache_create(model.handle, ctypes.byref(params), ctypes.byref(handle)))
        self._handle = handle.value
        model._open_children += 1
        self.k_codec, self.v_codec = k, v
        self.center_keys = bool(center_keys)
        self.key_smoothing = alpha
        self.sink_tokens = int(sink_tokens)
        self.calibration_block = (None if params.calibration_block == CALIBRATION_ONCE
                                  else int(params.calibration_block))
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
