"""Checks of the integers (and token arrays) that cross into C.

ctypes converts a Python int to ``uint32_t`` / ``int32_t`` / ``uint64_t`` by wrapping it
modulo 2**bits, so ``truncate(2**32 + 3)`` would silently mean ``truncate(3)``.  Every
integer argument of the package goes through one of these helpers before it reaches a
binding.  The rule, the same everywhere:

* ``TypeError`` when the value is not an integer: ``bool`` (``True`` is not a count),
  ``float`` (even ``3.0``), ``str``, ``None``.  Python ints and NumPy integer scalars are
  accepted.
* :class:`~turbokv.InvalidArgument` (a ``ValueError``) when it is an integer outside the
  range of the C type or of the parameter (e.g. ``n_ctx`` must be >= 0).

Both messages name the parameter.
"""
from __future__ import annotations

import operator
from typing import Optional

import numpy as np
import numpy.typing as npt

from ._errors import InvalidArgument, Status

INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)
SIZE = (0, (1 << 64) - 1)  # size_t on the 64-bit platforms turbokv builds for


def integer(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` as a Python int in [lo, hi]; TypeError / InvalidArgument naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None
    if not lo <= v <= hi:
        raise InvalidArgument(Status.INVALID_ARGUMENT, f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def u32(value: object, name: str, lo: int = 0, hi: int = UINT32[1]) -> int:
    """A ``uint32_t`` argument (optionally a narrower range)."""
    return integer(value, name, lo, hi)


def i32(value: object, name: str, lo: int = INT32[0], hi: int = INT32[1]) -> int:
    """An ``int32_t`` argument."""
    return integer(value, name, lo, hi)


def u64(value: object, name: str) -> int:
    """A ``uint64_t`` argument (seeds)."""
    return integer(value, name, *UINT64)


def i64(value: object, name: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    """An ``int64_t`` argument."""
    return integer(value, name, lo, hi)


def size(value: object, name: str) -> int:
    """A ``size_t`` argument."""
    return integer(value, name, *SIZE)


def real(value: object, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
         *, lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite ``float`` argument in a range (ints accepted, bools and NaN rejected)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                    np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    v = float(value)
    if not np.isfinite(v):
        raise InvalidArgument(Status.INVALID_ARGUMENT, f"{name} must be finite, got {v}")
    bad = ((lo is not None and (v < lo or (lo_open and v == lo)))
           or (hi is not None and (v > hi or (hi_open and v == hi))))
    if bad:
        if lo is not None and hi is not None:
            span = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            span = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            span = f"{'<' if hi_open else '<='} {hi:g}"
        raise InvalidArgument(Status.INVALID_ARGUMENT, f"{name} must be {span}, got {v:g}")
    return v


def tokens(value: object, name: str = "tokens") -> npt.NDArray[np.int32]:
    """Token ids as a flat C-contiguous int32 array.

    Accepts a sequence of ints or an integer NumPy array (any shape, flattened; a copy
    only when the dtype or layout differ).  Floats, bools and strings raise TypeError,
    ids outside int32 InvalidArgument (ids outside the vocabulary are the C library's to
    reject).
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}")
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.size == 0:
        return np.empty(0, dtype=np.int32)
    if arr.dtype == object:  # ints beyond int64, or mixed types
        return np.array([integer(t, f"{name}[{i}]", *INT32)
                         for i, t in enumerate(arr.reshape(-1))], dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype != np.int32:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < INT32[0] or hi > INT32[1]:
            bad = lo if lo < INT32[0] else hi
            raise InvalidArgument(Status.INVALID_ARGUMENT, f"{name}: id {bad} is outside int32")
    return np.ascontiguousarray(arr, dtype=np.int32).reshape(-1)
