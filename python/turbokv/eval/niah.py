"""Needle in a haystack: can the model still find a passkey through a compressed cache?

Each trial builds one chat prompt (the model's template) of ``length`` tokens: an
instruction, filler text from Moby Dick with a needle sentence carrying a random 5-6
digit passkey inserted at ``depth`` (0 = start of the filler, 1 = its end, snapped to a
sentence end), then the question.  The assistant turn is primed with ``answer_prefix``
and the model answers greedily; a trial counts when the passkey's digits appear in the
answer.  Passkeys come from an RNG seeded by (seed, length, depth, trial), so every codec
sees the same prompts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from ..model import Model
from ..session import Sampling, Session
from ._progress import bar
from .config import CacheConfig, as_configs
from .data import resolve_text

DEFAULT_FILLER = "moby-dick"
INSTRUCTION = ("There is a passkey hidden inside a long text. Read the text, find the passkey "
               "and remember it.\n\n")
NEEDLE = "The passkey is {key}. Remember it: the passkey is {key}."
QUESTION = "\n\nWhat is the passkey? Answer with the number only."
ANSWER_PREFIX = "The passkey is"


def default_lengths(model: Model) -> list[int]:
    """Powers of two from 1024 up to the model's training context."""
    out, n = [], 1024
    while n <= model.n_ctx_train:
        out.append(n)
        n *= 2
    return out or [model.n_ctx_train]


def passkey(seed: int, length: int, depth: float, trial: int) -> int:
    """The passkey of one trial: 5 or 6 digits from an RNG seeded by the trial's cell."""
    rng = np.random.default_rng([seed, length, int(round(depth * 1000)), trial])
    digits = int(rng.integers(5, 7))
    return int(rng.integers(10 ** (digits - 1), 10 ** digits))


def score_answer(answer: str, key: int) -> bool:
    """Exact match: the passkey's digits appear in the answer (thousands separators and
    spaces between digits are ignored)."""
    squashed = re.sub(r"(?<=\d)[,\s](?=\d)", "", answer)
    return str(key) in squashed


class Prompts:
    """Token pieces of the prompt, tokenized once per model."""

    def __init__(self, model: Model, filler: str, answer_prefix: str) -> None:
        self.model = model
        start = filler.find("CHAPTER 1. Loomings.")
        filler = filler[start:] if start >= 0 else filler
        chat = model.chat_prompt("\x00")
        head, tail = chat.split("\x00")
        self.head = model.tokenize(head + INSTRUCTION, add_bos=True, special=True)
        self.tail = model.tokenize(QUESTION + tail + answer_prefix, add_bos=False, special=True)
        self.filler = model.tokenize(filler[:400_000], add_bos=False)
        ends = [i + 1 for i in range(self.filler.size)
                if model.detokenize([int(self.filler[i])]).rstrip().endswith((b".", b"!", b"?"))]
        self.sentence_ends = np.array([0] + ends, dtype=np.int64)

    def build(self, length: int, depth: float, key: int) -> npt.NDArray[np.int32]:
        needle = self.model.tokenize(" " + NEEDLE.format(key=key) + " ", add_bos=False)
        budget = length - self.head.size - self.tail.size - needle.size
        if budget < 8:
            raise ValueError(f"length {length} leaves no room for filler (prompt overhead "
                             f"{length - budget} tokens)")
        if budget > self.filler.size:
            raise ValueError(f"length {length} needs more filler than the text has")
        target = int(round(depth * budget))
        ends = self.sentence_ends[self.sentence_ends <= budget]
        cut = int(ends[np.argmin(np.abs(ends - target))])
        return np.concatenate([self.head, self.filler[:cut], needle, self.filler[cut:budget],
                               self.tail]).astype(np.int32)


@dataclass
class NiahTrial:
    length: int
    depth: float
    trial: int
    passkey: int
    answer: str
    correct: bool
    prompt_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class NiahResult:
    """Retrieval grid of one codec configuration: grid[i, j] is the fraction of trials
    answered correctly at lengths[i] and depths[j]."""

    config: CacheConfig
    lengths: list[int]
    depths: list[float]
    grid: npt.NDArray[np.float64]
    trials: list[NiahTrial] = field(repr=False)

    @property
    def score(self) -> float:
        """Fraction of all trials answered correctly."""
        return float(np.mean([t.correct for t in self.trials])) if self.trials else 0.0

    @property
    def n_correct(self) -> int:
        return int(sum(t.correct for t in self.trials))

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.name, **self.config.to_dict(), "lengths": self.lengths,
                "depths": self.depths, "grid": self.grid.tolist(), "score": self.score,
                "n_correct": self.n_correct, "n_trials": len(self.trials),
                "trials": [t.to_dict() for t in self.trials]}

    def table(self) -> str:
        """The grid as text (rows: lengths, columns: depths in %)."""
        head = "length  " + " ".join(f"{int(d * 100):>5}%" for d in self.depths)
        rows = [f"{L:>6}  " + " ".join(f"{x:>6.2f}" for x in self.grid[i])
                for i, L in enumerate(self.lengths)]
        return "\n".join([f"{self.config.name}: {self.n_correct}/{len(self.trials)}", head, *rows])


