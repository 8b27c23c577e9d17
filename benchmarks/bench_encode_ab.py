"""Encode speed of several libturbokv builds side by side: vectors per second per core.

Each library runs in its own child process (one libturbokv.so per process), the libraries
alternate round by round so that the machine's load falls on all of them alike, and the time
is the child's thread CPU time (the best of --reps encodes of the same batch).

    python benchmarks/bench_encode_ab.py --libs OLD.so,NEW.so \
        --codecs turbo_kv_4b,turbo_kv_3b_tcq --dims 64,128 --rounds 3
"""

import argparse
import json
import os
import subprocess
import sys
import time


def child(lib: str, codecs: list, dims: list, n: int, reps: int) -> None:
    os.environ["TURBOKV_LIBRARY"] = lib
    import numpy as np

    import turbokv

    out = {}
    for d in dims:
        x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
        for name in codecs:
            c = turbokv.Codec(name, d)
            c.encode(x[:64])  # codec tables built outside the timing
            best = float("inf")
            for _ in range(reps):
                t = time.thread_time()
                c.encode(x)
                best = min(best, time.thread_time() - t)
            out[f"{name}@{d}"] = n / best
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", required=True, help="comma-separated libturbokv.so paths")
    ap.add_argument("--codecs", default="turbo_kv_4b,turbo_kv_3b,turbo_kv_4b_tcq,turbo_kv_3b_tcq")
    ap.add_argument("--dims", default="64")
    ap.add_argument("--vectors", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    codecs, dims = a.codecs.split(","), [int(d) for d in a.dims.split(",")]
    if a.child:
        child(a.child, codecs, dims, a.vectors, a.reps)
        return
    libs = a.libs.split(",")
    results = {lib: [] for lib in libs}
    for rnd in range(a.rounds):
        for lib in libs if rnd % 2 == 0 else libs[::-1]:
            cmd = [sys.executable, __file__, "--libs", a.libs, "--child", lib, "--codecs", a.codecs,
                   "--dims", a.dims, "--vectors", str(a.vectors), "--reps", str(a.reps)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[lib].append(json.loads(r.stdout))
            print(f"round {rnd} load {os.getloadavg()[0]:.1f} {lib}", file=sys.stderr, flush=True)
    keys = list(results[libs[0]][0])
    print(f"encode, vectors/s per core (thread CPU time), median of {a.rounds} interleaved rounds")
    print("| codec @ head_dim | " + " | ".join(libs) + " | ratio last/first |")
    print("|---|" + "---|" * (len(libs) + 1))
    for k in keys:
        med = [sorted(r[k] for r in results[lib])[len(results[lib]) // 2] for lib in libs]
        cells = " | ".join(f"{m / 1e3:.0f}k" for m in med)
        print(f"| {k} | {cells} | {med[-1] / med[0]:.2f}x |")


if __name__ == "__main__":
    main()
