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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbokv", description="KV-cache compression toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("codecs", help="list codecs with their bytes and bits per vector")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_codecs)
    p = sub.add_parser("info", help="library version, CPU features, kernel ISA")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ._errors import TurboKVError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TurboKVError as exc:
        print(f"turbokv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
