"""Before/after table from codec_bw_{before,after}_{isa}_r{1,2}.txt (bench_codec runs of main's
and h-bw's library, alternating processes): per (isa, head_dim, context, codec) the mean of the
two runs' medians, the speedup, the speed relative to fp16 measured in the same process
(unchanged kernels: the load-independent figure), and the after run's GB/s of K+V code bytes and fraction of the
22.3 GB/s bound (bench_bw, 1 thread, DRAM)."""
import re
import sys
from pathlib import Path

here = Path(__file__).parent
BW = 22.3


def parse(path):
    rows, key = {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"head_dim (\d+), context (\d+)", line)
        if m:
            key = (int(m[1]), int(m[2]))
            continue
        f = line.split()
        if key and len(f) >= 9 and f[1].isdigit():
            rows[key + (f[0],)] = (float(f[4]), int(f[1]))
    return rows


for isa in ("avx512", "avx2"):
    runs = {v: [parse(here / f"codec_bw_{v}_{isa}_r{r}.txt") for r in (1, 2)] for v in ("before", "after")}
    print(f"\n{isa}: attention us (scores + softmax + V sum, 1 query, 1 thread; mean of 2 process "
          f"medians), after's GB/s of K+V codes and fraction of {BW} GB/s\n")
    print("| head_dim | context | codec | before us | after us | speedup | x fp16 before | "
          "x fp16 after | after GB/s | of bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(runs["after"][0]):
        b = sum(r[key][0] for r in runs["before"]) / 2
        a = sum(r[key][0] for r in runs["after"]) / 2
        nbytes = runs["after"][0][key][1]
        gbs = 2 * nbytes * key[1] / (a * 1e-6) / 1e9
        f16 = key[:2] + ("fp16",)
        # fp16's kernels did not change: time of fp16 / time of the codec, per run, is the
        # load-independent comparison (the processes ran under different loads)
        rb = sum(r[f16][0] / r[key][0] for r in runs["before"]) / 2
        ra = sum(r[f16][0] / r[key][0] for r in runs["after"]) / 2
        print(f"| {key[0]} | {key[1]} | {key[2]} | {b:.1f} | {a:.1f} | {b / a:.2f}x | {rb:.2f}x | "
              f"{ra:.2f}x | {gbs:.1f} | {100 * gbs / BW:.0f}% |")
