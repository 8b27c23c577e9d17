"""The C forward pass against the NumPy reference on tiny random GGUF models."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import turbokv
from tiny_models import (TinyConfig, mean_kl, reference_forward, reference_hparams,
                         write_tiny_model)

# Max logit error relative to the logits' standard deviation.  Float weights are checked
# against the exact reference.  Quantized weights multiply 8-bit quantized activations
# (integer dot products), so they are checked tightly against a reference that quantizes
# activations the same way (measured: 4e-7 for Q8_0/Q4_0, 7e-3 for Q4_1 whose min term
# uses the float activation sum).  A single matmul matches that reference to 5e-6; through
# the random network a code can round the other way when float32 and float64 activations
# straddle a rounding boundary, hence 6e-2.  Against the exact reference: measured 0.05-0.1.
FLOAT = 2e-4
ACT_Q = 6e-2
CASES = [
    ("llama", T.F32, FLOAT),
    ("llama", T.F16, FLOAT),
    ("llama", T.BF16, FLOAT),
    ("llama", T.Q8_0, ACT_Q),
    ("llama", T.Q4_0, ACT_Q),
    ("llama", T.Q4_1, ACT_Q),
    ("llama", T.Q5_0, ACT_Q),
    ("llama", T.Q5_1, ACT_Q),
    ("qwen2", T.F32, FLOAT),
    ("qwen2", T.Q4_1, ACT_Q),
]
KQUANT_CASES = [("llama", T.Q2_K), ("llama", T.Q3_K), ("llama", T.Q4_K), ("llama", T.Q5_K),
                ("llama", T.Q6_K)]


def _hp(cfg: TinyConfig) -> dict:
    return dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv,
                head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_eps=cfg.rms_eps,
                neox=cfg.arch == "qwen2")


def _c_logits(path, tokens, kv="fp32", n_batch=0, one_by_one=False, n_threads=2):
    model = turbokv.Model(path)
    with turbokv.KVCache(model, k=kv, v=kv, n_ctx=64) as cache, \
            turbokv.Session(cache, n_threads=n_threads, n_batch=n_batch) as s:
        if one_by_one:
            rows = []
            for t in tokens:
                s.eval([t])
                rows.append(s.logits())
            out = np.stack(rows)
        else:
            s.eval(tokens, all_logits=True)
            out = s.all_logits()
    model.close()
    return out


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / (np.std(b) + 1e-12))


@pytest.mark.parametrize("arch,wtype,tol", CASES, ids=[f"{a}-{t.name}" for a, t, _ in CASES])
def test_logits_match_numpy_reference(tmp_path, arch, wtype, tol):
    cfg = TinyConfig(arch=arch, weight_type=wtype, tied=(wtype != T.Q8_0), seed=7)
    path = tmp_path / "tiny.gguf"
    weights = write_tiny_model(path, cfg)
    tokens = np.array([256 + 6, 5, 17, 200, 3, 99, 42, 7, 7, 150, 11, 260], dtype=np.int32)
    exact = reference_forward(weights, _hp(cfg), tokens)
    got = _c_logits(path, tokens)
    assert got.shape == exact.shape
    if tol == FLOAT:
        assert _rel_err(got, exact) < tol
    else:
        act_q = reference_forward(weights, _hp(cfg), tokens, act_quant=True)
        assert _rel_err(got, act_q) < tol
        assert _rel_err(got, exact) < 0.2


@pytest.mark.parametrize("arch,wtype", KQUANT_CASES, ids=[t.name for _, t in KQUANT_CASES])
def test_kquant_logits_match_numpy_reference(tmp_path, arch, wtype):
    cfg = TinyConfig(arch=arch, weight_type=wtype, n_embd=256, n_head=4, n_head_kv=2, n_ff=512,
                     seed=3)
    path = tmp_path / "tiny_k.gguf"
    weights = write_tiny_model(path, cfg)
    tokens = np.array([1, 2, 3, 100, 200, 255, 10], dtype=np.int32)
    got = _c_logits(path, tokens)
    assert _rel_err(got, reference_forward(weights, _hp(cfg), tokens, act_quant=True)) < ACT_Q
    assert _rel_err(got, reference_forward(weights, _hp(cfg), tokens)) < 0.2


THREAD_TYPES = [T.F32, T.Q8_0, T.Q4_0, T.Q4_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


@pytest.mark.parametrize("wtype", THREAD_TYPES, ids=[t.name for t in THREAD_TYPES])
def test_matmul_logits_do_not_depend_on_thread_count(tmp_path, wtype):
    """Matmuls split by output rows and attention by head: every logit is computed by the
    same operations whatever the thread count.  3 threads put the row boundaries of the
    fused Q/K/V product (512 rows) at 171 and 342, inside the kernels' 4-row tiles."""
    cfg = TinyConfig(weight_type=wtype, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, seed=9,
                     tied=(wtype != T.Q8_0))
    path = tmp_path / "tiny_t.gguf"
    write_tiny_model(path, cfg)
    tokens = np.array([1, 2, 3, 100, 200, 255, 10, 7, 7, 42], dtype=np.int32)
    for kv in ("fp32", "turbo_kv_4b"):
        prefill = [_c_logits(path, tokens, kv=kv, n_threads=n) for n in (1, 2, 3)]
        decode = [_c_logits(path, tokens, kv=kv, n_threads=n, one_by_one=True) for n in (1, 2, 3)]
        for got in prefill[1:]:
            np.testing.assert_array_equal(got, prefill[0])
        for got in decode[1:]:
            np.testing.assert_array_equal(got, decode[0])


