"""End-to-end speed on the default model: prefill and decode tok/s and KV bytes per token
for several KV codecs at several context lengths, as ratios to the fp32 cache measured in
the same run, with the per-phase profile; optionally llama.cpp (llama-cpp-python) on the
same model, threads and context with its f16 / q8_0 / q4_0 caches.

    python benchmarks/bench_e2e.py                  # turbokv only
    python benchmarks/bench_e2e.py --llama-cpp      # also llama.cpp (pip install llama-cpp-python)
    python benchmarks/bench_e2e.py --codecs fp32,turbo_kv_4b,turbo_kv_4b+once --ctx 4096
                                                    # cache specs as in `turbokv eval`

Each configuration is measured --reps times, interleaved, and the median is reported, since
the machine is shared and noisy.

Every decode profile is also put against its bandwidth bound (--bw GB/s, from
benchmarks/bench_bw.c: the streaming read of the thread count used, from DRAM): matmul reads
the weights once per token (their bytes: the GGUF file size less its metadata, an upper bound
that counts the embedding table the output layer reuses), attention reads the KV cache
(bytes/token x positions, averaged over the decoded tokens); "x% of bound" = (bytes / bw) /
measured time.  Decode is measured at the given context: the context is
prefilled first, then --decode tokens are generated one at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import turbokv  # noqa: E402
from turbokv import CacheConfig  # noqa: E402

WIKI = Path(__file__).resolve().parents[1] / "python" / "turbokv" / "data" / "wiki.test.raw"


def text_tokens(model: turbokv.Model, n: int) -> np.ndarray:
    toks = model.tokenize(WIKI.read_text()[: n * 8], add_bos=False)
    if toks.size < n:
        raise SystemExit(f"not enough text for {n} tokens")
    return toks[:n]


def run_turbokv(model, kv: str, ctx: int, n_decode: int, threads: int, plain: bool) -> dict:
    toks = text_tokens(model, ctx + n_decode)
    cfg = CacheConfig.parse(kv + ("+plain" if plain else ""))  # a codec name or a cache spec
    with cfg.cache(model, ctx + n_decode + 1) as cache, \
            turbokv.Session(cache, n_threads=threads, n_batch=512) as s:
        s.eval(toks[:ctx])
        pre = s.timings()
        s.reset_timings()
        for t in toks[ctx:ctx + n_decode]:
            s.eval([int(t)])
            s.sample(turbokv.Sampling(temperature=0))
        dec = s.timings()
        return {"prefill_tok_s": pre.prefill_tok_s, "decode_tok_s": dec.decode_tok_s,
                "bytes_per_token": cache.bytes_per_token,
                "profile_decode": {"matmul": dec.matmul_seconds, "attention": dec.attention_seconds,
                                   "other": dec.other_seconds, "sample": dec.sample_seconds}}


def run_llama_cpp(path: str, cache_type: str, ctx: int, n_decode: int, threads: int) -> dict:
    import llama_cpp

    types = {"f16": 1, "q8_0": 8, "q4_0": 2}
    llm = llama_cpp.Llama(model_path=path, n_ctx=ctx + n_decode + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, type_k=types[cache_type],
                          type_v=types[cache_type], flash_attn=cache_type != "f16",
                          verbose=False, logits_all=False)
    toks = llm.tokenize(WIKI.read_text()[: (ctx + n_decode) * 8].encode(),
                        add_bos=False)[: ctx + n_decode]
    t0 = time.perf_counter()
    llm.eval(toks[:ctx])
    t1 = time.perf_counter()
    for t in toks[ctx:]:
        llm.eval([t])
    t2 = time.perf_counter()
    llm.close() if hasattr(llm, "close") else None
    return {"prefill_tok_s": ctx / (t1 - t0), "decode_tok_s": n_decode / (t2 - t1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", default="fp32,fp16,q8_0,turbo_kv_4b,turbo_kv_3b")
    ap.add_argument("--ctx", default="512,4096")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--plain", action="store_true",
                    help="turn the cache's default levers off (centering, smoothing, sinks)")
    ap.add_argument("--llama-cpp", action="store_true", help="also run llama.cpp's f16/q8_0/q4_0 caches")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--bw", type=float, default=0.0,
                    help="streaming read bandwidth bound in GB/s (default: bench_bw's DRAM figure "
                         "on this machine, 22.3 for 1 thread, 31.9 for 2)")
    args = ap.parse_args()

    model = turbokv.Model(install=True)
    bw = args.bw or (22.3 if args.threads == 1 else 31.9)
    weight_bytes = model.path.stat().st_size
    codecs = args.codecs.split(",")
    ctxs = [int(c) for c in args.ctx.split(",")]
    configs = [("turbokv", c) for c in codecs]
    if args.llama_cpp:
        configs += [("llama.cpp", c) for c in ("f16", "q8_0", "q4_0")]
    results: dict = {}
    for ctx in ctxs:
        for rep in range(args.reps):
            for engine, c in configs:
                if engine == "turbokv":
                    r = run_turbokv(model, c, ctx, args.decode, args.threads, args.plain)
                else:
                    r = run_llama_cpp(str(model.path), c, ctx, args.decode, args.threads)
                results.setdefault((ctx, engine, c), []).append(r)
                print(f"ctx {ctx} rep {rep} {engine:9s} {c:12s} prefill {r['prefill_tok_s']:8.1f} "
                      f"decode {r['decode_tok_s']:7.1f} tok/s", file=sys.stderr, flush=True)

    print(f"\nmodel {model.name} ({model.path.name}), threads {args.threads}, codec kernels "
          f"{turbokv.kernel_isa()}, median of {args.reps}, decode {args.decode} tokens after the context")
    rows = []
    for ctx in ctxs:
        base = results[(ctx, "turbokv", "fp32")] if (ctx, "turbokv", "fp32") in results else None
        base_pre = statistics.median(r["prefill_tok_s"] for r in base) if base else None
        base_dec = statistics.median(r["decode_tok_s"] for r in base) if base else None
        llama_f16 = results.get((ctx, "llama.cpp", "f16"))
        ref_dec = statistics.median(r["decode_tok_s"] for r in llama_f16) if llama_f16 else None
        print(f"\n| ctx {ctx} | engine | KV cache | KV bytes/token | prefill tok/s | vs fp32 | "
              f"decode tok/s | vs fp32 | vs llama.cpp f16 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for engine, c in configs:
            rs = results[(ctx, engine, c)]
            pre = statistics.median(r["prefill_tok_s"] for r in rs)
            dec = statistics.median(r["decode_tok_s"] for r in rs)
            bpt = rs[0].get("bytes_per_token", "")
            row = {"ctx": ctx, "engine": engine, "cache": c, "bytes_per_token": bpt,
                   "prefill_tok_s": pre, "decode_tok_s": dec,
                   "prefill_vs_fp32": pre / base_pre if base_pre else None,
                   "decode_vs_fp32": dec / base_dec if base_dec else None,
                   "decode_vs_llama_f16": dec / ref_dec if ref_dec else None}
            if engine == "turbokv":
                row["profile_decode"] = {k: statistics.median(r["profile_decode"][k] for r in rs)
                                         for k in rs[0]["profile_decode"]}
                # per token: bytes each phase must read, and what that takes at the bound
                kv_bytes = (bpt or 0) * (ctx + args.decode / 2)
                row["bound"] = {"bw_gb_s": bw, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                                "matmul_frac": weight_bytes / (bw * 1e9) /
                                (row["profile_decode"]["matmul"] / args.decode),
                                "attention_frac": kv_bytes / (bw * 1e9) /
                                (row["profile_decode"]["attention"] / args.decode),
                                "token_frac": (weight_bytes + kv_bytes) / (bw * 1e9) * dec}
            rows.append(row)
            f = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
            print(f"| | {engine} | {c} | {bpt} | {pre:.1f} | {f(row['prefill_vs_fp32'])} | {dec:.1f} | "
                  f"{f(row['decode_vs_fp32'])} | {f(row['decode_vs_llama_f16'])} |")
        for row in rows:
            if row["ctx"] == ctx and "profile_decode" in row:
                p = row["profile_decode"]
                tot = sum(p.values()) or 1
                b = row["bound"]
                n = args.decode
                print(f"  decode profile {row['cache']:12s} " + ", ".join(
                    f"{k} {100 * v / tot:.0f}%" for k, v in p.items()) +
                    f"; per token: matmul {1e3 * p['matmul'] / n:.2f} ms = "
                    f"{100 * b['matmul_frac']:.0f}% of bound ({b['weight_bytes'] / 1e6:.0f} MB), "
                    f"attention {1e3 * p['attention'] / n:.2f} ms = "
                    f"{100 * b['attention_frac']:.0f}% of bound ({b['kv_bytes'] / 1e6:.1f} MB), "
                    f"token {100 * b['token_frac']:.0f}% of bound at {b['bw_gb_s']:.1f} GB/s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
