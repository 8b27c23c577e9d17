"""Evaluation harnesses: perplexity + KL divergence, attention cosine on real
activations, needle in a haystack, speed, sweeps with tables and plots, quality gates.

    import turbokv
    from turbokv import eval as tkv_eval
    model = turbokv.Model()
    r = tkv_eval.perplexity(model, "turbo_kv_4b", n_ctx=512, chunks=10)
    rows = tkv_eval.sweep(model, k_codecs=["turbo_kv_4b", "turbo_kv_3b"], metrics=["ppl", "kld"])
"""
from __future__ import annotations

from .attention import AttentionResult, attention_cosine_eval, attention_eval, capture
from .config import FP32, CacheConfig
from .data import text
from .gates import GateCheck, GateReport, assert_gates, check_rows, load_config, run_gates
from .niah import NiahResult, NiahTrial, heatmap, niah, passkey, score_answer
from .speed import SpeedResult, measure_speed
from .sweep import METRICS, SweepRow, markdown_table, pareto_plot, sweep, write_csv, write_json
from .perplexity import Baseline, PerplexityResult, PerplexityRunner, chunk_tokens, perplexity

__all__ = [
    "AttentionResult", "Baseline", "CacheConfig", "FP32", "NiahResult", "NiahTrial",
    "PerplexityResult", "PerplexityRunner", "attention_cosine_eval", "attention_eval", "capture",
    "chunk_tokens", "heatmap", "niah", "passkey", "perplexity", "score_answer", "text",
    "METRICS", "SpeedResult", "SweepRow", "markdown_table", "measure_speed", "pareto_plot",
    "sweep", "write_csv", "write_json", "GateCheck", "GateReport", "assert_gates", "check_rows",
    "load_config", "run_gates",
]
