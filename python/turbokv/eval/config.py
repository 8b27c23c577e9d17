"""The cache configuration of the harnesses: ``turbokv.CacheConfig`` (defined in
``turbokv.config``, with the spec syntax and the levers rule), re-exported here for the
harness modules and for code written against ``turbokv.eval.config``."""
from __future__ import annotations

from ..config import FP32, CacheConfig, as_configs

__all__ = ["FP32", "CacheConfig", "as_configs"]
