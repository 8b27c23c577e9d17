"""Python-side hardening (issue 10): closed handles, argument ranges at the ctypes
boundary, stop reasons, lazy imports.  Tiny random models only (fast)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import turbokv
from tiny_models import TinyConfig, write_tiny_model


def _run_python(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout


def test_star_import_does_not_shadow_builtins_and_eval_is_lazy():
    out = _run_python(
        "import builtins, sys\n"
        "ns = {}\n"
        "exec('from turbokv import *', ns)\n"
        "print(sorted(n for n in ns if n != '__builtins__' and hasattr(builtins, n)))\n"
        "print(sorted(m for m in sys.modules if m.startswith('turbokv.eval')))\n"
        "import turbokv\n"
        "print(callable(turbokv.eval.perplexity), callable(turbokv.eval.niah),\n"
        "      callable(turbokv.eval.sweep))\n"
        "from turbokv import eval as tkv_eval\n"
        "from turbokv.eval.niah import NiahResult\n"
        "print(tkv_eval is turbokv.eval, callable(tkv_eval.niah), tkv_eval.NiahResult is NiahResult)\n")
    shadowed, loaded, funcs, alias = out.splitlines()
    assert shadowed == "[]"
    assert "perplexity" not in loaded and "niah" not in loaded and "sweep" not in loaded
    assert loaded == "[]"  # import turbokv (through *) imports no harness at all
    assert funcs == "True True True"
    assert alias == "True True True"
    assert "eval" not in turbokv.__all__


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_model(path, TinyConfig(seed=3))
    return path


def test_cache_close_with_open_session_is_refused_and_closed_objects_raise(tiny_path):
    """Before: KVCache.close() freed the cache under an open Session and the next eval
    used freed memory (a segfault).  Run in a subprocess so a regression cannot take the
    test run down with it."""
    code = f"""
import turbokv
m = turbokv.Model({str(tiny_path)!r})
c = turbokv.KVCache(m, k="fp32", v="fp32", n_ctx=64)
s = turbokv.Session(c)
try:
    c.close()
except turbokv.InUseError as e:
    print("refused:", e)
s.eval([1, 2, 3])            # the cache is still alive
print("len", len(c))
s.close(); c.close(); c.close()  # idempotent
for name, call in [("eval", lambda: s.eval([1])), ("sample", s.sample),
                   ("logits", s.logits), ("n_tokens", lambda: s.n_tokens),
                   ("timings", s.timings), ("reset_timings", s.reset_timings),
                   ("generate", lambda: s.generate(2)), ("len", lambda: len(c)),
                   ("capacity", lambda: c.capacity), ("truncate", lambda: c.truncate(0)),
                   ("bytes_used", lambda: c.bytes_used), ("session", lambda: turbokv.Session(c))]:
    try:
        call()
        print(name, "no error")
    except turbokv.ClosedError as e:
        print(name, "ClosedError")
with turbokv.KVCache(m, n_ctx=64) as c2:
    s2 = turbokv.Session(c2)
    s2.eval([4, 5])
try:
    s2.eval([6])
except turbokv.ClosedError as e:
    print("after with:", e)
try:
    m.close(); m.close()
    m.tokenize("x")
except turbokv.ClosedError as e:
    print("model:", e)
