"""Evaluation harnesses (turbokv.eval): perplexity / KL math on tiny generated models,
gate logic, NIAH scoring, sweep output; a short real-model check marked slow."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import turbokv
from turbokv import eval as E
from turbokv.cli import main as cli_main
from tiny_models import TinyConfig, write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_eval")
    path = d / "tiny.gguf"
    write_tiny_model(path, TinyConfig(n_embd=128, n_head=4, n_head_kv=2, seed=3))
    text = d / "text.txt"
    text.write_text(E.text("wikitext-2")[:6000], encoding="utf-8")
    model = turbokv.Model(path)
    yield model, str(text)


def test_shipped_texts_load():
    wiki = E.text("wikitext-2")
    assert wiki.startswith(" = Robert Boulter = ") and len(wiki) > 1_000_000
    assert "Call me Ishmael" in E.text("moby-dick")
    with pytest.raises(FileNotFoundError):
        E.text("no-such-text")


def test_cache_config_parse_roundtrip(tiny):
    model, _ = tiny
    for spec in ["turbo_kv_4b", "turbo_kv_5b/turbo_kv_3b+plain", "turbo_kv_3b+w=16",
                 "turbo_kv_4b+nosmooth+L=0,1:q8_0", "turbo_kv_3b+plain+center+sink=2",
                 "turbo_kv_3b+smooth=0.35+nocenter", "turbo_kv_2b+sink=0"]:
        c = E.CacheConfig.parse(spec)
        assert E.CacheConfig.parse(c.name) == c, spec
    # specs start from the cache's defaults; +plain turns the levers off
    d, p = E.CacheConfig.parse("turbo_kv_4b"), E.CacheConfig.parse("turbo_kv_4b+plain")
    kv = turbokv.KVCache(model, n_ctx=8)
    assert (d.center_keys, d.smooth_keys, d.sink_tokens, d.calibration_block) == (
        kv.center_keys, kv.key_smoothing, kv.sink_tokens, kv.calibration_block) == (
        True, 0.35, 1, 256)
    kv.close()
    for spec in ["turbo_kv_4b+once", "turbo_kv_4b+cb=128+nosmooth", "turbo_kv_4b+plain+center+once"]:
        c = E.CacheConfig.parse(spec)
        assert E.CacheConfig.parse(c.name) == c, spec
    assert E.CacheConfig.parse("turbo_kv_4b+once").calibration_block is None
    assert E.CacheConfig.parse("turbo_kv_4b+plain+once") == p  # nothing to calibrate
    with pytest.raises(turbokv.InvalidArgument, match="calibration_block of 8 positions"):
        E.CacheConfig.parse("turbo_kv_4b+cb=8")  # the library's range (tkv_cache_params_check)
    assert (p.center_keys, p.smooth_keys, p.sink_tokens) == (False, 0.0, 0)
    assert E.CacheConfig.parse("turbo_kv_4b+smooth=0.5").smooth_keys == 0.5
    # exact storage: unset levers are off; a lever set explicitly is taken as set
    assert E.CacheConfig.parse("fp32+plain") == E.FP32
    assert E.CacheConfig.parse("fp32+center") != E.FP32
    assert E.CacheConfig.parse("fp32+center").center_keys is True
    c = E.CacheConfig.parse("turbo_kv_4b/turbo_kv_3b+L=1:q8_0/fp16")
    assert (c.k, c.v, c.layer_pair(0), c.layer_pair(1)) == (
        "turbo_kv_4b", "turbo_kv_3b", ("turbo_kv_4b", "turbo_kv_3b"), ("q8_0", "fp16"))
    with c.cache(model, 64) as cache:
        assert cache.bytes_per_token == c.bytes_per_token(model)
    assert E.FP32.bits_per_element(model) == 32.0
    assert E.FP32.is_fp32 and not E.CacheConfig("fp32", fp16_window=4).is_fp32
    with pytest.raises(ValueError, match="unknown option"):
        E.CacheConfig.parse("turbo_kv_4b+bogus")


def test_one_lever_rule_for_every_entry_point(tiny, capsys):
    """KVCache, generate, the CLI and the harnesses resolve unset levers by the one rule of
    CacheConfig: centering and smoothing on where keys are stored lossily, sinks where keys
    or values are.  Before, KVCache(k="fp32", v="fp32") had all three on while
    ``turbokv eval ppl --kv fp32`` had them off."""
    model, _ = tiny
    levers = lambda c: (c.center_keys, c.smooth_keys, c.sink_tokens)  # noqa: E731
    on = (True, turbokv.config.DEFAULT_KEY_SMOOTHING, 1)
    cases = {"fp32": (False, 0.0, 0), "fp32/turbo_kv_4b": (False, 0.0, 1),
             "turbo_kv_4b/fp32": on, "fp32+w=8": on, "fp32+L=1:q8_0/fp32": on,
             "turbo_kv_3b": on, "fp16": on}
    for spec, want in cases.items():
        cfg = turbokv.CacheConfig.parse(spec)
        assert levers(cfg) == want, spec
        with turbokv.KVCache(model, spec, n_ctx=16) as cache:
            assert (cache.center_keys, cache.key_smoothing, cache.sink_tokens) == want, spec
    with turbokv.KVCache(model, k="fp32", v="fp32", n_ctx=16) as cache:
        assert cache.config == E.FP32
    with turbokv.KVCache(model, k="fp32", n_ctx=16) as cache:  # V keeps the library's codec
        assert (cache.v_codec, levers(cache.config)) == ("turbo_kv_4b", (False, 0.0, 1))
    run = turbokv.generate("hello", model, kv="fp32", max_tokens=1, temperature=0, stream=True)
    assert run.cache.config == E.FP32
    run.session.close()
    run.cache.close()
    run = turbokv.generate("hello", model, kv="fp32/turbo_kv_3b+nocenter", max_tokens=1,
                           stream=True)
    assert levers(run.cache.config) == (False, 0.0, 1)
    run.session.close()
    run.cache.close()
    from turbokv.cli import _eval_configs, build_parser
    args = build_parser().parse_args(["eval", "ppl", "--kv", "fp32", "--kv", "turbo_kv_4b"])
    assert [levers(c) for c in _eval_configs(args)] == [(False, 0.0, 0), on]
    with pytest.raises(TypeError, match="not both"):
        turbokv.KVCache(model, "turbo_kv_4b", sink_tokens=2)
    # generate's flags are checked by the library before the model is looked for
    rc = None
    try:
        rc = cli_main(["generate", "x", "-m", "/nonexistent.gguf", "--sink-tokens", "65"])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "error: --sink-tokens: " in err and "65 sink tokens, at most 64" in err, err


@pytest.mark.slow
def test_chunks_follow_the_models_add_bos(tiny, real_model):
    """llama-perplexity's rule: BOS over each chunk's first token only when the model adds
    BOS (the tiny model does, the default real model's GGUF says add_bos_token = false);
    bos="always" puts it there anyway."""
    model, text = tiny
    content = open(text).read()
    toks = model.tokenize(content, add_bos=True)
    assert toks[0] == model.bos
    for rule in ("model", "always"):
        ch = E.chunk_tokens(model, content, 64, 3, bos=rule)
        assert (ch[:, 0] == model.bos).all()
        np.testing.assert_array_equal(ch[:, 1:], toks[:192].reshape(3, 64)[:, 1:])
    wiki = E.text("wikitext-2")[:20000]
    plain = real_model.tokenize(wiki, add_bos=True)
    assert plain[0] != real_model.bos and real_model.bos >= 0
    np.testing.assert_array_equal(E.chunk_tokens(real_model, wiki, 64, 4).ravel(), plain[:256])
    always = E.chunk_tokens(real_model, wiki, 64, 4, bos="always")
    assert (always[:, 0] == real_model.bos).all()
    np.testing.assert_array_equal(always[:, 1:], plain[:256].reshape(4, 64)[:, 1:])
    with pytest.raises(ValueError, match="bos must be"):
        E.chunk_tokens(model, content, 64, 1, bos="never")


def test_fp32_against_itself_is_exact(tiny):
    model, text = tiny
    r = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=3, progress=False)
    same = r.run("fp32")
    assert same.delta_ppl == 0.0 and same.kld_mean == 0.0 and same.top1 == 1.0
    # a second fp32 forward pass (a distinct config: other seed) through the scoring path
    again = r.run(E.CacheConfig("fp32", seed=9))
    assert abs(again.delta_ppl_pct) < 1e-4
    assert again.kld_mean < 1e-6 and again.kld_p99 < 1e-6
    assert again.top1 == 1.0
    assert same.n_tokens == 3 * (64 // 2 - 1)


def test_ppl_equals_exp_mean_nll_from_session_logits(tiny):
    model, text = tiny
    n_ctx, n_chunks = 64, 2
    res = E.perplexity(model, "turbo_kv_4b", text=text, n_ctx=n_ctx, chunks=n_chunks,
                       progress=False)
    chunks = E.chunk_tokens(model, open(text).read(), n_ctx, n_chunks)
    nll = []
    for c in range(n_chunks):
        # the spec's levers are the cache's defaults; they calibrate on the first batch,
        # which is the chunk's first half (the unscored context) in the harness too
        with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=n_ctx) as cache, \
                turbokv.Session(cache, n_batch=n_ctx) as s:
            s.eval(chunks[c][: n_ctx // 2])
            s.eval(chunks[c][n_ctx // 2:], all_logits=True)
            lg = s.all_logits().astype(np.float64)
        lp = lg - lg.max(axis=1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        for j in range(0, n_ctx // 2 - 1):
            nll.append(-lp[j, chunks[c, n_ctx // 2 + j + 1]])
    assert res.n_tokens == len(nll)
    assert math.isclose(res.ppl, math.exp(np.mean(nll)), rel_tol=1e-4)
    se = math.exp(np.mean(nll)) * np.std(nll, ddof=1) / math.sqrt(len(nll))
    assert math.isclose(res.ppl_se, se, rel_tol=1e-3)
    assert math.isclose(res.delta_ppl_pct, 100 * (res.ppl / res.ppl_base - 1), rel_tol=1e-9)


def test_kld_topk_is_a_tight_lower_bound(tiny):
    model, text = tiny
    full = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, top_k=0, progress=False)
    part = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, top_k=32, progress=False)
    for codec in ("turbo_kv_2b", "turbo_kv_4b"):
        a, b = full.run(codec), part.run(codec)
        assert a.ppl == b.ppl
        assert 0 < b.kld_mean <= a.kld_mean + 1e-9
        assert b.kld_mean > 0.5 * a.kld_mean
    assert full.run("turbo_kv_2b").kld_mean > full.run("turbo_kv_4b").kld_mean


def test_baseline_file_is_reused_and_keyed(tiny, tmp_path):
    model, text = tiny
    f = tmp_path / "base.npz"
    r1 = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, baseline_file=f, progress=False)
    b1 = r1.baseline
    assert f.is_file()
    r2 = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=2, baseline_file=f, progress=False)
    loaded = E.Baseline.load(f, r2.key)
    assert loaded is not None and np.array_equal(loaded.topk_ids, b1.topk_ids)
    assert np.array_equal(r2.baseline.nll, b1.nll)
    assert E.Baseline.load(f, {**r2.key, "chunks": 3}) is None
    r3 = E.PerplexityRunner(model, text=text, n_ctx=64, chunks=1, baseline_file=f, progress=False)
    assert r3.baseline.n_tokens == 31


def test_attention_cosine_on_captured_activations(tiny):
    model, text = tiny
    qkv = E.capture(model, text=text, n_tokens=96)
    assert qkv.q.shape == (96, model.n_layer, model.n_head, model.head_dim)
    exact, c4, c2, c2c = E.attention_eval(
        model, ["fp32", "turbo_kv_4b", "turbo_kv_2b", "turbo_kv_2b+center"], qkv=qkv, stride=8,
        progress=False)
    assert exact.worst > 0.99999 and exact.score_worst > 0.99999
    assert 0.9 < c4.mean < 1.0 and c2.mean < c4.mean
    assert c4.per_layer.shape == (model.n_layer,)
    assert c4.per_head.shape == (model.n_layer, model.n_head_kv)
    assert set(c4.worst_layers(2)) <= set(range(model.n_layer))
    assert 0.5 < c2c.mean <= 1.0
    json.dumps(c2c.to_dict())
    # per-block calibration (blocks of 64 over 200 positions) mirrored exactly: fp32 keys
    # scored in the calibrated space of each block give the exact scores
    long = E.capture(model, text=text, n_tokens=200)
    blocks, once, coded = E.attention_eval(
        model, ["fp32/fp16+smooth+cb=64", "fp32/fp16+smooth+once", "turbo_kv_3b+smooth+cb=64"],
        qkv=long, stride=8, progress=False)
    assert blocks.score_worst > 0.99999 and blocks.worst > 0.9999
    assert once.score_worst > 0.99999
    assert 0.8 < coded.mean < blocks.mean


def test_niah_scoring_and_passkeys():
    assert E.score_answer(" 48213.", 48213)
    assert E.score_answer("The passkey is 48,213", 48213)
    assert not E.score_answer(" 4821", 48213)
    assert not E.score_answer("", 48213)
    keys = [E.passkey(0, 1024, d, t) for d in (0.0, 0.5, 1.0) for t in range(20)]
    assert all(10_000 <= k < 1_000_000 for k in keys)
    assert len(set(keys)) > 50
    assert keys == [E.passkey(0, 1024, d, t) for d in (0.0, 0.5, 1.0) for t in range(20)]
    assert E.passkey(1, 1024, 0.5, 0) != E.passkey(0, 1024, 0.5, 0)


def _rows():
    return [{"config": "fp32", "ppl": 10.0, "delta_ppl_pct": 0.0, "kld_mean": 0.0},
            {"config": "turbo_kv_4b", "ppl": 10.3, "delta_ppl_pct": 3.0, "kld_mean": 0.04,
             "top1": 0.9}]


def test_gate_logic_pass_and_fail():
    cfg = {"gate": [{"cache": "fp32", "ppl_max": 10.5},
                    {"cache": "turbo_kv_4b", "delta_ppl_pct_max": 3.5, "kld_mean_max": 0.05,
                     "top1_min": 0.85}]}
    rep = E.check_rows(cfg, _rows())
    assert rep.passed and len(rep.checks) == 4
    cfg["gate"][1]["delta_ppl_pct_max"] = 2.0
    cfg["gate"][1]["top1_min"] = 0.95
    rep = E.check_rows(cfg, _rows())
    assert not rep.passed
    assert [(c.cache, c.metric) for c in rep.failures] == [("turbo_kv_4b", "delta_ppl_pct"),
                                                          ("turbo_kv_4b", "top1")]
    assert "turbo_kv_4b delta_ppl_pct" in rep.summary()
    # a metric that was not measured fails, never passes silently
    rep = E.check_rows({"gate": [{"cache": "fp32", "top1_min": 0.5}]}, _rows())
    assert not rep.passed and math.isnan(rep.checks[0].value)
    with pytest.raises(ValueError, match="unknown threshold"):
        E.check_rows({"gate": [{"cache": "fp32", "speed_max": 1}]}, _rows())
    with pytest.raises(ValueError, match="missing 'cache'"):
        E.check_rows({"gate": [{"ppl_max": 1}]}, _rows())


def test_gate_files_toml_and_json(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text('model = "x"\n[ppl]\nchunks = 2\n[[gate]]\ncache = "fp32"\nppl_max = 11\n')
    js = tmp_path / "g.json"
    js.write_text(json.dumps({"model": "x", "ppl": {"chunks": 2},
                              "gate": [{"cache": "fp32", "ppl_max": 11}]}))
    assert E.load_config(toml) == E.load_config(js)


def test_run_gates_and_cli_on_tiny_model(tiny, tmp_path, capsys):
    model, text = tiny
    base = {"model": str(model.path), "ppl": {"n_ctx": 64, "chunks": 2, "text": text}}
    ok = {**base, "gate": [{"cache": "fp32", "delta_ppl_max": 0.0, "kld_mean_max": 0.0},
                           {"cache": "turbo_kv_4b", "kld_mean_max": 1.0, "top1_min": 0.5}]}
    rep = E.assert_gates(ok, model=model)
    assert rep.passed and {r["config"] for r in rep.rows} == {"fp32", "turbo_kv_4b"}
    bad = {**base, "gate": [{"cache": "turbo_kv_2b", "kld_mean_max": 1e-9, "top1_min": 0.5}]}
    with pytest.raises(AssertionError, match="turbo_kv_2b: kld_mean"):
        E.assert_gates(bad, model=model)
    f = tmp_path / "gates.json"
    f.write_text(json.dumps(bad))
    assert cli_main(["gate", "--config", str(f), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "missed" in err and "kld_mean" in err
    f.write_text(json.dumps(ok))
    assert cli_main(["gate", "--config", str(f), "--no-progress"]) == 0


def test_sweep_rows_tables_and_files(tiny, tmp_path, capsys):
    model, text = tiny
    rows = E.sweep(model, k_codecs=["turbo_kv_4b", "turbo_kv_3b"], v_codecs=["turbo_kv_3b"],
                   configs=["turbo_kv_4b+plain"], metrics=["ppl", "kld", "cosine", "speed"],
                   text=text, n_ctx=64, chunks=2, attention_tokens=64, speed_prompt_tokens=16,
                   speed_decode_tokens=4, progress=False)
    assert [r.config for r in rows] == ["fp32", "turbo_kv_4b/turbo_kv_3b", "turbo_kv_3b",
                                        "turbo_kv_4b+plain"]
    fp32, mixed = rows[0], rows[1]
    assert fp32.delta_ppl == 0 and fp32.compression_vs_fp32 == 1.0 and fp32.decode_vs_fp32 == 1.0
    d = model.head_dim
    k_b = turbokv.codec_info("turbo_kv_4b", d).bytes_per_vector
    v_b = turbokv.codec_info("turbo_kv_3b", d).bytes_per_vector
    assert (mixed.k_bytes_per_vector, mixed.v_bytes_per_vector) == (k_b, v_b)
    # metadata counted: codec bytes plus the centering offsets and smoothing scales (fp16,
    # one vector each per 256 positions, layer and KV head), exactly the codec bytes
    # without levers
    assert math.isclose(mixed.bits_per_element, (k_b + v_b + 2 * 2 * d / 256) * 8 / (2 * d))
    assert math.isclose(rows[3].bits_per_element, (k_b + k_b) * 8 / (2 * d))
    assert all(r.prefill_tok_s > 0 and r.decode_tok_s > 0 and 0 < r.attn_cosine <= 1 for r in rows)
    assert math.isnan(rows[1].niah) and rows[1].to_dict()["niah"] is None
    E.write_csv(rows, tmp_path / "s.csv")
    E.write_json(rows, tmp_path / "s.json")
    assert len(json.loads((tmp_path / "s.json").read_text())) == 4
    assert (tmp_path / "s.csv").read_text().count("\n") == 5
    table = E.markdown_table(rows)
    assert "`turbo_kv_4b/turbo_kv_3b`" in table and table.count("\n") == 5
    png = E.pareto_plot(rows, tmp_path / "p.png")
    assert png is None or png.stat().st_size > 1000
    assert cli_main(["eval", "ppl", "-m", str(model.path), "--kv", "turbo_kv_3b", "--text", text,
                     "-c", "64", "--chunks", "1", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["config"] == "turbo_kv_3b" and out[0]["kld_mean"] > 0
    # --json-file works for ppl too (a trellis codec: same levers, its own kernels)
    jf = tmp_path / "ppl.json"
    assert cli_main(["eval", "ppl", "-m", str(model.path), "--kv", "turbo_kv_3b_tcq", "--text", text,
                     "-c", "64", "--chunks", "1", "--no-progress", "--json-file", str(jf)]) == 0
    saved = json.loads(jf.read_text())
    assert saved[0]["config"] == "turbo_kv_3b_tcq" and saved[0]["kld_mean"] > 0


@pytest.mark.slow
def test_real_model_short_eval(real_model, tmp_path):
    m = real_model
    r = E.PerplexityRunner(m, n_ctx=128, chunks=2, progress=False)
    base, q4 = r.run("fp32"), r.run("turbo_kv_4b")
    assert 5 < base.ppl < 60
    assert q4.kld_mean < 0.2 and q4.top1 > 0.75
    (res,) = E.niah(m, "fp32", lengths=[256], depths=[0.5], progress=False)
    assert res.trials[0].prompt_tokens == 256
    assert res.score == 1.0, res.trials[0].answer
    png = E.heatmap([res], tmp_path / "h.png")
    assert png is None or png.is_file()


def test_key_calibration_hook():
    """turbokv.experimental.key_calibration (the library's own calibration, which the
    attention eval uses): one block per calibration_block positions, block 0 the fp16 mean
    key and rms ratios of the whole batch, later blocks from the block before."""
    from turbokv.experimental import key_calibration
    rng = np.random.default_rng(5)
    n, g, d = 200, 3, 64
    keys = (rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, d) + rng.normal(size=d) * 4)
    queries = rng.normal(size=(n, g, d)) * rng.uniform(0.2, 3.0, d)
    mu, s = key_calibration(keys, queries, turbokv.CacheConfig(
        "turbo_kv_4b", center_keys=True, smooth_keys=0.5, calibration_block=64))
    assert mu.shape == s.shape == (4, d)
    np.testing.assert_allclose(mu[0], keys.mean(axis=0), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(mu[2], keys[64:128].mean(axis=0), rtol=2e-3, atol=2e-3)
    ratio = np.sqrt(keys.var(axis=0) / np.mean(queries.reshape(-1, d) ** 2, axis=0))
    expect = np.sqrt(ratio) / np.exp(np.mean(np.log(np.sqrt(ratio))))  # alpha 0.5, mean 1
    np.testing.assert_allclose(s[0], expect, rtol=2e-3)
    mu, s = key_calibration(keys, queries, turbokv.CacheConfig(
        "turbo_kv_4b", center_keys=False, smooth_keys=False, calibration_block=None))
    assert mu.shape == (1, d) and not mu.any() and (s == 1).all()
    with pytest.raises(ValueError):
        key_calibration(keys[0], queries, "turbo_kv_4b")
