"""Evaluation and sampling over a compressed cache (owns one ``tkv_session`` handle)."""
from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import numpy.typing as npt

from ._lib import TOKEN_CALLBACK, Timings, check, int32_p, lib
from .cache import KVCache

EVAL_LOGITS_ALL = 1


@dataclass(frozen=True)
class SessionTimings:
    """Wall time per phase since the session was created or its timings reset."""

    prefill_tokens: int
    decode_tokens: int
    prefill_seconds: float
    decode_seconds: float
    matmul_seconds: float
    attention_seconds: float
    other_seconds: float
    sample_seconds: float

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tok_s"] = self.prefill_tok_s
        d["decode_tok_s"] = self.decode_tok_s
        return d


@dataclass(frozen=True)
class Sampling:
    """Sampling settings (temperature 0 = greedy)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = 0

    def _params(self):
        p = lib.tkv_sampler_default_params()
        p.temperature = float(self.temperature)
        p.top_k = int(self.top_k)
        p.top_p = float(self.top_p)
        p.min_p = float(self.min_p)
        p.repeat_penalty = float(self.repeat_penalty)
        p.repeat_last_n = int(self.repeat_last_n)
        p.seed = int(self.seed)
        return p


class Session:
    """Runs the model over a cache: ``eval`` tokens, read ``logits``, ``sample``.

    Not shareable between threads.  Keeps its cache (and so the model) alive.
    """

    def __init__(self, cache: KVCache, *, n_threads: int = 0, n_batch: int = 0) -> None:
        self._handle: Optional[int] = None
        self.cache = cache
        self.model = cache.model
        params = lib.tkv_session_default_params()
        if n_threads < 0 or n_batch < 0:
            raise ValueError("n_threads and n_batch must be >= 0")
        params.n_threads = int(n_threads)
        params.n_batch = int(n_batch)
        handle = ctypes.c_void_p()
        check(lib.tkv_session_create(cache.handle, ctypes.byref(params), ctypes.byref(handle)))
        self._handle = handle.value
        self.n_batch = int(n_batch) or min(256, cache.capacity)

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("session is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            lib.tkv_session_free(self._handle)
            self._handle = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def n_tokens(self) -> int:
        return int(lib.tkv_session_n_tokens(self.handle))

    def eval(self, tokens: Sequence[int], *, all_logits: bool = False) -> None:
        """Append ``tokens`` to the sequence and compute logits (of the last token, or of
        every token when ``all_logits``; then at most n_batch tokens per call)."""
        arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int32)).reshape(-1)
        if arr.size == 0:
            raise ValueError("eval needs at least one token")
        check(lib.tkv_session_eval(self.handle, arr.ctypes.data_as(int32_p), arr.size,
                                   EVAL_LOGITS_ALL if all_logits else 0))
        self._last_n = arr.size if all_logits else 1

    def logits(self, i: int = -1, *, copy: bool = True) -> npt.NDArray[np.float32]:
        """Logits (n_vocab,) of token i of the last eval.  With ``copy=False`` the array is
        a view of session memory, valid until the next ``eval``."""
        ptr = lib.tkv_session_logits(self.handle, int(i))
        if not ptr:
            raise IndexError(f"no logits for token {i} of the last eval")
        view = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
        return view.copy() if copy else view

    def all_logits(self) -> npt.NDArray[np.float32]:
        """(n, n_vocab) logits of every token of the last ``eval(..., all_logits=True)``."""
        n = getattr(self, "_last_n", 0)
        ptr = lib.tkv_session_logits(self.handle, 0)
        if not ptr or n == 0:
            raise IndexError("no logits: call eval first")
        return np.ctypeslib.as_array(ptr, shape=(n, self.model.n_vocab)).copy()

    def sample(self, sampling: Sampling = Sampling()) -> int:
        """Next token from the last logits."""
        out = ctypes.c_int32()
        params = sampling._params()
        check(lib.tkv_session_sample(self.handle, ctypes.byref(params), ctypes.byref(out)))
        return int(out.value)

    def generate(self, max_tokens: int, sampling: Sampling = Sampling(),
                 callback: Optional[Callable[[int], bool]] = None) -> list[int]:
        """Generate after the evaluated prompt until EOS or ``max_tokens`` (the C loop);
        ``callback(token)`` returning True stops early."""
        tokens: list[int] = []
        errors: list[BaseException] = []

        def on_token(tok: int, _user: object) -> int:
            tokens.append(tok)
            try:
                return 1 if callback is not None and callback(tok) else 0
            except BaseException as exc:  # never let an exception cross the C frames
                errors.append(exc)
                return 1

        c_callback = TOKEN_CALLBACK(on_token)
        params = sampling._params()
        n = ctypes.c_int64()
        check(lib.tkv_session_generate(self.handle, ctypes.byref(params), int(max_tokens),
                                       c_callback, None, ctypes.byref(n)))
        if errors:
            raise errors[0]
        return tokens

    def timings(self) -> SessionTimings:
        t = Timings()
        check(lib.tkv_session_timings(self.handle, ctypes.byref(t)))
        return SessionTimings(t.prefill_tokens, t.decode_tokens, t.prefill_seconds,
                              t.decode_seconds, t.matmul_seconds, t.attention_seconds,
                              t.other_seconds, t.sample_seconds)

    def reset_timings(self) -> None:
        lib.tkv_session_reset_timings(self.handle)