def niah(model: Model, configs: Union[str, CacheConfig, Sequence[Union[str, CacheConfig]]] = "fp32",
         *, lengths: Optional[Sequence[int]] = None,
         depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), trials: int = 1, seed: int = 0,
         filler: Optional[str] = None, answer_prefix: str = ANSWER_PREFIX, max_new_tokens: int = 12,
         n_threads: int = 0, progress: bool = True, client: Any = None,
         results: Union[None, str, Path] = None) -> list[Any]:
    """Run the needle-in-a-haystack grid for each configuration.

    Args:
        lengths: prompt lengths in tokens (default: 1024 .. the training context).
        depths: needle positions as fractions of the filler (0 = start, 1 = end).
        trials: trials per cell, each with a fresh passkey.
        filler: shipped text name or file (default Moby Dick).
        answer_prefix: text the assistant turn starts with ("" = none).
        client: a ``dask.distributed.Client``: every (configuration, length, depth, trial)
            becomes one task on its workers (``turbokv.eval.fanout``; same numbers).
        results: a results store directory: finished trials are recorded there and
            skipped when the grid runs again (with or without ``client``).
    Returns:
        one NiahResult per configuration, in order; with ``client`` or ``results``, a
        configuration whose trials failed is a ``TaskFailure`` (its error) instead.
    """
    cfgs = as_configs(configs)
    if client is not None or results is not None:
        from .fanout import FanOut, plan_niah
        fan = FanOut(model, client=client, results=results, n_threads=n_threads,
                     progress=progress, desc="niah")
        done = plan_niah(fan, cfgs, lengths=lengths, depths=depths, trials=trials, seed=seed,
                         filler=filler, answer_prefix=answer_prefix,
                         max_new_tokens=max_new_tokens)
        fan.run()
        return done()
    lengths, depths = grid_axes(model, lengths, depths)
    _, content = resolve_text(filler, DEFAULT_FILLER)
    prompts = Prompts(model, content, answer_prefix)
    cells = grid_cells(lengths, depths, trials)
    out = []
    for cfg in cfgs:
        done_trials: list[NiahTrial] = []
        for L, d, t in bar(cells, progress=progress, desc=f"niah {cfg.name}", unit="trial"):
            key = passkey(seed, L, d, t)
            toks = prompts.build(L, d, key)
            answer = run_trial(model, cfg, toks, max_new_tokens=max_new_tokens,
                               n_threads=n_threads)
            done_trials.append(NiahTrial(L, d, t, key, answer, score_answer(answer, key),
                                         int(toks.size)))
        out.append(assemble(cfg, lengths, depths, trials, done_trials))
    return out


def grid_axes(model: Model, lengths: Optional[Sequence[int]], depths: Sequence[float]
              ) -> tuple[list[int], list[float]]:
    """The grid's lengths (default: 1024 .. the training context) and depths, checked."""
    lengths = list(lengths) if lengths is not None else default_lengths(model)
    depths = [float(d) for d in depths]
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError("depths are fractions in [0, 1]")
    return lengths, depths


def grid_cells(lengths: Sequence[int], depths: Sequence[float], trials: int
               ) -> list[tuple[int, float, int]]:
    """Every (length, depth, trial) of the grid, in the order the serial run takes them."""
    return [(L, d, t) for L in lengths for d in depths for t in range(trials)]


def run_trial(model: Model, config: CacheConfig, tokens: npt.NDArray[np.int32], *,
              max_new_tokens: int, n_threads: int) -> str:
    """One trial: the prompt into a fresh cache of ``config``, then a greedy answer of at
    most ``max_new_tokens`` (stopping at the end tokens), as text."""
    with config.cache(model, tokens.size + max_new_tokens + 1) as cache, \
            Session(cache, n_threads=n_threads, n_batch=512) as s:
        s.eval(tokens)
        out = s.generate(max_new_tokens, Sampling(temperature=0.0))
    return model.detokenize(out).decode("utf-8", "replace")


def assemble(config: CacheConfig, lengths: Sequence[int], depths: Sequence[float], trials: int,
             done: Sequence[NiahTrial]) -> NiahResult:
    """The NiahResult of one configuration from its trials, given in ``grid_cells`` order
    (the grid sums them in that order, so every way of running them gives the same bits)."""
    grid = np.zeros((len(lengths), len(depths)))
    cells = [(i, j) for i in range(len(lengths)) for j in range(len(depths)) for _ in range(trials)]
    if len(done) != len(cells):
        raise ValueError(f"{len(done)} trials for a grid of {len(cells)}")
    for (i, j), tr in zip(cells, done):
        grid[i, j] += tr.correct / trials
    return NiahResult(config, list(lengths), list(depths), grid, list(done))


def heatmap(results: Sequence[NiahResult], path: Union[str, Path]) -> Optional[Path]:
    """One heatmap panel per configuration (PNG); None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 3.2), squeeze=False)
    im = None
    for i, (ax, r) in enumerate(zip(axes[0], results)):
        im = ax.imshow(r.grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(r.depths)), [f"{int(d * 100)}" for d in r.depths])
        ax.set_yticks(range(len(r.lengths)), [str(L) for L in r.lengths])
        ax.set_xlabel("needle depth (%)")
        if i == 0:
            ax.set_ylabel("context (tokens)")
        ax.set_title(f"{r.config.name}\n{r.n_correct}/{len(r.trials)}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="retrieved")
    p = Path(path)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p
