"""Typed exceptions carrying the C library's status and message."""
from __future__ import annotations


class TurboKVError(Exception):
    """Base class of every error raised by turbokv.

    Attributes:
        status: the negative ``TKV_ERR_*`` code returned by the C library.
        message: the text of ``tkv_last_error()`` for the failing call.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InvalidArgument(TurboKVError, ValueError):
    """An argument was rejected (NULL, out of range, unknown name, bad shape)."""


class OutOfMemory(TurboKVError, MemoryError):
    """An allocation in the C library failed."""


class IOError_(TurboKVError, OSError):
    """A file could not be opened, read or mapped."""


class FormatError(TurboKVError):
    """A file or an encoded buffer is malformed."""


class UnsupportedError(TurboKVError):
    """Valid input that this build does not support."""


class BufferTooSmall(TurboKVError, ValueError):
    """An output buffer was too small."""


class CacheFullError(TurboKVError):
    """A KV cache reached its capacity."""


class ABIError(TurboKVError):
    """The library and the Python package disagree about a struct layout."""


class InternalError(TurboKVError):
    """A bug in turbokv: please report it."""


STATUS_ERRORS: dict[int, type[TurboKVError]] = {
    -1: InvalidArgument,
    -2: OutOfMemory,
    -3: IOError_,
    -4: FormatError,
    -5: UnsupportedError,
    -6: BufferTooSmall,
    -7: CacheFullError,
    -8: ABIError,
    -9: InternalError,
}


class ClosedError(InvalidArgument):
    """A method was called on a closed Model, KVCache, Session or Codec (or on a Session
    whose KVCache was closed at the end of the cache's ``with`` block).  No C call is made."""

    def __init__(self, message: str) -> None:
        super().__init__(-1, message)


class InUseError(InvalidArgument):
    """``close()`` was called on a Model or KVCache that objects made from it (caches,
    sessions) still use; close those first.  Nothing is freed."""

    def __init__(self, message: str) -> None:
        super().__init__(-1, message)
