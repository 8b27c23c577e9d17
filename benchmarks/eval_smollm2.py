"""The quality/speed table of docs/RESULTS.md ("All configurations") for the default model (SmolLM2-135M-Instruct).

    TURBOKV_LIBRARY=build/libturbokv.so PYTHONPATH=python \
        python3 benchmarks/eval_smollm2.py --chunks 8 --n-ctx 512 --top-k 256 --out benchmarks/results

Runs perplexity + KL divergence (WikiText-2 test, chunks of n_ctx, second half scored,
fp32-KV baseline from the same run), attention cosine on captured activations, and
prefill / decode speed for the codecs and the levers (key centering, key smoothing and a
sink token, the cache's defaults; K at more bits than V, first/last layer overrides, fp16
window) and the trellis-coded codecs; with --niah also the needle-in-a-haystack
grid.  Writes sweep.json, sweep.csv, table.md, pareto.png (when matplotlib is present).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import turbokv
from turbokv import eval as tkv_eval

CONFIGS = [
    # llama.cpp-style block caches and the bare turbo codecs (+plain: no levers)
    "q8_0+plain", "q4_0+plain",
    "turbo_kv_5b+plain", "turbo_kv_4b+plain", "turbo_kv_3b+plain",
    # one lever at a time on the bare codec, and the defaults without smoothing
    "turbo_kv_4b+plain+center", "turbo_kv_3b+plain+center",
    "turbo_kv_4b+nosmooth", "turbo_kv_3b+nosmooth",
    # the cache's defaults: key centering + key smoothing (alpha 0.35), calibrated per block
    # of 256 positions, + 1 sink token
    "turbo_kv_5b", "turbo_kv_4b", "turbo_kv_3b",
    # K at more bits than V, first/last layer overrides, fp16 window of recent tokens
    "turbo_kv_5b/turbo_kv_3b", "turbo_kv_4b/turbo_kv_3b",
    "turbo_kv_4b+L=0,29:q8_0", "turbo_kv_3b+L=0,29:q8_0",
    "turbo_kv_4b+plain+w=64",
    # trellis-coded codecs (same bytes as turbo_kv_Nb) with the default levers
    "turbo_kv_4b_tcq", "turbo_kv_3b_tcq", "turbo_kv_2b_tcq",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=4096,
                    help="fp32 log-probs kept per token for the KL (the published table: 256)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--configs", nargs="+", default=None, help="cache specs (default: the table)")
    ap.add_argument("--metrics", default="ppl,kld,cosine,speed")
    ap.add_argument("--speed-repeats", type=int, default=3, help="speed: best of N runs")
    ap.add_argument("--update", action="store_true",
                    help="merge the measured metrics into an existing sweep.json (by config)")
    ap.add_argument("--niah", action="store_true", help="run the NIAH grid instead")
    ap.add_argument("--niah-configs", default="fp32,turbo_kv_4b,turbo_kv_3b,turbo_kv_4b+plain,"
                                               "turbo_kv_3b+plain")
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--depths", default="0,0.5,1")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = turbokv.Model()
    t0 = time.time()
    if args.niah:
        res = tkv_eval.niah(model, args.niah_configs.split(","),
                            lengths=[int(x) for x in args.lengths.split(",")],
                            depths=[float(x) for x in args.depths.split(",")],
                            n_threads=args.threads)
        (out / "niah.json").write_text(json.dumps([r.to_dict() for r in res], indent=2))
        tkv_eval.heatmap(res, out / "niah.png")
        for r in res:
            print(r.table())
        print(f"[{time.time() - t0:.0f} s]", file=sys.stderr)
        return 0
    configs = args.configs or CONFIGS
    rows = tkv_eval.sweep(model, k_codecs=[], configs=configs, metrics=args.metrics.split(","),
                          n_ctx=args.n_ctx, chunks=args.chunks, n_threads=args.threads,
                          speed_repeats=args.speed_repeats, top_k=args.top_k,
                          baseline_file=out / f"baseline_{args.n_ctx}x{args.chunks}_top{args.top_k}.npz")
    if args.update and (out / "sweep.json").is_file():
        old = {r["config"]: r for r in json.loads((out / "sweep.json").read_text())}
        for row in rows:
            for k, v in old.get(row.config, {}).items():
                if isinstance(getattr(row, k), float) and math.isnan(getattr(row, k)) \
                        and v is not None:
                    setattr(row, k, v)
        seen = {r.config for r in rows}
        rows += [tkv_eval.SweepRow(**{"calibration_block": None, **r})  # rows from 0.3: once
                 for c, r in old.items() if c not in seen]
    tkv_eval.write_json(rows, out / "sweep.json")
    tkv_eval.write_csv(rows, out / "sweep.csv")
    table = tkv_eval.markdown_table(rows)
    (out / "table.md").write_text(table + "\n")
    tkv_eval.pareto_plot(rows, out / "pareto.png")
    print(table)
    print(f"[{time.time() - t0:.0f} s, {args.chunks} chunks of {args.n_ctx}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
