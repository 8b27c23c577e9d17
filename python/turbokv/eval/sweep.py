"""Sweeps over K x V codecs (and extra configurations): one row per configuration with
its size, quality and speed; CSV / JSON / Markdown output and a Pareto plot."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from ..codec import codec_info
from ..model import Model
from .attention import attention_cosine_eval, capture
from .fanout import TaskFailure
from ..config import UNSET, FP32, CacheConfig, as_config, as_configs
from .niah import ANSWER_PREFIX, niah
from .perplexity import PerplexityRunner
from .speed import measure_speed

METRICS = ("ppl", "kld", "cosine", "niah", "speed")
_NAN = float("nan")


@dataclass
class SweepRow:
    """One configuration: size, quality against fp32 KV, speed (NaN where not measured)."""

    config: str
    k_codec: str
    v_codec: str
    center_keys: bool
    smooth_keys: float               # key smoothing exponent, 0 = off
    sink_tokens: int
    calibration_block: Optional[int]  # positions per calibration block, None = once
    fp16_window: int
    layer_codecs: str
    k_bytes_per_vector: int          # per head vector (head_dim elements), metadata included
    v_bytes_per_vector: int
    bits_per_element: float          # over all layers, K and V, metadata included (codec
                                     # scales, calibration blocks)
    bytes_per_token: int             # codes of all layers and KV heads, K + V
    compression_vs_fp16: float       # 16 / bits_per_element
    compression_vs_fp32: float
    ppl: float = _NAN
    ppl_se: float = _NAN
    delta_ppl: float = _NAN
    delta_ppl_se: float = _NAN
    delta_ppl_pct: float = _NAN
    kld_mean: float = _NAN
    kld_p99: float = _NAN
    top1: float = _NAN
    attn_cosine: float = _NAN
    attn_cosine_worst: float = _NAN
    score_cosine: float = _NAN
    niah: float = _NAN
    niah_fp32: float = _NAN
    prefill_tok_s: float = _NAN
    decode_tok_s: float = _NAN
    decode_vs_fp32: float = _NAN     # decode tok/s relative to the fp32 row
    error: Optional[str] = None      # what failed in a fanned-out sweep (metric: error; ...)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def _row(model: Model, cfg: CacheConfig) -> SweepRow:
    d = model.head_dim
    bpt = cfg.bytes_per_token(model)
    bits = cfg.bits_per_element(model)  # codec metadata and calibration blocks included
    return SweepRow(
        config=cfg.name, k_codec=cfg.k, v_codec=str(cfg.v), center_keys=cfg.center_keys,
        smooth_keys=cfg.smooth_keys, sink_tokens=cfg.sink_tokens,
        calibration_block=cfg.calibration_block, fp16_window=cfg.fp16_window,
        layer_codecs=" ".join(f"{l}:{a}/{b}" for l, a, b in cfg.layer_codecs),
        k_bytes_per_vector=codec_info(cfg.k, d).bytes_per_vector,
        v_bytes_per_vector=codec_info(str(cfg.v), d).bytes_per_vector,
        bits_per_element=bits, bytes_per_token=bpt,
        compression_vs_fp16=16.0 / bits, compression_vs_fp32=32.0 / bits)


def sweep(model: Model, k_codecs: Sequence[str] = ("turbo_kv_4b",),
          v_codecs: Optional[Sequence[str]] = None, *,
          metrics: Sequence[str] = ("ppl", "kld"),
          configs: Union[None, str, CacheConfig, Sequence[Union[str, CacheConfig]]] = None,
          center_keys: Optional[bool] = None, smooth_keys: Union[None, bool, float] = None,
          sink_tokens: Optional[int] = None, calibration_block: Optional[int] = UNSET,
          fp16_window: Optional[int] = None,
          layer_codecs: Optional[Mapping[int, tuple[str, str]]] = None, seed: int = 0,
          include_fp32: bool = True, text: Optional[str] = None, n_ctx: int = 512,
          chunks: Optional[int] = 10, top_k: int = 4096, baseline_file: Union[str, Path, None] = None,
          attention_tokens: int = 512, attention_stride: int = 16,
          niah_lengths: Sequence[int] = (512, 1024), niah_depths: Sequence[float] = (0.0, 0.5, 1.0),
          niah_trials: int = 1, speed_prompt_tokens: int = 256, speed_decode_tokens: int = 64, speed_repeats: int = 1,
          n_threads: int = 0, progress: bool = True, client: Any = None,
          results: Union[None, str, Path] = None) -> list[SweepRow]:
    """Evaluate every (k, v) in ``k_codecs`` x ``v_codecs`` (``v_codecs`` None: v = k),
    each with the given settings (unset levers follow CacheConfig's rule), plus ``configs`` (spec strings or CacheConfig), and fp32
    first when ``include_fp32``.

    metrics: any of "ppl" / "kld" (one perplexity run gives both, plus top-1), "cosine"
    (attention cosine on captured activations), "niah" (retrieval score), "speed"
    (prefill / decode tok/s, best of ``speed_repeats`` runs).  The fp32 baseline of the perplexity runs is computed once.

    client: a ``dask.distributed.Client``: the ppl / kld, cosine and niah metrics run as
    one set of tasks on its workers (``turbokv.eval.fanout``) with the numbers of the
    serial run; speed is then measured here, serially (timings of tasks sharing cores
    would not compare).  results: a results store directory: finished tasks are recorded
    and skipped when the sweep runs again or grows.  With either, a configuration whose
    tasks failed keeps NaN in those metrics and the error in ``error``; the others finish.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)} (known: {', '.join(METRICS)})")
    pairs = [(k, k) for k in k_codecs] if v_codecs is None else \
        [(k, v) for k in k_codecs for v in v_codecs]
    cfgs: list[CacheConfig] = [FP32] if include_fp32 else []
    for k, v in pairs:
        cfgs.append(as_config(None, k=k, v=v, center_keys=center_keys, smooth_keys=smooth_keys,
                              sink_tokens=sink_tokens, calibration_block=calibration_block,
                              fp16_window=fp16_window, layer_codecs=layer_codecs, seed=seed))
    cfgs += as_configs(configs)
    unique: list[CacheConfig] = []
    for c in cfgs:
        if c not in unique:
            unique.append(c)
    rows = [_row(model, c) for c in unique]
    want_ppl = "ppl" in metrics or "kld" in metrics
    need_niah = unique if FP32 in unique else [FP32] + unique
    ppl_res: list[Any] = []
    cos_res: list[Any] = []
    niah_res: list[Any] = []
    if client is not None or results is not None:
        from .fanout import FanOut, plan_attention, plan_niah, plan_perplexity
        fan = FanOut(model, client=client, results=results, n_threads=n_threads,
                     progress=progress, desc="sweep")
        plans = {}
        if want_ppl:
            runner = PerplexityRunner(model, text=text, n_ctx=n_ctx, chunks=chunks,
                                      n_threads=n_threads, top_k=top_k,
                                      baseline_file=baseline_file, progress=False)
            plans["ppl"] = plan_perplexity(fan, runner, unique)
        if "cosine" in metrics:
            plans["cosine"] = plan_attention(fan, unique, text=text, n_tokens=attention_tokens,
                                             stride=attention_stride)
        if "niah" in metrics:
            plans["niah"] = plan_niah(fan, need_niah, lengths=niah_lengths, depths=niah_depths,
                                      trials=niah_trials, seed=seed, filler=None,
                                      answer_prefix=ANSWER_PREFIX, max_new_tokens=12)
        fan.run()
        ppl_res = plans["ppl"]() if want_ppl else []
        cos_res = plans["cosine"]() if "cosine" in metrics else []
        niah_res = plans["niah"]() if "niah" in metrics else []
    else:
        if want_ppl:
            runner = PerplexityRunner(model, text=text, n_ctx=n_ctx, chunks=chunks,
                                      n_threads=n_threads, top_k=top_k,
                                      baseline_file=baseline_file, progress=progress)
            ppl_res = [runner.run(c) for c in unique]
        if "cosine" in metrics:
            qkv = capture(model, text=text, n_tokens=attention_tokens, n_threads=n_threads)
            cos_res = [attention_cosine_eval(qkv, c, stride=attention_stride, progress=progress)
                       for c in unique]
        if "niah" in metrics:
            niah_res = niah(model, need_niah, lengths=niah_lengths, depths=niah_depths,
                            trials=niah_trials, seed=seed, n_threads=n_threads,
                            progress=progress)
    errors: dict[str, list[str]] = {}

    def ok(metric: str, row: SweepRow, r: Any) -> bool:
        if isinstance(r, TaskFailure):
            errors.setdefault(row.config, []).append(f"{metric}: {r.error}")
            return False
        return True

    for row, r in zip(rows, ppl_res):
        if ok("ppl", row, r):
            for name in ("ppl", "ppl_se", "delta_ppl", "delta_ppl_se", "delta_ppl_pct",
                         "kld_mean", "kld_p99", "top1"):
                setattr(row, name, getattr(r, name))
    for row, a in zip(rows, cos_res):
        if ok("cosine", row, a):
            row.attn_cosine, row.attn_cosine_worst, row.score_cosine = a.mean, a.worst, a.score_mean
    if niah_res:
        by_config = dict(zip(need_niah, niah_res))
        fp32 = by_config[FP32]
        for row, c in zip(rows, unique):
            if ok("niah", row, by_config[c]):
                row.niah = by_config[c].score
                row.niah_fp32 = _NAN if isinstance(fp32, TaskFailure) else fp32.score
    fanned = client is not None or results is not None
    if "speed" in metrics:
        base = None
        for row, c in zip(rows, unique):
            if row.config in errors:
                continue  # its evaluation failed: no speed either
            try:
                s = measure_speed(model, c, prompt_tokens=speed_prompt_tokens,
                                  decode_tokens=speed_decode_tokens, text=text,
                                  n_threads=n_threads, repeats=speed_repeats)
            except Exception as exc:
                if not fanned:
                    raise
                errors.setdefault(row.config, []).append(f"speed: {type(exc).__name__}: {exc}")
                continue
            row.prefill_tok_s, row.decode_tok_s = s.prefill_tok_s, s.decode_tok_s
            if c == FP32:
                base = s.decode_tok_s
        if base is None and rows:
            base = measure_speed(model, FP32, prompt_tokens=speed_prompt_tokens,
                                 decode_tokens=speed_decode_tokens, text=text,
                                 n_threads=n_threads).decode_tok_s
        for row in rows:
            row.decode_vs_fp32 = row.decode_tok_s / base if base else _NAN
    for row in rows:
        if row.config in errors:
            row.error = "; ".join(errors[row.config])
    return rows


