"""The codec API on NumPy arrays: ABI, round trips, kernels vs NumPy, errors."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import turbokv
from turbokv import _errors, _lib

TURBO_FLOORS = {"turbo_kv_5b": 0.998, "turbo_kv_4b": 0.994, "turbo_kv_3b": 0.98, "turbo_kv_2b": 0.93,
                "turbo_kv_4b_tcq": 0.9965, "turbo_kv_3b_tcq": 0.988, "turbo_kv_2b_tcq": 0.955}


def test_abi_and_version():
    params = _lib.tkv_codec_default_params()
    assert params.struct_size == ctypes.sizeof(_lib.CodecParams)
    assert turbokv.library_version() == turbokv.__version__
    assert _lib.tkv_version_number() // 10000 == _lib.ABI_MAJOR
    assert turbokv.kernel_isa() in ("scalar", "avx2", "avx512", "neon")


def test_status_enum_mirrors_the_header():
    """turbokv.Status is the header's list: every member has the C name and value, and the
    library knows no status beyond it (the first code past the last member is unknown)."""
    for st in turbokv.Status:
        assert _lib.tkv_status_name(st.value).decode() == st.c_name
    assert _lib.tkv_status_name(min(turbokv.Status) - 1).decode() == "TKV_ERR_UNKNOWN"
    for st, cls in _errors.STATUS_ERRORS.items():
        assert issubclass(cls, turbokv.TurboKVError) and cls.__name__ in turbokv.__all__
    assert set(_errors.STATUS_ERRORS) == set(turbokv.Status) - {turbokv.Status.OK}


def test_every_exception_class_is_exported():
    import inspect

    import turbokv.models

    for module in (_errors, turbokv.models):
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__ == module.__name__:
                assert getattr(turbokv, name) is obj and name in turbokv.__all__, name


def test_bindings_are_typed_stubs_with_their_prototypes():
    """Every exported tkv_* function of the library is bound in _lib by a stub whose
    docstring is its C prototype and whose argtypes / restype are set."""
    import re
    import subprocess

    bound = {n: f for n, f in vars(_lib).items() if n.startswith("tkv_")}
    for name, fn in bound.items():
        assert fn.argtypes is not None, name
        assert re.search(rf"\b{name}\(", fn.__doc__), name
    nm = subprocess.run(["nm", "-D", "--defined-only", _lib._dll._name], capture_output=True,
                        text=True)
    if nm.returncode == 0:
        exported = {l.split()[-1] for l in nm.stdout.splitlines() if " T tkv_" in l}
        assert exported == set(bound), exported ^ set(bound)


def test_codec_list():
    infos = {c.name: c for c in turbokv.codecs(128)}
    assert len(infos) == 17
    assert infos["fp32"].bytes_per_vector == 512
    assert infos["turbo_kv_4b"].bytes_per_vector == 66
    assert infos["turbo_kv_4b"].bits_per_element == pytest.approx(4.125)
    assert infos["q4_0"].bits_per_element == pytest.approx(4.5)
    assert infos["turbo_kv_4b_qjl"].qjl and infos["turbo_kv_4b_qjl"].rotated
    assert infos["turbo_kv_3b"].compression_vs_fp16 == pytest.approx(256 / 50)
    assert infos["fp16"].to_dict()["compression_vs_fp32"] == pytest.approx(2.0)
    # trellis codecs: the bytes of turbo_kv_Nb; head_dims they cannot code are left out
    assert infos["turbo_kv_3b_tcq"].trellis and infos["turbo_kv_3b_tcq"].rotated
    assert infos["turbo_kv_3b_tcq"].bytes_per_vector == infos["turbo_kv_3b"].bytes_per_vector
    assert {c.name for c in turbokv.codecs(6)} == set(infos) - {"turbo_kv_2b_tcq", "turbo_kv_3b_tcq",
                                                                "turbo_kv_4b_tcq"}
    with pytest.raises(turbokv.InvalidArgument, match="multiple of 8"):
        turbokv.Codec("turbo_kv_3b_tcq", 20)


def test_trellis_beats_lloyd_max_at_same_bytes(rng):
    x = rng.standard_normal((400, 64)).astype(np.float32)
    for bits in (2, 3, 4):
        errs = {}
        for name in (f"turbo_kv_{bits}b", f"turbo_kv_{bits}b_tcq"):
            y = turbokv.encode(x, name, seed=1).decode()
            errs[name] = float(np.sum((x - y) ** 2) / np.sum(x ** 2))
        assert errs[f"turbo_kv_{bits}b_tcq"] < 0.75 * errs[f"turbo_kv_{bits}b"], errs


def test_codebook_matches_published():
    cb = turbokv.codebook(4)
    assert cb.shape == (16,)
    np.testing.assert_allclose(cb[8:], [0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326],
                               atol=2e-4)
    with pytest.raises(turbokv.InvalidArgument):
        turbokv.codebook(7)


@pytest.mark.parametrize("name", sorted(TURBO_FLOORS))
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_round_trip_quality(rng, name, head_dim):
    x = rng.standard_normal((300, head_dim)).astype(np.float32)
    y = turbokv.encode(x, name, seed=3).decode()
    cos = np.sum(x * y, axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.mean() >= TURBO_FLOORS[name]
    # the norm correction keeps each decoded vector's norm
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=2e-3)


@pytest.mark.parametrize("name", [c.name for c in turbokv.codecs()])
def test_scores_and_weighted_sum_match_numpy(rng, name):
    d, n = 96, 200
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal(d).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    enc = turbokv.encode(x, name, seed=5)
    dec = enc.decode()
    np.testing.assert_allclose(enc.scores(q), dec @ q, rtol=1e-4, atol=1e-3)
    keep = w >= 0.5
    if name == "turbo_kv_4b" and turbokv.kernel_isa() == "avx512":
        # AVX512_BF16 CPUs sum 4-bit values by bf16 dot products (lib/codec/kernels.h): the
        # error vector's norm is at most 2^-8 sum_i |w_i| |dec_i| (about 3% of the codec's own
        # error in norm, tests/c/test_codec.c), not 1e-4 per element
        norms = np.linalg.norm(dec, axis=1)
        for ww, ref in ((w, w @ dec), (np.where(keep, w, 0), w[keep] @ dec[keep])):
            got = enc.weighted_sum(w, threshold=0.5 if ww is not w else 0.0)
            assert np.linalg.norm(got - ref) <= 1.01 * np.abs(ww) @ norms / 256 + 1e-3
        return
    np.testing.assert_allclose(enc.weighted_sum(w), w @ dec, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(enc.weighted_sum(w, threshold=0.5), w[keep] @ dec[keep], rtol=1e-4,
                               atol=1e-3)


def test_attention_matches_numpy_softmax(rng):
    d, n = 64, 500
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((3, d)).astype(np.float32)
    ek, ev = turbokv.encode(k, "fp32"), turbokv.encode(v, "fp32")
    out = turbokv.attention(q, ek, ev)
    logits = q @ k.T / np.sqrt(d)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, p @ v, rtol=1e-4, atol=1e-5)
    assert turbokv.attention(q[0], ek, ev).shape == (d,)


def test_attention_cosine_monotone_in_bits(rng):
    d, n = 128, 1024
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((8, d)).astype(np.float32)  # logit sd ~1 at scale 1/sqrt(d)
    cos = [turbokv.attention_cosine(k, v, q, f"turbo_kv_{b}b").mean for b in (2, 3, 4, 5)]
    assert cos == sorted(cos)
    assert cos[2] > 0.985
    mixed = turbokv.attention_cosine(k, v, q, k_codec="turbo_kv_5b", v_codec="turbo_kv_3b")
    assert mixed.k_codec == "turbo_kv_5b" and mixed.v_codec == "turbo_kv_3b"


def test_same_seed_same_bytes(rng):
    x = rng.standard_normal((10, 80)).astype(np.float32)
    a = turbokv.encode(x, "turbo_kv_3b", seed=9).codes
    b = turbokv.encode(x, "turbo_kv_3b", seed=9).codes
    c = turbokv.encode(x, "turbo_kv_3b", seed=10).codes
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_arguments_raise_typed_errors(rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(turbokv.InvalidArgument, match="unknown codec name 'turbo_kv_9b'"):
        turbokv.encode(x, "turbo_kv_9b")
    with pytest.raises(TypeError, match="float32"):
        turbokv.encode(x.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        turbokv.encode(np.asfortranarray(rng.standard_normal((4, 64)).astype(np.float32)))
    with pytest.raises(ValueError, match="C-contiguous"):
        turbokv.encode(rng.standard_normal((4, 128)).astype(np.float32)[:, ::2])
    with pytest.raises(ValueError, match="shape"):
        turbokv.encode(x[0])
    with pytest.raises(TypeError):
        turbokv.encode([[1.0, 2.0]])
    with pytest.raises(turbokv.InvalidArgument, match="head_dim 7"):
        turbokv.Codec("turbo_kv_4b", 7)
    with pytest.raises(turbokv.InvalidArgument, match="head_dim 7"):
        turbokv.encode(rng.standard_normal((2, 7)).astype(np.float32))
    bad = x.copy()
    bad[1, 3] = np.nan
    with pytest.raises(turbokv.InvalidArgument, match="not finite") as info:
        turbokv.encode(bad)
    assert info.value.status is turbokv.Status.INVALID_ARGUMENT
    enc = turbokv.encode(x)
    with pytest.raises(ValueError, match="64 elements"):
        enc.scores(np.zeros(32, dtype=np.float32))
    with pytest.raises(ValueError, match="weights"):
        enc.weighted_sum(np.zeros(3, dtype=np.float32))
    with pytest.raises(turbokv.InvalidArgument, match="threshold"):
        enc.weighted_sum(np.zeros(4, dtype=np.float32), threshold=-1.0)
    other = turbokv.encode(rng.standard_normal((4, 128)).astype(np.float32))
    with pytest.raises(turbokv.InvalidArgument, match="head_dim"):
        turbokv.attention(np.zeros(64, dtype=np.float32), enc, other)
    c = turbokv.Codec("fp16", 64)
    c.close()
    c.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        c.encode(x)
    with pytest.raises(turbokv.InvalidArgument, match="fp16"):
        turbokv.encode(np.full((1, 64), 1e6, dtype=np.float32), "fp16")


@pytest.mark.parametrize("name", [c.name for c in turbokv.codecs(16)])
def test_malformed_codes_and_unrepresentable_input(name):
    """0xff bytes (NaN fields, out-of-range indices) are a FormatError in every codec;
    a vector whose norm or scale the codec cannot store is InvalidArgument; zeros work."""
    codec = turbokv.Codec(name, 16)
    enc = codec.encode(np.zeros((2, 16), dtype=np.float32))
    assert np.array_equal(enc.decode(), np.zeros((2, 16), dtype=np.float32))
    bad = turbokv.Encoded(codec, np.full((2, codec.vector_bytes), 0xFF, dtype=np.uint8))
    with pytest.raises(turbokv.FormatError, match="vector 0"):
        bad.decode()
    with pytest.raises(turbokv.FormatError):
        bad.scores(np.ones(16, dtype=np.float32))
    with pytest.raises(turbokv.FormatError):
        bad.weighted_sum(np.ones(2, dtype=np.float32))
    with pytest.raises(turbokv.FormatError):
        turbokv.attention(np.ones(16, dtype=np.float32), bad, bad)
    huge = np.full((1, 16), 3e38, dtype=np.float32)
    if name in ("fp32", "bf16"):
        assert np.all(np.isfinite(codec.encode(huge).decode()))
    else:
        with pytest.raises(turbokv.InvalidArgument, match="vector 0"):
            codec.encode(huge)
