"""Evaluations fanned out (turbokv.eval.fanout): on a local Dask cluster of 2 worker
processes the numbers equal the serial run's to the last digit; the results store
resumes and extends a run; a failing configuration is recorded and the rest finish; a
worker lost mid-task is retried.

The Dask tests skip when dask.distributed is not installed, unless TKV_REQUIRE_DASK is
set (CI installs the ``turbokv[dask]`` extra and sets it)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import turbokv
from turbokv import eval as E
from turbokv.cli import main as cli_main
from turbokv.eval.fanout import FanOut, TaskFailure
from turbokv.eval.store import ResultsStore
from tiny_models import TinyConfig, write_tiny_model

#: configurations of the tiny-model runs: defaults, mixed K/V, no levers, a seed, a
#: trellis codec, and one that fails when its cache is made (layer 7 of a 2-layer model)
CONFIGS = ["fp32", "turbo_kv_4b", "turbo_kv_4b/turbo_kv_2b+plain", "q8_0+seed=3",
           "turbo_kv_3b_tcq"]
FAILING = "turbo_kv_4b+L=7:q8_0"


def _need_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        if os.environ.get("TKV_REQUIRE_DASK"):
            pytest.fail("TKV_REQUIRE_DASK is set but dask.distributed is not installed")
        pytest.skip("dask.distributed is not installed (pip install 'turbokv[dask]')")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_fanout")
    path = d / "tiny.gguf"
    write_tiny_model(path, TinyConfig(n_embd=128, n_head=4, n_head_kv=2, seed=3))
    text = d / "text.txt"
    text.write_text(E.text("wikitext-2")[:6000], encoding="utf-8")
    yield turbokv.Model(path), str(text)


@pytest.fixture(scope="module")
def client():
    _need_dask()
    with E.dask_client(workers=2) as c:
        yield c


def _same(a, b) -> None:
    """Two results equal in every number (their to_dict and their per-token arrays)."""
    assert a.to_dict() == b.to_dict()
    for name in ("per_token_nll", "per_token_kld"):
        if getattr(a, name, None) is not None:
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_spec_strings_carry_the_seed():
    c = E.CacheConfig.parse("q8_0+seed=3")
    assert c.seed == 3 and c.name == "q8_0+seed=3" and E.CacheConfig.parse(c.name) == c
    assert E.CacheConfig("turbo_kv_4b", seed=0).name == "turbo_kv_4b"


def test_logits_do_not_depend_on_threads_on_the_eval_path(tiny):
    model, text = tiny
    one = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, n_threads=1, progress=False)
    two = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, n_threads=2, progress=False)
    for spec in ("fp32", "turbo_kv_4b"):
        _same(one.run(spec), two.run(spec))


def test_store_lines_round_trip_and_cut_lines_are_ignored(tmp_path):
    s = ResultsStore(tmp_path / "r")
    key = {"model_sha256": "ab", "cache": "turbo_kv_4b", "task": {"chunk": 1}, "version": "x"}
    x = [0.1 + 0.2, 1 / 3, 2.0 ** -1074, 1e308]
    s.put(key, {"x": x}, seconds=1.5, worker="w")
    with open(s.path, "a") as f:
        f.write('{"id": "cut sh')  # an interrupted write
    again = ResultsStore(tmp_path / "r")
    assert len(again) == 1 and again.ignored == 1
    assert again.get(key)["result"]["x"] == x  # the same bits
    assert again.get({**key, "version": "y"}) is None


def test_results_store_resumes_and_extends_without_dask(tiny, tmp_path):
    model, text = tiny
    store = tmp_path / "store"
    serial = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, progress=False)
    want = {c: serial.run(c) for c in CONFIGS[:3]}
    r = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, progress=False, results=store)
    for got, c in zip(r.run_many(CONFIGS[:2]), CONFIGS[:2]):
        _same(want[c], got)
    lines = (store / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 2  # two fp32 baselines, turbo_kv_4b on two chunks
    # run again: nothing is recomputed; extend by one configuration: only its chunks run
    # (the baselines' top-k come from the arrays kept beside the store)
    again = r.run_many(CONFIGS[:3])
    for got, c in zip(again, CONFIGS[:3]):
        _same(want[c], got)
    lines = (store / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 + 2
    assert {json.loads(x)["key"]["cache"] for x in lines} == set(CONFIGS[:3])
    # a new chunk reuses the two done ones
    r3 = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=3, progress=False, results=store)
    r3.run_many(CONFIGS[:1])
    assert len((store / "results.jsonl").read_text().splitlines()) == 6 + 1


def test_ppl_on_two_workers_equals_serial_and_records_failures(tiny, client, tmp_path):
    model, text = tiny
    serial = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=3, progress=False)
    want = [serial.run(c) for c in CONFIGS]
    with pytest.raises(turbokv.InvalidArgument):
        serial.run(FAILING)
    fanned = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=3, progress=False,
                                client=client, results=tmp_path / "r")
    got = fanned.run_many(CONFIGS + [FAILING])
    for a, b in zip(want, got):
        _same(a, b)
    bad = got[-1]
    assert isinstance(bad, TaskFailure) and bad.failed_tasks == 3
    assert "InvalidArgument" in bad.error and bad.to_dict()["config"] == FAILING
    # the failed configuration left no line: it runs again next time
    lines = [json.loads(x) for x in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * len(CONFIGS) and FAILING not in {x["key"]["cache"] for x in lines}
    assert all(x["worker"].startswith("tcp://") for x in lines)


def test_attention_and_sweep_on_two_workers_equal_serial(tiny, client, tmp_path):
    model, text = tiny
    kw = dict(text=text, n_tokens=64, stride=8, progress=False)
    for a, b in zip(E.attention_eval(model, CONFIGS, **kw),
                    E.attention_eval(model, CONFIGS, client=client, **kw)):
        assert a.to_dict() == b.to_dict()
    sw = dict(k_codecs=["turbo_kv_4b", "turbo_kv_3b"], configs=[FAILING],
              metrics=["ppl", "kld", "cosine"], text=text, n_ctx=64, chunks=2,
              attention_tokens=64, progress=False)
    want = E.sweep(model, **{**sw, "configs": None})
    got = E.sweep(model, **sw, client=client, results=tmp_path / "s")
    assert [r.to_dict() for r in want] == [r.to_dict() for r in got[:-1]]
    assert got[-1].config == FAILING and "ppl: InvalidArgument" in got[-1].error
    assert "cosine: InvalidArgument" not in got[-1].error  # the codec itself is fine there
    assert got[-1].attn_cosine > 0 and np.isnan(got[-1].ppl)
    # resumed from the store, in this process: the same rows
    again = E.sweep(model, **sw, results=tmp_path / "s")
    assert [r.to_dict() for r in again] == [r.to_dict() for r in got]


def test_cli_workers_flag_and_exit_status(tiny, tmp_path, capsys):
    _need_dask()
    model, text = tiny
    base = ["eval", "ppl", "-m", str(model.path), "--text", text, "-c", "64", "--chunks", "2",
            "--kv", "turbo_kv_3b", "--kv", "q8_0", "--no-progress", "--json"]
    assert cli_main(base) == 0
    want = json.loads(capsys.readouterr().out)
    assert cli_main(base + ["--workers", "2", "--results", str(tmp_path / "r")]) == 0
    assert json.loads(capsys.readouterr().out) == want
    assert cli_main(base + ["--kv", FAILING, "--results", str(tmp_path / "r")]) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out[:2] == want and out[2]["error"].startswith("InvalidArgument")
    assert f"{FAILING} failed" in captured.err
    with pytest.raises(SystemExit):
        cli_main(base + ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])


@pytest.mark.slow
def test_real_model_two_chunks_and_niah_on_two_workers(real_model, client):
    m = real_model
    specs = ["fp32", "turbo_kv_4b", "turbo_kv_3b"]
    serial = E.PerplexityRunner(m, n_ctx=256, chunks=2, progress=False)
    fanned = E.PerplexityRunner(m, n_ctx=256, chunks=2, progress=False, client=client)
    for a, b in zip([serial.run(c) for c in specs], fanned.run_many(specs)):
        _same(a, b)
    grid = dict(lengths=[256], depths=[0.0, 1.0], trials=1, progress=False)
    for a, b in zip(E.niah(m, ["fp32", "turbo_kv_3b"], **grid),
                    E.niah(m, ["fp32", "turbo_kv_3b"], client=client, **grid)):
        assert a.to_dict() == b.to_dict()


def test_lost_worker_is_retried(tiny, client):
    """A worker process that dies mid-task (here: the task kills it, once) is replaced by
    its nanny and the scheduler runs the task again; the evaluation never sees it."""
    model, _ = tiny
    marker = model.path.parent / "died-once"

    def die_once(model, n_threads, path):
        import os
        import pathlib
        if not pathlib.Path(path).exists():
            pathlib.Path(path).write_text("the first attempt killed its worker")
            os._exit(1)
        return model.n_layer

    fan = FanOut(model, client=client, progress=False)
    t = fan.add("die once", die_once, str(marker))
    fan.run()
    assert marker.exists() and t.state == "done" and t.result == model.n_layer


def test_workers_find_the_model_by_path_or_manifest_name(tiny, real_model_path):
    """A worker uses the client's path when it holds the same file, else the manifest
    model of the same sha256 (installed from PyPI when missing: here it is installed),
    else refuses with a message saying where to put the file."""
    from dataclasses import replace

    from turbokv.eval.fanout import ModelRef
    model, _ = tiny
    ref = ModelRef.of(model)
    assert ref.manifest is None and ref.resolve() == model.path
    with pytest.raises(FileNotFoundError, match="a path every worker sees"):
        replace(ref, path=str(model.path) + ".elsewhere").resolve()
    real = ModelRef.of(turbokv.Model(real_model_path))
    assert real.manifest == turbokv.models.default_model()
    moved = replace(real, path="/nonexistent/model.gguf")
    assert moved.resolve() == turbokv.models.path(real.manifest)
