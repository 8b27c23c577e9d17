"""Every supported architecture and RoPE variant: the C forward pass against the NumPy
reference (tiny_models.reference_forward, float64) on tiny random GGUF files, on the fp32
cache and on the compressed cache with every codec."""
from __future__ import annotations

import numpy as np
import pytest

import turbokv
from turbokv.codec import codecs
from tiny_models import (TinyConfig, mean_kl, reference_forward, reference_hparams,
                         write_tiny_model)

# Max logit error relative to the logits' standard deviation, float weights against the
# exact reference (the float32 forward pass: measured 1e-6 .. 2e-5).
FLOAT = 2e-4

# name: TinyConfig arguments.  Sequences run past the sliding windows, RoPE scaling has
# factors and YaRN ramps that differ from 1 on some pairs and not on others.
ARCHS = {
    "llama": dict(arch="llama"),
    "llama3-rope_freqs": dict(arch="llama", rope_freqs=True),
    "llama-linear": dict(arch="llama", rope_scaling="linear", rope_factor=4.0),
    "llama-fused-qkv": dict(arch="llama", fused=True),
    "mistral-sliding": dict(arch="llama", sliding_window=7),
    "qwen2": dict(arch="qwen2"),
    "qwen2-yarn": dict(arch="qwen2", n_embd=128, rope_scaling="yarn", rope_factor=4.0,
                       rope_orig_ctx=64, rope_theta=1000.0),
    "qwen3": dict(arch="qwen3", key_length=32),
    "phi3": dict(arch="phi3", fused=True),
    "phi3-longrope": dict(arch="phi3", fused=True, n_rot=8, long_short_factors=True,
                          rope_orig_ctx=32, rope_attn_factor=1.19),
    "gemma3": dict(arch="gemma3", key_length=32, n_layer=3, sliding_window=5, swa_pattern=3,
                   rope_theta=1e6, rope_scaling="linear", rope_factor=8.0),
    "gemma3-softcap": dict(arch="gemma3", n_layer=2, sliding_window=4, swa_pattern=2,
                           rope_theta_swa=500.0, final_softcap=3.0),
}
TOKENS = np.array([262, 5, 17, 200, 3, 99, 42, 7, 7, 150, 11, 260, 33, 64, 65, 66, 1, 2, 250, 9],
                  dtype=np.int32)


def _model(tmp_path, name, **extra):
    cfg = TinyConfig(seed=21, **{**ARCHS[name], **extra})
    path = tmp_path / f"{name}.gguf"
    weights = write_tiny_model(path, cfg)
    return cfg, path, weights


def _logits(path, tokens, kv="fp32", n_ctx=64, one_by_one=False, **cache_args):
    model = turbokv.Model(path)
    try:
        with turbokv.KVCache(model, k=kv, v=kv, n_ctx=n_ctx, **cache_args) as cache, \
                turbokv.Session(cache, n_threads=2) as s:
            if one_by_one:
                rows = []
                for t in tokens:
                    s.eval([t])
                    rows.append(s.logits())
                return np.stack(rows)
            s.eval(tokens, all_logits=True)
            return s.all_logits()
    finally:
        model.close()


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / (np.std(b) + 1e-12))


@pytest.mark.parametrize("name", list(ARCHS))
def test_logits_match_numpy_reference(tmp_path, name):
    cfg, path, W = _model(tmp_path, name)
    with turbokv.Model(path) as m:
        assert m.arch == cfg.arch and m.head_dim == cfg.head_dim
    exact = reference_forward(W, reference_hparams(cfg, W, n_ctx=64), TOKENS)
    got = _logits(path, TOKENS)
    assert got.shape == exact.shape
    assert _rel_err(got, exact) < FLOAT, _rel_err(got, exact)
    # decode one token at a time (windows slide per step) gives the same logits
    single = _logits(path, TOKENS, one_by_one=True)
    np.testing.assert_allclose(single, got, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["llama3-rope_freqs", "qwen2-yarn", "phi3-longrope",
                                  "gemma3", "mistral-sliding"])
