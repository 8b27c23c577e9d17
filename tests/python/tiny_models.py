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
    arch: str = "llama"          # "llama", "qwen2", "qwen3", "phi3" or "gemma3"
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
    # architecture features (metadata written only when set)
    key_length: int = 0          # head size when it is not n_embd / n_head (Qwen3, Gemma 3)
    n_rot: int = 0               # rope.dimension_count when only part of the head rotates
    rope_freqs: bool = False     # Llama 3.1+ rope_freqs.weight (random factors >= 1)
    rope_scaling: str = ""       # rope.scaling.type: "linear" or "yarn"
    rope_factor: float = 1.0     # rope.scaling.factor
    rope_orig_ctx: int = 0       # rope.scaling.original_context_length
    rope_attn_factor: float = 0.0  # rope.scaling.attn_factor
    long_short_factors: bool = False  # Phi-3 rope_factors_long / rope_factors_short
    sliding_window: int = 0      # attention.sliding_window
    swa_pattern: int = 0         # Gemma 3 attention.sliding_window_pattern (period)
    rope_theta_swa: float = 0.0  # Gemma 3 rope.freq_base_swa
    final_softcap: float = 0.0   # final_logit_softcapping
    tokenizer_pre: str = "gpt2"  # tokenizer.ggml.pre (llama.cpp does not know "gpt2": "smollm")
    fused: bool = False          # one attn_qkv tensor (Phi-3; llama may); phi3 always fuses gate|up

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head


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
    w.add_tokenizer_pre(cfg.tokenizer_pre)
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(n_vocab - 2)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(True)
    if cfg.key_length:
        w.add_key_length(cfg.key_length)
        w.add_value_length(cfg.key_length)
    if cfg.n_rot:
        w.add_rope_dimension_count(cfg.n_rot)
    if cfg.rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(cfg.rope_scaling))
        w.add_rope_scaling_factor(cfg.rope_factor)
    if cfg.rope_orig_ctx:
        w.add_rope_scaling_orig_ctx_len(cfg.rope_orig_ctx)
    if cfg.rope_attn_factor:
        w.add_rope_scaling_attn_factors(cfg.rope_attn_factor)
    if cfg.sliding_window:
        w.add_sliding_window(cfg.sliding_window)
    if cfg.swa_pattern:
        w.add_sliding_window_pattern(cfg.swa_pattern)
    if cfg.rope_theta_swa:
        w.add_rope_freq_base_swa(cfg.rope_theta_swa)
    if cfg.final_softcap:
        w.add_final_logit_softcapping(cfg.final_softcap)
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
    half_rot = (cfg.n_rot or D) // 2
    if cfg.rope_freqs:  # Llama 3 style: 1 on the high frequencies, up to 8 on the low
        add("rope_freqs.weight", (1.0 + 7.0 * np.linspace(0, 1, half_rot) ** 2 *
                                  rng.uniform(0.5, 1.0, half_rot)).astype(np.float32), T.F32)
    if cfg.long_short_factors:
        add("rope_factors_long.weight", rng.uniform(1.0, 6.0, half_rot).astype(np.float32), T.F32)
        add("rope_factors_short.weight", rng.uniform(0.8, 1.5, half_rot).astype(np.float32),
            T.F32)

    def norm(n: int) -> np.ndarray:
        return 1.0 + 0.1 * rng.standard_normal(n).astype(np.float32)

    for l in range(cfg.n_layer):
        p = f"blk.{l}."
        add(p + "attn_norm.weight", norm(E), T.F32)
        add(p + "ffn_norm.weight", norm(E), T.F32)
        if cfg.fused:
            wq, wk, wv = linear(QD, E), linear(KD, E), linear(KD, E)
            add(p + "attn_qkv.weight", np.concatenate([wq, wk, wv]), cfg.weight_type)
            qkv = ref.pop(p + "attn_qkv.weight")
            ref[p + "attn_q.weight"], ref[p + "attn_k.weight"], ref[p + "attn_v.weight"] = \
                qkv[:QD], qkv[QD:QD + KD], qkv[QD + KD:]
        else:  # (one add per draw: the random stream of the llama/qwen2 tests stays as it was)
            add(p + "attn_q.weight", linear(QD, E), cfg.weight_type)
            add(p + "attn_k.weight", linear(KD, E), cfg.weight_type)
            add(p + "attn_v.weight", linear(KD, E), cfg.weight_type)
        add(p + "attn_output.weight", linear(E, QD), cfg.weight_type)
        if cfg.arch == "qwen2":
            add(p + "attn_q.bias", 0.1 * rng.standard_normal(QD).astype(np.float32), T.F32)
            add(p + "attn_k.bias", 0.1 * rng.standard_normal(KD).astype(np.float32), T.F32)
            add(p + "attn_v.bias", 0.1 * rng.standard_normal(KD).astype(np.float32), T.F32)
        if cfg.arch in ("qwen3", "gemma3"):
            add(p + "attn_q_norm.weight", norm(D), T.F32)
            add(p + "attn_k_norm.weight", norm(D), T.F32)
        if cfg.arch == "gemma3":
            add(p + "post_attention_norm.weight", norm(E), T.F32)
            add(p + "post_ffw_norm.weight", norm(E), T.F32)
        if cfg.arch == "phi3":
            wg, wu = linear(F, E), linear(F, E)
            add(p + "ffn_up.weight", np.concatenate([wg, wu]), cfg.weight_type)
            gu = ref.pop(p + "ffn_up.weight")
            ref[p + "ffn_gate.weight"], ref[p + "ffn_up.weight"] = gu[:F], gu[F:]
        else:
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


