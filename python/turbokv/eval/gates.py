"""Quality gates: run configured metrics and check thresholds (CI and pytest).

A gate file (TOML, or JSON with the same structure)::

    model = "smollm2-135m"        # manifest name or GGUF path; default: the default model
    [ppl]                         # options of the perplexity run shared by every gate
    n_ctx = 256
    chunks = 3
    [[gate]]
    cache = "turbo_kv_4b"         # a cache spec (see turbokv.CacheConfig)
    delta_ppl_pct_max = 3.0       # <metric>_max / <metric>_min
    kld_mean_max = 0.06

Metrics are SweepRow fields: ppl, delta_ppl, delta_ppl_pct, kld_mean, kld_p99, top1
(perplexity run), attn_cosine, attn_cosine_worst, score_cosine ([attention] options:
n_tokens, stride), niah ([niah]: lengths, depths, trials), prefill_tok_s, decode_tok_s,
decode_vs_fp32 ([speed]: prompt_tokens, decode_tokens).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..model import Model
from .config import CacheConfig

_GROUPS = {
    "ppl": ("ppl", "ppl_se", "delta_ppl", "delta_ppl_pct", "kld_mean", "kld_p99", "top1"),
    "cosine": ("attn_cosine", "attn_cosine_worst", "score_cosine"),
    "niah": ("niah",),
    "speed": ("prefill_tok_s", "decode_tok_s", "decode_vs_fp32"),
}
_METRIC_GROUP = {m: g for g, ms in _GROUPS.items() for m in ms}


def load_config(source: Union[str, Path, Mapping[str, Any]]) -> dict[str, Any]:
    """A gate configuration from a dict, a .toml file (tomllib on Python 3.11+, else the
    ``tomli`` package) or a .json file."""
    if isinstance(source, Mapping):
        return dict(source)
    p = Path(source)
    raw = p.read_bytes()
    if p.suffix.lower() == ".json":
        return json.loads(raw)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9 / 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ImportError(f"reading {p} needs Python 3.11+ or 'pip install tomli' "
                              "(or write the gates as JSON)") from exc
    return tomllib.loads(raw.decode("utf-8"))


@dataclass
class GateCheck:
    """One threshold of one cache configuration."""

    cache: str
    metric: str
    bound: str              # "max" or "min"
    threshold: float
    value: float
    passed: bool

    def describe(self) -> str:
        op = "<=" if self.bound == "max" else ">="
        verdict = "ok  " if self.passed else "FAIL"
        return f"{verdict} {self.cache}: {self.metric} = {self.value:.6g} (needs {op} {self.threshold:g})"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "value": None if math.isnan(self.value) else self.value}


@dataclass
class GateReport:
    """Every check of a gate file; ``passed`` when all hold."""

    checks: list[GateCheck]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        lines = [c.describe() for c in self.checks]
        n = len(self.failures)
        lines.append("all gates passed" if n == 0 else f"{n} gate(s) missed: " + "; ".join(
            f"{c.cache} {c.metric}" for c in self.failures))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "rows": self.rows}


def _parse_gates(cfg: Mapping[str, Any]) -> list[tuple[CacheConfig, list[tuple[str, str, float]]]]:
    gates = cfg.get("gate") or cfg.get("gates")
    if not gates:
        raise ValueError("gate config: no [[gate]] entries")
    out = []
    for i, g in enumerate(gates):
        g = dict(g)
        spec = g.pop("cache", None)
        if spec is None:
            raise ValueError(f"gate #{i + 1}: missing 'cache' (a spec such as 'turbo_kv_4b')")
        c = CacheConfig.parse(spec)
        thresholds = []
        for key, val in g.items():
            metric, _, bound = key.rpartition("_")
            if bound not in ("max", "min") or metric not in _METRIC_GROUP:
                raise ValueError(f"gate {spec}: unknown threshold {key!r} (use <metric>_max or "
                                 f"<metric>_min; metrics: {', '.join(_METRIC_GROUP)})")
            thresholds.append((metric, bound, float(val)))
        out.append((c, thresholds))
    return out


def evaluate(check: tuple[str, str, float], value: Optional[float]) -> bool:
    """Whether ``value`` meets one (metric, bound, threshold); NaN / None never does."""
    _, bound, threshold = check
    if value is None or math.isnan(value):
        return False
    return value <= threshold if bound == "max" else value >= threshold


def run_gates(config: Union[str, Path, Mapping[str, Any]], *, model: Optional[Model] = None,
              n_threads: int = 0, progress: bool = True) -> GateReport:
    """Run the metrics a gate configuration needs (one sweep, the fp32 baseline once) and
    check every threshold."""
    from .sweep import sweep

    cfg = load_config(config)
    gates = _parse_gates(cfg)
    if model is None:
        from ..generate import load_model
        model = load_model(cfg.get("model"))   # installs the default model on first use
    groups = {_METRIC_GROUP[m] for _, ths in gates for m, _, _ in ths}
    ppl = dict(cfg.get("ppl", {}))
    att = dict(cfg.get("attention", {}))
    nh = dict(cfg.get("niah", {}))
    sp = dict(cfg.get("speed", {}))
    rows = sweep(model, k_codecs=[], configs=[c for c, _ in gates], metrics=sorted(groups),
                 include_fp32="speed" in groups, text=ppl.get("text"),
                 n_ctx=int(ppl.get("n_ctx", 512)), chunks=ppl.get("chunks", 3),
                 top_k=int(ppl.get("top_k", 256)), attention_tokens=int(att.get("n_tokens", 256)),
                 attention_stride=int(att.get("stride", 16)),
                 niah_lengths=nh.get("lengths", (512,)), niah_depths=nh.get("depths", (0.0, 0.5, 1.0)),
                 niah_trials=int(nh.get("trials", 1)),
                 speed_prompt_tokens=int(sp.get("prompt_tokens", 128)),
                 speed_decode_tokens=int(sp.get("decode_tokens", 32)),
                 n_threads=int(cfg.get("n_threads", n_threads)), progress=progress)
    by_name = {r.config: r for r in rows}
    checks = []
    for c, ths in gates:
        row = by_name[c.name]
        for metric, bound, threshold in ths:
            value = getattr(row, metric)
            checks.append(GateCheck(c.name, metric, bound, threshold, float(value),
                                    evaluate((metric, bound, threshold), value)))
    return GateReport(checks, [r.to_dict() for r in rows])


def check_rows(config: Union[str, Path, Mapping[str, Any]], rows: list[Any]) -> GateReport:
    """Check a gate configuration's thresholds against rows already measured (SweepRow
    objects or their dicts); a cache with no row fails every threshold."""
    cfg = load_config(config)
    by_name = {}
    for r in rows:
        d = r if isinstance(r, Mapping) else r.to_dict()
        by_name[d["config"]] = d
    checks = []
    for c, ths in _parse_gates(cfg):
        d = by_name.get(c.name, {})
        for metric, bound, threshold in ths:
            v = d.get(metric)
            value = float("nan") if v is None else float(v)
            checks.append(GateCheck(c.name, metric, bound, threshold, value,
                                    evaluate((metric, bound, threshold), value)))
    return GateReport(checks, [dict(v) for v in by_name.values()])


def assert_gates(config: Union[str, Path, Mapping[str, Any]], *, model: Optional[Model] = None,
                 n_threads: int = 0, progress: bool = False) -> GateReport:
    """``run_gates`` for test suites: raises AssertionError naming every threshold missed.

    >>> def test_quality(): turbokv.eval.assert_gates("tests/gates/smollm2.toml")
    """
    report = run_gates(config, model=model, n_threads=n_threads, progress=progress)
    if not report.passed:
        raise AssertionError("quality gates missed:\n" + "\n".join(
            c.describe() for c in report.failures))
    return report



