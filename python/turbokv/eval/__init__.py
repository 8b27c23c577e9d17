"""Evaluation harnesses: perplexity + KL divergence, attention cosine on real
activations, needle in a haystack, speed, sweeps with tables and plots, quality gates.

    import turbokv
    from turbokv import eval as tkv_eval
    model = turbokv.Model()
    r = tkv_eval.perplexity(model, "turbo_kv_4b", n_ctx=512, chunks=10)
    rows = tkv_eval.sweep(model, k_codecs=["turbo_kv_4b", "turbo_kv_3b"], metrics=["ppl", "kld"])

    # the same on Dask workers (pip install 'turbokv[dask]'), resumable (docs/DISTRIBUTED.md)
    with tkv_eval.dask_client(workers=2) as client:
        rows = tkv_eval.sweep(model, k_codecs=["turbo_kv_4b"], client=client, results="runs/a")

The harness modules are imported on first use of one of their names (PEP 562), so
``import turbokv.eval`` costs nothing until a harness runs.  ``perplexity``, ``niah``
and ``sweep`` are both a submodule and the function of that name: the attribute is
always the function (``turbokv.eval.perplexity(...)``); the submodules stay reachable
with ``from turbokv.eval.perplexity import PerplexityRunner``.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "AttentionResult": "attention", "attention_cosine_eval": "attention",
    "attention_eval": "attention", "capture": "attention",
    "FP32": "config", "CacheConfig": "config",
    "EvalTaskError": "fanout", "TaskFailure": "fanout", "dask_client": "fanout",
    "ResultsStore": "store",
    "text": "data",
    "GateCheck": "gates", "GateReport": "gates", "assert_gates": "gates", "check_rows": "gates",
    "load_config": "gates", "run_gates": "gates",
    "NiahResult": "niah", "NiahTrial": "niah", "heatmap": "niah", "niah": "niah",
    "passkey": "niah", "score_answer": "niah",
    "SpeedResult": "speed", "measure_speed": "speed",
    "METRICS": "sweep", "SweepRow": "sweep", "markdown_table": "sweep", "pareto_plot": "sweep",
    "sweep": "sweep", "write_csv": "sweep", "write_json": "sweep",
    "Baseline": "perplexity", "PerplexityResult": "perplexity",
    "PerplexityRunner": "perplexity", "chunk_tokens": "perplexity", "perplexity": "perplexity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` and bind every public name it exports."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    mod = importlib.import_module(f".{module}", __name__)
    package = sys.modules[__name__]
    for public, where in _EXPORTS.items():
        if where == module:
            types.ModuleType.__setattr__(package, public, getattr(mod, public))
    return getattr(mod, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """This package's module type: importing the submodule ``perplexity`` (or ``niah``,
    ``sweep``) makes the import system set the package attribute of that name to the
    submodule; the function of the same name keeps the attribute instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            if name in self.__dict__:
                return  # the function is bound already
            value = getattr(value, name, value)  # the submodule has finished executing
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
