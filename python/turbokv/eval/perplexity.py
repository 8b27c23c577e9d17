"""Perplexity and KL divergence against an fp32-KV baseline, over chunks of a text.

llama-perplexity's convention: the text is tokenized once and cut into consecutive chunks
of ``n_ctx`` tokens; when the model's ``tokenizer.ggml.add_bos_token`` asks for BOS, the
text starts with BOS and every chunk's first token is replaced by BOS, otherwise the chunks
are left as they are (``bos="model"``, the default; ``bos="always"`` replaces the first
token with BOS even when the model does not ask for one, which was turbokv's rule up to
0.5).  In each chunk the second half is scored given the first half (logits at positions
n_ctx/2 .. n_ctx-2 predict the next token), so every scored token sees at least n_ctx/2
tokens of context.  Every codec runs on the same
chunks, and the fp32-KV run of the same chunks is the baseline for the deltas and the KL
divergence.  The whole chunk goes into the cache before attention (prefill attends over
the compressed cache exactly as decoding does), so batching changes nothing.

The baseline keeps, per scored token, its NLL, its top-1 token and the ``top_k`` largest
log-probabilities with their ids (not the 49152-wide distribution).  KL(P_fp32 || Q_codec)
is computed on those ``top_k`` tokens plus one bucket for the rest of the vocabulary: exact
when ``top_k`` covers the vocabulary (``top_k=0``), otherwise a lower bound.  Measured on
SmolLM2-135M / WikiText-2 (one chunk of 256, turbo_kv_4b and turbo_kv_3b): the mean tail
mass is 8.8% at top_k 256 (KL reads ~9% low), 3.0% at 1024 (~3% low), 0.6% at 4096 (<0.7%
low), hence the default 4096: 32 KB per scored token (20 chunks of 512: 160 MB).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from ..config import UNSET, as_config
from ..model import Model
from ..session import Session
from ._progress import bar
from .config import FP32, CacheConfig
from .data import resolve_text, sha256_file, sha256_text

DEFAULT_TEXT = "wikitext-2"


#: how a chunk starts: "model" follows the GGUF's add_bos_token as llama-perplexity does;
#: "always" puts BOS first in every chunk whatever the model says (turbokv <= 0.5)
BOS_RULES = ("model", "always")


def model_adds_bos(model: Model) -> bool:
    """True when the model's tokenizer prepends BOS (``tokenizer.ggml.add_bos_token``, or
    the tokenizer's default when the file does not say)."""
    return model.bos >= 0 and model.tokenize("", add_bos=True).size == 1


def chunk_tokens(model: Model, text: str, n_ctx: int, chunks: Optional[int] = None, *,
                 bos: str = "model") -> npt.NDArray[np.int32]:
    """(n_chunks, n_ctx) token ids: the text tokenized once and cut into consecutive chunks.

    bos: "model" (llama-perplexity's rule): when the model adds BOS, the text starts with
        BOS and every chunk's first token is replaced by BOS; when it does not, nothing is
        added or replaced.  "always": every chunk's first token is replaced by BOS even
        when the model does not add one (turbokv's rule up to 0.5)."""
    if n_ctx < 4 or n_ctx % 2:
        raise ValueError(f"n_ctx must be an even number >= 4, got {n_ctx}")
    if bos not in BOS_RULES:
        raise ValueError(f"bos must be one of {', '.join(BOS_RULES)}, got {bos!r}")
    # add_bos=True prepends BOS only when the model asks for it, as llama.cpp's tokenizer
    toks = model.tokenize(text, add_bos=True)
    n = toks.size // n_ctx
    if chunks is not None:
        if chunks < 1:
            raise ValueError("chunks must be >= 1")
        n = min(n, int(chunks))
    if n == 0:
        raise ValueError(f"the text has {toks.size} tokens, fewer than one chunk of {n_ctx}")
    out = toks[: n * n_ctx].reshape(n, n_ctx).copy()
    if model.bos >= 0 and (bos == "always" or model_adds_bos(model)):
        out[:, 0] = model.bos
    return out


