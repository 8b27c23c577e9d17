"""KV codecs on NumPy arrays: encode, decode, attention scores and weighted sums.

Every function here works on plain float32 arrays of head vectors, shape
``(n, head_dim)``, and drives the C kernels the KV cache uses.  Inputs must be
float32 and C-contiguous: anything else raises ``TypeError`` / ``ValueError``
naming the fix (``x.astype(np.float32)``, ``np.ascontiguousarray(x)``).
"""
from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import numpy.typing as npt

from . import _args, _lib
from ._errors import ClosedError
from ._lib import check, float_p

FLAG_ROTATED = 1 << 0
FLAG_CODEBOOK = 1 << 1
FLAG_QJL = 1 << 2
FLAG_BLOCK = 1 << 3
FLAG_FLOAT = 1 << 4
FLAG_TRELLIS = 1 << 5


def _require_array(a: object, name: str, ndim: int, last: Optional[int] = None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype} (use {name}.astype(np.float32))")
    if a.ndim != ndim:
        shape = "(n, head_dim)" if ndim == 2 else "(head_dim,)" if last else "(n,)"
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if last is not None and a.shape[-1] != last:
        raise ValueError(f"{name} must have {last} elements in its last axis, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray({name}))")
    return a


def codec_id(name: str) -> int:
    """The ABI id of a codec name; raises InvalidArgument listing the known names."""
    if not isinstance(name, str):
        raise TypeError(f"codec name must be a str, got {type(name).__name__}")
    out = ctypes.c_int32()
    check(_lib.tkv_codec_from_name(name.encode(), ctypes.byref(out)))
    return out.value


@dataclass(frozen=True)
class CodecInfo:
    """What one codec costs at one head_dim."""

    name: str
    id: int
    head_dim: int
    bytes_per_vector: int
    rotated: bool
    codebook: bool
    qjl: bool
    trellis: bool = False

    @property
    def bits_per_element(self) -> float:
        """Storage per element including metadata (norms, scales)."""
        return self.bytes_per_vector * 8.0 / self.head_dim

    @property
    def compression_vs_fp16(self) -> float:
        return 2.0 * self.head_dim / self.bytes_per_vector

    @property
    def compression_vs_fp32(self) -> float:
        return 4.0 * self.head_dim / self.bytes_per_vector

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bits_per_element"] = self.bits_per_element
        d["compression_vs_fp16"] = self.compression_vs_fp16
        d["compression_vs_fp32"] = self.compression_vs_fp32
        return d


def codec_info(name: str, head_dim: int = 128) -> CodecInfo:
    """Properties of one codec at ``head_dim``."""
    cid = codec_id(name)
    head_dim = _args.u32(head_dim, "head_dim", lo=1)
    size = ctypes.c_size_t()
    check(_lib.tkv_codec_bytes_per_vector(cid, head_dim, ctypes.byref(size)))
    flags = _lib.tkv_codec_flags(cid)
    return CodecInfo(name=name, id=cid, head_dim=int(head_dim), bytes_per_vector=size.value,
                     rotated=bool(flags & FLAG_ROTATED), codebook=bool(flags & FLAG_CODEBOOK),
                     qjl=bool(flags & FLAG_QJL), trellis=bool(flags & FLAG_TRELLIS))


def codecs(head_dim: int = 128) -> list[CodecInfo]:
    """Every codec of the library that can code ``head_dim`` (the trellis codecs need a
    multiple of 8, at least 16), with its bits and bytes per vector."""
    out = []
    head_dim = _args.u32(head_dim, "head_dim", lo=1)
    for i in range(_lib.tkv_codec_count()):
        size = ctypes.c_size_t()
        if _lib.tkv_codec_bytes_per_vector(i, head_dim, ctypes.byref(size)) == 0:
            out.append(codec_info(_lib.tkv_codec_name(i).decode(), head_dim))
    return out


def codebook(bits: int) -> npt.NDArray[np.float32]:
    """The Lloyd-Max centroids of N(0, 1) at ``bits`` (1..5), increasing."""
    out = np.empty(32, dtype=np.float32)
    need = ctypes.c_size_t()
    check(_lib.tkv_codebook_centroids(_args.u32(bits, "bits"), out.ctypes.data_as(float_p), out.size,
                                     ctypes.byref(need)))
    return out[: need.value].copy()


