"""What one evaluated cache looks like: K/V codecs and the cache's levers.

A configuration can be written as a short spec string, used by the command line and
the gate files.  The levers start at the cache's defaults (``KVCache``: key centering
and key smoothing on, calibrated every 256 positions, 1 sink token), so a spec measures
what ``generate`` runs::

    K[/V][+plain][+center|+nocenter][+smooth[=ALPHA]|+nosmooth][+sink=N][+cb=N|+once][+w=N]
        [+L=LAYERS:K/V]...

    "turbo_kv_4b"                     K and V turbo_kv_4b, default levers
    "turbo_kv_4b+plain"               the bare codec: centering, smoothing and sinks off
    "turbo_kv_4b+nosmooth"            no key smoothing
    "turbo_kv_5b/turbo_kv_3b"         K at 5 bits, V at 3 bits
    "turbo_kv_3b+plain+center"        only key centering
    "turbo_kv_3b+smooth=0.5"          key smoothing exponent 0.5 (default 0.35)
    "turbo_kv_3b+sink=0"              no sink token
    "turbo_kv_3b+once"                centering/smoothing calibrated once, on the first batch
    "turbo_kv_3b+cb=128"              ... recalibrated every 128 positions (default 256)
    "turbo_kv_4b+L=0,29:q8_0/q8_0"   layers 0 and 29 in q8_0
    "turbo_kv_3b+w=64"                the 64 most recent tokens kept in fp16
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from ..cache import (CALIBRATION_ONCE, DEFAULT_CALIBRATION_BLOCK, DEFAULT_CENTER_KEYS,
                     DEFAULT_KEY_SMOOTHING, DEFAULT_SINK_TOKENS, DEFAULT_SMOOTH_KEYS, KVCache,
                     calibration_block_value, smoothing_alpha)
from ..codec import codec_info
from ..model import Model


@dataclass(frozen=True)
class CacheConfig:
    """K/V codecs plus the cache's levers (see ``KVCache``)."""

    k: str = "fp32"
    v: Optional[str] = None            # None = same as k
    center_keys: bool = DEFAULT_CENTER_KEYS
    fp16_window: int = 0
    layer_codecs: tuple[tuple[int, str, str], ...] = field(default_factory=tuple)
    seed: int = 0
    smooth_keys: float = smoothing_alpha(DEFAULT_SMOOTH_KEYS)  # exponent alpha, 0 = off
    sink_tokens: int = DEFAULT_SINK_TOKENS                     # first positions kept exact
    calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK  # None = calibrate once

    def __post_init__(self) -> None:
        if self.v is None:
            object.__setattr__(self, "v", self.k)
        object.__setattr__(self, "smooth_keys", smoothing_alpha(self.smooth_keys))
        object.__setattr__(self, "layer_codecs",
                           tuple(sorted((int(l), str(a), str(b)) for l, a, b in self.layer_codecs)))
        if self.fp16_window < 0 or self.sink_tokens < 0:
            raise ValueError("fp16_window and sink_tokens must be >= 0")
        cb = calibration_block_value(self.calibration_block)
        object.__setattr__(self, "calibration_block", None if cb == CALIBRATION_ONCE else cb)
        if not (self.center_keys or self.smooth_keys):
            # nothing is calibrated: one configuration whatever the block
            object.__setattr__(self, "calibration_block", DEFAULT_CALIBRATION_BLOCK)
        if self.is_fp32:
            # exact storage: the levers change nothing in exact arithmetic, so the
            # baseline is one configuration, the plain fp32 cache
            object.__setattr__(self, "center_keys", False)
            object.__setattr__(self, "smooth_keys", 0.0)
            object.__setattr__(self, "sink_tokens", 0)
            object.__setattr__(self, "calibration_block", DEFAULT_CALIBRATION_BLOCK)

    @classmethod
    def make(cls, k: str = "fp32", v: Optional[str] = None, *,
             center_keys: bool = DEFAULT_CENTER_KEYS,
             smooth_keys: Union[bool, float] = DEFAULT_SMOOTH_KEYS,
             sink_tokens: int = DEFAULT_SINK_TOKENS,
             calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK,
             fp16_window: int = 0,
             layer_codecs: Optional[Mapping[int, tuple[str, str]]] = None,
             seed: int = 0) -> "CacheConfig":
        """From ``KVCache``-style arguments (``layer_codecs`` as {layer: (k, v)})."""
        lc = tuple((int(l), kv[0], kv[1]) for l, kv in (layer_codecs or {}).items())
        return cls(k, v, center_keys, int(fp16_window), lc, int(seed),
                   smoothing_alpha(smooth_keys), int(sink_tokens), calibration_block)

    @classmethod
    def parse(cls, spec: Union[str, "CacheConfig"]) -> "CacheConfig":
        """Parse a spec string (see the module docstring)."""
        if isinstance(spec, CacheConfig):
            return spec
        parts = [p.strip() for p in str(spec).split("+")]
        if not parts[0]:
            raise ValueError(f"cache spec {spec!r}: missing codec name")
        k, _, v = parts[0].partition("/")
        center = DEFAULT_CENTER_KEYS
        smooth = smoothing_alpha(DEFAULT_SMOOTH_KEYS)
        sink, window, layers = DEFAULT_SINK_TOKENS, 0, []
        calib: Optional[int] = DEFAULT_CALIBRATION_BLOCK
        for p in parts[1:]:
            if p == "plain":
                center, smooth, sink = False, 0.0, 0
            elif p in ("center", "c"):
                center = True
            elif p == "nocenter":
                center = False
            elif p == "nosmooth":
                smooth = 0.0
            elif p == "smooth":
                smooth = DEFAULT_KEY_SMOOTHING
            elif p.startswith("smooth="):
                smooth = float(p[7:])
                if not 0.0 < smooth <= 1.0:
                    raise ValueError(f"cache spec {spec!r}: smoothing exponent must be in (0, 1]")
            elif p.startswith("sink="):
                sink = int(p[5:])
            elif p == "once":
                calib = None
            elif p.startswith("cb="):
                calib = int(p[3:])
                if not 64 <= calib <= 1 << 24:
                    raise ValueError(f"cache spec {spec!r}: calibration block must be 64..16777216")
            elif p.startswith("w="):
                window = int(p[2:])
            elif p.startswith("L="):
                which, _, codecs = p[2:].partition(":")
                lk, _, lv = codecs.partition("/")
                if not which or not lk:
                    raise ValueError(f"cache spec {spec!r}: layer override must look like "
                                     "L=0,29:q8_0/q8_0")
                for layer in which.split(","):
                    layers.append((int(layer), lk, lv or lk))
            else:
                raise ValueError(f"cache spec {spec!r}: unknown option {p!r} "
                                 "(known: plain, center, nocenter, smooth[=ALPHA], nosmooth, "
                                 "sink=N, cb=N, once, w=N, L=LAYERS:K/V)")
        return cls(k, v or None, center, window, tuple(layers), 0, smooth, sink, calib)

    @property
    def name(self) -> str:
        """The spec string of this configuration (``parse(c.name) == c``)."""
        s = self.k if self.k == self.v else f"{self.k}/{self.v}"
        if self.is_fp32:
            pass
        elif not (self.center_keys or self.smooth_keys or self.sink_tokens):
            s += "+plain"
        else:
            if self.center_keys != DEFAULT_CENTER_KEYS:
                s += "+center" if self.center_keys else "+nocenter"
            if self.smooth_keys != smoothing_alpha(DEFAULT_SMOOTH_KEYS):
                s += ("+nosmooth" if not self.smooth_keys
                      else "+smooth" if self.smooth_keys == DEFAULT_KEY_SMOOTHING
                      else f"+smooth={self.smooth_keys:g}")
            if self.sink_tokens != DEFAULT_SINK_TOKENS:
                s += f"+sink={self.sink_tokens}"
            if (self.center_keys or self.smooth_keys) and \
                    self.calibration_block != DEFAULT_CALIBRATION_BLOCK:
                s += "+once" if self.calibration_block is None else f"+cb={self.calibration_block}"
        if self.fp16_window:
            s += f"+w={self.fp16_window}"
        groups: dict[tuple[str, str], list[int]] = {}
        for l, a, b in self.layer_codecs:
            groups.setdefault((a, b), []).append(l)
        for (a, b), ls in groups.items():
            s += f"+L={','.join(map(str, ls))}:{a}" + (f"/{b}" if b != a else "")
        return s

    @property
    def is_fp32(self) -> bool:
        """True when this cache stores keys and values exactly (the baseline)."""
        return (self.k == "fp32" and self.v == "fp32" and not self.fp16_window
                and all(a == b == "fp32" for _, a, b in self.layer_codecs))

    def layer_pair(self, layer: int) -> tuple[str, str]:
        for l, a, b in self.layer_codecs:
            if l == layer:
                return a, b
        return self.k, str(self.v)

    def bytes_per_token(self, model: Model) -> int:
        """KV bytes of one token over all layers and KV heads (codec metadata included)."""
        total = 0
        for layer in range(model.n_layer):
            a, b = self.layer_pair(layer)
            total += (codec_info(a, model.head_dim).bytes_per_vector
                      + codec_info(b, model.head_dim).bytes_per_vector) * model.n_head_kv
        return total

    def calibration_bytes_per_token(self, model: Model) -> float:
        """Bytes of the per-block calibration (fp16 key offsets and/or scales of every
        layer and KV head) per position, amortized over a block; 0 when calibrated once
        (one block for the whole sequence)."""
        levers = int(self.center_keys) + int(self.smooth_keys > 0)
        if not levers or self.calibration_block is None:
            return 0.0
        return levers * 2.0 * model.head_dim * model.n_layer * model.n_head_kv / self.calibration_block

    def bits_per_element(self, model: Model) -> float:
        """Stored bits per K/V element, averaged over layers, metadata included (codec
        metadata and the amortized calibration blocks)."""
        total = self.bytes_per_token(model) + self.calibration_bytes_per_token(model)
        return total * 8.0 / (model.n_layer * model.n_head_kv * model.head_dim * 2)

    def cache(self, model: Model, n_ctx: int) -> KVCache:
        """A fresh ``KVCache`` with this configuration."""
        return KVCache(model, k=self.k, v=str(self.v), n_ctx=n_ctx, fp16_window=self.fp16_window,
                       seed=self.seed, center_keys=self.center_keys,
                       smooth_keys=self.smooth_keys, sink_tokens=self.sink_tokens,
                       calibration_block=self.calibration_block,
                       layer_codecs={l: (a, b) for l, a, b in self.layer_codecs})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "v": self.v, "center_keys": self.center_keys,
                "smooth_keys": self.smooth_keys, "sink_tokens": self.sink_tokens,
                "calibration_block": self.calibration_block,
                "fp16_window": self.fp16_window,
                "layer_codecs": {str(l): [a, b] for l, a, b in self.layer_codecs},
                "seed": self.seed}


FP32 = CacheConfig("fp32", "fp32")


def as_configs(items: Any) -> list[CacheConfig]:
    """A list of CacheConfig from a spec string, a CacheConfig or a list of either."""
    if items is None:
        return []
    if isinstance(items, (str, CacheConfig)):
        items = [items]
    return [CacheConfig.parse(i) for i in items]
