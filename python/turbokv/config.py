"""One cache configuration for every entry point: ``turbokv.CacheConfig``.

``KVCache``, ``generate``, the command line and every harness of ``turbokv.eval`` take a
:class:`CacheConfig` (or a spec string, or keyword arguments that build one).  Its defaults
are the library's, read from ``tkv_cache_default_params()``; its ranges are the library's,
checked by ``tkv_cache_params_check()`` when a configuration is made (before any model is
loaded).  Nothing here restates a default or a range of the C library.

Levers left unset are resolved by one rule, documented in the README ("Cache levers") and
implemented here, in ``_lever_defaults``: on where they act on lossy storage, off on exact
storage; a lever set explicitly is taken as set.

A spec string names a configuration (the command line and gate files use them)::

    K[/V][+plain][+center|+nocenter][+smooth[=ALPHA]|+nosmooth][+sink=N][+cb=N|+once][+w=N]
        [+sparse=T][+L=LAYERS:K/V]...[+seed=N]

    "turbo_kv_4b"                     K and V turbo_kv_4b, levers by the rule (all on)
    "turbo_kv_4b+plain"               the bare codec: centering, smoothing and sinks off
    "turbo_kv_4b+nosmooth"            no key smoothing
    "turbo_kv_5b/turbo_kv_3b"         K at 5 bits, V at 3 bits
    "turbo_kv_3b+plain+center"        only key centering
    "turbo_kv_3b+smooth=0.5"          key smoothing exponent 0.5
    "turbo_kv_3b+sink=0"              no sink token
    "turbo_kv_3b+once"                centering/smoothing calibrated once, on the first batch
    "turbo_kv_3b+cb=128"              ... recalibrated every 128 positions
    "turbo_kv_4b+L=0,29:q8_0/q8_0"    layers 0 and 29 in q8_0
    "turbo_kv_3b+w=64"                the 64 most recent tokens kept in fp16
    "turbo_kv_3b+seed=7"              rotation seeds derived from 7 (default: the library's)
    "fp32"                            exact storage: levers off by the rule
    "fp32+center"                     ... with key centering explicitly on
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from . import _args, _lib
from ._lib import CacheParams, check
from .codec import codec_id as _codec_id

#: tkv_cache_params.flags bits and the calibration_block value of one calibration (ABI).
CACHE_FLAG_CENTER_KEYS = 1 << 0
CACHE_FLAG_SMOOTH_KEYS = 1 << 1
CALIBRATION_ONCE = 0xFFFFFFFF

_C_DEFAULTS = _lib.tkv_cache_default_params()


def _codec_name(codec_id: int) -> str:
    return _lib.tkv_codec_name(codec_id).decode()


#: The library's defaults (tkv_cache_default_params), as Python values.
DEFAULT_CODEC = _codec_name(_C_DEFAULTS.k_codec)
DEFAULT_V_CODEC = _codec_name(_C_DEFAULTS.v_codec)
DEFAULT_KEY_SMOOTHING = round(float(_C_DEFAULTS.key_smoothing), 6)  # float32 -> 0.35
DEFAULT_CALIBRATION_BLOCK = int(_C_DEFAULTS.calibration_block)
_EXACT_CODEC = _codec_id("fp32")


def _lever_defaults(keys_lossy: bool, values_lossy: bool) -> tuple[bool, float, int]:
    """(center_keys, smoothing alpha, sink_tokens) of unset levers: on where they act on lossy
    storage (centering, smoothing: keys; sinks: keys or values), at the library's settings;
    off on exact storage, where they would only move rounding."""
    center = keys_lossy and bool(_C_DEFAULTS.flags & CACHE_FLAG_CENTER_KEYS)
    smooth = DEFAULT_KEY_SMOOTHING if keys_lossy and _C_DEFAULTS.flags & CACHE_FLAG_SMOOTH_KEYS \
        else 0.0
    sink = int(_C_DEFAULTS.sink_tokens) if keys_lossy or values_lossy else 0
    return center, smooth, sink


def _alpha(smooth_keys: Union[None, bool, float], name: str = "smooth_keys") -> Optional[float]:
    """The smoothing exponent of a ``smooth_keys`` value (None stays unset, 0.0 = off)."""
    if smooth_keys is None:
        return None
    if smooth_keys is True:
        return DEFAULT_KEY_SMOOTHING
    if smooth_keys is False:
        return 0.0
    return _args.real(smooth_keys, name)  # its range is the library's (params check)


@dataclass(frozen=True)
class CacheConfig:
    """K/V codecs and the cache's settings; the levers resolved by the rule (module doc).

    Args:
        k, v: codec names of keys and values (``v`` None: the same as ``k``); default the
            library's (``turbo_kv_4b``).
        center_keys: subtract a per-(layer, head, block) mean key before coding.
        smooth_keys: divide keys / multiply queries by per-channel scales; True = the
            library's exponent, a float = the exponent alpha, False or 0 = off.
        sink_tokens: first positions stored exactly (fp32 K and V).
        calibration_block: positions per calibration block of centering and smoothing
            (0 = the library's); None = one calibration on the first batch.
        fp16_window: most recent tokens kept in fp16 before compression (0 = off).
        sparse_v_threshold: skip values whose softmax weight is below it (0 = off).
        layer_codecs: per-layer overrides, ``{layer: (k, v)}`` or ``((layer, k, v), ...)``.
        seed: rotation seeds derive from it per (layer, head).

    The three levers left None are resolved when the configuration is made, so the fields
    always hold what the cache will do.  Bad values raise TypeError / InvalidArgument with
    the library's message (``tkv_cache_params_check``).
    """

    k: str = DEFAULT_CODEC
    v: Optional[str] = None
    center_keys: Optional[bool] = None
    smooth_keys: Union[None, bool, float] = None     # resolved: the exponent, 0.0 = off
    sink_tokens: Optional[int] = None
    calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK   # None = once
    fp16_window: int = int(_C_DEFAULTS.fp16_window)
    sparse_v_threshold: float = float(_C_DEFAULTS.sparse_v_threshold)
    layer_codecs: Any = field(default_factory=tuple)  # resolved: ((layer, k, v), ...) sorted
    seed: int = int(_C_DEFAULTS.seed)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.v is None:
            set_("v", self.k)
        lc = self.layer_codecs
        items = [(l, kv[0], kv[1]) for l, kv in lc.items()] if isinstance(lc, Mapping) \
            else list(lc or ())
        set_("layer_codecs", tuple(sorted(
            (_args.u32(l, "layer"), str(a), str(b)) for l, a, b in items)))
        ids_k = [_codec_id(self.k)] + [_codec_id(a) for _, a, _ in self.layer_codecs]
        ids_v = [_codec_id(str(self.v))] + [_codec_id(b) for _, _, b in self.layer_codecs]
        set_("fp16_window", _args.u32(self.fp16_window, "fp16_window"))
        set_("seed", _args.u64(self.seed, "seed"))
        set_("sparse_v_threshold", _args.real(self.sparse_v_threshold, "sparse_v_threshold"))
        window = self.fp16_window > 0
        keys_lossy = window or any(i != _EXACT_CODEC for i in ids_k)
        values_lossy = window or any(i != _EXACT_CODEC for i in ids_v)
        center, alpha, sink = _lever_defaults(keys_lossy, values_lossy)
        if self.center_keys is not None:
            if not isinstance(self.center_keys, (bool, int)):
                raise TypeError(f"center_keys must be a bool, got {self.center_keys!r}")
            center = bool(self.center_keys)
        given = _alpha(self.smooth_keys)
        alpha = alpha if given is None else given
        if self.sink_tokens is not None:
            sink = _args.u32(self.sink_tokens, "sink_tokens")
        set_("center_keys", center)
        set_("smooth_keys", alpha)
        set_("sink_tokens", sink)
        if self.calibration_block is not None:
            b = _args.u32(self.calibration_block, "calibration_block")
            set_("calibration_block", None if b == CALIBRATION_ONCE
                 else b or DEFAULT_CALIBRATION_BLOCK)
        check(_lib.tkv_cache_params_check(ctypes.byref(self.params())))
        if not (center or alpha):  # nothing is calibrated: one configuration whatever the block
            set_("calibration_block", DEFAULT_CALIBRATION_BLOCK)

    def params(self, n_ctx: int = 0) -> CacheParams:
        """This configuration as ``tkv_cache_params`` (layer overrides are set on the cache
        after creation, see ``KVCache``)."""
        p = _lib.tkv_cache_default_params()
        p.k_codec = _codec_id(self.k)
        p.v_codec = _codec_id(str(self.v))
        p.n_ctx = _args.u32(n_ctx, "n_ctx")
        p.fp16_window = self.fp16_window
        p.seed = self.seed
        p.sparse_v_threshold = self.sparse_v_threshold
        alpha = float(self.smooth_keys or 0.0)
        p.flags = ((CACHE_FLAG_CENTER_KEYS if self.center_keys else 0)
                   | (CACHE_FLAG_SMOOTH_KEYS if alpha > 0 else 0))
        p.key_smoothing = alpha
        p.sink_tokens = int(self.sink_tokens or 0)
        p.calibration_block = (CALIBRATION_ONCE if self.calibration_block is None
                               else self.calibration_block)
        return p

    @classmethod
    def parse(cls, spec: Union[str, "CacheConfig"]) -> "CacheConfig":
        """A configuration from a spec string (module docstring); a CacheConfig passes."""
        if isinstance(spec, CacheConfig):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"cache spec must be a str or a CacheConfig, got {spec!r}")
        parts = [p.strip() for p in spec.split("+")]
        if not parts[0]:
            raise ValueError(f"cache spec {spec!r}: missing codec name")
        k, _, v = parts[0].partition("/")
        kw: dict[str, Any] = {}
        layers: list[tuple[int, str, str]] = []
        try:
            for p in parts[1:]:
                if p == "plain":
                    kw.update(center_keys=False, smooth_keys=0.0, sink_tokens=0)
                elif p in ("center", "c", "nocenter"):
                    kw["center_keys"] = p != "nocenter"
                elif p in ("smooth", "nosmooth"):
                    kw["smooth_keys"] = p == "smooth"
                elif p.startswith("smooth="):
                    kw["smooth_keys"] = float(p[7:])
                elif p.startswith("sink="):
                    kw["sink_tokens"] = int(p[5:])
                elif p == "once":
                    kw["calibration_block"] = None
                elif p.startswith("cb="):
                    kw["calibration_block"] = int(p[3:])
                elif p.startswith("w="):
                    kw["fp16_window"] = int(p[2:])
                elif p.startswith("sparse="):
                    kw["sparse_v_threshold"] = float(p[7:])
                elif p.startswith("seed="):
                    kw["seed"] = int(p[5:])
                elif p.startswith("L="):
                    which, _, codecs = p[2:].partition(":")
                    lk, _, lv = codecs.partition("/")
                    if not which or not lk:
                        raise ValueError("layer override must look like L=0,29:q8_0/q8_0")
                    layers += [(int(layer), lk, lv or lk) for layer in which.split(",")]
                else:
                    raise ValueError(
                        f"unknown option {p!r} (known: plain, center, nocenter, smooth[=ALPHA], "
                        "nosmooth, sink=N, cb=N, once, w=N, sparse=T, L=LAYERS:K/V, seed=N)")
            return cls(k, v or None, layer_codecs=tuple(layers), **kw)
        except ValueError as exc:  # InvalidArgument is a ValueError too
            message = getattr(exc, "message", None) or str(exc)
            raise type(exc)(*((exc.status, f"cache spec {spec!r}: {message}")
                              if hasattr(exc, "status") else (f"cache spec {spec!r}: {message}",))
                            ) from None

    def _defaults(self) -> tuple[bool, float, int]:
        return CacheConfig(self.k, self.v, fp16_window=self.fp16_window,
                           layer_codecs=self.layer_codecs)._levers()

    def _levers(self) -> tuple[bool, float, int]:
        return bool(self.center_keys), float(self.smooth_keys or 0.0), int(self.sink_tokens or 0)

    @property
    def name(self) -> str:
        """The spec string of this configuration (``parse(c.name) == c``)."""
        s = self.k if self.k == self.v else f"{self.k}/{self.v}"
        center, alpha, sink = self._levers()
        d_center, d_alpha, d_sink = self._defaults()
        if (center, alpha, sink) == (False, 0.0, 0) and (d_center or d_alpha or d_sink):
            s += "+plain"
        else:
            if center != d_center:
                s += "+center" if center else "+nocenter"
            if alpha != d_alpha:
                s += ("+nosmooth" if not alpha else "+smooth" if alpha == DEFAULT_KEY_SMOOTHING
                      else f"+smooth={alpha:g}")
            if sink != d_sink:
                s += f"+sink={sink}"
        if (center or alpha) and self.calibration_block != DEFAULT_CALIBRATION_BLOCK:
            s += "+once" if self.calibration_block is None else f"+cb={self.calibration_block}"
        if self.fp16_window:
            s += f"+w={self.fp16_window}"
        if self.sparse_v_threshold:
            s += f"+sparse={self.sparse_v_threshold:g}"
        groups: dict[tuple[str, str], list[int]] = {}
        for l, a, b in self.layer_codecs:
            groups.setdefault((a, b), []).append(l)
        for (a, b), ls in groups.items():
            s += f"+L={','.join(map(str, ls))}:{a}" + (f"/{b}" if b != a else "")
        if self.seed != _C_DEFAULTS.seed:
            s += f"+seed={self.seed}"
        return s

    def __str__(self) -> str:
        return self.name

    @property
    def is_fp32(self) -> bool:
        """True when this cache stores keys and values exactly (the baseline)."""
        return (self.k == "fp32" and self.v == "fp32" and not self.fp16_window
                and all(a == b == "fp32" for _, a, b in self.layer_codecs))

    def layer_pair(self, layer: int) -> tuple[str, str]:
        """The (K, V) codecs of one layer."""
        for l, a, b in self.layer_codecs:
            if l == layer:
                return a, b
        return self.k, str(self.v)

    def bytes_per_token(self, model: Any) -> int:
        """KV bytes of one token over all layers and KV heads (codec metadata included)."""
        from .codec import codec_info

        total = 0
        for layer in range(model.n_layer):
            a, b = self.layer_pair(layer)
            total += (codec_info(a, model.head_dim).bytes_per_vector
                      + codec_info(b, model.head_dim).bytes_per_vector) * model.n_head_kv
        return total

    def calibration_bytes_per_token(self, model: Any) -> float:
        """Bytes of the per-block calibration (fp16 key offsets and/or scales of every
        layer and KV head) per position, amortized over a block; 0 when calibrated once
        (one block for the whole sequence)."""
        levers = int(bool(self.center_keys)) + int(bool(self.smooth_keys))
        if not levers or self.calibration_block is None:
            return 0.0
        return levers * 2.0 * model.head_dim * model.n_layer * model.n_head_kv / self.calibration_block

    def bits_per_element(self, model: Any) -> float:
        """Stored bits per K/V element, averaged over layers, metadata included (codec
        metadata and the amortized calibration blocks)."""
        total = self.bytes_per_token(model) + self.calibration_bytes_per_token(model)
        return total * 8.0 / (model.n_layer * model.n_head_kv * model.head_dim * 2)

    def cache(self, model: Any, n_ctx: int = 0) -> Any:
        """A fresh ``KVCache`` with this configuration."""
        from .cache import KVCache

        return KVCache(model, self, n_ctx=n_ctx)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "v": self.v, "center_keys": self.center_keys,
                "smooth_keys": self.smooth_keys, "sink_tokens": self.sink_tokens,
                "calibration_block": self.calibration_block, "fp16_window": self.fp16_window,
                "sparse_v_threshold": self.sparse_v_threshold,
                "layer_codecs": {str(l): [a, b] for l, a, b in self.layer_codecs},
                "seed": self.seed}


FP32 = CacheConfig("fp32", "fp32")


class _Unset:
    """Default of a ``calibration_block`` keyword: not given (None there means "once")."""

    def __repr__(self) -> str:
        return "<the library's default>"


UNSET: Any = _Unset()


def as_config(value: Union[None, str, CacheConfig] = None, **settings: Any) -> CacheConfig:
    """A CacheConfig from a spec string, a CacheConfig, or (``value`` None) keyword
    arguments of CacheConfig.  Keywords that are None (``calibration_block``: UNSET) are
    not given.  Settings given both ways are a TypeError: one source per call."""
    given = {k: v for k, v in settings.items()
             if v is not UNSET and (v is not None or k == "calibration_block")}
    if value is None:
        return CacheConfig(**given)
    if given:
        raise TypeError(f"pass the cache settings either as a configuration ({value!s}) or as "
                        f"keywords, not both (got {', '.join(sorted(given))})")
    return CacheConfig.parse(value)


def as_configs(items: Union[None, str, CacheConfig, Sequence[Union[str, CacheConfig]]]
               ) -> list[CacheConfig]:
    """A list of CacheConfig from a spec string, a CacheConfig or a list of either."""
    if items is None:
        return []
    if isinstance(items, (str, CacheConfig)):
        items = [items]
    return [CacheConfig.parse(i) for i in items]
