"""Saved caches: file bytes per token against llama.cpp's state file, load time against
prefill, memory of forked sessions against independent ones.

    TURBOKV_LIBRARY=build/libturbokv.so PYTHONPATH=python \\
        python benchmarks/bench_persist.py --json benchmarks/results/persist.json

Text: WikiText-2 test (python/turbokv/data/wiki.test.raw), tokenized with the model's
tokenizer.  Timings are wall clock on one machine with its load (uptime) recorded;
prefill and load are interleaved per repetition.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import turbokv

DATA = Path(turbokv.__file__).parent / "data" / "wiki.test.raw"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tokens(model: turbokv.Model, n: int) -> list[int]:
    text = DATA.read_text(encoding="utf-8")[: n * 8]
    ids = [int(t) for t in model.tokenize(text, add_bos=True)]
    assert len(ids) >= n, (len(ids), n)
    return ids[:n]


def file_sizes(model, path, n_tokens, tmp, threads) -> dict:
    ids = tokens(model, n_tokens)
    out = {}
    for codec in ("fp32", "fp16", "turbo_kv_4b", "turbo_kv_3b"):
        with turbokv.KVCache(model, k=codec, v=codec, n_ctx=n_tokens) as c:
            s = turbokv.Session(c, n_threads=threads)
            s.eval(ids)
            c.save(tmp / "c.tkv")
            s.save(tmp / "s.tkv")
            out[codec] = dict(cache_file_bytes=(tmp / "c.tkv").stat().st_size,
                              session_file_bytes=(tmp / "s.tkv").stat().st_size,
                              cache_bytes_used=c.bytes_used)
    try:
        import llama_cpp
    except ImportError:
        return out
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_tokens + 16, n_batch=512,
                          n_threads=threads, verbose=False, logits_all=False)  # f16 KV: default
    llm.eval(ids)
    state = llm.save_state()
    out["llama.cpp f16 (save_state)"] = dict(state_bytes=int(state.llama_state_size),
                                             llama_cpp_python=llama_cpp.__version__)
    ctx = llm._ctx.ctx
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    ok = llama_cpp.llama_state_save_file(ctx, str(tmp / "llama.state").encode(), arr, len(ids))
    if ok:
        out["llama.cpp f16 (save_state)"]["state_file_bytes"] = (tmp / "llama.state").stat().st_size
    del llm
    for v in out.values():
        size = v.get("cache_file_bytes") or v.get("state_file_bytes") or v.get("state_bytes")
        v["file_bytes_per_token"] = size / n_tokens
    return out


def load_vs_prefill(model, n_tokens, reps, tmp, threads, codec="turbo_kv_4b") -> dict:
    ids = tokens(model, n_tokens)
    prefill, load = [], []
    path = tmp / f"p{n_tokens}.tkv"
    for r in range(reps):
        with turbokv.KVCache(model, k=codec, v=codec, n_ctx=n_tokens + 64) as c:
            s = turbokv.Session(c, n_threads=threads)
            t0 = time.perf_counter()
            s.eval(ids)
            prefill.append(time.perf_counter() - t0)
            if r == 0:
                s.save(path)
                want = s.logits()
        for _ in range(3):
            t0 = time.perf_counter()
            s2 = turbokv.Session.load(model, path, n_threads=threads)
            load.append(time.perf_counter() - t0)
            assert (s2.logits() == want).all()
            s2.close()
            s2.cache.close()
    best_p, best_l = min(prefill), min(load)
    return dict(codec=codec, n_tokens=n_tokens, file_bytes=path.stat().st_size,
                prefill_s=prefill, load_s=load, prefill_best_s=best_p, load_best_s=best_l,
                load_speedup_best=best_p / best_l,
                load_speedup_median=sorted(prefill)[len(prefill) // 2] / sorted(load)[len(load) // 2])


def _fork_child(model_path: str, doc_path: str, mode: str, n_sessions: int, q: list[int],
                threads: int) -> dict:
    """One measurement in a fresh process: RSS growth of n_sessions sessions that each
    continue the saved document with their own question."""
    model = turbokv.Model(model_path)
    gc.collect()
    base = rss_bytes()
    if mode == "independent":  # n copies of the evaluated document (loaded, not recomputed)
        sessions = [turbokv.Session.load(model, doc_path, n_threads=threads)
                    for _ in range(n_sessions)]
    elif mode == "forked":
        root = turbokv.Session.load(model, doc_path, n_threads=threads)
        sessions = [root] + [root.fork(n_threads=threads) for _ in range(n_sessions - 1)]
    else:  # "empty": the sessions' own buffers, on empty caches of the same capacity
        cap = turbokv.KVCache.load(model, doc_path).capacity
        sessions = [turbokv.Session(turbokv.KVCache(model, n_ctx=cap), n_threads=threads)
                    for _ in range(n_sessions)]
    for i, s in enumerate(sessions):
        s.eval(q[: len(q) - i])
    return dict(rss_delta_bytes=rss_bytes() - base,
                cache_bytes_allocated=sum(s.cache.bytes_allocated for s in sessions))


def fork_memory(model, path, n_tokens, n_sessions, tail, tmp, threads, codec="turbo_kv_4b") -> dict:
    import subprocess
    import sys
    ids = tokens(model, n_tokens + tail)
    doc, q = ids[:n_tokens], ids[n_tokens:]
    doc_path = tmp / "doc.tkv"
    with turbokv.KVCache(model, k=codec, v=codec, n_ctx=n_tokens + tail + 64) as c:
        s = turbokv.Session(c, n_threads=threads)
        s.eval(doc)
        s.save(doc_path)
        doc_cache_bytes = c.bytes_used
    out = dict(codec=codec, n_tokens=n_tokens, n_sessions=n_sessions, tail=tail,
               document_cache_bytes=doc_cache_bytes)
    for mode in ("empty", "independent", "forked"):
        arg = json.dumps([str(path), str(doc_path), mode, n_sessions, q, threads])
        run = subprocess.run([sys.executable, __file__, "--fork-child", arg], capture_output=True,
                             text=True, check=True)
        out[mode] = json.loads(run.stdout)
    for mode in ("independent", "forked"):
        out[mode]["rss_minus_empty_bytes"] = (out[mode]["rss_delta_bytes"]
                                              - out["empty"]["rss_delta_bytes"])
    out["cache_memory_ratio"] = (out["independent"]["rss_minus_empty_bytes"]
                                 / max(out["forked"]["rss_minus_empty_bytes"], 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size-tokens", type=int, default=1024)
    ap.add_argument("--contexts", default="4096,8192")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--fork-sessions", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--fork-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fork_child:
        print(json.dumps(_fork_child(*json.loads(args.fork_child))))
        return
    path = turbokv.models.path(args.model, install_missing=True)
    model = turbokv.Model(path)
    res = dict(model=str(Path(path).name), threads=args.threads, kernel_isa=turbokv.kernel_isa(),
               library=turbokv.library_version(), load_before=os.getloadavg())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res["file_sizes"] = file_sizes(model, path, args.size_tokens, tmp, args.threads)
        print(json.dumps(res["file_sizes"], indent=1), flush=True)
        res["fork_memory"] = fork_memory(model, path, 4096, args.fork_sessions, 64, tmp,
                                         args.threads)
        print(json.dumps(res["fork_memory"], indent=1), flush=True)
        res["load_vs_prefill"] = []
        for n in [int(x) for x in args.contexts.split(",")]:
            r = load_vs_prefill(model, n, args.reps, tmp, args.threads)
            res["load_vs_prefill"].append(r)
            print(json.dumps(r, indent=1), flush=True)
    res["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
