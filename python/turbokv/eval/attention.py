"""Attention cosine on real activations: which layers and heads a codec hurts.

A forward pass with an fp32 cache over real text captures every layer's post-RoPE
queries, keys and values (``turbokv.experimental.eval_capture``).  Then, per layer and
KV head, keys and values are encoded with each codec (seed per (layer, head)) and, for a
subset of query positions (every ``stride``-th), the causal attention output of each
query head of the group over the prefix is computed from the codes (scores on the codes
with ``Encoded.scores``, values decoded) and compared with exact float64 attention over
the fp32 vectors.

The cache's levers are applied as the cache applies them, with the whole capture as
the first batch: ``center_keys`` subtracts a mean key of the (layer, head) before
encoding and ``smooth_keys`` divides keys (and multiplies queries) by per-channel scales,
both per calibration block, with the offsets and scales the library itself computes
(``turbokv.experimental.key_calibration``, the cache's own code); block b's scores get
<q, mu_b - mu_0> added, so every score of a query differs from the exact one by the
same <q, mu_0>, which softmax cancels (the score cosine is taken between mean-removed
score vectors).  The first ``sink_tokens`` positions stay exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from ..cache import KVCache
from ..codec import Codec, Encoded
from ..experimental import CapturedQKV, eval_capture, key_calibration
from ..model import Model
from ..session import Session
from ._progress import bar
from .config import CacheConfig, as_configs
from .data import resolve_text

DEFAULT_TEXT = "wikitext-2"


def capture_tokens(model: Model, *, text: Optional[str] = None, n_tokens: int = 512,
                   offset: int = 0) -> npt.NDArray[np.int32]:
    """The tokens ``capture`` evaluates: ``n_tokens`` of ``text`` (BOS first)."""
    _, content = resolve_text(text, DEFAULT_TEXT)
    toks = model.tokenize(content, add_bos=True)
    if model.bos >= 0 and offset:
        toks = np.concatenate([[model.bos], toks[1 + offset:]]).astype(np.int32)
    toks = toks[:n_tokens]
    if toks.size < 2:
        raise ValueError("need at least 2 tokens to capture")
    return toks


def capture(model: Model, *, text: Optional[str] = None, n_tokens: int = 512, offset: int = 0,
            n_threads: int = 0, tokens: Optional[npt.NDArray[np.int32]] = None) -> CapturedQKV:
    """Q/K/V of every layer for ``n_tokens`` tokens of ``text`` (BOS first), fp32 cache
    (or of ``tokens`` when given)."""
    toks = capture_tokens(model, text=text, n_tokens=n_tokens, offset=offset) \
        if tokens is None else tokens
    with KVCache(model, k="fp32", v="fp32", n_ctx=int(toks.size)) as cache, \
            Session(cache, n_threads=n_threads, n_batch=int(toks.size)) as s:
        return eval_capture(s, toks)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-300)


def block_calibration(keys: np.ndarray, queries: np.ndarray, cfg: CacheConfig
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-position key offsets and scales (n, d) as a cache of ``cfg`` sets them when the
    n positions arrive as one batch (the library's own calibration, through
    ``turbokv.experimental.key_calibration``).  keys: (n, d); queries: (n, group, d)."""
    n = keys.shape[0]
    mu_b, s_b = key_calibration(keys, queries, cfg)
    per_block = n if cfg.calibration_block is None else int(cfg.calibration_block)
    rows = np.arange(n) // per_block
    return mu_b[rows].astype(np.float64), s_b[rows].astype(np.float64)


def _seed(base: int, layer: int, head: int) -> int:
    return (base * 1_000_003 + layer * 1009 + head * 2) % (2**63)


@dataclass
class AttentionResult:
    """Attention-output and score cosines of one codec configuration against fp32.

    per_layer / per_layer_worst: (n_layer,); per_head: (n_layer, n_head_kv) means.
    """

    config: CacheConfig
    n_tokens: int
    n_queries: int                      # (position, query head) pairs per layer
    mean: float
    worst: float
    score_mean: float
    score_worst: float
    per_layer: npt.NDArray[np.float64]
    per_layer_worst: npt.NDArray[np.float64]
    per_head: npt.NDArray[np.float64]
    score_per_layer: npt.NDArray[np.float64]

    @classmethod
    def from_dict(cls, config: CacheConfig, d: Mapping[str, Any]) -> "AttentionResult":
        """The result ``to_dict`` wrote (the same bits: floats round-trip through JSON)."""
        return cls(config=config, n_tokens=int(d["n_tokens"]), n_queries=int(d["n_queries"]),
                   mean=d["mean"], worst=d["worst"], score_mean=d["score_mean"],
                   score_worst=d["score_worst"], per_layer=np.array(d["per_layer"]),
                   per_layer_worst=np.array(d["per_layer_worst"]),
                   per_head=np.array(d["per_head"]),
                   score_per_layer=np.array(d["score_per_layer"]))

    def worst_layers(self, n: int = 5) -> list[int]:
        """The n layers with the lowest mean output cosine, worst first."""
        return [int(i) for i in np.argsort(self.per_layer)[:n]]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.name, **self.config.to_dict(), "n_tokens": self.n_tokens,
                "n_queries": self.n_queries, "mean": self.mean, "worst": self.worst,
                "score_mean": self.score_mean, "score_worst": self.score_worst,
                "per_layer": self.per_layer.tolist(),
                "per_layer_worst": self.per_layer_worst.tolist(),
                "per_head": self.per_head.tolist(), "score_per_layer": self.score_per_layer.tolist(),
                "worst_layers": self.worst_layers()}