print("done")
"""
    out = _run_python(code).splitlines()
    assert out[0].startswith("refused: cannot close the KVCache: 1 open session(s)")
    assert "Session(n_tokens=0" in out[0]
    assert out[1] == "len 3"
    assert out[2:14] == [f"{n} ClosedError" for n in (
        "eval", "sample", "logits", "n_tokens", "timings", "reset_timings", "generate", "len",
        "capacity", "truncate", "bytes_used", "session")]
    assert out[14].startswith("after with: session is closed: its KVCache was closed at the "
                              "end of the KVCache's with block")
    assert out[15] == "model: model is closed"
    assert out[16] == "done"


def test_model_with_block_closes_its_caches(tiny_path):
    with turbokv.Model(tiny_path) as m:
        c = turbokv.KVCache(m, n_ctx=16)
        s = turbokv.Session(c)
        with pytest.raises(turbokv.InUseError, match="open KVCache"):
            m.close()
    assert m.closed and c.closed and s.closed
    with pytest.raises(turbokv.ClosedError, match="its model was closed"):
        len(c)
    with pytest.raises(turbokv.ClosedError, match="its KVCache was closed"):
        s.eval([1])
    with pytest.raises(turbokv.ClosedError):
        turbokv.KVCache(m)
    codec = turbokv.Codec("q8_0", 64)
    enc = codec.encode(np.zeros((2, 64), np.float32))
    codec.close()
    with pytest.raises(turbokv.ClosedError):
        enc.decode()


@pytest.mark.parametrize("call, err, match", [
    (lambda m, c, s: c.truncate(2**32), turbokv.InvalidArgument, "n_tokens"),
    (lambda m, c, s: c.truncate(2**32 + 3), turbokv.InvalidArgument, "n_tokens"),
    (lambda m, c, s: c.truncate(-1), turbokv.InvalidArgument, "n_tokens"),
    (lambda m, c, s: c.truncate(2.0), TypeError, "n_tokens"),
    (lambda m, c, s: c.truncate(True), TypeError, "n_tokens"),
    (lambda m, c, s: turbokv.KVCache(m, n_ctx=2**32 + 100), turbokv.InvalidArgument, "n_ctx"),
    (lambda m, c, s: turbokv.KVCache(m, n_ctx=64.0), TypeError, "n_ctx"),
    (lambda m, c, s: turbokv.KVCache(m, seed=2**64 + 5), turbokv.InvalidArgument, "seed"),
    (lambda m, c, s: turbokv.KVCache(m, fp16_window=-1), turbokv.InvalidArgument, "fp16_window"),
    (lambda m, c, s: turbokv.KVCache(m, sink_tokens=2**32 + 1), turbokv.InvalidArgument,
     "sink_tokens"),
    (lambda m, c, s: turbokv.KVCache(m, calibration_block=64.5), TypeError, "calibration_block"),
    (lambda m, c, s: turbokv.KVCache(m, layer_codecs={2**32: ("fp32", "fp32")}),
     turbokv.InvalidArgument, "layer"),
    (lambda m, c, s: turbokv.Session(c, n_threads=2**32), turbokv.InvalidArgument, "n_threads"),
    (lambda m, c, s: turbokv.Session(c, n_batch=True), TypeError, "n_batch"),
    (lambda m, c, s: s.eval([1.7]), TypeError, "tokens"),
    (lambda m, c, s: s.eval(np.array([1.0, 2.0])), TypeError, "tokens"),
    (lambda m, c, s: s.eval([True, False]), TypeError, "tokens"),
    (lambda m, c, s: s.eval("12"), TypeError, "tokens"),
    (lambda m, c, s: s.eval([2**32 + 1]), turbokv.InvalidArgument, "tokens"),
    (lambda m, c, s: s.eval(np.array([2**31], dtype=np.int64)), turbokv.InvalidArgument,
     "tokens"),
    (lambda m, c, s: s.eval([2**70]), turbokv.InvalidArgument, "tokens"),
    (lambda m, c, s: s.generate(2**63), turbokv.InvalidArgument, "max_tokens"),
    (lambda m, c, s: s.logits(2**63), turbokv.InvalidArgument, "i"),
    (lambda m, c, s: m.detokenize([1.5]), TypeError, "tokens"),
    (lambda m, c, s: turbokv.Sampling(seed=2**64 + 5), turbokv.InvalidArgument, "seed"),
    (lambda m, c, s: turbokv.Sampling(top_k=2**31), turbokv.InvalidArgument, "top_k"),
    (lambda m, c, s: turbokv.Sampling(top_k=4.0), TypeError, "top_k"),
    (lambda m, c, s: turbokv.Sampling(top_p=1.5), turbokv.InvalidArgument, "top_p"),
    (lambda m, c, s: turbokv.Sampling(temperature=float("nan")), turbokv.InvalidArgument,
     "temperature"),
    (lambda m, c, s: turbokv.Codec("q8_0", 2**32 + 64), turbokv.InvalidArgument, "head_dim"),
    (lambda m, c, s: turbokv.Codec("q8_0", 64, seed=-1), turbokv.InvalidArgument, "seed"),
    (lambda m, c, s: turbokv.codebook(2**32 + 3), turbokv.InvalidArgument, "bits"),
])
def test_integers_do_not_wrap_at_the_ctypes_boundary(tiny_path, call, err, match):
    """Before: ctypes wrapped them modulo 2**bits (truncate(2**32 + 3) kept 3 tokens,
    n_ctx=2**32+100 made a 100-token cache) or truncated floats (eval([1.7]))."""
    with turbokv.Model(tiny_path) as m:
        c = turbokv.KVCache(m, k="fp32", v="fp32", n_ctx=32)
        s = turbokv.Session(c)
        s.eval([1, 2, 3, 4])
        with pytest.raises(err, match=match):
            call(m, c, s)
        assert len(c) == 4  # nothing reached C


def test_integer_arguments_accept_numpy_integers(tiny_path):
    with turbokv.Model(tiny_path) as m:
        c = turbokv.KVCache(m, k="fp32", v="fp32", n_ctx=np.uint32(32), seed=np.uint64(2**64 - 1))
        s = turbokv.Session(c, n_threads=np.int64(1))
        s.eval(np.array([1, 2, 3, 4], dtype=np.uint16))
        s.eval([np.int64(5)])
        c.truncate(np.int32(3))
        assert len(c) == 3 and c.capacity == 32
        out = s.generate(np.int64(2), turbokv.Sampling(temperature=0, top_k=np.int32(5)))
        assert len(out) <= 2


def test_cache_full_stops_generation_the_same_way_everywhere(tiny_path):
    """Before: Session.generate raised CacheFullError mid-generation while
    turbokv.generate stopped silently one token earlier.  Now all three stop, say
    stop_reason "cache_full", and generate the same tokens."""
    m = turbokv.Model(tiny_path)
    toks = m.tokenize("hello world")
    n_ctx = toks.size + 4
    greedy = turbokv.Sampling(temperature=0)
    with turbokv.KVCache(m, n_ctx=n_ctx) as c, turbokv.Session(c) as s:
        s.eval(toks)
        out = s.generate(100, greedy)
        assert out.stop_reason == "cache_full" and len(c) == n_ctx
    assert isinstance(out, list) and len(out) == n_ctx - toks.size + 1  # the last not evaluated
    run = turbokv.generate("hello world", m, n_ctx=n_ctx, temperature=0, max_tokens=100,
                           stream=True)
    text = "".join(run)
    assert run.tokens == list(out)
    assert run.stop_reason == run.stats.stop_reason == "cache_full"
    assert run.stats.to_dict()["stop_reason"] == "cache_full" and run.stats.n_ctx == n_ctx
    with pytest.warns(RuntimeWarning, match=rf"cache is full \(n_ctx {n_ctx}\)"):
        assert turbokv.generate("hello world", m, n_ctx=n_ctx, temperature=0,
                                max_tokens=100) == text
    # max_tokens reached exactly when the cache fills: max_tokens, not cache_full
    run = turbokv.generate("hello world", m, n_ctx=n_ctx, temperature=0,
                           max_tokens=len(out), stream=True)
    list(run)
    assert run.stop_reason == "max_tokens" and run.tokens == list(out)
    with turbokv.KVCache(m, n_ctx=64) as c, turbokv.Session(c) as s:
        s.eval(toks)
        assert s.generate(3, greedy).stop_reason == "max_tokens"
        assert s.generate(5, greedy, callback=lambda t: True).stop_reason == "stop"
    run = turbokv.generate("hello world", m, temperature=0, max_tokens=10, stream=True)
    pieces = iter(run)
    next(pieces)
    pieces.close()  # the caller stops iterating early
    assert run.stop_reason == "stop" and run.cache.closed
    m.close()


def _cli(argv, capsys, stdin=None, monkeypatch=None):
    from turbokv.cli import main

    if stdin is not None:
        import io
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_generate_hardening(tiny_path, tmp_path, capsys, monkeypatch):
    tiny = str(tiny_path)
    base = ["-m", tiny, "--temp", "0"]
    # the cache filling up is reported (before: 5 tokens printed silently, rc 0)
    rc, out, err = _cli(["generate", "hello world", "-c", "16", "-n", "100"] + base, capsys)
    assert rc == 0
    assert "turbokv: stopped after 5 tokens: the cache is full (n_ctx 16); raise -c" in err
    rc, out, err = _cli(["generate", "hello world", "-c", "16", "-n", "100", "--json"] + base,
                        capsys)
    import json
    assert rc == 0 and json.loads(out)["stop_reason"] == "cache_full"
    rc, out, err = _cli(["generate", "hello world", "-n", "2", "--json"] + base, capsys)
    assert json.loads(out)["stop_reason"] == "max_tokens" and "stopped" not in err
    # sampler settings are checked before the model is loaded; the error names the flag only
    for flag, value in [("--top-p", "1.5"), ("--temp", "-1"), ("--min-p", "1"),
                        ("--repeat-penalty", "0"), ("--top-k", "-3"), ("--seed", "-1")]:
        rc, out, err = _cli(["generate", "x", "-m", str(tmp_path / "missing.gguf"), flag, value],
                            capsys)
        assert rc == 2, flag
        msg = err.strip().splitlines()[-1]
        assert msg.startswith(f"turbokv generate: error: {flag} must be"), msg
        assert "does not exist" not in err
    # the prompt from stdin ('-') or a file (-f), one trailing newline dropped
    rc, out, err = _cli(["generate", "-", "-n", "1"] + base, capsys, "hello world\n", monkeypatch)
    assert rc == 0 and out.startswith("hello world") and not out.startswith("hello world\n")
    f = tmp_path / "prompt.txt"
    f.write_text("hello world\n", encoding="utf-8")
    rc, out2, err = _cli(["generate", "-f", str(f), "-n", "1"] + base, capsys)
    assert rc == 0 and out2 == out
    rc, out, err = _cli(["generate", "x", "-f", str(f)] + base, capsys)
    assert rc == 2 and "exactly one prompt" in err
    rc, out, err = _cli(["generate", "-f", str(tmp_path)] + base, capsys)
    assert rc == 2 and "is a directory" in err
    # -m DIR says it is a directory
    rc, out, err = _cli(["generate", "x", "-m", str(tmp_path)], capsys)
    assert rc == 1 and "is a directory, not a GGUF file" in err
    # -t: absurd values are argument errors, more than the cores a warning
    rc, out, err = _cli(["generate", "x", "-t", "5000"] + base, capsys)
    assert rc == 2 and "-t/--threads must be in [0, 1024], got 5000" in err
    many = (os.cpu_count() or 1) + 1
    rc, out, err = _cli(["generate", "hello", "-n", "1", "-t", str(many)] + base, capsys)
    assert rc == 0 and f"warning: -t {many} is more threads than the" in err
    # a 1-token prompt is timed as a prompt (it printed "0.0 tok/s": the C timings counted
    # it as a decode step); one generated token has no decode step to time; fp32 has no
    # compression to show
    rc, out, err = _cli(["generate", "", "-n", "1", "--kv", "fp32"] + base, capsys)
    assert rc == 0 and " 0.0 tok/s" not in err
    assert re.search(r"1 prompt tokens at [0-9.]+ tok/s, 1 generated at n/a tok/s", err), err
    assert "smaller than fp32" not in err
    rc, out, err = _cli(["generate", "hello", "-n", "1"] + base, capsys)
    assert "x smaller than fp32" in err
    # library errors: status 1 with the message
    rc, out, err = _cli(["generate", "hello world", "-c", "4"] + base, capsys)
    assert rc == 1 and err.startswith("turbokv: error: the prompt has")


def test_load_model_reloads_a_model_its_user_closed(tiny_path):
    m = turbokv.load_model(str(tiny_path))
    assert turbokv.load_model(str(tiny_path)) is m
    m.close()
    m2 = turbokv.load_model(str(tiny_path))
    assert m2 is not m and not m2.closed and m2.n_vocab == m.n_vocab


def test_finalizer_never_frees_a_cache_under_a_live_session(tiny_path):
    """The garbage collector may finalize a cache before its session (a reference cycle):
    the cache's free then waits for the session's."""
    with turbokv.Model(tiny_path) as m:
        c = turbokv.KVCache(m, n_ctx=16)
        s = turbokv.Session(c)
        c.__del__()  # what the collector would do first
        assert c.closed and not s.closed and c._handle is not None
        s.eval([1, 2])  # the C cache is still alive
        with pytest.raises(turbokv.ClosedError):
            len(c)
        s.close()
        assert c._handle is None  # freed with its last session
