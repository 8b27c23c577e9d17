"""Tiny random-weight GGUF models written with the ``gguf`` package, and a NumPy
reference forward pass that the C forward pass is checked against.

The reference dequantizes weights with ``gguf.quants`` (an implementation independent
of ours) and computes in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

# Byte-level BPE: GPT-2's byte -> unicode map (a published constant of the format)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@dataclass
class TinyConfig:
    arch: str = "llama"          # "llama" or "qwen2"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    n_ctx: int = 256
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    weight_type: T = T.F32       # type of the linear weights
    tied: bool = True
    seed: int = 0
    # for tests of malformed files: more metadata as (key, value, gguf.GGUFValueType),
    # more tensors as (name, float32 array), and a tensor whose first element is NaN
    extra_kv: tuple = ()
    extra_tensors: tuple = ()
    nan_tensor: str = ""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _vocab() -> tuple[list[str], list[str], list[int]]:
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = []
    for a, b in [("t", "h"), ("th", "e"), ("Ġ", "t"), ("Ġt", "he"), ("a", "n"), ("i", "n")]:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    tokens += ["<|bos|>", "<|eos|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return tokens, merges, types


def _quantize(w: np.ndarray, t: T, rng: np.random.Generator) -> np.ndarray:
    """Raw GGUF bytes (or floats) of w in type t; K-quants get random valid blocks."""
    if t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        rows, cols = w.shape
        nb = cols // 256
        size = {T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}[t]
        raw = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
        d = np.float16(0.0005).view(np.uint16)
        if t in (T.Q6_K, T.Q3_K):  # fp16 d last
            raw[:, :, size - 2] = d & 0xFF
            raw[:, :, size - 1] = d >> 8
        elif t == T.Q2_K:  # fp16 d, dmin last; 2-bit codes need a larger step
            d2, dmin = np.float16(0.004).view(np.uint16), np.float16(0.002).view(np.uint16)
            raw[:, :, 80], raw[:, :, 81] = d2 & 0xFF, d2 >> 8
            raw[:, :, 82], raw[:, :, 83] = dmin & 0xFF, dmin >> 8
        else:
            dmin = np.float16(0.0002).view(np.uint16)
            raw[:, :, 0], raw[:, :, 1] = d & 0xFF, d >> 8
            raw[:, :, 2], raw[:, :, 3] = dmin & 0xFF, dmin >> 8
        return raw.reshape(rows, nb * size)
    return gguf.quants.quantize(w.astype(np.float32), t)


def write_tiny_model(path: Path, cfg: TinyConfig) -> dict[str, np.ndarray]:
    """Write a GGUF file; return the dequantized float64 weights the reference uses."""
    rng = np.random.default_rng(cfg.seed)
    tokens, merges, types = _vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), cfg.arch)
    w.add_name(f"tiny-{cfg.arch}-{cfg.weight_type.name}")
    w.add_context_length(cfg.n_ctx)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(n_vocab - 2)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(True)
    for key, value, vtype in cfg.extra_kv:
        w.add_key_value(key, value, vtype)

    E, F, D = cfg.n_embd, cfg.n_ff, cfg.head_dim
    QD, KD = cfg.n_head * D, cfg.n_head_kv * D
    ref: dict[str, np.ndarray] = {}

    def add(name: str, arr: np.ndarray, t: T) -> None:
        if name == cfg.nan_tensor:
            arr = arr.copy()
            arr.flat[0] = np.nan
        if t in (T.F32, T.F16):
            data = arr.astype(np.float32 if t == T.F32 else np.float16)
            w.add_tensor(name, data)
            ref[name] = data.astype(np.float64)
            return
        raw = _quantize(arr, t, rng)
        w.add_tensor(name, raw, raw_dtype=t)
        ref[name] = gguf.quants.dequantize(raw, t).reshape(arr.shape).astype(np.float64)

    def linear(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    add("token_embd.weight", rng.standard_normal((n_vocab, E)).astype(np.float32) * 0.5,
        cfg.weight_type if cfg.weight_type in (T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1) else T.F32)
    if not cfg.tied:
        add("output.weight", linear(n_vocab, E), cfg.weight_type)
    add("output_norm.weight", 1.0 + 0.1 * rng.standard_normal(E).astype(np.float32), T.F32)
    for l in range(cfg.n_layer):
        p = f"blk.{l}."
        add(p + "attn_norm.weight", 1.0 + 0.1 * rng.standard_normal(E).astype(np.float32), T.F32)
        add(p + "ffn_norm.weight", 1.0 + 0.1 * rng.standard_normal(E).astype(np.float32), T.F32)
        add(p + "attn_q.weight", linear(QD, E), cfg.weight_type)
        add(p + "attn_k.weight", linear(KD, E), cfg.weight_type)
        add(p + "attn_v.weight", linear(KD, E), cfg.weight_type)
        add(p + "attn_output.weight", linear(E, QD), cfg.weight_type)
        if cfg.arch == "qwen2":
            add(p + "attn_q.bias", 0.1 * rng.standard_normal(QD).astype(np.float32), T.F32)
            add(p + "attn_k.bias", 0.1 * rng.standard_normal(KD).astype(np.float32), T.F32)
            add(p + "attn_v.bias", 0.1 * rng.standard_normal(KD).astype(np.float32), T.F32)
        add(p + "ffn_gate.weight", linear(F, E), cfg.weight_type)
        add(p + "ffn_up.weight", linear(F, E), cfg.weight_type)
        add(p + "ffn_down.weight", linear(E, F), cfg.weight_type)
    for name, arr in cfg.extra_tensors:
        add(name, np.asarray(arr, np.float32), T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, pos: np.ndarray, theta: float, neox: bool) -> np.ndarray:
    """x: (n, heads, d).  Rotates pairs (2i, 2i+1), or (i, i+d/2) in NeoX order."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None, None] * inv[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    out = x.copy()
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        out[..., : d // 2] = a * c - b * s
        out[..., d // 2:] = a * s + b * c
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    return out


def quantize_activations_q8(x: np.ndarray) -> np.ndarray:
    """What an integer-dot matmul sees of its input: blocks of 32 along the last axis
    rounded to int8 with scale max|x| / 127 (the Q8_0 rule)."""
    xb = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    d = amax / np.float32(127.0)
    # codes exactly as the C kernels round them: nearest-even of x * (127 / amax) in float32
    inv = np.float32(127.0) / np.where(amax > 0, amax, np.float32(1.0))
    q = np.rint(xb * inv)
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(np.shape(x))


def reference_forward(W: dict[str, np.ndarray], hp: dict, tokens: np.ndarray,
                      act_quant: bool = False) -> np.ndarray:
    """Logits (n, n_vocab) of every token, float64, causal attention over all of them.

    hp: n_layer, n_head, n_head_kv, head_dim, rope_theta, rms_eps, neox.
    act_quant: feed every matmul Q8-quantized activations, as integer-dot kernels do.
    """
    aq = quantize_activations_q8 if act_quant else (lambda a: a)
    n = len(tokens)
    H, HK, D = hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    pos = np.arange(n, dtype=np.float64)
    x = W["token_embd.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(hp["n_layer"]):
        p = f"blk.{l}."
        h = aq(_rms(x, W[p + "attn_norm.weight"], hp["rms_eps"]))
        q = h @ W[p + "attn_q.weight"].T + W.get(p + "attn_q.bias", 0)
        k = h @ W[p + "attn_k.weight"].T + W.get(p + "attn_k.bias", 0)
        v = h @ W[p + "attn_v.weight"].T + W.get(p + "attn_v.bias", 0)
        q = _rope(q.reshape(n, H, D), pos, hp["rope_theta"], hp["neox"])
        k = _rope(k.reshape(n, HK, D), pos, hp["rope_theta"], hp["neox"])
        v = v.reshape(n, HK, D)
        out = np.empty((n, H, D))
        for hh in range(H):
            g = hh // (H // HK)
            s = q[:, hh] @ k[:, g].T / np.sqrt(D) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hh] = s @ v[:, g]
        x = x + aq(out.reshape(n, H * D)) @ W[p + "attn_output.weight"].T
        h = aq(_rms(x, W[p + "ffn_norm.weight"], hp["rms_eps"]))
        gate = h @ W[p + "ffn_gate.weight"].T
        up = h @ W[p + "ffn_up.weight"].T
        x = x + aq(gate / (1 + np.exp(-gate)) * up) @ W[p + "ffn_down.weight"].T
    x = aq(_rms(x, W["output_norm.weight"], hp["rms_eps"]))
    out_w = W.get("output.weight", W["token_embd.weight"])
    return x @ out_w.T


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(logits)), in float64."""
    def logp(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lr, lg = logp(ref_logits.astype(np.float64)), logp(logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(lr) * (lr - lg), axis=1)))