def test_batched_prefill_equals_token_by_token(tmp_path):
    cfg = TinyConfig(seed=11)
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path, cfg)
    tokens = np.arange(1, 40, dtype=np.int32)
    batched = _c_logits(path, tokens)
    single = _c_logits(path, tokens, one_by_one=True)
    chunked_model = turbokv.Model(path)
    with turbokv.KVCache(chunked_model, k="fp32", v="fp32", n_ctx=64) as cache, \
            turbokv.Session(cache, n_batch=8) as s:
        s.eval(tokens)  # five chunks of at most 8
        chunked = s.logits()
    chunked_model.close()
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunked, single[-1], rtol=1e-4, atol=1e-4)


def test_compressed_cache_error_follows_codec(tmp_path):
    """Mean KL of next-token distributions vs the exact reference (head_dim 16, 32 tokens).
    Measured: fp16 1e-8, q8_0 1.5e-4, turbo 5b 0.010, 4b 0.039, 3b 0.147, 2b 0.51."""
    cfg = TinyConfig(seed=5)
    path = tmp_path / "tiny.gguf"
    weights = write_tiny_model(path, cfg)
    tokens = np.arange(3, 35, dtype=np.int32)
    ref = reference_forward(weights, _hp(cfg), tokens)
    bounds = {"fp16": 1e-5, "q8_0": 1e-3, "turbo_kv_5b": 0.02, "turbo_kv_4b": 0.06,
              "turbo_kv_3b": 0.22, "turbo_kv_2b": 0.75}
    kls = {kv: mean_kl(ref, _c_logits(path, tokens, kv=kv)) for kv in bounds}
    for kv, bound in bounds.items():
        assert kls[kv] < bound, (kv, kls[kv])
    order = list(bounds)
    assert all(kls[a] < kls[b] for a, b in zip(order, order[1:])), kls
    # trellis-coded, same bytes: below the Lloyd-Max codec of the same bits (measured 3b
    # 0.068 vs 0.089, 4b 0.018 vs 0.024; 2 bits at head_dim 16 is not: 0.41 vs 0.32 on
    # these 32 tokens, the wrap state costs most on short vectors)
    for bits in (3, 4):
        tcq = mean_kl(ref, _c_logits(path, tokens, kv=f"turbo_kv_{bits}b_tcq"))
        assert tcq < kls[f"turbo_kv_{bits}b"], (bits, tcq, kls)


