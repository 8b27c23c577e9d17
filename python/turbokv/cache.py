"""A compressed KV cache for one model (owns one ``tkv_cache`` handle)."""
from __future__ import annotations

import ctypes
from typing import Optional, Union

from . import _args
from ._errors import InvalidArgument
from ._handle import Handle
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
    b = _args.u32(calibration_block, "calibration_block")
    if b == 0:
        return DEFAULT_CALIBRATION_BLOCK
    if b == CALIBRATION_ONCE:
        return b
    if not 64 <= b <= 1 << 24:
        raise InvalidArgument(-1, "calibration_block must be None (once), 0 (the default) or "
                                  f"in [64, 16777216], got {b}")
    return b


def smoothing_alpha(smooth_keys: Union[bool, float]) -> float:
    """The smoothing exponent a ``smooth_keys`` argument means (0.0 = off)."""
    if smooth_keys is True:
        return DEFAULT_KEY_SMOOTHING
    if smooth_keys is False or smooth_keys is None:
        return 0.0
    return _args.real(smooth_keys, "smooth_keys", 0.0, 1.0)


class KVCache(Handle):
    """Keys and values of one sequence, compressed with a K codec and a V codec.

    Lifetime (the same rule as Model): ``close()`` refuses (InUseError, naming them)
    while a Session on the cache is open; leaving the cache's ``with`` block closes its
    sessions first, and a Session used after that raises ClosedError.  Every method of
    a closed cache raises ClosedError.

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

    Integer arguments are checked against their C types before any C call (n_ctx,
    fp16_window, sink_tokens: uint32; seed: uint64): TypeError for a non-integer (bool,
    float), InvalidArgument (a ValueError) naming the argument when out of range.
    """

    def __init__(self, model: Model, *, k: str = "turbo_kv_4b", v: str = "turbo_kv_4b",
                 n_ctx: int = 0, fp16_window: int = 0, seed: int = 0,
                 sparse_v_threshold: float = 0.0, center_keys: bool = DEFAULT_CENTER_KEYS,
                 smooth_keys: Union[bool, float] = DEFAULT_SMOOTH_KEYS,
                 sink_tokens: int = DEFAULT_SINK_TOKENS,
                 calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK,
                 layer_codecs: Optional[dict[int, tuple[str, str]]] = None) -> None:
        self.model = model
        params = lib.tkv_cache_default_params()
        params.k_codec = codec_id(k)
        params.v_codec = codec_id(v)
        params.n_ctx = _args.u32(n_ctx, "n_ctx")
        params.fp16_window = _args.u32(fp16_window, "fp16_window")
        params.seed = _args.u64(seed, "seed")
        params.sparse_v_threshold = _args.real(sparse_v_threshold, "sparse_v_threshold", 0.0)
        alpha = smoothing_alpha(smooth_keys)
        params.flags = ((CACHE_FLAG_CENTER_KEYS if center_keys else 0)
                        | (CACHE_FLAG_SMOOTH_KEYS if alpha > 0 else 0))
        params.key_smoothing = alpha
        params.sink_tokens = _args.u32(sink_tokens, "sink_tokens")
        params.calibration_block = calibration_block_value(calibration_block)
        handle = ctypes.c_void_p()
        check(lib.tkv_cache_create(model.handle, ctypes.byref(params), ctypes.byref(handle)))
        self._adopt(handle.value, model)
        self.k_codec, self.v_codec = k, v
        self.center_keys = bool(center_keys)
        self.key_smoothing = alpha
        self.sink_tokens = int(params.sink_tokens)
        self.calibration_block = (None if params.calibration_block == CALIBRATION_ONCE
                                  else int(params.calibration_block))
        try:
            for layer, (lk, lv) in (layer_codecs or {}).items():
                check(lib.tkv_cache_set_layer_codecs(self._handle, _args.u32(layer, "layer"),
                                                     codec_id(lk), codec_id(lv)))
        except Exception:
            self.close()
            raise

    _kind = "KVCache"

    def _free(self, handle: int) -> None:
        lib.tkv_cache_free(handle)

    def __enter__(self) -> "KVCache":
        return self

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
        """Drop every token at position >= n_tokens (0 <= n_tokens < 2**32; a count at or
        above the length is a no-op).  Sessions on the cache continue at the new length."""
        check(lib.tkv_cache_truncate(self.handle, _args.u32(n_tokens, "n_tokens")))

    def __repr__(self) -> str:
        if self._handle is None:
            return f"KVCache(k={self.k_codec}, v={self.v_codec}, closed)"
        return (f"KVCache(k={self.k_codec}, v={self.v_codec}, tokens={len(self)}, "
                f"{self.bytes_per_token} B/token)")
