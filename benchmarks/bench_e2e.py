"""End-to-end speed on the default model: prefill and decode tok/s and KV bytes per token
for several KV codecs at several context lengths and thread counts, as ratios to the fp32
cache measured in the same run, with the per-phase profile; optionally llama.cpp
(llama-cpp-python) on the same model, tokens, threads and context.

    python benchmarks/bench_e2e.py                  # turbokv only
    python benchmarks/bench_e2e.py --codecs fp32,turbo_kv_4b,turbo_kv_4b+once --ctx 4096
                                                    # cache specs as in `turbokv eval`
    python benchmarks/bench_e2e.py --llama-cpp --codecs fp32,turbo_kv_4b --threads 1,2 \
        --ctx 512,4096                              # against llama.cpp (pip install llama-cpp-python)

llama-cpp-python compiles llama.cpp for the CPU it is built on; where a VM lists AMX in cpuid
without enabling it, its AMX matmul dies with an illegal instruction: build it as .ci/run
does (CMAKE_ARGS with -mno-amx-tile -mno-amx-int8 -mno-amx-bf16, --no-cache-dir).

Each configuration is measured --reps times, interleaved (every configuration once, then
again in the reverse order, ...), and the median is reported, since the machine is shared and
noisy; the 1-minute load average is recorded before and after every measurement.  With
--llama-cpp, llama.cpp runs its f16 cache with and without flash attention (--llama-caches;
its fastest configuration differs with context and threads) and each turbokv configuration
is also put against llama.cpp's best of them; the llama-cpp-python version and llama.cpp's
system info (the CPU features it was built for) are printed and saved.

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


LLAMA_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def run_llama_cpp(path: str, cache: str, toks: np.ndarray, ctx: int, n_decode: int,
                  threads: int) -> dict:
    """llama.cpp on the same tokens: cache "f16", "q8_0", "q4_0", "+fa" for flash attention
    (the quantized caches need it)."""
    import llama_cpp

    kv, _, opt = cache.partition("+")
    llm = llama_cpp.Llama(model_path=path, n_ctx=ctx + n_decode + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, type_k=LLAMA_KV_TYPES[kv],
                          type_v=LLAMA_KV_TYPES[kv], flash_attn=opt == "fa",
                          verbose=False, logits_all=False)
    ids = [int(t) for t in toks[: ctx + n_decode]]
    t0 = time.perf_counter()
    llm.eval(ids[:ctx])
    t1 = time.perf_counter()
    for t in ids[ctx:]:
        llm.eval([t])
    t2 = time.perf_counter()
    llm.close()
    return {"prefill_tok_s": ctx / (t1 - t0), "decode_tok_s": n_decode / (t2 - t1)}


def llama_cpp_info() -> dict:
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def load1() -> float:
    """The 1-minute load average (what `uptime` prints first)."""
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", default="fp32,fp16,q8_0,turbo_kv_4b,turbo_kv_3b")
    ap.add_argument("--ctx", default="512,4096")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", default=str(os.cpu_count() or 1),
                    help="comma-separated thread counts, each measured separately")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--plain", action="store_true",
                    help="turn the cache's default levers off (centering, smoothing, sinks)")
    ap.add_argument("--llama-cpp", action="store_true", help="also run llama.cpp (--llama-caches)")
    ap.add_argument("--llama-caches", default="f16,f16+fa",
                    help="llama.cpp caches: f16, q8_0, q4_0, with +fa for flash attention")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--bw", type=float, default=0.0,
                    help="streaming read bandwidth bound in GB/s (default: bench_bw's DRAM figure "
                         "on this machine, 22.3 for 1 thread, 31.9 for 2)")
    args = ap.parse_args()
    threads_list = [int(t) for t in str(args.threads).split(",")]

    model = turbokv.Model(install=True)
    weight_bytes = model.path.stat().st_size
    codecs = args.codecs.split(",")
    ctxs = [int(c) for c in args.ctx.split(",")]
    configs = [("turbokv", c) for c in codecs]
    llama_caches = args.llama_caches.split(",") if args.llama_cpp else []
    configs += [("llama.cpp", c) for c in llama_caches]
    info = {"model": model.path.name, "codec_kernels": turbokv.kernel_isa(),
            "decode_tokens": args.decode, "reps": args.reps, "cpus": os.cpu_count(),
            "load_start": os.getloadavg()}
    if args.llama_cpp:
        info.update(llama_cpp_info())
    print(json.dumps(info), file=sys.stderr, flush=True)
    results: dict = {}
    for ctx in ctxs:
        toks = text_tokens(model, ctx + args.decode)
        for threads in threads_list:
            for rep in range(args.reps):
                order = configs if rep % 2 == 0 else configs[::-1]
                for engine, c in order:
                    before = load1()
                    if engine == "turbokv":
                        r = run_turbokv(model, c, ctx, args.decode, threads, args.plain)
                    else:
                        r = run_llama_cpp(str(model.path), c, toks, ctx, args.decode, threads)
                    r["load"] = (before, load1())
                    results.setdefault((ctx, threads, engine, c), []).append(r)
                    print(f"ctx {ctx} threads {threads} rep {rep} {engine:9s} {c:12s} prefill "
                          f"{r['prefill_tok_s']:8.1f} decode {r['decode_tok_s']:7.1f} tok/s, "
                          f"load {r['load'][0]:.2f} -> {r['load'][1]:.2f}", file=sys.stderr,
                          flush=True)
    info["load_end"] = os.getloadavg()

    print(f"\nmodel {model.name} ({model.path.name}), codec kernels {turbokv.kernel_isa()}, "
          f"median of {args.reps} interleaved runs, decode {args.decode} tokens after the context")
    if args.llama_cpp:
        print(f"llama-cpp-python {info['llama_cpp_python']}; llama.cpp system info: "
              f"{info['system_info']}")
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    f = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
    rows = []
    for ctx in ctxs:
        for threads in threads_list:
            bw = args.bw or (22.3 if threads == 1 else 31.9)
            base = results.get((ctx, threads, "turbokv", "fp32"))
            base_pre = med(base, "prefill_tok_s") if base else None
            base_dec = med(base, "decode_tok_s") if base else None
            ll = [results[(ctx, threads, "llama.cpp", c)] for c in llama_caches]
            best_pre = max(med(rs, "prefill_tok_s") for rs in ll) if ll else None
            best_dec = max(med(rs, "decode_tok_s") for rs in ll) if ll else None
            print(f"\n| ctx {ctx}, {threads} thr | engine | KV cache | KV bytes/token | "
                  f"prefill tok/s | vs fp32 | vs llama.cpp best | decode tok/s | vs fp32 | "
                  f"vs llama.cpp best | load (1 min) |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for engine, c in configs:
                rs = results[(ctx, threads, engine, c)]
                pre, dec = med(rs, "prefill_tok_s"), med(rs, "decode_tok_s")
                loads = [x for r in rs for x in r["load"]]
                bpt = rs[0].get("bytes_per_token", "")
                row = {"ctx": ctx, "threads": threads, "engine": engine, "cache": c,
                       "bytes_per_token": bpt, "prefill_tok_s": pre, "decode_tok_s": dec,
                       "prefill_all": [r["prefill_tok_s"] for r in rs],
                       "decode_all": [r["decode_tok_s"] for r in rs],
                       "load_min": min(loads), "load_max": max(loads),
                       "prefill_vs_fp32": pre / base_pre if base_pre else None,
                       "decode_vs_fp32": dec / base_dec if base_dec else None,
                       "prefill_vs_llama_best": pre / best_pre if best_pre else None,
                       "decode_vs_llama_best": dec / best_dec if best_dec else None}
                if engine == "turbokv":
                    row["profile_decode"] = {k: statistics.median(r["profile_decode"][k]
                                                                  for r in rs)
                                             for k in rs[0]["profile_decode"]}
                    # per token: bytes each phase must read, and what that takes at the bound
                    kv_bytes = (bpt or 0) * (ctx + args.decode / 2)
                    row["bound"] = {"bw_gb_s": bw, "weight_bytes": weight_bytes,
                                    "kv_bytes": kv_bytes,
                                    "matmul_frac": weight_bytes / (bw * 1e9) /
                                    (row["profile_decode"]["matmul"] / args.decode),
                                    "attention_frac": kv_bytes / (bw * 1e9) /
                                    (row["profile_decode"]["attention"] / args.decode),
                                    "token_frac": (weight_bytes + kv_bytes) / (bw * 1e9) * dec}
                rows.append(row)
                print(f"| | {engine} | {c} | {bpt} | {pre:.1f} | {f(row['prefill_vs_fp32'])} | "
                      f"{f(row['prefill_vs_llama_best'])} | {dec:.1f} | "
                      f"{f(row['decode_vs_fp32'])} | {f(row['decode_vs_llama_best'])} | "
                      f"{row['load_min']:.1f}-{row['load_max']:.1f} |")
            for row in rows:
                if row["ctx"] == ctx and row["threads"] == threads and "profile_decode" in row:
                    p = row["profile_decode"]
                    tot = sum(p.values()) or 1
                    b = row["bound"]
                    n = args.decode
                    print(f"  decode profile {row['cache']:12s} " + ", ".join(
                        f"{k} {100 * v / tot:.0f}%" for k, v in p.items()) +
                        f"; per token: matmul {1e3 * p['matmul'] / n:.2f} ms = "
                        f"{100 * b['matmul_frac']:.0f}% of bound "
                        f"({b['weight_bytes'] / 1e6:.0f} MB), "
                        f"attention {1e3 * p['attention'] / n:.2f} ms = "
                        f"{100 * b['attention_frac']:.0f}% of bound ({b['kv_bytes'] / 1e6:.1f} MB), "
                        f"token {100 * b['token_frac']:.0f}% of bound at {b['bw_gb_s']:.1f} GB/s")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
