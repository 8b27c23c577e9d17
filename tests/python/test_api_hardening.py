"""Python-side hardening (issue 10): closed handles, argument ranges at the ctypes
boundary, stop reasons, lazy imports.  Tiny random models only (fast)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import turbokv
from tiny_models import TinyConfig, write_tiny_model


def _run_python(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout


def test_star_import_does_not_shadow_builtins_and_eval_is_lazy():
    out = _run_python(
        "import builtins, sys\n"
        "ns = {}\n"
        "exec('from turbokv import *', ns)\n"
        "print(sorted(n for n in ns if n != '__builtins__' and hasattr(builtins, n)))\n"
        "print(sorted(m for m in sys.modules if m.startswith('turbokv.eval')))\n"
        "import turbokv\n"
        "print(callable(turbokv.eval.perplexity), callable(turbokv.eval.niah),\n"
        "      callable(turbokv.eval.sweep))\n"
        "from turbokv import eval as tkv_eval\n"
        "from turbokv.eval.niah import NiahResult\n"
        "print(tkv_eval is turbokv.eval, callable(tkv_eval.niah), tkv_eval.NiahResult is NiahResult)\n")
    shadowed, loaded, funcs, alias = out.splitlines()
    assert shadowed == "[]"
    assert "perplexity" not in loaded and "niah" not in loaded and "sweep" not in loaded
    assert loaded == "[]"  # import turbokv (through *) imports no harness at all
    assert funcs == "True True True"
    assert alias == "True True True"
    assert "eval" not in turbokv.__all__
