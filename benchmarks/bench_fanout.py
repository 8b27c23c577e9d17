"""Wall time of one evaluation run serially and on a local Dask cluster, side by side.

    python benchmarks/bench_fanout.py --workers 2 --repeats 1 -- \\
        niah --kv fp32 --kv turbo_kv_4b --lengths 1024,2048 --trials 3

runs ``turbokv eval <args> --json`` alternately as today's serial path and with
``--workers N --results <fresh dir>``, checks that both print the same JSON, and
reports the wall times, the load average around each run, the task count and the task
times the results store recorded (per task, at the threads each worker task got), with
the time a cluster of W such workers would need (docs/DISTRIBUTED.md explains the model).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> tuple[float, str, tuple[float, float]]:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out, (load0, os.getloadavg()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cluster", default="4,8,16,32",
                    help="worker counts to estimate the wall time for")
    ap.add_argument("eval_args", nargs=argparse.REMAINDER,
                    help="-- then the arguments of 'turbokv eval'")
    a = ap.parse_args()
    extra = a.eval_args[1:] if a.eval_args[:1] == ["--"] else a.eval_args
    base = [sys.executable, "-m", "turbokv", "eval", *extra, "--no-progress", "--json"]
    rows, outputs, task_seconds = [], {}, []
    for rep in range(a.repeats):
        for mode in ("serial", f"dask x{a.workers}"):
            cmd = list(base)
            store = None
            if mode != "serial":
                store = Path(tempfile.mkdtemp(prefix="tkv_fanout_"))
                cmd += ["--workers", str(a.workers), "--results", str(store)]
            wall, out, load = run(cmd)
            outputs.setdefault(mode, out)
            rows.append({"repeat": rep, "mode": mode, "wall_s": round(wall, 1),
                         "load_before": load[0], "load_after": load[1]})
            if store is not None:
                lines = [json.loads(x) for x in (store / "results.jsonl").read_text().splitlines()]
                task_seconds = [x["seconds"] for x in lines]
                rows[-1]["tasks"] = len(lines)
                rows[-1]["task_s_sum"] = round(sum(task_seconds), 1)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    modes = list(outputs)
    same = all(json.loads(outputs[m]) == json.loads(outputs[modes[0]]) for m in modes)
    serial = statistics.median(r["wall_s"] for r in rows if r["mode"] == "serial")
    fanned = statistics.median(r["wall_s"] for r in rows if r["mode"] != "serial")
    n = len(task_seconds)
    mean = statistics.mean(task_seconds) if n else float("nan")
    longest = max(task_seconds) if n else float("nan")
    print(f"command: turbokv eval {' '.join(extra)}")
    print(f"identical JSON serial vs dask: {same}")
    print("| run | mode | wall s | load before / after | tasks | sum of task s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['repeat']} | {r['mode']} | {r['wall_s']} | {r['load_before']:.2f} / "
              f"{r['load_after']:.2f} | {r.get('tasks', '')} | {r.get('task_s_sum', '')} |")
    print(f"serial {serial:.1f} s, {a.workers} workers {fanned:.1f} s: "
          f"ratio {serial / fanned:.2f}x")
    print(f"{n} tasks, {mean:.2f} s mean task time at 1 thread/task, longest {longest:.1f} s")
    for w in (int(x) for x in a.cluster.split(",")):
        # a lower bound: tasks spread evenly, the longest task at the end, no startup
        est = max(math.ceil(n / w) * mean, longest)
        print(f"  estimate on {w} such workers: {est:.0f} s of tasks "
              f"(+ cluster start, model load per worker)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
