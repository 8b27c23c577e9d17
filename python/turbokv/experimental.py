"""[EXPERIMENTAL] research hooks outside the ABI promise (they may change in any release)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from . import _args, _lib
from ._lib import check, float_p, int32_p
from .session import Session


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
