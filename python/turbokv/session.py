"""Evaluation and sampling over a compressed cache (owns one ``tkv_session`` handle)."""
from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from . import _args, _lib
from ._errors import InvalidArgument, Status
from ._handle import Handle
from ._lib import TOKEN_CALLBACK, Timings, check, int32_p
from .cache import KVCache, PathLike, file_path

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


#: Why a generation stopped (``GeneratedTokens.stop_reason``, ``Generation.stop_reason``,
#: ``GenerationStats.stop_reason``): the model produced an end-of-text token; ``max_tokens``
#: were generated; the cache filled up (the last token was generated but not evaluated);
#: the callback asked to stop.
STOP_REASONS = ("eos", "max_tokens", "cache_full", "stop")

_SAMPLING_RULES = (
    ("temperature", dict(lo=0.0)),
    ("top_p", dict(lo=0.0, hi=1.0, lo_open=True)),
    ("min_p", dict(lo=0.0, hi=1.0, hi_open=True)),
    ("repeat_penalty", dict(lo=0.0, lo_open=True)),
)


def check_sampling(values: dict, names: Optional[dict] = None) -> None:
    """Raise TypeError / InvalidArgument for the first bad sampler setting in ``values``
    (the fields of Sampling), naming only that setting: ``names`` maps a field to the
    name shown (the CLI passes its flags, e.g. ``{"top_p": "--top-p"}``).  The ranges are
    the C library's (tkv_session_sample): temperature >= 0, top_k >= 0 (0 = off),
    top_p in (0, 1], min_p in [0, 1), repeat_penalty > 0, repeat_last_n >= 0 (int32),
    seed in [0, 2**64)."""
    names = names or {}
    for field, rule in _SAMPLING_RULES:
        _args.real(values[field], names.get(field, field), **rule)
    for field in ("top_k", "repeat_last_n"):
        _args.i32(values[field], names.get(field, field), lo=0)
    _args.u64(values["seed"], names.get("seed", "seed"))