def test_feature_changes_the_logits(tmp_path, name):
    """Each feature matters on these inputs: the reference without it is far away, so the
    match above is not a coincidence of a feature without effect."""
    cfg, path, W = _model(tmp_path, name)
    got = _logits(path, TOKENS)
    hp = reference_hparams(cfg, W, n_ctx=64)
    plain = dict(hp)
    if name in ("mistral-sliding", "gemma3"):
        plain["sliding"] = [False] * cfg.n_layer
    else:
        plain["rope"] = reference_hparams(TinyConfig(**{**ARCHS[name], "rope_freqs": False,
                                                        "rope_scaling": "",
                                                        "long_short_factors": False,
                                                        "rope_attn_factor": 0.0}),
                                          W)["rope"]
    assert _rel_err(got, reference_forward(W, plain, TOKENS)) > 100 * FLOAT


def test_phi3_long_factors_follow_the_context_size(tmp_path):
    """LongRoPE: the short factors up to the original context (32 here), the long ones for a
    session made for more (llama.cpp's rule)."""
    cfg, path, W = _model(tmp_path, "phi3-longrope")
    tokens = TOKENS[:16]
    for n_ctx in (32, 64):
        exact = reference_forward(W, reference_hparams(cfg, W, n_ctx=n_ctx), tokens)
        assert _rel_err(_logits(path, tokens, n_ctx=n_ctx), exact) < FLOAT


def test_sliding_window_sees_only_the_window(tmp_path):
    """Changing a token that left every local layer's window changes nothing when all
    layers are local (Mistral-style), and changes the logits through a global layer."""
    _, path, _ = _model(tmp_path, "mistral-sliding", n_layer=1)
    a = _logits(path, TOKENS[:12])
    changed = TOKENS[:12].copy()
    changed[2] = 123  # position 2 is outside the 7-position window of position 11 and of
    b = _logits(path, changed)  # every position whose output reaches it in one layer
    np.testing.assert_allclose(a[-1], b[-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[3], b[3], rtol=1e-3, atol=1e-3)
    _, gpath, _ = _model(tmp_path, "gemma3")  # layer 2 of 3 is global
    a, b = _logits(gpath, TOKENS[:12]), _logits(gpath, changed)
    assert not np.allclose(a[-1], b[-1], rtol=1e-3, atol=1e-3)


def _codec_names(head_dim):
    return [c.name for c in codecs(head_dim)]


@pytest.mark.parametrize("name", ["llama3-rope_freqs", "qwen2-yarn", "qwen3", "phi3-longrope",
                                  "gemma3", "mistral-sliding"])
def test_every_codec_runs_and_follows_the_reference(tmp_path, name):
    """On the compressed cache with every codec: finite logits whose next-token
    distributions stay close to the exact reference (mean KL; the 2-bit codecs on these
    16- and 32-dimensional heads are the loosest) and, for the exact formats, equal to it."""
    cfg, path, W = _model(tmp_path, name)
    ref = reference_forward(W, reference_hparams(cfg, W, n_ctx=64), TOKENS)
    kls = {}
    for kv in _codec_names(cfg.head_dim):
        got = _logits(path, TOKENS, kv=kv)
        assert np.all(np.isfinite(got)), kv
        kls[kv] = mean_kl(ref, got)
        bound = 1e-6 if kv == "fp32" else 1e-4 if kv in ("fp16", "bf16") else \
            0.01 if kv.startswith("q8") else 1.5
        assert kls[kv] < bound, (kv, kls[kv])
    # the codecs are in use: 2 bits is further from the reference than fp16 (measured KL
    # 0.57-0.65 against 3e-7 on the RoPE variants; Gemma 3's normed q/k keep its softmax flat
    # over a short window, 2e-5 against 3e-12)
    assert kls["turbo_kv_2b"] > 100 * kls["fp16"], kls


def test_sliding_layers_keep_only_their_window(tmp_path):
    """Gemma 3's local layers store a ring of window - 1 + 256 positions (the batch appended
    before attention reads it), not the context: 420 positions with a 5-position window give
    the reference's logits (prefill in one call, in pieces, and decoded one by one), the
    bytes of a local layer stop growing at its ring, and truncation cannot go back past what
    the rings still hold."""
    cfg, path, W = _model(tmp_path, "gemma3")  # layers 0, 1 local (window 5), layer 2 global
    n, ring = 420, 5 - 1 + 256
    tokens = (np.arange(n, dtype=np.int32) * 37 + 11) % 250 + 3
    exact = reference_forward(W, reference_hparams(cfg, W, n_ctx=512), tokens)
    levers = dict(center_keys=False, smooth_keys=False, sink_tokens=0)
    model = turbokv.Model(path)
    with turbokv.KVCache(model, k="fp32", v="fp32", n_ctx=512, **levers) as cache:
        with turbokv.Session(cache, n_batch=n) as s:  # one chunk: sub-batches of 256
            s.eval(tokens, all_logits=True)
            assert _rel_err(s.all_logits(), exact) < FLOAT
        per_layer = cache.bytes_per_token // cfg.n_layer
        assert cache.bytes_used == per_layer * (2 * ring + n)
        with pytest.raises(turbokv.InvalidArgument, match="sliding-window"):
            cache.truncate(100)  # positions 100 - 4 .. 99 left the rings
        cache.truncate(n - 10)  # the rings still hold the windows of these
        with turbokv.Session(cache, n_batch=16) as s:
            s.eval(tokens[n - 10:n - 5])
            np.testing.assert_allclose(s.logits(), exact[n - 6], rtol=1e-4, atol=1e-4)
            for t in range(n - 5, n):
                s.eval(tokens[t:t + 1])
                np.testing.assert_allclose(s.logits(), exact[t], rtol=1e-4, atol=1e-4)
        cache.truncate(0)
        assert cache.bytes_used == 0
    # in pieces of 100 (each within a ring's batch) and on a compressed cache
    with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=512) as cache, \
            turbokv.Session(cache, n_batch=100) as s:
        for a in range(0, n, 100):
            s.eval(tokens[a:a + 100], all_logits=True)
        assert mean_kl(exact[400:], s.all_logits()) < 0.05
    model.close()