def attention_cosine_eval(qkv: CapturedQKV, config: Union[str, CacheConfig], *, stride: int = 16,
                          progress: bool = True) -> AttentionResult:
    """Compare one configuration with fp32 on captured activations (see module doc).

    Layer overrides of the configuration apply; ``fp16_window`` is ignored (every key
    and value is encoded)."""
    cfg = CacheConfig.parse(config)
    n, n_layer, n_head, d = qkv.q.shape
    n_kv = qkv.k.shape[2]
    group = n_head // n_kv
    scale = 1.0 / np.sqrt(d)
    positions = np.arange(min(stride, n) - 1, n, stride)
    out_cos = np.zeros((n_layer, n_kv, positions.size, group))
    sc_cos = np.zeros_like(out_cos)
    for layer in bar(range(n_layer), progress=progress, desc=f"attention {cfg.name}",
                     unit="layer"):
        k_name, v_name = cfg.layer_pair(layer)
        for g in range(n_kv):
            keys = np.ascontiguousarray(qkv.k[:, layer, g], dtype=np.float32)
            vals = np.ascontiguousarray(qkv.v[:, layer, g], dtype=np.float32)
            q_group = qkv.q[:, layer, g * group:(g + 1) * group]
            mu, sc = block_calibration(keys, q_group, cfg)
            B = n if cfg.calibration_block is None else cfg.calibration_block
            stored = np.ascontiguousarray((keys - mu) / sc, dtype=np.float32)
            n_sink = min(cfg.sink_tokens, n)
            seed = _seed(cfg.seed, layer, g)
            with Codec(k_name, d, seed=seed) as ck, Codec(v_name, d, seed=seed + 1) as cv:
                ek, ev = ck.encode(stored), cv.encode(vals)
                k64, v64 = keys.astype(np.float64), vals.astype(np.float64)
                v_got = ev.decode().astype(np.float64)
                v_got[:n_sink] = v64[:n_sink]
                for pi, t in enumerate(positions):
                    qs = np.ascontiguousarray(q_group[t], dtype=np.float64)
                    s_got = np.empty((group, t + 1))
                    for lo in range(0, t + 1, B):
                        hi = min(t + 1, lo + B)
                        q_stored = np.ascontiguousarray(qs * sc[lo], dtype=np.float32)
                        pk = Encoded(ck, ek.codes[lo:hi])
                        s_got[:, lo:hi] = np.stack([pk.scores(q_stored[j]) for j in range(group)])
                        s_got[:, lo:hi] += (qs @ (mu[lo] - mu[0]))[:, None]
                        if lo < n_sink:
                            e = min(hi, n_sink)
                            s_got[:, lo:e] = q_stored.astype(np.float64) @ \
                                stored[lo:e].astype(np.float64).T
                    w_got = np.exp(scale * (s_got - s_got.max(axis=1, keepdims=True)))
                    w_got /= w_got.sum(axis=1, keepdims=True)
                    got = w_got @ v_got[: t + 1]
                    s_ref = qs @ k64[: t + 1].T * scale
                    w = np.exp(s_ref - s_ref.max(axis=1, keepdims=True))
                    w /= w.sum(axis=1, keepdims=True)
                    ref = w @ v64[: t + 1]
                    out_cos[layer, g, pi] = _cos(got, ref)
                    if t == 0:
                        sc_cos[layer, g, pi] = 1.0
                        continue
                    a = s_got - s_got.mean(axis=1, keepdims=True)
                    b = s_ref - s_ref.mean(axis=1, keepdims=True)
                    sc_cos[layer, g, pi] = _cos(a, b)
    flat = out_cos.reshape(n_layer, -1)
    sflat = sc_cos.reshape(n_layer, -1)
    return AttentionResult(
        config=cfg, n_tokens=n, n_queries=int(flat.shape[1]), mean=float(flat.mean()),
        worst=float(flat.min()), score_mean=float(sflat.mean()), score_worst=float(sflat.min()),
        per_layer=flat.mean(axis=1), per_layer_worst=flat.min(axis=1),
        per_head=out_cos.reshape(n_layer, n_kv, -1).mean(axis=2),
        score_per_layer=sflat.mean(axis=1))


def attention_eval(model: Model, configs: Union[str, CacheConfig, Sequence[Union[str, CacheConfig]]],
                   *, text: Optional[str] = None, n_tokens: int = 512, stride: int = 16,
                   n_threads: int = 0, qkv: Optional[CapturedQKV] = None, progress: bool = True,
                   client: Any = None, results: Union[None, str, Path] = None) -> list[Any]:
    """Capture real Q/K/V once (or use ``qkv``) and compare each configuration with fp32.

    Returns one AttentionResult per configuration (mean / worst / per-layer cosines of the
    attention output and of the score vectors).  With ``client`` (a
    ``dask.distributed.Client``) the capture is one task and each configuration another,
    on its workers; with ``results`` (a directory) finished configurations are recorded
    and skipped when run again.  A configuration that failed there is a ``TaskFailure``."""
    cfgs = as_configs(configs)
    if client is not None or results is not None:
        from .fanout import FanOut, plan_attention
        if qkv is not None:
            raise ValueError("qkv is captured by the fan-out itself: pass text / n_tokens")
        fan = FanOut(model, client=client, results=results, n_threads=n_threads,
                     progress=progress, desc="attention")
        done = plan_attention(fan, cfgs, text=text, n_tokens=n_tokens, stride=stride)
        fan.run()
        return done()
    if qkv is None:
        qkv = capture(model, text=text, n_tokens=n_tokens, n_threads=n_threads)
    return [attention_cosine_eval(qkv, c, stride=stride, progress=progress) for c in cfgs]
