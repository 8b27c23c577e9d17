#!/usr/bin/env python3
"""Development check of lib/tensor's formats against the `gguf` package's reference code.

Build tests/tools/tensor_dump.c first (compile line at its top), then run from the
repository root:  python3 tests/tools/check_gguf_quants.py [build/tensor_dump]

1. Dequantization: random blocks (random code bytes, finite fp16 scale fields) of every
   format, dequantized by gguf.quants.dequantize and by our C code: must be bit-identical.
2. Quantization: Gaussian rows quantized by our C reference and by gguf.quants.quantize
   (where gguf implements it); we dequantize both with gguf and report the RMS errors and
   the fraction of bit-identical blocks (bit identity is not required: any valid encoding
   is a correct encoding).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

# type: (block elements, block bytes, byte offsets of fp16 scale fields)
FORMATS = {
    T.F16: (1, 2, [0]),
    T.BF16: (1, 2, []),
    T.Q8_0: (32, 34, [0]),
    T.Q4_0: (32, 18, [0]),
    T.Q4_1: (32, 20, [0, 2]),
    T.Q5_0: (32, 22, [0]),
    T.Q5_1: (32, 24, [0, 2]),
    T.Q2_K: (256, 84, [80, 82]),
    T.Q3_K: (256, 110, [108]),
    T.Q4_K: (256, 144, [0, 2]),
    T.Q5_K: (256, 176, [0, 2]),
    T.Q6_K: (256, 210, [208]),
}


def run(tool: str, mode: str, qtype: T, n_cols: int, data: bytes) -> bytes:
    return subprocess.run([tool, mode, str(int(qtype)), str(n_cols)], input=data,
                          capture_output=True, check=True).stdout


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    be, bb, scale_offs = FORMATS[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
    for off in scale_offs:
        scale = rng.uniform(-2.0, 2.0, size=n_blocks).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.BF16:  # avoid NaN payloads: random sign/exponent below 0xff
        raw[:, 1] &= 0xBF
    return raw


def main() -> int:
    tool = sys.argv[1] if len(sys.argv) > 1 else "build/tensor_dump"
    rng = np.random.default_rng(1234)
    ok = True
    for qtype, (be, bb, _) in FORMATS.items():
        n_cols = 256 if be > 1 else 64
        n_rows = 64
        raw = random_blocks(rng, qtype, n_rows * n_cols // be)
        want = quants.dequantize(raw.reshape(n_rows, -1), qtype).astype(np.float32)
        got = np.frombuffer(run(tool, "deq", qtype, n_cols, raw.tobytes()), dtype=np.float32)
        got = got.reshape(n_rows, n_cols)
        same = np.array_equal(want.view(np.uint32), got.view(np.uint32))
        close = np.allclose(want, got, rtol=1e-6, atol=0)
        ok &= close
        print(f"dequant {qtype.name:5s}: {n_rows * n_cols} elems, bit-identical={same}, "
              f"max |diff|={np.max(np.abs(want - got)):.3g}")

    for qtype in [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]:
        be, bb, _ = FORMATS[qtype]
        n_cols = 256
        x = rng.standard_normal((64, n_cols)).astype(np.float32)
        ours = np.frombuffer(run(tool, "q", qtype, n_cols, x.tobytes()), dtype=np.uint8)
        ours = ours.reshape(64, -1)
        ours_deq = quants.dequantize(ours, qtype)
        err_ours = np.sqrt(np.mean((ours_deq - x) ** 2))
        try:
            theirs = quants.quantize(x, qtype)
        except NotImplementedError:
            print(f"quant   {qtype.name:5s}: ours rms err {err_ours:.5f} (gguf has no quantizer)")
            continue
        err_theirs = np.sqrt(np.mean((quants.dequantize(theirs, qtype) - x) ** 2))
        theirs = np.ascontiguousarray(theirs).view(np.uint8)  # F16/BF16 come back typed
        blocks_same = np.mean(np.all(ours.reshape(-1, bb) == theirs.reshape(-1, bb), axis=1))
        ok &= err_ours <= 1.05 * err_theirs + 1e-7
        print(f"quant   {qtype.name:5s}: rms err ours {err_ours:.5f} gguf {err_theirs:.5f}, "
              f"identical blocks {blocks_same:.1%}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
