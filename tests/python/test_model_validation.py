"""Models whose metadata or weights make no sense load with a typed error naming the
problem, never generate garbage; files that are not regular files fail without blocking."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest

import turbokv
from tiny_models import TinyConfig, write_tiny_model

U32 = gguf.GGUFValueType.UINT32


def _load(tmp_path, **cfg):
    path = tmp_path / "m.gguf"
    write_tiny_model(path, TinyConfig(**cfg))
    return turbokv.Model(str(path))


def test_tiny_model_still_loads(tmp_path):
    with _load(tmp_path) as m:
        assert m.n_layer == 2


@pytest.mark.parametrize("eps", [float("nan"), -1e-5, 0.0, float("inf"), 0.5])
def test_rms_eps_out_of_range(tmp_path, eps):
    with pytest.raises(turbokv.FormatError, match="layer_norm_rms_epsilon"):
        _load(tmp_path, rms_eps=eps)


@pytest.mark.parametrize("theta", [float("nan"), -10000.0, 0.0, float("inf")])
def test_rope_base_out_of_range(tmp_path, theta):
    with pytest.raises(turbokv.FormatError, match="rope.freq_base"):
        _load(tmp_path, rope_theta=theta)


@pytest.mark.parametrize("dims", [0, 1, 8, 1000])
def test_rope_dimension_count_not_head_dim(tmp_path, dims):
    # llama rotates whole heads (llama.cpp refuses a partial count for it too); phi3 may
    # rotate part of the head, but never an odd count or more than the head
    with pytest.raises(turbokv.FormatError, match="rope.dimension_count"):
        _load(tmp_path, extra_kv=(("llama.rope.dimension_count", dims, U32),))
    if dims != 8:
        with pytest.raises(turbokv.FormatError, match="rope.dimension_count"):
            _load(tmp_path, arch="phi3", extra_kv=(("phi3.rope.dimension_count", dims, U32),))


def test_rope_dimension_count_equal_head_dim_is_fine(tmp_path):
    with _load(tmp_path, extra_kv=(("llama.rope.dimension_count", 16, U32),)) as m:
        assert m.head_dim == 16


def test_vocab_size_disagrees(tmp_path):
    with pytest.raises(turbokv.FormatError, match="vocab_size"):
        _load(tmp_path, extra_kv=(("llama.vocab_size", 1000, U32),))


@pytest.mark.parametrize("name", ["output_norm.weight", "blk.1.attn_norm.weight",
                                  "blk.0.ffn_norm.weight"])
def test_nan_norm_weights(tmp_path, name):
    with pytest.raises(turbokv.FormatError, match=name.replace(".", r"\.")):
        _load(tmp_path, nan_tensor=name)


def test_rope_freqs_shape_and_values_are_checked(tmp_path):
    with pytest.raises(turbokv.FormatError, match="rope_freqs"):
        _load(tmp_path, extra_tensors=(("rope_freqs.weight", np.ones(5)),))
    with pytest.raises(turbokv.FormatError, match="rope_freqs"):
        _load(tmp_path, extra_tensors=(("rope_freqs.weight", np.zeros(8)),))


@pytest.mark.parametrize("tensor", ["blk.0.attn_output.bias", "blk.1.ffn_gate_inp.weight",
                                    "token_embd_norm.weight", "blk.0.attn_q_norm.weight"])
def test_unimplemented_tensor_is_an_error_naming_it(tmp_path, tensor):
    # (attn_q_norm is Qwen3's and Gemma 3's; a llama file carrying one is not computed)
    with pytest.raises(turbokv.UnsupportedError, match=tensor.replace(".", r"\.")):
        _load(tmp_path, extra_tensors=((tensor, np.ones(16)),))


def test_known_irrelevant_tensor_loads(tmp_path):
    with _load(tmp_path, extra_tensors=(("blk.0.attn_rot_embd", np.ones(8)),)) as m:
        assert m.n_layer == 2


@pytest.mark.parametrize("key,value,vtype", [
    ("llama.attention.clamp_kqv", 8.0, gguf.GGUFValueType.FLOAT32),
    ("llama.logit_scale", 0.5, gguf.GGUFValueType.FLOAT32),
    ("llama.final_logit_softcapping", 30.0, gguf.GGUFValueType.FLOAT32),
    ("llama.rope.freq_base_swa", 10000.0, gguf.GGUFValueType.FLOAT32),
    ("llama.expert_count", 8, U32),
])
def test_unimplemented_metadata_key_is_an_error_naming_it(tmp_path, key, value, vtype):
    with pytest.raises(turbokv.UnsupportedError, match=key.replace(".", r"\.")):
        _load(tmp_path, extra_kv=((key, value, vtype),))


def test_irrelevant_metadata_keys_load(tmp_path):
    kv = (("llama.rope.scaling.finetuned", True, gguf.GGUFValueType.BOOL),
          ("llama.expert_count", 0, U32), ("general.some_note", "x", gguf.GGUFValueType.STRING))
    with _load(tmp_path, extra_kv=kv) as m:
        assert m.n_layer == 2


def test_rope_scaling_type_unknown_is_refused(tmp_path):
    with pytest.raises(turbokv.UnsupportedError, match="rope.scaling.type"):
        _load(tmp_path, extra_kv=(("llama.rope.scaling.type", "su", gguf.GGUFValueType.STRING),))


def test_qwen_sliding_window_shorter_than_context_is_refused(tmp_path):
    with pytest.raises(turbokv.UnsupportedError, match="sliding_window"):
        _load(tmp_path, arch="qwen2", extra_kv=(("qwen2.attention.sliding_window", 64, U32),))
    with _load(tmp_path, arch="qwen2",
               extra_kv=(("qwen2.attention.sliding_window", 4096, U32),)) as m:
        assert m.n_layer == 2


@pytest.mark.parametrize("tensor,what", [("blk.0.attn_v.weight", "non-finite value"),
                                         ("blk.1.ffn_down.weight", "non-finite logit")])
@pytest.mark.parametrize("kv", ["fp32", "q8_0", "turbo_kv_4b"])
def test_nan_weights_give_an_error_not_end_of_text(tmp_path, tensor, what, kv):
    """NaN in a linear weight cannot be found at load without reading every block, so the
    first eval whose keys, values or logits are not finite fails (before any codec sees
    them), and the cache is left as it was."""
    with _load(tmp_path, nan_tensor=tensor) as m, \
            turbokv.KVCache(m, k=kv, v=kv, n_ctx=32) as c, turbokv.Session(c) as s:
        with pytest.raises(turbokv.FormatError, match=what):
            s.eval(m.tokenize("the cat"))
        assert len(c) == 0


def test_overflowing_activations_give_an_error(tmp_path):
    """A finite but huge norm weight (found by fuzz_model: 1.5e27) overflows the keys to
    inf/NaN; they used to reach the q8_0/q4_0 encoders (NaN cast to int: undefined)."""
    path = tmp_path / "m.gguf"
    write_tiny_model(path, TinyConfig())
    import gguf as _g
    r = _g.GGUFReader(str(path), "r+")
    t = next(t for t in r.tensors if t.name == "blk.0.attn_norm.weight")
    t.data[:] = 1.5e27
    del r
    with turbokv.Model(str(path)) as m, turbokv.KVCache(m, k="q4_0", v="q8_0", n_ctx=32) as c, \
            turbokv.Session(c) as s:
        # keys too large for the q4_0 block scale, or non-finite: a typed error either way
        with pytest.raises((turbokv.FormatError, turbokv.InvalidArgument),
                           match="non-finite key|too large for an fp16 block scale"):
            s.eval(m.tokenize("the cat"))
        assert len(c) == 0


def _raw_load(path) -> tuple[int, str]:
    """tkv_model_load itself (turbokv.Model checks the path in Python first)."""
    import ctypes
    from turbokv import _lib as lib
    mp = lib.tkv_model_default_params()
    h = ctypes.c_void_p()
    st = lib.tkv_model_load(str(path).encode(), ctypes.byref(mp), ctypes.byref(h))
    assert not h.value
    return st, lib.tkv_last_error().decode()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_named_pipe_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    # in a subprocess with a timeout: a regression fails the test instead of hanging it
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_model_validation import _raw_load
        print(*_raw_load({str(fifo)!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert out.stdout.startswith(f"{int(turbokv.Status.IO)} ") and "is a pipe" in out.stdout, \
        out.stdout + out.stderr


def test_directory_is_named(tmp_path):
    st, msg = _raw_load(tmp_path)
    assert st == turbokv.Status.IO and "is a directory" in msg


def _raw_tokenize(model, data: bytes):
    """tkv_model_tokenize on raw bytes (Model.tokenize takes str, always valid UTF-8)."""
    import ctypes
    from turbokv import _lib as lib
    out = (ctypes.c_int32 * 64)()
    n = ctypes.c_size_t()
    st = lib.tkv_model_tokenize(model.handle, data, len(data), 0,
                                ctypes.cast(out, ctypes.POINTER(ctypes.c_int32)), 64,
                                ctypes.byref(n))
    return st, list(out[: n.value]), lib.tkv_last_error().decode()


def test_invalid_utf8_kept_byte_by_byte_when_the_vocabulary_has_the_bytes(tmp_path):
    data = b"ab\xff\xfe\xc0\x80"
    with _load(tmp_path) as m:  # the tiny vocabulary has a token for every byte
        st, ids, _ = _raw_tokenize(m, data)
        assert st == turbokv.Status.OK
        assert m.detokenize(ids) == data


@pytest.mark.slow
def test_invalid_utf8_rejected_when_the_vocabulary_lacks_a_byte(real_model):
    st, _, msg = _raw_tokenize(real_model, b"ab\xff\xfe\xc0\x80")
    assert st == turbokv.Status.INVALID_ARGUMENT  # before: OK with 0xFF, 0xFE, 0xC0 dropped
    assert "0xFF at offset 2" in msg