def log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise log-softmax, float32 (the row max is subtracted first)."""
    x = logits - logits.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)


def scored_logits(session: Session, chunk: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
    """Evaluate one chunk on a fresh session; return the logits (n_ctx/2 - 1, n_vocab) of
    positions n_ctx/2 .. n_ctx-2 (each predicts the next token of the chunk).

    The first half is evaluated without logits; the scored part with every token's
    logits, in pieces of at most the session's n_batch tokens."""
    n_ctx = chunk.size
    first = n_ctx // 2
    session.eval(chunk[:first])
    rows = []
    scored = chunk[first: n_ctx - 1]
    for i in range(0, scored.size, session.n_batch):
        session.eval(scored[i: i + session.n_batch], all_logits=True)
        rows.append(session.all_logits())
    return np.concatenate(rows, axis=0)


def _model_key(model: Model) -> dict[str, Any]:
    return {"model": model.path.name, "model_sha256": sha256_file(model.path)}


@dataclass
class Baseline:
    """What the fp32-KV run leaves for comparisons: per scored token (N of them) its
    target id, NLL, top-1 id and top-k log-probabilities (descending) with their ids."""

    key: dict[str, Any]
    targets: npt.NDArray[np.int32]        # (N,)
    nll: npt.NDArray[np.float64]          # (N,)
    top1: npt.NDArray[np.int32]           # (N,)
    topk_ids: npt.NDArray[np.int32]       # (N, top_k)
    topk_logp: npt.NDArray[np.float32]    # (N, top_k)

    @property
    def n_tokens(self) -> int:
        return int(self.targets.size)

    def chunk(self, c: int, per: int) -> "Baseline":
        """The rows of chunk ``c`` (``per`` scored tokens per chunk), as views."""
        sl = slice(c * per, (c + 1) * per)
        return Baseline(self.key, self.targets[sl], self.nll[sl], self.top1[sl],
                        self.topk_ids[sl], self.topk_logp[sl])

    @classmethod
    def concat(cls, parts: Sequence["Baseline"], key: Optional[Mapping[str, Any]] = None
               ) -> "Baseline":
        """The baseline of consecutive chunks, in order."""
        return cls(dict(key or {}), np.concatenate([p.targets for p in parts]),
                   np.concatenate([p.nll for p in parts]), np.concatenate([p.top1 for p in parts]),
                   np.concatenate([p.topk_ids for p in parts]),
                   np.concatenate([p.topk_logp for p in parts]))

    def save(self, path: Union[str, Path]) -> None:
        """Write an .npz file (its key is stored as JSON and checked by ``load``)."""
        np.savez_compressed(Path(path), key=np.array(json.dumps(self.key, sort_keys=True)),
                            targets=self.targets, nll=self.nll, top1=self.top1,
                            topk_ids=self.topk_ids, topk_logp=self.topk_logp)

    @classmethod
    def load(cls, path: Union[str, Path], key: Optional[Mapping[str, Any]] = None
             ) -> Optional["Baseline"]:
        """The baseline of an .npz file; None when the file is missing or was made for a
        different key (model file, text, n_ctx, chunks, top_k)."""
        p = Path(path)
        if not p.is_file():
            return None
        with np.load(p) as z:
            stored = json.loads(str(z["key"]))
            if key is not None and stored != json.loads(json.dumps(dict(key), sort_keys=True)):
                return None
            return cls(stored, z["targets"], z["nll"], z["top1"], z["topk_ids"], z["topk_logp"])


@dataclass
class ChunkScores:
    """Per-token results of one codec over the scored tokens."""

    nll: npt.NDArray[np.float64]
    kld: npt.NDArray[np.float64]
    top1_match: npt.NDArray[np.bool_]

    @classmethod
    def concat(cls, parts: Sequence["ChunkScores"]) -> "ChunkScores":
        """The scores of consecutive chunks, in order."""
        return cls(np.concatenate([p.nll for p in parts]), np.concatenate([p.kld for p in parts]),
                   np.concatenate([p.top1_match for p in parts]))