def test_session_misuse_raises(tmp_path):
    cfg = TinyConfig(seed=1)
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path, cfg)
    model = turbokv.Model(path)
    cache = turbokv.KVCache(model, k="fp32", v="turbo_kv_3b", n_ctx=16)
    s = turbokv.Session(cache, n_batch=8)
    with pytest.raises(turbokv.InvalidArgument, match="outside the vocabulary"):
        s.eval([5, 100000])
    with pytest.raises(turbokv.InvalidArgument, match="evaluate tokens first"):
        s.sample()
    with pytest.raises(turbokv.InvalidArgument, match="n_batch"):
        s.eval(list(range(10)), all_logits=True)
    s.eval(list(range(1, 11)))
    with pytest.raises(turbokv.CacheFullError, match="capacity 16"):
        s.eval(list(range(1, 11)))
    assert len(cache) == 10  # a failed eval appends nothing
    cache.truncate(4)
    assert len(cache) == 4 and s.n_tokens == 4
    s.eval([7, 8])
    assert len(cache) == 6
    with pytest.raises(turbokv.InvalidArgument, match="before the first token"):
        turbokv.KVCache.__init__  # (documented: overrides only before the first token)
        from turbokv import _lib
        _lib.check(_lib.tkv_cache_set_layer_codecs(cache.handle, 0, 0, 0))
    with pytest.raises(ValueError, match="open KVCache"):
        model.close()
    s.close()
    cache.close()
    model.close()
    with pytest.raises(turbokv.InvalidArgument, match="layer 9"):
        turbokv.KVCache(turbokv.Model(path), layer_codecs={9: ("fp32", "fp32")})
    with pytest.raises(turbokv.InvalidArgument, match="unknown codec"):
        turbokv.KVCache(turbokv.Model(path), k="nope")


