"""[EXPERIMENTAL] research hooks outside the ABI promise (they may change in any release)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import numpy.typing as npt

from . import _args, _lib
from ._lib import check, float_p, int32_p
from .session import Session

if TYPE_CHECKING:
    from .config import CacheConfig


@dataclass
class CapturedQKV:
    """Post-RoPE vectors of every evaluated token and layer.

    q: (n, n_layer, n_head, head_dim); k, v: (n, n_layer, n_head_kv, head_dim).
    """

    q: npt.NDArray[np.float32]
    k: npt.NDArray[np.float32]
    v: npt.NDArray[np.float32]


def eval_capture(session: Session, tokens: Sequence[int]) -> CapturedQKV:
    """``session.eval(tokens)`` that also returns every token's Q, K and V per layer
    (at most the session's n_batch tokens per call)."""
    m = session.model
    arr = _args.tokens(tokens)
    n = arr.size
    q = np.empty((n, m.n_layer, m.n_head, m.head_dim), dtype=np.float32)
    k = np.empty((n, m.n_layer, m.n_head_kv, m.head_dim), dtype=np.float32)
    v = np.empty_like(k)
    check(_lib.tkv_session_eval_capture(session.handle, arr.ctypes.data_as(int32_p), n, 0,
                                       q.ctypes.data_as(float_p), k.ctypes.data_as(float_p),
                                       v.ctypes.data_as(float_p)))
    return CapturedQKV(q, k, v)


def key_calibration(keys: npt.ArrayLike, queries: npt.ArrayLike,
                    config: "Union[str, CacheConfig]") -> tuple[npt.NDArray[np.float32],
                                                             npt.NDArray[np.float32]]:
    """Key offsets mu and scales s of every calibration block, (n_blocks, head_dim) each,
    that a cache of ``config`` sets for one (layer, KV head) whose positions arrive as one
    batch (``tkv_cache_calibrate_keys``, the cache's own code): the cache stores a key of
    block b as (k - mu[b]) / s[b].  keys: (n, head_dim); queries: (n, group, head_dim) or
    (n, head_dim), the query heads of the KV head's group.  mu is 0 without centering,
    s is 1 without smoothing."""
    from .config import CacheConfig
    cfg = CacheConfig.parse(config)
    k = np.ascontiguousarray(keys, dtype=np.float32)
    if k.ndim != 2:
        raise ValueError(f"keys must be (n, head_dim), got shape {k.shape}")
    n, d = k.shape
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(n, -1, d)
    params = cfg.params()
    mu = np.empty((n, d), dtype=np.float32)  # at most one block per position
    s = np.empty_like(mu)
    n_blocks = ctypes.c_size_t()
    check(_lib.tkv_cache_calibrate_keys(ctypes.byref(params), d, q.shape[1],
                                        k.ctypes.data_as(float_p), q.ctypes.data_as(float_p), n,
                                        mu.ctypes.data_as(float_p), s.ctypes.data_as(float_p), n,
                                        ctypes.byref(n_blocks)))
    return mu[:n_blocks.value].copy(), s[:n_blocks.value].copy()
