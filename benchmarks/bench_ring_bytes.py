"""Cache bytes of a tiny Gemma 3 at 4096 positions: sliding-window layers that keep only
their window (a ring of window - 1 + 256 code rows) against the same cache keeping every
position (a library without rings, given with --no-ring-lib, run in a child process).

    TURBOKV_LIBRARY=build/libturbokv.so PYTHONPATH=python python benchmarks/bench_ring_bytes.py \
        [--no-ring-lib OLD/libturbokv.so] [--json benchmarks/results/ring_bytes.json]

The model: 6 layers (5 local with a window of 512, then 1 global, Gemma 3 1B's pattern and
window), 2 KV heads of 64, random weights (tests/python/tiny_models.py).  Bytes do not
depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

N, WINDOW = 4096, 512
CONFIGS = [dict(k="turbo_kv_4b", v="turbo_kv_4b"), dict(k="fp16", v="fp16")]


def measure(model_path: str) -> list[dict]:
    import turbokv
    rows = []
    with turbokv.Model(model_path) as model:
        tokens = [(7 * t + 3) % model.n_vocab for t in range(N)]
        for cfg in CONFIGS:
            with turbokv.KVCache(model, n_ctx=N, **cfg) as cache, \
                    turbokv.Session(cache, n_threads=1, n_batch=512) as s:
                s.eval(tokens)
                rows.append(dict(cfg, tokens=len(cache), bytes_used=cache.bytes_used,
                                 bytes_allocated=cache.bytes_allocated))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-ring-lib", help="a libturbokv.so without sliding-window rings")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    from tiny_models import TinyConfig, write_tiny_model
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "gemma3.gguf")
        write_tiny_model(path, TinyConfig(arch="gemma3", n_embd=128, n_head=4, n_head_kv=2,
                                          key_length=64, n_layer=6, sliding_window=WINDOW,
                                          swa_pattern=6, n_ctx=N, seed=3))
        out = dict(positions=N, window=WINDOW, layers="5 local + 1 global",
                   ring=measure(path))
        if args.no_ring_lib:
            env = dict(os.environ, TURBOKV_LIBRARY=args.no_ring_lib)
            run = subprocess.run([sys.executable, __file__, "--child", path], env=env,
                                 capture_output=True, text=True, check=True)
            out["no_ring"] = json.loads(run.stdout)
    for i, cfg in enumerate(CONFIGS):
        r = out["ring"][i]
        line = f"{cfg['k']}/{cfg['v']}: ring {r['bytes_used']:,} B used, " \
               f"{r['bytes_allocated']:,} B allocated"
        if "no_ring" in out:
            o = out["no_ring"][i]
            line += f"; no ring {o['bytes_used']:,} / {o['bytes_allocated']:,} B " \
                    f"({o['bytes_used'] / r['bytes_used']:.2f}x / " \
                    f"{o['bytes_allocated'] / r['bytes_allocated']:.2f}x)"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