def _score(logp: npt.NDArray[np.float32], targets: npt.NDArray[np.int32],
           base: Optional[Baseline]) -> ChunkScores:
    rows = np.arange(logp.shape[0])
    nll = -logp[rows, targets].astype(np.float64)
    if base is None:
        return ChunkScores(nll, np.zeros_like(nll), np.ones(nll.size, dtype=bool))
    ids = base.topk_ids
    p_logp = base.topk_logp.astype(np.float64)
    q_logp = np.take_along_axis(logp, ids, axis=1).astype(np.float64)
    p = np.exp(p_logp)
    kld = np.sum(p * (p_logp - q_logp), axis=1)
    if ids.shape[1] < logp.shape[1]:
        p_tail = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
        q_tail = np.clip(1.0 - np.exp(q_logp).sum(axis=1), 1e-30, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tail = np.where(p_tail > 1e-12, p_tail * (np.log(np.maximum(p_tail, 1e-300))
                                                      - np.log(q_tail)), 0.0)
        kld = kld + tail
    top1 = np.argmax(logp, axis=1) == base.top1
    return ChunkScores(nll, np.maximum(kld, 0.0), top1)


def chunk_logp(model: Model, config: CacheConfig, chunk: npt.NDArray[np.int32], *,
               n_threads: int) -> npt.NDArray[np.float32]:
    """Log-probabilities (n_ctx/2 - 1, n_vocab) of one chunk's scored positions, evaluated
    on a fresh cache of ``config``."""
    n_ctx = chunk.size
    with config.cache(model, n_ctx) as cache, \
            Session(cache, n_threads=n_threads, n_batch=min(n_ctx, 512)) as s:
        return log_softmax(scored_logits(s, chunk))


def baseline_chunk(model: Model, chunk: npt.NDArray[np.int32], *, top_k: int,
                   n_threads: int) -> Baseline:
    """The fp32-KV baseline of one chunk (its key empty): one task of the perplexity
    fan-out, shared by every configuration evaluated on that chunk."""
    n_ctx = chunk.size
    logp = chunk_logp(model, FP32, chunk, n_threads=n_threads)
    targets = chunk[n_ctx // 2 + 1:]
    nll = _score(logp, targets, None).nll
    k = min(top_k, logp.shape[1]) if top_k > 0 else logp.shape[1]
    ids = np.argpartition(-logp, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logp, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1).astype(np.int32)
    return Baseline({}, targets.astype(np.int32), nll, ids[:, 0].copy(), ids,
                    np.take_along_axis(vals, order, axis=1).astype(np.float32))


def score_chunk(model: Model, config: CacheConfig, chunk: npt.NDArray[np.int32],
                base: Baseline, *, n_threads: int) -> ChunkScores:
    """NLL, KL divergence and top-1 agreement of one configuration on one chunk, against
    that chunk's baseline: one task of the perplexity fan-out."""
    logp = chunk_logp(model, config, chunk, n_threads=n_threads)
    return _score(logp, chunk[chunk.size // 2 + 1:], base)


def _run(model: Model, config: CacheConfig, chunks: npt.NDArray[np.int32], *, n_threads: int,
         base: Optional[Baseline], top_k: int, progress: bool, desc: str
         ) -> tuple[Optional[ChunkScores], Optional[Baseline]]:
    """Evaluate every chunk with one configuration; score it against ``base`` or, when
    ``base`` is None, build the fp32 Baseline (``config`` is then FP32)."""
    n_chunks, n_ctx = chunks.shape
    per = n_ctx // 2 - 1
    scores: list[ChunkScores] = []
    parts: list[Baseline] = []
    for c in bar(range(n_chunks), progress=progress, desc=desc, unit="chunk"):
        if base is None:
            parts.append(baseline_chunk(model, chunks[c], top_k=top_k, n_threads=n_threads))
        else:
            scores.append(score_chunk(model, config, chunks[c], base.chunk(c, per),
                                      n_threads=n_threads))
    if base is None:
        return None, Baseline.concat(parts)
    return ChunkScores.concat(scores), None


@dataclass
class PerplexityResult:
    """One codec configuration over the chunks of a text, compared with fp32 KV."""

    config: CacheConfig
    text: str
    n_ctx: int
    n_chunks: int
    n_tokens: int                 # scored tokens
    ppl: float
    ppl_se: float                 # standard error of the PPL (delta method on the mean NLL)
    ppl_base: float               # fp32-KV PPL on the same chunks
    delta_ppl: float              # ppl - ppl_base
    delta_ppl_se: float           # standard error of the paired difference
    delta_ppl_pct: float          # 100 * (ppl / ppl_base - 1)
    kld_mean: float               # mean KL(P_fp32 || P_codec) per scored token, nats
    kld_p99: float                # its 99th percentile
    top1: float                   # fraction of tokens whose argmax matches fp32's
    bits_per_element: float
    bytes_per_token: int
    per_token_nll: Optional[npt.NDArray[np.float64]] = field(default=None, repr=False)
    per_token_kld: Optional[npt.NDArray[np.float64]] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "text", "n_ctx", "n_chunks", "n_tokens", "ppl", "ppl_se", "ppl_base", "delta_ppl",
            "delta_ppl_se", "delta_ppl_pct", "kld_mean", "kld_p99", "top1", "bits_per_element",
            "bytes_per_token")}
        return {"config": self.config.name, **self.config.to_dict(), **d}


def summarize(config: CacheConfig, model: Model, text_label: str, n_ctx: int, n_chunks: int,
              sc: ChunkScores, base_nll: npt.NDArray[np.float64]) -> PerplexityResult:
    """The PerplexityResult of one configuration from its per-token scores (every chunk,
    in order) and the fp32 baseline's NLL on the same tokens."""
    n = sc.nll.size
    mean = float(np.mean(sc.nll))
    ppl = math.exp(mean)
    se = ppl * float(np.std(sc.nll, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    ppl_base = math.exp(float(np.mean(base_nll)))
    diff = sc.nll - base_nll
    dse = ppl * float(np.std(diff, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return PerplexityResult(
        config=config, text=text_label, n_ctx=n_ctx, n_chunks=n_chunks, n_tokens=n, ppl=ppl,
        ppl_se=se, ppl_base=ppl_base, delta_ppl=ppl - ppl_base, delta_ppl_se=dse,
        delta_ppl_pct=100.0 * (ppl / ppl_base - 1.0), kld_mean=float(np.mean(sc.kld)),
        kld_p99=float(np.percentile(sc.kld, 99)), top1=float(np.mean(sc.top1_match)),
        bits_per_element=config.bits_per_element(model),
        bytes_per_token=config.bytes_per_token(model), per_token_nll=sc.nll,
        per_token_kld=sc.kld)


class PerplexityRunner:
    """Chunks of one text and one fp32 baseline, shared by every configuration evaluated.

    >>> r = PerplexityRunner(model, n_ctx=512, chunks=20)
    >>> r.run("turbo_kv_4b").delta_ppl_pct

    ``client`` (a ``dask.distributed.Client``) and ``results`` (a results store directory)
    apply to ``run_many``: see there.
    """

    def __init__(self, model: Model, *, text: Optional[str] = None, n_ctx: int = 512,
                 chunks: Optional[int] = None, bos: str = "model", n_threads: int = 0,
                 top_k: int = 4096, baseline_file: Union[str, Path, None] = None,
                 progress: bool = True, client: Any = None,
                 results: Union[None, str, Path] = None) -> None:
        self.model = model
        self.client = client
        self.results = results
        self.text_label, content = resolve_text(text, DEFAULT_TEXT)
        self.n_ctx = int(n_ctx)
        self.bos = bos
        self.chunks = chunk_tokens(model, content, self.n_ctx, chunks, bos=bos)
        self.n_threads = n_threads
        self.top_k = int(top_k)
        self.progress = progress
        self.baseline_file = Path(baseline_file) if baseline_file else None
        self.key = {**_model_key(model), "text_sha256": sha256_text(content),
                    "n_ctx": self.n_ctx, "chunks": int(self.chunks.shape[0]), "top_k": self.top_k,
                    "bos": bos}
        self._baseline: Optional[Baseline] = None

    @property
    def baseline(self) -> Baseline:
        """The fp32-KV baseline (computed on first use, or loaded from ``baseline_file``
        when it matches; saved there after computing)."""
        if self._baseline is None:
            if self.baseline_file is not None:
                self._baseline = Baseline.load(self.baseline_file, self.key)
            if self._baseline is None:
                _, built = _run(self.model, FP32, self.chunks, n_threads=self.n_threads, base=None,
                                top_k=self.top_k, progress=self.progress, desc="ppl fp32 baseline")
                assert built is not None
                built.key = dict(self.key)
                self._baseline = built
                if self.baseline_file is not None:
                    self._baseline.save(self.baseline_file)
        return self._baseline

    def run(self, config: Union[str, CacheConfig]) -> PerplexityResult:
        """PPL, deltas, KLD and top-1 of one configuration on the shared chunks."""
        cfg = CacheConfig.parse(config)
        base = self.baseline
        if cfg == FP32:
            sc = ChunkScores(base.nll.copy(), np.zeros(base.n_tokens), np.ones(base.n_tokens, bool))
        else:
            sc, _ = _run(self.model, cfg, self.chunks, n_threads=self.n_threads, base=base,
                         top_k=self.top_k, progress=self.progress, desc=f"ppl {cfg.name}")
        return summarize(cfg, self.model, self.text_label, self.n_ctx, int(self.chunks.shape[0]),
                         sc, base.nll)

    def run_many(self, configs: Sequence[Union[str, CacheConfig]]) -> list[Any]:
        """``run`` of each configuration, in order.  With the runner's ``client`` or
        ``results``, every (configuration, chunk) is one task (``turbokv.eval.fanout``),
        after the fp32 baseline task of its chunk; a configuration with a failed task is
        a ``TaskFailure`` (its error) in the list instead of a PerplexityResult."""
        cfgs = [CacheConfig.parse(c) for c in configs]
        if self.client is None and self.results is None:
            return [self.run(c) for c in cfgs]
        from .fanout import FanOut, plan_perplexity
        fan = FanOut(self.model, client=self.client, results=self.results,
                     n_threads=self.n_threads, progress=self.progress, desc="ppl")
        done = plan_perplexity(fan, self, cfgs)
        fan.run()
        return done()


def perplexity(model: Model, k: Union[str, CacheConfig] = "fp32", v: Optional[str] = None, *,
               text: Optional[str] = None, n_ctx: int = 512, chunks: Optional[int] = None,
               bos: str = "model", center_keys: Optional[bool] = None,
               smooth_keys: Union[None, bool, float] = None,
               sink_tokens: Optional[int] = None, calibration_block: Optional[int] = UNSET,
               fp16_window: Optional[int] = None,
               layer_codecs: Optional[Mapping[int, tuple[str, str]]] = None,
               seed: Optional[int] = None,
               n_threads: int = 0, top_k: int = 4096, baseline: Optional[Baseline] = None,
               baseline_file: Union[str, Path, None] = None, progress: bool = True,
               client: Any = None, results: Union[None, str, Path] = None
               ) -> PerplexityResult:
    """Perplexity of ``model`` over ``text`` with a compressed KV cache, against fp32 KV.

    Args:
        k, v: codecs of keys and values (``v`` defaults to ``k``); or ``k`` a spec string
            or a CacheConfig (then without the keywords below).
        text: a shipped text name (``"wikitext-2"``, the default) or a file path.
        n_ctx: chunk length in tokens; the second half of each chunk is scored.
        chunks: evaluate at most this many chunks (default: the whole text).
        bos: how a chunk starts: "model" (the model's add_bos_token, as llama-perplexity)
            or "always" (BOS first in every chunk; see ``chunk_tokens``).
        center_keys, smooth_keys, sink_tokens, calibration_block, fp16_window,
            layer_codecs, seed: the cache's settings (CacheConfig; unset levers follow its
            one rule).
        top_k: log-probabilities of the baseline kept per token (0 = the whole vocabulary).
        baseline: a Baseline from an earlier run on the same chunks (skips the fp32 run).
        baseline_file: .npz file to load the baseline from / save it to.
        client: a ``dask.distributed.Client``: each chunk (and its fp32 baseline) is a task
            on its workers, with the same numbers (``turbokv.eval.fanout``).
        results: a results store directory: finished chunks are recorded there and
            skipped when run again.  With ``client`` or ``results`` a failed task raises
            ``EvalTaskError``.
    Returns:
        a PerplexityResult (PPL with standard error, delta vs fp32 KV absolute and in %,
        mean / p99 KL divergence in nats, top-1 agreement).
    """
    settings = dict(center_keys=center_keys, smooth_keys=smooth_keys, sink_tokens=sink_tokens,
                    calibration_block=calibration_block, fp16_window=fp16_window,
                    layer_codecs=layer_codecs, seed=seed)
    spec = isinstance(k, CacheConfig) or "+" in k or "/" in k
    cfg = as_config(k, **settings) if spec and v is None else as_config(None, k=k, v=v, **settings)
    runner = PerplexityRunner(model, text=text, n_ctx=n_ctx, chunks=chunks, bos=bos,
                              n_threads=n_threads, top_k=top_k, baseline_file=baseline_file,
                              progress=progress, client=client, results=results)
    if baseline is not None:
        if baseline.n_tokens != runner.chunks.shape[0] * (n_ctx // 2 - 1):
            raise ValueError(f"baseline has {baseline.n_tokens} tokens; these chunks score "
                             f"{runner.chunks.shape[0] * (n_ctx // 2 - 1)}")
        runner._baseline = baseline
    if client is None and results is None:
        return runner.run(cfg)
    (res,) = runner.run_many([cfg])
    if not isinstance(res, PerplexityResult):
        from .fanout import EvalTaskError
        raise EvalTaskError(res)
    return res