def test_failed_eval_rolls_back_or_says_the_cache_was_emptied(tmp_path):
    """Token 0's embedding is NaN: an eval that reaches it fails.  A short call leaves the
    cache as it was; a call whose earlier chunks appended more than a ring's batch before
    the failing one cannot, and empties the cache with a message that says so."""
    cfg, path, _ = _model(tmp_path, "gemma3", nan_tensor="token_embd.weight", tied=False)
    good = (np.arange(300, dtype=np.int32) * 7) % 250 + 3
    with turbokv.Model(path) as model, \
            turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=1024) as cache, \
            turbokv.Session(cache, n_batch=100) as s:
        s.eval(good)
        with pytest.raises(turbokv.FormatError, match="non-finite") as err:
            s.eval(np.concatenate([good[:3], [0]]))
        assert "emptied" not in str(err.value) and len(cache) == 300
        with pytest.raises(turbokv.FormatError, match="cache was emptied"):
            s.eval(np.concatenate([good, [0]]))
        assert len(cache) == 0
        s.eval(good[:10])  # usable again
        assert len(cache) == 10


def test_sliding_rings_give_the_same_bits_for_any_thread_count(tmp_path):
    """Sub-batches of a ring's append limit and the fixed attention chunks depend only on
    the positions: 1 and 3 threads give the same logits past the rings' wrap, in one
    prefill and in decode (where attention splits each head's positions)."""
    _, path, _ = _model(tmp_path, "gemma3")
    tokens = (np.arange(300, dtype=np.int32) * 11 + 5) % 250 + 3
    runs = []
    with turbokv.Model(path) as model:
        for threads in (1, 3):
            with turbokv.KVCache(model, k="turbo_kv_4b", v="turbo_kv_4b", n_ctx=512) as cache, \
                    turbokv.Session(cache, n_threads=threads, n_batch=300) as s:
                s.eval(tokens[:290], all_logits=True)
                rows = [s.all_logits()]
                for t in tokens[290:]:
                    s.eval([t])
                    rows.append(s.logits()[None])
                runs.append(np.concatenate(rows))
    assert np.array_equal(runs[0].view(np.uint32), runs[1].view(np.uint32))
