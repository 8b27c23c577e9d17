"""Saved caches and sessions: bit-exact continuation in a new process, bad files as typed
errors, the prompt cache of generate() and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import turbokv
from tiny_models import TinyConfig, write_tiny_model

CONFIGS = [
    dict(calibration_block=64),
    dict(k="fp32", v="fp16", calibration_block=64),
    dict(k="turbo_kv_3b", v="turbo_kv_3b", fp16_window=16, sink_tokens=2, calibration_block=64),
    dict(k="turbo_kv_4b_tcq", v="q4_0_rot", calibration_block=None, center_keys=False),
    dict(k="turbo_kv_2b", v="turbo_kv_4b_qjl", smooth_keys=False, sink_tokens=0,
         calibration_block=64, layer_codecs={0: ("q8_0", "bf16")}),
]
PREFIX, TAIL = 90, 8


def _prompt(n_vocab: int) -> list[int]:
    return [(i * 7919 + 13) % n_vocab for i in range(PREFIX + 16)]




def _save_then_continue(model, prompt, configs, n_ctx, n_batch, first, prefix, stem):
    """Per cache configuration (a "truncate" entry cuts the cache back and evaluates 5 more
    tokens): evaluate prompt[:first] and prompt[first:prefix], save to stem<i>.tkv, then
    continue (_continue).  Returns the paths and, per path, what the continuation gave."""
    paths, expected = [], {}
    for i, cfg in enumerate(configs):
        cfg = dict(cfg)
        cut = cfg.pop("truncate", 0)
        with turbokv.KVCache(model, n_ctx=n_ctx, seed=3, **cfg) as cache, \
                turbokv.Session(cache, n_threads=1, n_batch=n_batch) as s:
            s.eval(prompt[:first])
            s.eval(prompt[first:prefix])
            if cut:
                cache.truncate(cut)
                s.eval(prompt[cut:cut + 5])
            path = f"{stem}{i}.tkv"
            s.save(path)
            logits, sampled = _continue(s, model.n_vocab)
            expected[path] = (logits, sampled, len(cache), cache.bytes_used)
            paths.append(path)
    return paths, expected

def _check_in_new_process(model_path, paths, expected):
    """Load each saved file in a new process (_CHILD), continue it, and compare with what this
    process got after the save: logits bit for bit, the sampled tokens, length and bytes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(turbokv.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _CHILD, str(model_path), json.dumps(paths),
                          str(Path(__file__).parent)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for path in paths:
        logits, sampled, n_tokens, used = expected[path]
        child_logits = np.load(path + ".logits.npy")
        # bit for bit: the same float32 words
        assert np.array_equal(child_logits.view(np.uint32), logits.view(np.uint32)), path
        assert got[path]["sampled"] == sampled
        assert got[path]["tokens"] == n_tokens
        assert got[path]["bytes_used"] == used

def _continue(session: turbokv.Session, n_vocab: int) -> tuple[np.ndarray, list[int]]:
    """Sample, then evaluate TAIL fixed tokens one by one; logits of every step."""
    rows, sampled = [], []
    for i in range(TAIL):
        sampled.append(session.sample(turbokv.Sampling(temperature=0.7, seed=9)))
        session.eval([(1000 + 31 * i) % n_vocab])
        rows.append(session.logits())
    return np.stack(rows), sampled


_CHILD = r"""
import json, sys
import numpy as np
import turbokv
sys.path.insert(0, sys.argv[3])
from test_persist import _continue
model = turbokv.Model(sys.argv[1])
out = {}
for i, path in enumerate(json.loads(sys.argv[2])):
    s = turbokv.Session.load(model, path, n_threads=1)
    logits, sampled = _continue(s, model.n_vocab)
    np.save(path + ".logits.npy", logits)
    out[path] = dict(sampled=sampled, tokens=len(s.tokens()),
                     bytes_used=s.cache.bytes_used)
print(json.dumps(out))
"""


def test_continue_after_load_in_a_new_process_is_bit_exact(real_model, real_model_path, tmp_path):
    prompt = _prompt(real_model.n_vocab)
    configs = CONFIGS + [dict(CONFIGS[0], truncate=60)]
    paths, expected = _save_then_continue(real_model, prompt, configs, 256, 64, 50, PREFIX,
                                          tmp_path / "s")
    _check_in_new_process(real_model_path, paths, expected)


def test_kvcache_save_load_roundtrip_settings(real_model, tmp_path):
    cfg = CONFIGS[4]
    with turbokv.KVCache(real_model, n_ctx=128, seed=5, sparse_v_threshold=0.001, **cfg) as c:
        s = turbokv.Session(c, n_threads=1)
        s.eval(_prompt(real_model.n_vocab)[:20])
        c.save(tmp_path / "c.tkv")
        loaded = turbokv.KVCache.load(real_model, tmp_path / "c.tkv")
        assert len(loaded) == 20 and loaded.capacity == 128
        assert loaded.bytes_used == c.bytes_used
        assert loaded.config == c.config
        assert loaded.config.layer_codecs == ((0, "q8_0", "bf16"),)
        # a cache file holds no session state
        s2 = turbokv.Session(loaded, n_threads=1)
        with pytest.raises(turbokv.InvalidArgument, match="without session state"):
            turbokv.Session.load(real_model, tmp_path / "c.tkv")
        s2.close()
        loaded.close()


def _saved_file(real_model, tmp_path) -> bytes:
    with turbokv.KVCache(real_model, n_ctx=64, fp16_window=4) as c:
        s = turbokv.Session(c, n_threads=1)
        s.eval(_prompt(real_model.n_vocab)[:12])
        s.save(tmp_path / "good.tkv")
    return (tmp_path / "good.tkv").read_bytes()


def test_bad_files_are_typed_errors(real_model, tmp_path):
    good = _saved_file(real_model, tmp_path)
    bad = tmp_path / "bad.tkv"

    def load():
        return turbokv.KVCache.load(real_model, bad)

    for cut in (0, 5, 63, 64, 100, len(good) // 2, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(turbokv.FormatError, match="truncated|not a turbokv cache file"):
            load()
    rng = np.random.default_rng(0)
    for i in list(range(0, 64)) + list(rng.integers(64, len(good), 40)):
        data = bytearray(good)
        data[i] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(data))
        with pytest.raises((turbokv.FormatError, turbokv.UnsupportedError)):
            load()
    data = bytearray(good)
    data[8] = 3  # a newer version
    bad.write_bytes(bytes(data))
    with pytest.raises(turbokv.UnsupportedError, match="version 3 is newer"):
        load()
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(turbokv.FormatError, match="not a turbokv cache file"):
        load()
    with pytest.raises(turbokv.FileAccessError):
        turbokv.KVCache.load(real_model, tmp_path / "missing.tkv")
    with pytest.raises(turbokv.FileAccessError):
        turbokv.KVCache.load(real_model, tmp_path)
    with pytest.raises(TypeError):
        turbokv.KVCache.load(real_model, 3)


def test_another_model_is_a_mismatch(real_model, tmp_path):
    tiny = tmp_path / "tiny.gguf"
    write_tiny_model(tiny, TinyConfig(seed=3))
    with turbokv.Model(tiny) as m:
        with turbokv.KVCache(m, n_ctx=32) as c:
            s = turbokv.Session(c, n_threads=1)
            s.eval([1, 2, 3, 4])
            s.save(tmp_path / "tiny.tkv")
        with pytest.raises(turbokv.MismatchError, match="another model"):
            turbokv.KVCache.load(real_model, tmp_path / "tiny.tkv")
        # the same architecture with other weights is another model too
        other = tmp_path / "tiny2.gguf"
        write_tiny_model(other, TinyConfig(seed=4))
        with turbokv.Model(other) as m2:
            with pytest.raises(turbokv.MismatchError, match="fingerprint"):
                turbokv.KVCache.load(m2, tmp_path / "tiny.tkv")
            # ... and its own model loads it back
            with turbokv.KVCache.load(m, tmp_path / "tiny.tkv") as back:
                assert len(back) == 4


def test_state_needs_its_own_unchanged_cache(real_model, tmp_path):
    _saved_file(real_model, tmp_path)
    s = turbokv.Session.load(real_model, tmp_path / "good.tkv", n_threads=1)
    s.eval([5])
    with pytest.raises(turbokv.MismatchError, match="not the one saved"):
        turbokv._lib.check(turbokv._lib.tkv_session_load_state(
            s.handle, str(tmp_path / "good.tkv").encode()))
    s.close()


def test_prompt_cache_reuses_the_longest_prefix(real_model, tmp_path):
    pc = tmp_path / "prompt.tkv"
    kw = dict(temperature=0, max_tokens=6, n_threads=1, n_ctx=256)
    base = "The quick brown fox jumps over the lazy dog and then"
    first = turbokv.generate(base, real_model, prompt_cache=pc, stream=True, **kw)
    text1 = "".join(first)
    assert first.stats.prompt_cache_tokens == 0 and pc.exists()
    again = turbokv.generate(base, real_model, prompt_cache=pc, stream=True, **kw)
    assert "".join(again) == text1  # the whole prompt reused: exactly the same run
    assert again.stats.prompt_cache_tokens == again.stats.prompt_tokens
    longer = turbokv.generate(base + " runs", real_model, prompt_cache=pc, stream=True, **kw)
    "".join(longer)
    assert longer.stats.prompt_cache_tokens == first.stats.prompt_tokens
    with turbokv.Session.load(real_model, pc, n_threads=1) as s:  # the file was extended
        assert len(s.tokens()) == longer.stats.prompt_tokens
    # other cache settings: a warning, and the file is replaced
    with pytest.warns(RuntimeWarning, match="evaluating the prompt afresh"):
        other = turbokv.generate(base, real_model, prompt_cache=pc, kv="turbo_kv_3b",
                                 stream=True, **kw)
        "".join(other)
    assert other.stats.prompt_cache_tokens == 0
    # a file that is not a cache is never overwritten
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    with pytest.raises(turbokv.FormatError):
        turbokv.generate(base, real_model, prompt_cache=notes, **kw)
    assert notes.read_text() == "precious"


def test_cli_prompt_cache(real_model_path, tmp_path):
    pc = tmp_path / "cli.tkv"
    cmd = [sys.executable, "-m", "turbokv", "generate", "-m", str(real_model_path), "-n", "4",
           "--temp", "0", "-t", "1", "-c", "128", "--prompt-cache", str(pc), "Once upon a time"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(turbokv.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    a = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    b = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
    assert "reused 0 of 4" in a.stderr and "reused 4 of 4" in b.stderr


def assert_same_as_unforked(a, b):
    """A fork continues as an unforked cache would: bit for bit with the scalar kernels; the
    SIMD value sums round per kernel call and a shared prefix is a call boundary
    (docs/PERSISTENCE.md), which moves this model's logits like another batch split would
    (measured up to ~1.5 at most over the vocabulary)."""
    if turbokv.codec.kernel_isa() == "scalar":
        assert np.array_equal(a, b)
    else:
        diff = float(np.abs(a - b).max())
        assert diff <= 4.0 and a.argmax() == b.argmax(), diff


def test_fork_shares_the_document(real_model, tmp_path):
    doc = _prompt(real_model.n_vocab)[:PREFIX]
    with turbokv.KVCache(real_model, n_ctx=256) as c, \
            turbokv.KVCache(real_model, n_ctx=256) as plain:
        s = turbokv.Session(c, n_threads=1)
        s.eval(doc)
        ref = turbokv.Session(plain, n_threads=1)
        ref.eval(doc)
        forks = [s.fork(n_threads=1) for _ in range(3)]
        for f in forks:
            assert f.tokens() == doc and np.array_equal(f.logits(), s.logits())
            assert f.cache.config == c.config
        for i, f in enumerate(forks):
            f.eval([100 + i, 200 + i])
        ref.eval([101, 201])
        assert_same_as_unforked(forks[1].logits(), ref.logits())
        s.close()
        c.close()  # the forks keep the shared document alive
        forks[0].eval([7])
        forks[0].save(tmp_path / "f.tkv")
        back = turbokv.Session.load(real_model, tmp_path / "f.tkv", n_threads=1)
        back.eval([8])
        forks[0].eval([8])
        assert_same_as_unforked(back.logits(), forks[0].logits())  # a loaded fork is contiguous


def test_fork_of_a_short_document(real_model):
    with turbokv.KVCache(real_model, n_ctx=64) as c:
        s = turbokv.Session(c, n_threads=1)
        s.eval([1, 2, 3, 4, 5])  # fewer positions than a shared prefix takes
        f = s.fork(n_threads=1)
        f.eval([6])
        s.eval([6])
        assert np.array_equal(f.logits(), s.logits()) and f.tokens() == s.tokens()


# ---- sliding-window rings (Gemma 3: local layers keep window - 1 + 256 positions) ----------

GEMMA3 = dict(arch="gemma3", key_length=32, n_layer=3, sliding_window=5, swa_pattern=3,
              rope_theta=1e6, rope_scaling="linear", rope_factor=8.0, seed=21)
RING_PREFIX = 300  # past the local layers' ring of 5 - 1 + 256 = 260 positions
RING_CONFIGS = [
    dict(k="turbo_kv_4b", v="turbo_kv_4b", fp16_window=16, sink_tokens=2, calibration_block=64),
    dict(k="fp16", v="q8_0", sink_tokens=0, smooth_keys=False),
    dict(k="turbo_kv_3b_tcq", v="q4_0_rot", calibration_block=None, center_keys=False),
]


@pytest.fixture(scope="module")
def gemma3_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3") / "gemma3.gguf"
    write_tiny_model(path, TinyConfig(**GEMMA3))
    return path


def test_sliding_ring_continues_bit_exact_after_load_in_a_new_process(gemma3_path, tmp_path):
    """A Gemma 3 cache whose local layers' rings have wrapped (and one truncated inside
    them) saves the rings' rows and what they lost, and continues bit for bit in another
    process."""
    with turbokv.Model(gemma3_path) as model:
        prompt = [(i * 7919 + 13) % model.n_vocab for i in range(RING_PREFIX + 8)]
        configs = RING_CONFIGS + [dict(RING_CONFIGS[0], truncate=RING_PREFIX - 8)]
        paths, expected = _save_then_continue(model, prompt, configs, 512, 128, 200, RING_PREFIX,
                                              tmp_path / "r")
    _check_in_new_process(gemma3_path, paths, expected)


def test_sliding_ring_fork(gemma3_path, tmp_path):
    """A fork of a cache with rings copies the rings (their rows are overwritten as positions
    come) and shares the global layer's codes: it continues as an unforked cache does, each
    fork on its own, past another wrap, truncated, and through a save and load."""
    with turbokv.Model(gemma3_path) as model:
        doc = [(i * 31 + 7) % model.n_vocab for i in range(RING_PREFIX)]
        more = [(i * 17 + 3) % model.n_vocab for i in range(300)]
        with turbokv.KVCache(model, n_ctx=1024) as c, \
                turbokv.KVCache(model, n_ctx=1024) as plain:
            s = turbokv.Session(c, n_threads=1)
            s.eval(doc)
            ref = turbokv.Session(plain, n_threads=1)
            ref.eval(doc)
            f1, f2 = s.fork(n_threads=1), s.fork(n_threads=1)
            assert f1.cache.bytes_used == c.bytes_used
            f1.eval(more[:200])
            f2.eval(more[:200])
            s.eval([5, 6, 7])  # the original goes its own way, overwriting its ring rows
            ref.eval(more[:200])
            assert np.array_equal(f1.logits(), f2.logits())
            assert_same_as_unforked(f1.logits(), ref.logits())
            s.close()
            c.close()
            f1.eval(more[200:])  # the rings wrap again
            ref.eval(more[200:])
            assert_same_as_unforked(f1.logits(), ref.logits())
            with pytest.raises(turbokv.InvalidArgument, match="sliding-window"):
                f1.cache.truncate(RING_PREFIX)
            f1.cache.truncate(len(f1.cache) - 3)
            plain.truncate(len(plain) - 3)
            f1.eval(more[-3:])
            ref.eval(more[-3:])
            assert_same_as_unforked(f1.logits(), ref.logits())
            f1.save(tmp_path / "f.tkv")
            back = turbokv.Session.load(model, tmp_path / "f.tkv", n_threads=1)
            back.eval([9])
            f1.eval([9])
            assert np.array_equal(back.logits(), f1.logits())
            for x in (back, f1, f2, ref):
                x.close()


def test_prompt_cache_past_the_rings_starts_afresh(gemma3_path, tmp_path):
    """A prompt that shares only a short prefix with a long saved one cannot reuse it when
    the local layers' rings no longer hold that prefix's windows: evaluated afresh."""
    pc = tmp_path / "prompt.tkv"
    kw = dict(temperature=0, max_tokens=3, n_threads=1, n_ctx=1024)
    with turbokv.Model(gemma3_path) as model:
        long = "ab cd " * 60
        first = turbokv.generate(long, model, prompt_cache=pc, stream=True, **kw)
        "".join(first)
        assert first.stats.prompt_tokens > 270
        other = turbokv.generate("ab xy", model, prompt_cache=pc, stream=True, **kw)
        fresh = turbokv.generate("ab xy", model, stream=True, **kw)
        assert "".join(other) == "".join(fresh)
        assert other.stats.prompt_cache_tokens == 0
