"""The results store of fanned-out evaluations: one JSON line per finished task.

A store is a directory (``--results DIR``) holding ``results.jsonl``.  Each line is one
finished task::

    {"id": "<sha256 of the key>", "key": {"model_sha256": ..., "cache": "<spec>",
     "task": {...}, "version": "<library version>"}, "result": {...},
     "seconds": <task wall time>, "worker": "<address or 'local'>", "finished": "<UTC time>"}

The key says everything the result depends on: the model file's sha256, the cache
configuration as its spec string, the task (its kind and every setting of the harness
that changes its numbers: text sha256, chunk, n_ctx, top_k; NIAH length, depth, trial,
seed...) and the library version.  A run looks every task up before submitting it and
skips the ones found, so an interrupted or extended evaluation redoes nothing.  Only
the client writes (workers return results to it), one line at a time, appended and
flushed; a line cut short by an interruption is ignored on reading.  Floats are written
with Python's shortest round-trip repr, so a result read back is the same bits.

Bulky arrays that a task leaves for other tasks (the fp32 baseline's top-k
log-probabilities, 8 MB per chunk of 512) go to ``DIR/arrays/<id>.npz`` beside the line.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

RESULTS_FILE = "results.jsonl"
ARRAYS_DIR = "arrays"


def canonical(obj: Any) -> str:
    """The key's canonical JSON text (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def task_id(key: Mapping[str, Any]) -> str:
    """sha256 of the key's canonical JSON: the line's id and the name of its arrays file."""
    return hashlib.sha256(canonical(key).encode("utf-8")).hexdigest()


class ResultsStore:
    """Finished tasks of a directory, read once on opening and appended to as tasks finish."""

    def __init__(self, directory: Union[str, Path]) -> None:
        self.dir = Path(directory)
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"results store {self.dir} is a file, not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RESULTS_FILE
        self._lines: dict[str, dict[str, Any]] = {}
        self.ignored = 0  # lines that could not be read (cut short by an interruption)
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for text in f:
                    try:
                        line = json.loads(text)
                        self._lines[str(line["id"])] = line
                    except (ValueError, KeyError, TypeError):
                        self.ignored += 1

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, key: Mapping[str, Any]) -> bool:
        return task_id(key) in self._lines

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._lines.values()))

    def get(self, key: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The stored line of ``key`` (with its "result"), or None."""
        return self._lines.get(task_id(key))

    def put(self, key: Mapping[str, Any], result: Mapping[str, Any], *, seconds: float,
            worker: str) -> dict[str, Any]:
        """Append one finished task (a later line of the same key replaces an earlier one)."""
        line = {"id": task_id(key), "key": dict(key), "result": dict(result),
                "seconds": round(float(seconds), 3), "worker": worker,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self._lines[line["id"]] = line
        return line

    def arrays_path(self, key: Mapping[str, Any]) -> Path:
        """Where the arrays a task leaves beside its line are kept."""
        d = self.dir / ARRAYS_DIR
        d.mkdir(exist_ok=True)
        return d / f"{task_id(key)}.npz"