def test_malformed_gguf_gives_format_error(tmp_path):
    cfg = TinyConfig(seed=2)
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path, cfg)
    data = path.read_bytes()
    for cut in (0, 3, 20, 200, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises((turbokv.FormatError, turbokv.UnsupportedError)):
            turbokv.Model(bad)
    with pytest.raises(FileNotFoundError):
        turbokv.Model(tmp_path / "missing.gguf")


def test_key_centering_keeps_attention_exact(tmp_path):
    """Subtracting a per-(layer, head) vector from keys shifts every score of a query by
    the same constant: with fp32 storage the logits must not move; with a codec the
    centered cache must not be worse on a model whose keys share an offset."""
    cfg = TinyConfig(seed=9)
    path = tmp_path / "tiny.gguf"
    weights = write_tiny_model(path, cfg)
    tokens = np.arange(10, 40, dtype=np.int32)
    model = turbokv.Model(path)

    def logits(kv: str, center: bool) -> np.ndarray:
        with turbokv.KVCache(model, k=kv, v="fp32", n_ctx=64, center_keys=center,
                             smooth_keys=False, sink_tokens=0) as cache, \
                turbokv.Session(cache) as s:
            s.eval(tokens[:8])
            rows = [s.logits()]
            for t in tokens[8:]:
                s.eval([t])
                rows.append(s.logits())
        return np.stack(rows)

    plain, centered = logits("fp32", False), logits("fp32", True)
    np.testing.assert_allclose(centered, plain, rtol=1e-4, atol=1e-4)
    ref = reference_forward(weights, _hp(cfg), tokens)[7:]
    assert mean_kl(ref, logits("turbo_kv_3b", True)) < 1.5 * mean_kl(ref, logits("turbo_kv_3b", False))
    model.close()


def _stream_logits(model, tokens, n_prefill=8, n_ctx=64, n_batch=0, **cache_args) -> np.ndarray:
    """Logits of a prefill of n_prefill tokens (in pieces of n_batch, 0 = the session's
    default), then of each token decoded one by one."""
    with turbokv.KVCache(model, n_ctx=n_ctx, **cache_args) as cache, \
            turbokv.Session(cache, n_batch=n_batch) as s:
        s.eval(tokens[:n_prefill])
        rows = [s.logits()]
        for t in tokens[n_prefill:]:
            s.eval([t])
            rows.append(s.logits())
    return np.stack(rows)


def test_key_smoothing_keeps_attention_exact(tmp_path):
    """Keys divided and queries multiplied by the same per-channel scales leave every
    score unchanged: with fp32 storage the logits must not move (prefill and decode,
    with and without centering); with a codec the scales must change what is coded."""
    cfg = TinyConfig(seed=11)
    path = tmp_path / "tiny.gguf"
    weights = write_tiny_model(path, cfg)
    tokens = np.arange(5, 35, dtype=np.int32)
    model = turbokv.Model(path)
    plain = _stream_logits(model, tokens, k="fp32", v="fp32", center_keys=False,
                           smooth_keys=False, sink_tokens=0)
    for center in (False, True):
        for alpha in (0.35, 1.0):
            smoothed = _stream_logits(model, tokens, k="fp32", v="fp32", center_keys=center,
                                      smooth_keys=alpha)
            np.testing.assert_allclose(smoothed, plain, rtol=1e-4, atol=1e-4)
    ref = reference_forward(weights, _hp(cfg), tokens)[7:]
    coded = _stream_logits(model, tokens, k="turbo_kv_3b", v="fp32", smooth_keys=False)
    coded_smooth = _stream_logits(model, tokens, k="turbo_kv_3b", v="fp32", smooth_keys=True)
    assert not np.array_equal(coded, coded_smooth)
    assert mean_kl(ref, coded_smooth) < 1.5 * mean_kl(ref, coded)
    # a first batch under 8 tokens leaves the scales at 1: identical to no smoothing
    short = _stream_logits(model, tokens, n_prefill=4, k="turbo_kv_3b", v="fp32",
                           smooth_keys=False)
    short_smooth = _stream_logits(model, tokens, n_prefill=4, k="turbo_kv_3b", v="fp32",
                                  smooth_keys=True)
    np.testing.assert_array_equal(short_smooth, short)
    # calibration waits for positions past the sinks, then re-expresses the stored sinks
    for n_prefill in (1, 2):
        with turbokv.KVCache(model, k="fp32", v="fp32", n_ctx=64, sink_tokens=3,
                             smooth_keys=0.5) as cache, turbokv.Session(cache) as s:
            s.eval(tokens[:n_prefill])
            s.eval(tokens[n_prefill:20], all_logits=True)
            got = s.all_logits()
        want = _stream_logits(model, tokens[:20], n_prefill=n_prefill, k="fp32", v="fp32",
                              center_keys=False)[1:]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        turbokv.KVCache(model, smooth_keys=1.5)
    model.close()


def test_sink_tokens_are_kept_exact(tmp_path):
    """Sink positions bypass the codec: with every position a sink the compressed cache
    gives the fp32 logits; sinks plus an fp16 window covering the rest give them to fp16
    precision; truncating below the sinks and re-evaluating gives a fresh run's logits;
    bytes count sinks at fp32."""
    cfg = TinyConfig(seed=12)
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path, cfg)
    tokens = np.arange(3, 33, dtype=np.int32)
    model = turbokv.Model(path)
    exact = _stream_logits(model, tokens, k="fp32", v="fp32", center_keys=False,
                           smooth_keys=False, sink_tokens=0)
    all_sinks = _stream_logits(model, tokens, k="turbo_kv_3b", v="turbo_kv_2b", sink_tokens=64)
    np.testing.assert_allclose(all_sinks, exact, rtol=1e-4, atol=1e-4)
    covered = _stream_logits(model, tokens, k="turbo_kv_3b", v="turbo_kv_3b", sink_tokens=6,
                             fp16_window=24)
    np.testing.assert_allclose(covered, exact, rtol=2e-2, atol=2e-2)
    # some positions compressed: sinks help and the run differs from both extremes
    part = _stream_logits(model, tokens, k="turbo_kv_2b", v="turbo_kv_2b", sink_tokens=4,
                          fp16_window=3)
    none = _stream_logits(model, tokens, k="turbo_kv_2b", v="turbo_kv_2b", fp16_window=3,
                          sink_tokens=0)
    assert not np.allclose(part, exact, rtol=1e-3, atol=1e-3)
    assert np.abs(part - exact).mean() < np.abs(none - exact).mean()

    d, hk, nl = model.head_dim, model.n_head_kv, model.n_layer
    # (centering and smoothing off: they calibrate on the first batch, which differs)
    with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=64, sink_tokens=4,
                         center_keys=False, smooth_keys=False) as cache, \
            turbokv.Session(cache) as s:
        s.eval(tokens[:10])
        assert cache.bytes_used == 4 * nl * hk * d * 2 * 4 + 6 * cache.bytes_per_token
        s.eval(tokens[10:20])
        cache.truncate(2)  # below the sinks: positions 2.. are written again
        s.eval(tokens[12:22])
        again = s.logits()
    # (centering and smoothing off: they calibrate on the first batch, which differs)
    with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=64, sink_tokens=4,
                         center_keys=False, smooth_keys=False) as cache, \
            turbokv.Session(cache) as s:
        s.eval(np.concatenate([tokens[:2], tokens[12:22]]))
        np.testing.assert_allclose(again, s.logits(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        turbokv.KVCache(model, sink_tokens=65)
    model.close()


def test_calibration_blocks_keep_attention_exact(tmp_path):
    """Centering and smoothing recalibrated every 64 positions (offsets and scales per
    block, block b from the keys and queries of block b - 1): with fp32 storage the
    logits must not move across block boundaries, in prefill and decode, after a
    truncation into the middle of a block too; the calibration blocks are counted in
    bytes_used; a bad block size is refused."""
    cfg = TinyConfig(seed=13, n_ctx=256)
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path, cfg)
    model = turbokv.Model(path)
    tokens = (np.arange(220, dtype=np.int32) * 37 + 11) % 250 + 3

    def run(**levers) -> np.ndarray:  # prefill 150 in pieces of 50 (crossing blocks), decode
        return _stream_logits(model, tokens, n_prefill=150, n_ctx=256, n_batch=50, k="fp32",
                              v="fp32", **levers)

    plain = run(center_keys=False, smooth_keys=False, sink_tokens=0)
    for smooth in (False, 0.35):
        got = run(center_keys=True, smooth_keys=smooth, calibration_block=64)
        np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-4)
    # truncate into the middle of block 2 and write it again
    with turbokv.KVCache(model, k="fp32", v="fp32", n_ctx=256, smooth_keys=True,
                         calibration_block=64) as cache, turbokv.Session(cache, n_batch=64) as s:
        s.eval(tokens[:200])
        cache.truncate(150)
        s.eval(tokens[150:220])
        np.testing.assert_allclose(s.logits(), plain[-1], rtol=1e-4, atol=1e-4)
    d, hk, nl = model.head_dim, model.n_head_kv, model.n_layer
    # truncate to a block boundary: the block is calibrated again when it is re-entered
    with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=256, sink_tokens=0,
                         calibration_block=64) as cache, turbokv.Session(cache, n_batch=64) as s:
        s.eval(tokens[:200])
        cache.truncate(128)
        s.eval(tokens[128:150])
        assert cache.bytes_used == 150 * cache.bytes_per_token + 3 * nl * hk * d * 2 * 2
    for smooth, levers in ((False, 1), (True, 2)):
        with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=256,
                             smooth_keys=smooth, sink_tokens=0, calibration_block=64) as cache, \
                turbokv.Session(cache) as s:
            s.eval(tokens[:130])  # blocks 0, 1 and 2 in use
            assert cache.calibration_block == 64
            assert cache.bytes_used == 130 * cache.bytes_per_token + 3 * nl * hk * d * 2 * levers
    with turbokv.KVCache(model, k="turbo_kv_4b", calibration_block=None) as cache:
        assert cache.calibration_block is None
    for bad in (1, 63, 1 << 25):
        with pytest.raises((ValueError, turbokv.InvalidArgument)):
            turbokv.KVCache(model, calibration_block=bad)
    model.close()


@pytest.mark.parametrize("kv", ["fp32", "turbo_kv_4b"])
def test_attention_logits_do_not_depend_on_thread_count(tmp_path, kv):
    """Attention splits positions into fixed chunks merged in a fixed order, by (token, head)
    in prefill and by (token, head, chunk) in decode: past 1024 positions, where the chunks
    begin, every thread count must give the same bits, in prefill and in decode."""
    cfg = TinyConfig(n_ctx=4096, seed=11)
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path, cfg)
    rng = np.random.default_rng(5)
    tokens = rng.integers(3, 250, size=2304).astype(np.int32)
    model = turbokv.Model(path)
    runs = []
    for threads in (1, 2, 3):
        with turbokv.KVCache(model, k=kv, v=kv, n_ctx=2400) as cache, \
                turbokv.Session(cache, n_threads=threads, n_batch=256) as s:
            s.eval(tokens[:2300])
            rows = [s.logits()]
            for t in tokens[2300:]:
                s.eval([int(t)])
                rows.append(s.logits())
            runs.append(np.stack(rows))
    model.close()
    assert np.all(np.isfinite(runs[0]))
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])