def rope_frequencies(theta: float, n_rot: int, factors=None, freq_scale: float = 1.0,
                     yarn: bool = False, n_ctx_orig: int = 0, beta_fast: float = 32.0,
                     beta_slow: float = 1.0) -> np.ndarray:
    """Angle per position of each of the n_rot/2 pairs: theta^(-2i/n_rot) / factor_i,
    scaled by freq_scale (linear), or under YaRN mixed between scaled and unscaled by a
    ramp that is 1 (unscaled) below the dimension turning beta_fast times over the original
    context and 0 above the one turning beta_slow times (Peng et al. 2023, as ggml)."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    extrap = theta ** (-2.0 * i / n_rot) / (1.0 if factors is None else np.asarray(factors))
    interp = freq_scale * extrap
    if not yarn:
        return interp

    def corr_dim(rotations: float) -> float:
        return n_rot * np.log(n_ctx_orig / (rotations * 2 * np.pi)) / (2 * np.log(theta))
    lo = max(0.0, np.floor(corr_dim(beta_fast)))
    hi = min(n_rot - 1.0, np.ceil(corr_dim(beta_slow)))
    ramp = 1.0 - np.clip((i - lo) / max(0.001, hi - lo), 0.0, 1.0)
    return interp * (1 - ramp) + extrap * ramp


def _rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray, neox: bool,
          mscale: float = 1.0) -> np.ndarray:
    """x: (n, heads, d).  Rotates the first 2 * len(inv) dimensions: pairs (2i, 2i+1), or
    (i, i + n_rot/2) in NeoX order; cos and sin are multiplied by mscale."""
    r = 2 * len(inv)
    ang = pos[:, None, None] * inv[None, None, :]
    c, s = np.cos(ang) * mscale, np.sin(ang) * mscale
    out = x.copy()
    if neox:
        a, b = x[..., : r // 2], x[..., r // 2: r]
        out[..., : r // 2] = a * c - b * s
        out[..., r // 2: r] = a * s + b * c
    else:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2] = a * c - b * s
        out[..., 1:r:2] = a * s + b * c
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


def reference_hparams(cfg: TinyConfig, W: dict[str, np.ndarray], n_ctx: int = 64) -> dict:
    """The reference's description of a TinyConfig model whose weights write_tiny_model
    returned as W (see reference_forward), for a session of n_ctx positions (Phi-3's
    long/short RoPE factors depend on it: long when n_ctx exceeds the original context)."""
    gemma = cfg.arch == "gemma3"
    D = cfg.head_dim
    n_rot = cfg.n_rot or D
    factor = cfg.rope_factor if cfg.rope_scaling in ("linear", "yarn") else 1.0
    yarn = cfg.rope_scaling == "yarn"
    orig = cfg.rope_orig_ctx or cfg.n_ctx
    factors = None
    if cfg.rope_freqs:
        factors = W["rope_freqs.weight"]
    elif cfg.long_short_factors:
        factors = W["rope_factors_long.weight" if n_ctx > orig else "rope_factors_short.weight"]
    attn_factor = cfg.rope_attn_factor or 1.0
    # YaRN scales cos and sin by 1 + 0.1 ln(factor) (Peng et al. 2023, "mscale")
    mscale = attn_factor * ((1 + 0.1 * np.log(factor)) if yarn and factor > 1 else 1.0)
    rope = dict(inv=rope_frequencies(cfg.rope_theta, n_rot, factors, 1.0 / factor, yarn, orig),
                mscale=mscale)
    if gemma:  # local layers: their own base, unscaled
        rope_swa = dict(inv=rope_frequencies(cfg.rope_theta_swa or 10000.0, n_rot, factors),
                        mscale=attn_factor)
    else:
        rope_swa = rope
    if cfg.sliding_window and gemma:
        period = cfg.swa_pattern or 6
        sliding = [l % period < period - 1 for l in range(cfg.n_layer)]
    elif cfg.sliding_window and cfg.arch in ("llama", "phi3"):
        sliding = [True] * cfg.n_layer
    else:
        sliding = [False] * cfg.n_layer
    return dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv, head_dim=D,
                rope_theta=cfg.rope_theta, rms_eps=cfg.rms_eps, neox=cfg.arch != "llama",
                rope=rope, rope_swa=rope_swa, sliding=sliding, n_swa=cfg.sliding_window,
                attn_scale=1.0 / np.sqrt(D), embd_scale=np.sqrt(cfg.n_embd) if gemma else 1.0,
                gelu=gemma, final_softcap=cfg.final_softcap)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def reference_forward(W: dict[str, np.ndarray], hp: dict, tokens: np.ndarray,
                      act_quant: bool = False) -> np.ndarray:
    """Logits (n, n_vocab) of every token, float64, causal attention over all of them.

    hp: n_layer, n_head, n_head_kv, head_dim, rope_theta, rms_eps, neox (llama/qwen2 files);
    reference_hparams() adds the architecture features: rope / rope_swa (inv, mscale),
    sliding (per layer), n_swa, attn_scale, embd_scale, gelu, final_softcap.  Per-head
    q/k norms and the post-attention / post-FFN norms apply when W holds them.
    act_quant: feed every matmul Q8-quantized activations, as integer-dot kernels do.
    """
    aq = quantize_activations_q8 if act_quant else (lambda a: a)
    n = len(tokens)
    H, HK, D = hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    eps = hp["rms_eps"]
    pos = np.arange(n, dtype=np.float64)
    plain_rope = dict(inv=rope_frequencies(hp["rope_theta"], D), mscale=1.0)
    x = W["token_embd.weight"][tokens] * hp.get("embd_scale", 1.0)
    causal = np.triu(np.full((n, n), -np.inf), 1)
    n_swa = hp.get("n_swa", 0)
    window = causal + (np.tril(np.full((n, n), -np.inf), -n_swa) if n_swa else 0)
    for l in range(hp["n_layer"]):
        p = f"blk.{l}."
        sliding = hp.get("sliding", [False] * hp["n_layer"])[l]
        rope = hp.get("rope_swa" if sliding else "rope", plain_rope)
        h = aq(_rms(x, W[p + "attn_norm.weight"], eps))
        q = (h @ W[p + "attn_q.weight"].T + W.get(p + "attn_q.bias", 0)).reshape(n, H, D)
        k = (h @ W[p + "attn_k.weight"].T + W.get(p + "attn_k.bias", 0)).reshape(n, HK, D)
        v = (h @ W[p + "attn_v.weight"].T + W.get(p + "attn_v.bias", 0)).reshape(n, HK, D)
        if p + "attn_q_norm.weight" in W:
            q = _rms(q, W[p + "attn_q_norm.weight"], eps)
            k = _rms(k, W[p + "attn_k_norm.weight"], eps)
        q = _rope(q, pos, rope["inv"], hp["neox"], rope["mscale"])
        k = _rope(k, pos, rope["inv"], hp["neox"], rope["mscale"])
        mask = window if sliding else causal
        out = np.empty((n, H, D))
        for hh in range(H):
            g = hh // (H // HK)
            s = q[:, hh] @ k[:, g].T * hp.get("attn_scale", 1 / np.sqrt(D)) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hh] = s @ v[:, g]
        a = aq(out.reshape(n, H * D)) @ W[p + "attn_output.weight"].T
        if p + "post_attention_norm.weight" in W:
            a = _rms(a, W[p + "post_attention_norm.weight"], eps)
        x = x + a
        h = aq(_rms(x, W[p + "ffn_norm.weight"], eps))
        gate = h @ W[p + "ffn_gate.weight"].T
        up = h @ W[p + "ffn_up.weight"].T
        act = _gelu_tanh(gate) if hp.get("gelu") else gate / (1 + np.exp(-gate))
        f = aq(act * up) @ W[p + "ffn_down.weight"].T
        if p + "post_ffw_norm.weight" in W:
            f = _rms(f, W[p + "post_ffw_norm.weight"], eps)
        x = x + f
    x = aq(_rms(x, W["output_norm.weight"], eps))
    out_w = W.get("output.weight", W["token_embd.weight"])
    logits = x @ out_w.T
    cap = hp.get("final_softcap", 0.0)
    return cap * np.tanh(logits / cap) if cap else logits


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(logits)), in float64."""
    def logp(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lr, lg = logp(ref_logits.astype(np.float64)), logp(logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(lr) * (lr - lg), axis=1)))