def write_json(rows: Iterable[SweepRow], path: Union[str, Path]) -> Path:
    p = Path(path)
    p.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    return p


def write_csv(rows: Iterable[SweepRow], path: Union[str, Path]) -> Path:
    p = Path(path)
    names = [f.name for f in fields(SweepRow)]
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    return p


def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_table(rows: Sequence[SweepRow]) -> str:
    """The table docs/RESULTS.md publishes: codec, bytes per head vector, bits, compression,
    PPL (± s.e.), delta vs FP32, KLD mean / p99, top-1, tok/s and speed vs FP32."""
    out = ["| K / V cache | bytes/vector K+V | bits/elem | vs FP16 | PPL | Δ PPL vs FP32 "
           "| KLD mean | KLD p99 | top-1 | attn cos | NIAH | prefill tok/s | decode tok/s "
           "| vs FP32 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = "–" if math.isnan(r.delta_ppl) else \
            f"{r.delta_ppl:+.3f} ({r.delta_ppl_pct:+.2f}%)"
        ppl = "–" if math.isnan(r.ppl) else f"{r.ppl:.3f} ± {r.ppl_se:.3f}"
        out.append(
            f"| `{r.config}` | {r.k_bytes_per_vector}+{r.v_bytes_per_vector} | "
            f"{r.bits_per_element:.3f} | {r.compression_vs_fp16:.2f}x | {ppl} | {delta} | "
            f"{_fmt(r.kld_mean, '.4f')} | {_fmt(r.kld_p99, '.3f')} | {_fmt(r.top1, '.3f')} | "
            f"{_fmt(r.attn_cosine, '.4f')} | {_fmt(r.niah, '.2f')} | "
            f"{_fmt(r.prefill_tok_s, '.1f')} | {_fmt(r.decode_tok_s, '.1f')} | "
            f"{_fmt(r.decode_vs_fp32, '.2f')} |")
    return "\n".join(out)


def pareto_plot(rows: Sequence[SweepRow], path: Union[str, Path], *, quality: str = "kld_mean"
                ) -> Optional[Path]:
    """Quality (``kld_mean``, ``delta_ppl_pct`` or any row field) against bits per element,
    with the Pareto front drawn; PNG.  None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = [(r.bits_per_element, getattr(r, quality), r.config) for r in rows
           if not math.isnan(getattr(r, quality)) and r.bits_per_element < 16]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x, y, name in pts:
        ax.scatter([x], [y], s=18)
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lower_better = quality not in ("top1", "attn_cosine", "score_cosine", "niah")
    front, best = [], None
    for x, y, _ in sorted(pts):
        if best is None or (y < best if lower_better else y > best):
            front.append((x, y))
            best = y
    if front:
        ax.plot(*zip(*front), "--", lw=1, color="gray", label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("bits per element (incl. metadata)")
    ax.set_ylabel(quality)
    if lower_better and pts and min(p[1] for p in pts) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    p = Path(path)
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p