@dataclass(frozen=True)
class Sampling:
    """Sampling settings (temperature 0 = greedy), checked when constructed (see
    check_sampling for the ranges): a bad value raises TypeError / InvalidArgument
    naming the field."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling({f: getattr(self, f) for f in self.__dataclass_fields__})

    def _params(self):
        p = _lib.tkv_sampler_default_params()
        p.temperature = float(self.temperature)
        p.top_k = int(self.top_k)
        p.top_p = float(self.top_p)
        p.min_p = float(self.min_p)
        p.repeat_penalty = float(self.repeat_penalty)
        p.repeat_last_n = int(self.repeat_last_n)
        p.seed = int(self.seed)
        return p


class GeneratedTokens(list):
    """The token ids ``Session.generate`` produced (a plain list of ints), plus
    ``stop_reason``: one of STOP_REASONS."""

    stop_reason: str = "max_tokens"


class Session(Handle):
    """Runs the model over a cache: ``eval`` tokens, read ``logits``, ``sample``.

    Not shareable between threads.  Keeps its cache (and so the model) alive: the cache
    refuses to ``close()`` while the session is open.  Leaving the cache's ``with`` block
    closes the session; every method of a closed session raises ClosedError.
    """

    _kind = "session"

    def __init__(self, cache: KVCache, *, n_threads: int = 0, n_batch: int = 0) -> None:
        self.cache = cache
        self.model = cache.model
        params = _lib.tkv_session_default_params()
        params.n_threads = _args.u32(n_threads, "n_threads")
        params.n_batch = _args.u32(n_batch, "n_batch")
        handle = ctypes.c_void_p()
        check(_lib.tkv_session_create(cache.handle, ctypes.byref(params), ctypes.byref(handle)))
        self._adopt(handle.value, cache)
        self.n_batch = int(params.n_batch) or min(256, cache.capacity)

    def _free(self, handle: int) -> None:
        _lib.tkv_session_free(handle)

    def __enter__(self) -> "Session":
        return self

    def __repr__(self) -> str:
        where = "closed" if self._handle is None else f"n_tokens={self.n_tokens}"
        return f"Session({where}, n_batch={self.n_batch})"

    @property
    def n_tokens(self) -> int:
        return int(_lib.tkv_session_n_tokens(self.handle))

    def tokens(self) -> list[int]:
        """The tokens evaluated into the cache, position by position (those of the saved
        session after :meth:`load`; positions evaluated by another session on the same
        cache read as 0)."""
        n = ctypes.c_size_t()
        _lib.tkv_session_tokens(self.handle, None, 0, ctypes.byref(n))  # the count
        if n.value == 0:
            return []
        buf = (ctypes.c_int32 * n.value)()
        check(_lib.tkv_session_tokens(self.handle, buf, n.value, ctypes.byref(n)))
        return list(buf)

    def save(self, path: PathLike) -> None:
        """Save the cache and this session's state (evaluated tokens, last logits, the
        sampler's generator) to ``path``; :meth:`Session.load` continues from it exactly,
        in this process or another."""
        check(_lib.tkv_session_save(self.handle, file_path(path)))

    @classmethod
    def load(cls, model, path: PathLike, *, n_threads: int = 0, n_batch: int = 0) -> "Session":
        """A session continuing one saved by :meth:`save`: the cache is loaded from the
        file (``session.cache``, a KVCache the session keeps alive) and the evaluated
        tokens, last logits and sampler generator are restored, so evaluating and sampling
        go on bit for bit as in the saved session (same kernel ISA and library version).
        Raises the file errors of :meth:`KVCache.load`, and InvalidArgument for a file
        saved by KVCache.save (no session state)."""
        cache = KVCache.load(model, path)
        try:
            session = cls(cache, n_threads=n_threads, n_batch=n_batch)
            check(_lib.tkv_session_load_state(session.handle, file_path(path)))
        except BaseException:
            cache._close_tree()
            raise
        return session

    def fork(self, *, n_threads: int = 0, n_batch: int = 0) -> "Session":
        """A new session on a fork of this session's cache (:meth:`KVCache.fork`: the
        compressed prefix is shared, not copied) with this session's state (evaluated
        tokens, last logits, sampler generator): ask another question after the same
        document.  Its cache is ``fork.cache``, kept alive by the fork."""
        cache = self.cache.fork()
        try:
            session = type(self)(cache, n_threads=n_threads, n_batch=n_batch)
            check(_lib.tkv_session_copy_state(session.handle, self.handle))
        except BaseException:
            cache._close_tree()
            raise
        return session

    def eval(self, tokens: Union[Sequence[int], npt.NDArray[np.integer]], *,
             all_logits: bool = False) -> None:
        """Append ``tokens`` to the sequence and compute logits (of the last token, or of
        every token when ``all_logits``; then at most n_batch tokens per call).

        ``tokens``: ints or an integer NumPy array (flattened); floats, bools and ids
        outside int32 raise TypeError / InvalidArgument before any C call.  Ids outside
        the vocabulary raise InvalidArgument, more tokens than the cache has room for
        CacheFullError (nothing is appended then).
        """
        arr = _args.tokens(tokens)
        if arr.size == 0:
            raise InvalidArgument(Status.INVALID_ARGUMENT, "eval needs at least one token")
        check(_lib.tkv_session_eval(self.handle, arr.ctypes.data_as(int32_p), arr.size,
                                   EVAL_LOGITS_ALL if all_logits else 0))
        self._last_n = arr.size if all_logits else 1

    def logits(self, i: int = -1, *, copy: bool = True) -> npt.NDArray[np.float32]:
        """Logits (n_vocab,) of token i of the last eval.  With ``copy=False`` the array is
        a view of session memory, valid until the next ``eval`` (or ``close``)."""
        ptr = _lib.tkv_session_logits(self.handle, _args.i64(i, "i"))
        if not ptr:
            raise IndexError(f"no logits for token {i} of the last eval")
        view = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
        return view.copy() if copy else view

    def all_logits(self) -> npt.NDArray[np.float32]:
        """(n, n_vocab) logits of every token of the last ``eval(..., all_logits=True)``."""
        n = getattr(self, "_last_n", 0)
        ptr = _lib.tkv_session_logits(self.handle, 0)
        if not ptr or n == 0:
            raise IndexError("no logits: call eval first")
        return np.ctypeslib.as_array(ptr, shape=(n, self.model.n_vocab)).copy()

    def sample(self, sampling: Sampling = Sampling()) -> int:
        """Next token from the last logits."""
        out = ctypes.c_int32()
        params = sampling._params()
        check(_lib.tkv_session_sample(self.handle, ctypes.byref(params), ctypes.byref(out)))
        return int(out.value)

    def generate(self, max_tokens: int, sampling: Sampling = Sampling(),
                 callback: Optional[Callable[[int], bool]] = None) -> GeneratedTokens:
        """Generate after the evaluated prompt (the C loop: sample, call back, evaluate).

        Stops at an end token of the model (EOS or an end-of-turn marker,
        Model.is_end_token; not returned), after ``max_tokens`` tokens, when
        ``callback(token)`` returns True (that token is returned), or when the cache is
        full: the token sampled from the last position that fits is returned but not
        evaluated, and generation stops there without raising (the same as
        ``turbokv.generate`` and the CLI).  The returned list's ``stop_reason`` says which:
        "eos", "max_tokens", "stop" or "cache_full".
        """
        max_tokens = _args.i64(max_tokens, "max_tokens", lo=0)
        tokens = GeneratedTokens()
        errors: list[BaseException] = []
        asked_to_stop = []

        def on_token(tok: int, _user: object) -> int:
            tokens.append(tok)
            try:
                if callback is not None and callback(tok):
                    asked_to_stop.append(True)
                    return 1
                return 0
            except BaseException as exc:  # never let an exception cross the C frames
                errors.append(exc)
                return 1

        c_callback = TOKEN_CALLBACK(on_token)
        params = sampling._params()
        n = ctypes.c_int64()
        status = _lib.tkv_session_generate(self.handle, ctypes.byref(params), max_tokens,
                                          c_callback, None, ctypes.byref(n))
        if errors:
            raise errors[0]
        if status == Status.CACHE_FULL:
            tokens.stop_reason = "cache_full"
        else:
            check(status)
            tokens.stop_reason = ("stop" if asked_to_stop else
                                  "max_tokens" if len(tokens) >= max_tokens else "eos")
        return tokens

    def timings(self) -> SessionTimings:
        t = Timings()
        check(_lib.tkv_session_timings(self.handle, ctypes.byref(t)))
        return SessionTimings(t.prefill_tokens, t.decode_tokens, t.prefill_seconds,
                              t.decode_seconds, t.matmul_seconds, t.attention_seconds,
                              t.other_seconds, t.sample_seconds)

    def reset_timings(self) -> None:
        _lib.tkv_session_reset_timings(self.handle)