class Codec:
    """A codec bound to a head_dim and a seed (owns one ``tkv_codec`` handle).

    Immutable and thread-safe; use it as a context manager or call ``close()``.
    """

    def __init__(self, name: str = "turbo_kv_4b", head_dim: int = 128, *, seed: int = 0) -> None:
        self._handle: Optional[int] = None
        head_dim = _args.u32(head_dim, "head_dim", lo=1)
        seed = _args.u64(seed, "seed")
        params = _lib.tkv_codec_default_params()
        params.codec = codec_id(name)
        params.head_dim = head_dim
        params.seed = seed
        handle = ctypes.c_void_p()
        check(_lib.tkv_codec_create(ctypes.byref(params), ctypes.byref(handle)))
        self._handle = handle.value
        self.name = name
        self.head_dim = int(head_dim)
        self.seed = int(seed)
        self.vector_bytes = int(_lib.tkv_codec_vector_bytes(self._handle))

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ClosedError(f"codec {self.name} is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            _lib.tkv_codec_free(self._handle)
            self._handle = None

    def __enter__(self) -> "Codec":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Codec({self.name!r}, head_dim={self.head_dim}, seed={self.seed})"

    def info(self) -> CodecInfo:
        return codec_info(self.name, self.head_dim)

    def encode(self, x: npt.NDArray[np.float32]) -> "Encoded":
        """Encode ``x`` of shape (n, head_dim) float32."""
        x = _require_array(x, "x", 2, self.head_dim)
        n = x.shape[0]
        codes = np.empty((n, self.vector_bytes), dtype=np.uint8)
        check(_lib.tkv_codec_encode(self.handle, x.ctypes.data_as(float_p), n,
                                   codes.ctypes.data_as(ctypes.c_void_p), codes.nbytes))
        return Encoded(self, codes)


class Encoded:
    """n vectors encoded with one codec: ``codes`` is a (n, bytes_per_vector) uint8 array."""

    def __init__(self, codec: Codec, codes: npt.NDArray[np.uint8]) -> None:
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
            raise TypeError("codes must be a 2-D numpy array of uint8")
        if codes.shape[1] != codec.vector_bytes:
            raise ValueError(f"codes rows have {codes.shape[1]} bytes, codec {codec.name} at "
                             f"head_dim {codec.head_dim} needs {codec.vector_bytes}")
        self.codec = codec
        self.codes = np.ascontiguousarray(codes)

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def head_dim(self) -> int:
        return self.codec.head_dim

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Encoded({self.codec.name}, n={self.n}, head_dim={self.head_dim}, {self.nbytes} bytes)"

    def _codes_ptr(self) -> ctypes.c_void_p:
        return self.codes.ctypes.data_as(ctypes.c_void_p)

    def decode(self) -> npt.NDArray[np.float32]:
        """The decoded vectors, shape (n, head_dim) float32."""
        out = np.empty((self.n, self.head_dim), dtype=np.float32)
        check(_lib.tkv_codec_decode(self.codec.handle, self._codes_ptr(), self.codes.nbytes,
                                   self.n, out.ctypes.data_as(float_p)))
        return out

    def scores(self, q: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """<q, key_i> for every encoded key, computed on the codes; q has shape (head_dim,)."""
        q = _require_array(q, "q", 1, self.head_dim)
        out = np.empty(self.n, dtype=np.float32)
        check(_lib.tkv_codec_scores(self.codec.handle, q.ctypes.data_as(float_p), self._codes_ptr(),
                                   self.codes.nbytes, self.n, out.ctypes.data_as(float_p)))
        return out

    def weighted_sum(self, w: npt.NDArray[np.float32], threshold: float = 0.0) -> npt.NDArray[np.float32]:
        """sum_i w[i] * value_i, skipping rows with |w[i]| < threshold; returns (head_dim,)."""
        w = _require_array(w, "w", 1)
        if w.shape[0] != self.n:
            raise ValueError(f"w has {w.shape[0]} weights for {self.n} encoded vectors")
        out = np.empty(self.head_dim, dtype=np.float32)
        check(_lib.tkv_codec_weighted_sum(self.codec.handle, w.ctypes.data_as(float_p),
                                         self._codes_ptr(), self.codes.nbytes, self.n,
                                         float(threshold), out.ctypes.data_as(float_p)))
        return out


def encode(x: npt.NDArray[np.float32], codec: str = "turbo_kv_4b", *, seed: int = 0) -> Encoded:
    """Encode float32 vectors of shape (n, head_dim) with a named codec.

    >>> enc = turbokv.encode(keys, "turbo_kv_4b", seed=0)
    >>> enc.decode().shape == keys.shape
    """
    x = _require_array(x, "x", 2)
    return Codec(codec, x.shape[1], seed=seed).encode(x)


def attention(q: npt.NDArray[np.float32], keys: Encoded, values: Encoded, *,
              scale: Optional[float] = None, threshold: float = 0.0) -> npt.NDArray[np.float32]:
    """softmax(scale * <q, keys>) @ values on encoded data, for one query (head_dim,)
    or several (m, head_dim).  ``scale`` defaults to 1/sqrt(head_dim); rows whose softmax
    weight is below ``threshold`` are skipped (sparse V)."""
    if keys.n != values.n:
        raise ValueError(f"{keys.n} keys but {values.n} values")
    if not isinstance(q, np.ndarray):
        raise TypeError("q must be a numpy.ndarray of float32")
    single = q.ndim == 1
    qs = _require_array(q[None, :] if single else q, "q", 2, keys.head_dim)
    qs = np.ascontiguousarray(qs)
    out = np.empty((qs.shape[0], values.head_dim), dtype=np.float32)
    for i in range(qs.shape[0]):
        check(_lib.tkv_codec_attention(
            keys.codec.handle, values.codec.handle, qs[i].ctypes.data_as(float_p),
            keys._codes_ptr(), keys.codes.nbytes, values._codes_ptr(), values.codes.nbytes,
            keys.n, float(scale or 0.0), float(threshold), out[i].ctypes.data_as(float_p)))
    return out[0] if single else out


@dataclass(frozen=True)
class AttentionCosine:
    """Cosine between the attention output with a codec and with fp32, per query."""

    k_codec: str
    v_codec: str
    per_query: npt.NDArray[np.float64]

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_query))

    @property
    def worst(self) -> float:
        return float(np.min(self.per_query))

    def to_dict(self) -> dict:
        return {"k_codec": self.k_codec, "v_codec": self.v_codec, "mean": self.mean,
                "worst": self.worst, "n_queries": int(self.per_query.size)}


