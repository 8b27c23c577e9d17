#!/usr/bin/env python3
"""Seed corpora for the libFuzzer targets in tests/fuzz (written, never committed).

    python3 tests/fuzz/make_corpus.py OUT_DIR

makes OUT_DIR/{gguf,model,tokenizer,codec}/ with:
  gguf, model  tiny random-weight llama/qwen2/qwen3/phi3/gemma3 GGUF files (tests/python/tiny_models.py), one
               per tokenizer kind (byte-level BPE with each pre-tokenizer, SentencePiece) and
               weight type, each well under the fuzz_model size limit;
  tokenizer    a selector byte (see fuzz_tokenizer.c) + texts with specials, digits, spaces,
               accents, CJK, emoji and invalid UTF-8;
  codec        header bytes (see fuzz_codec.c) + real encodes of Gaussian vectors for every
               codec at a few head_dims, made through the library when TURBOKV_LIBRARY or the
               installed package is importable, else random bytes;
  cache_file   a mode byte (see fuzz_cache_file.c) + saved sessions of a tiny model with
               several codecs and levers, of a tiny Gemma 3 whose sliding layers' rings
               have wrapped, and a version 1 file (through the library; without it, one
               header).
Needs numpy and gguf (the test venv has both).
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
# the package from the source tree (real codec encodes need TURBOKV_LIBRARY or an install)
sys.path.append(str(Path(__file__).resolve().parents[2] / "python"))
import tiny_models as tm  # noqa: E402


def _spm_vocab() -> tuple[list[str], list[float], list[int]]:
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(toks)
    types = [2, 3, 3] + [6] * 256
    for i, p in enumerate(["\u2581", "a", "e", "h", "t", "th", "he", "the", "\u2581t", "\u2581the"]):
        toks.append(p)
        scores.append(-float(i))
        types.append(1)
    return toks, scores, types


def models(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    small = dict(n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=32, n_ctx=64)
    for arch, wt, pre in [("llama", T.F32, "gpt2"), ("qwen2", T.F16, "qwen2"),
                          ("llama", T.Q8_0, "llama3"), ("llama", T.Q4_0, "smollm")]:
        p = out / f"{arch}-{wt.name}-{pre}.gguf"
        # tiny_models writes pre "gpt2"; swap the name on the way out
        orig = gguf.GGUFWriter.add_tokenizer_pre
        gguf.GGUFWriter.add_tokenizer_pre = lambda self, _v, pre=pre: orig(self, pre)
        try:
            tm.write_tiny_model(p, tm.TinyConfig(arch=arch, weight_type=wt, **small))
        finally:
            gguf.GGUFWriter.add_tokenizer_pre = orig
    # every architecture feature the loader reads: RoPE variants, fused tensors, windows
    for name, extra in [("qwen3", dict(arch="qwen3", key_length=32)),
                        ("phi3", dict(arch="phi3", fused=True, n_rot=8, long_short_factors=True,
                                      rope_orig_ctx=32, rope_attn_factor=1.2)),
                        ("gemma3", dict(arch="gemma3", n_layer=2, sliding_window=4,
                                        swa_pattern=2, final_softcap=30.0)),
                        ("llama3", dict(arch="llama", rope_freqs=True, sliding_window=8)),
                        ("qwen2-yarn", dict(arch="qwen2", rope_scaling="yarn", rope_factor=4.0,
                                            rope_orig_ctx=32))]:
        cfg = {**small, "n_layer": extra.pop("n_layer", 1)}
        tm.write_tiny_model(out / f"{name}.gguf", tm.TinyConfig(**cfg, **extra))
    # SentencePiece: a llama model with an SPM vocabulary, written directly
    toks, scores, types = _spm_vocab()
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(out / "llama-spm.gguf"), "llama")
    E, F = 32, 32
    w.add_context_length(64); w.add_embedding_length(E); w.add_block_count(1)
    w.add_feed_forward_length(F); w.add_head_count(2); w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5); w.add_tokenizer_model("llama")
    w.add_token_list(toks); w.add_token_scores(scores); w.add_token_types(types)
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    V = len(toks)
    def r(*s): return (0.1 * rng.standard_normal(s)).astype(np.float32)
    w.add_tensor("token_embd.weight", r(V, E))
    w.add_tensor("output_norm.weight", np.ones(E, np.float32))
    for n, s in [("attn_norm", (E,)), ("ffn_norm", (E,)), ("attn_q", (E, E)), ("attn_k", (16, E)),
                 ("attn_v", (16, E)), ("attn_output", (E, E)), ("ffn_gate", (F, E)),
                 ("ffn_up", (F, E)), ("ffn_down", (E, F))]:
        w.add_tensor(f"blk.0.{n}.weight", r(*s))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def tokenizer(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    texts = [b"Hello world", b"the then 1234567 x", b"<|bos|>hi<|im_start|>user<tool>\n",
             b"  spaces\t\ttabs\r\n\n", "caf\u00e9 \u4f60\u597d \U0001F600".encode(),
             b"\xff\xfe\xc3(\xe4\xbd", b"I'm you'll they've 42nd", b"<unk><s></s><0x41>"]
    k = 0
    for sel in range(32):
        for t in texts[sel % 2::2] if sel > 8 else texts:
            (out / f"t{k:03d}").write_bytes(bytes([sel]) + t)
            k += 1


def codec(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    try:
        from turbokv import codec as tc
        names = {c.id: c.name for c in tc.codecs()}
    except Exception:  # noqa: BLE001 - no library: random seeds only
        tc, names = None, {}
    k = 0
    for cid in range(17):
        for d in (2, 6, 64, 80, 128):
            hd = d // 2 - 1
            head = bytes([cid, hd & 0xFF, hd >> 8, 3, k & 0xFF])
            body = None
            if cid in names:
                try:
                    c = tc.Codec(names[cid], head_dim=d, seed=k & 0xFF)
                    body = c.encode(rng.standard_normal((4, d)).astype(np.float32)).codes.tobytes()
                except Exception:  # noqa: BLE001 - e.g. a head_dim the codec refuses
                    body = None
            if body is None:
                body = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            (out / f"c{k:03d}").write_bytes(head + body)
            k += 1


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build-fuzz/corpus")
    models(out / "model")
    gdir = out / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    for p in (out / "model").iterdir():
        (gdir / p.name).write_bytes(p.read_bytes())
    tokenizer(out / "tokenizer")
    codec(out / "codec")
    cache_file(out / "cache_file")


def cache_file(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    try:
        import turbokv
    except Exception:  # noqa: BLE001 - no library: one header-only seed
        (out / "header").write_bytes(b"\x01TKVCACHE" + struct.pack("<II", 1, 64) + bytes(48))
        return
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        tm.write_tiny_model(path, tm.TinyConfig(seed=1))
        configs = [dict(), dict(k="fp16", v="q8_0", fp16_window=4, sink_tokens=2),
                   dict(k="turbo_kv_3b_tcq", v="turbo_kv_4b_qjl", calibration_block=64),
                   dict(k="turbo_kv_5b_fast", v="bf16", center_keys=False, smooth_keys=False,
                        sink_tokens=0, calibration_block=None)]
        with turbokv.Model(path) as m:
            for i, cfg in enumerate(configs):
                for n in (0, 3, 70):
                    with turbokv.KVCache(m, n_ctx=96, **cfg) as c:
                        s = turbokv.Session(c, n_threads=1)
                        if n:
                            s.eval([(7 * t + 1) % m.n_vocab for t in range(n)])
                        s.save(Path(tmp) / "s.tkv")
                        data = (Path(tmp) / "s.tkv").read_bytes()
                    for mode in (0, 1):
                        (out / f"c{i}_n{n}_m{mode}").write_bytes(bytes([mode]) + data)
            # 300 positions without rings, as a version 1 file: read with a window on the odd
            # layers (mode bit 1) it fills rings of 4 - 1 + 256 rows past their wrap
            with turbokv.KVCache(m, n_ctx=320, k="turbo_kv_2b", v="q4_0") as c:
                turbokv.Session(c, n_threads=1).eval([(3 * t + 2) % m.n_vocab for t in range(300)])
                c.save(Path(tmp) / "v2.tkv")
            v1 = _as_version1((Path(tmp) / "v2.tkv").read_bytes(), n_layer=2)
            for mode in (1, 3):  # checksums fixed up by the target (bit 0)
                (out / f"v1_m{mode}").write_bytes(bytes([mode]) + v1)
        # a tiny Gemma 3 (window 4 on layer 0, global layer 1): the ring of layer 0 wrapped
        path = Path(tmp) / "gemma3.gguf"
        tm.write_tiny_model(path, tm.TinyConfig(arch="gemma3", n_layer=2, sliding_window=4,
                                                swa_pattern=2, seed=1))
        with turbokv.Model(path) as m:
            for i, cfg in enumerate([dict(k="turbo_kv_2b", v="q4_0", fp16_window=4),
                                     dict(k="fp16", v="turbo_kv_3b", sink_tokens=0)]):
                with turbokv.KVCache(m, n_ctx=320, **cfg) as c:
                    s = turbokv.Session(c, n_threads=1)
                    s.eval([(5 * t + 1) % m.n_vocab for t in range(290)])
                    c.truncate(285)
                    s.save(Path(tmp) / "g.tkv")
                data = (Path(tmp) / "g.tkv").read_bytes()
                for mode in (0, 1):
                    (out / f"ring{i}_m{mode}").write_bytes(bytes([mode]) + data)


def _as_version1(data: bytes, n_layer: int) -> bytes:
    """The version 1 form of a version 2 file of a cache without rings (docs/PERSISTENCE.md):
    CONF without each layer's window and ring, LAYR without n_lost; sizes and checksums
    left for the fuzz target to fix up."""
    head, payload, out, off = bytearray(data[:64]), data[64:], bytearray(), 0
    head[8:12] = struct.pack("<I", 1)
    while off < len(payload):
        tag, _, size = struct.unpack_from("<4sIQ", payload, off)
        body = payload[off + 16:off + 16 + size]
        off += 16 + (size + 7) // 8 * 8
        if tag == b"CONF":
            body = body[:36] + b"".join(body[36 + 16 * l:44 + 16 * l] for l in range(n_layer))
        elif tag == b"LAYR":
            body = body[:20] + body[24:]
        out += struct.pack("<4sIQ", tag, 0, len(body)) + body + bytes(-len(body) % 8)
    return bytes(head) + bytes(out)


if __name__ == "__main__":
    main()
