"""Status codes of the C library and the typed exceptions that carry them."""
from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """``tkv_status`` values, mirrored from include/turbokv.h (``TKV_OK``, ``TKV_ERR_*``).

    Codes are appended in the header and never renumbered; a test checks every member
    against ``tkv_status_name()`` of the loaded library.
    """

    OK = 0
    INVALID_ARGUMENT = -1
    OUT_OF_MEMORY = -2
    IO = -3
    BAD_FORMAT = -4
    UNSUPPORTED = -5
    BUFFER_TOO_SMALL = -6
    CACHE_FULL = -7
    ABI = -8
    INTERNAL = -9
    MISMATCH = -10

    @property
    def c_name(self) -> str:
        """The C macro of this status (``"TKV_ERR_CACHE_FULL"``)."""
        return "TKV_OK" if self is Status.OK else f"TKV_ERR_{self.name}"


class TurboKVError(Exception):
    """Base class of every error raised by turbokv for the C library.

    Attributes:
        status: the :class:`Status` returned by the C library.
        message: the text of ``tkv_last_error()`` for the failing call.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        try:
            self.status: "Status | int" = Status(status)
        except ValueError:  # a code from a newer library
            self.status = status
        self.message = message

    def __reduce__(self) -> tuple:
        # pickled with both arguments, so the error crosses processes (Dask workers) intact
        return type(self), (int(self.status), self.message)


class InvalidArgument(TurboKVError, ValueError):
    """An argument was rejected (NULL, out of range, unknown name, bad shape)."""


class OutOfMemory(TurboKVError, MemoryError):
    """An allocation in the C library failed."""


class FileAccessError(TurboKVError, OSError):
    """A file could not be opened, read or mapped (``TKV_ERR_IO``)."""


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


class MismatchError(TurboKVError):
    """A saved cache or session belongs to another model, another codec set or another
    cache (``TKV_ERR_MISMATCH``; the message says which)."""


STATUS_ERRORS: dict[Status, type[TurboKVError]] = {
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.OUT_OF_MEMORY: OutOfMemory,
    Status.IO: FileAccessError,
    Status.BAD_FORMAT: FormatError,
    Status.UNSUPPORTED: UnsupportedError,
    Status.BUFFER_TOO_SMALL: BufferTooSmall,
    Status.CACHE_FULL: CacheFullError,
    Status.ABI: ABIError,
    Status.INTERNAL: InternalError,
    Status.MISMATCH: MismatchError,
}


class ClosedError(InvalidArgument):
    """A method was called on a closed Model, KVCache, Session or Codec (or on a Session
    whose KVCache was closed at the end of the cache's ``with`` block).  No C call is made."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.INVALID_ARGUMENT, message)


class InUseError(InvalidArgument):
    """``close()`` was called on a Model or KVCache that objects made from it (caches,
    sessions) still use; close those first.  Nothing is freed."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.INVALID_ARGUMENT, message)