def attention_cosine(k: npt.ArrayLike, v: npt.ArrayLike, q: npt.ArrayLike, codec: str = "turbo_kv_4b",
                     *, k_codec: Optional[str] = None, v_codec: Optional[str] = None, seed: int = 0,
                     scale: Optional[float] = None, threshold: float = 0.0) -> AttentionCosine:
    """Attention output cosine of a codec against fp32, for research use.

    k, v: (n, head_dim); q: (m, head_dim) or (head_dim,).  Arrays are converted to
    contiguous float32 (a copy when they are not already).  ``k_codec`` / ``v_codec``
    override ``codec`` for keys / values.
    """
    k = np.ascontiguousarray(k, dtype=np.float32)
    v = np.ascontiguousarray(v, dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    kc, vc = k_codec or codec, v_codec or codec
    d = k.shape[-1]
    ref_k, ref_v = encode(k, "fp32"), encode(v, "fp32")
    with Codec(kc, d, seed=seed) as ck, Codec(vc, d, seed=seed + 1) as cv:
        ek, ev = ck.encode(k), cv.encode(v)
        ref = attention(q, ref_k, ref_v, scale=scale)
        got = attention(q, ek, ev, scale=scale, threshold=threshold)
    num = np.sum(ref.astype(np.float64) * got, axis=1)
    den = np.linalg.norm(ref.astype(np.float64), axis=1) * np.linalg.norm(got.astype(np.float64), axis=1)
    return AttentionCosine(kc, vc, num / np.maximum(den, 1e-300))


def cpu_features() -> dict[str, bool]:
    """Vector extensions of this CPU that the OS enables."""
    f = _lib.tkv_cpu_features()
    return {"avx2": bool(f & 1), "avx512": bool(f & 2), "avx512vnni": bool(f & 4),
            "avx512vbmi": bool(f & 8), "neon": bool(f & 16)}


def kernel_isa() -> str:
    """The kernel set in use: 'scalar', 'avx2', 'avx512' or 'neon' (TKV_ISA overrides)."""
    return _lib.tkv_kernel_isa().decode()


