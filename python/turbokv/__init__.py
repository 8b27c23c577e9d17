"""turbokv: KV-cache compression for transformer language models.

Codecs on NumPy arrays::

    import numpy as np, turbokv
    keys = np.random.randn(1024, 128).astype(np.float32)
    enc = turbokv.encode(keys, "turbo_kv_4b", seed=0)
    approx = enc.decode()
    scores = enc.scores(keys[0])
    turbokv.codecs()          # every codec with its bits and bytes per vector

Generation on a real model with a compressed cache::

    print(turbokv.generate("The capital of France is", kv="turbo_kv_4b", temperature=0))
"""
from __future__ import annotations

from ._errors import (ABIError, BufferTooSmall, CacheFullError, ClosedError, FileAccessError,
                      FormatError, InternalError, InUseError, InvalidArgument, MismatchError,
                      OutOfMemory, Status, TurboKVError, UnsupportedError)
from . import _lib, models
from .models import ModelChecksumError, ModelNotInstalled
from .config import CacheConfig
from .cache import KVCache
from .generate import Generation, GenerationStats, generate, load_model
from .model import Model
from .session import STOP_REASONS, GeneratedTokens, Sampling, Session, SessionTimings
from .codec import (AttentionCosine, Codec, CodecInfo, Encoded, attention, attention_cosine,
                    codebook, codec_info, codecs, cpu_features, encode, kernel_isa)

__version__ = "0.5.0"


def library_version() -> str:
    """Version string of the loaded libturbokv."""
    return _lib.tkv_version_string().decode()


def __getattr__(name: str):
    """PEP 562: ``turbokv.eval`` (the evaluation harnesses) is imported on first use, so
    ``import turbokv`` stays light.  It is deliberately not in ``__all__``: ``from turbokv
    import *`` must not replace the builtin ``eval``."""
    if name == "eval":
        import importlib

        return importlib.import_module(".eval", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"eval"})


__all__ = [
    # objects
    "CacheConfig", "GeneratedTokens", "Generation", "GenerationStats", "KVCache", "Model",
    "Sampling", "Session", "SessionTimings", "STOP_REASONS", "generate", "load_model", "models",
    # codecs on arrays
    "AttentionCosine", "Codec", "CodecInfo", "Encoded", "attention", "attention_cosine",
    "codebook", "codec_info", "codecs", "cpu_features", "encode", "kernel_isa",
    "library_version",
    # status codes and every exception the package raises
    "Status", "TurboKVError", "InvalidArgument", "ClosedError", "InUseError", "OutOfMemory",
    "FileAccessError", "FormatError", "UnsupportedError", "BufferTooSmall", "CacheFullError",
    "ABIError", "InternalError", "MismatchError", "ModelNotInstalled", "ModelChecksumError",
]
