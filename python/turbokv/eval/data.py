"""Evaluation texts shipped in the package (``turbokv/data``), read with importlib.resources."""
from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Optional, Union

#: name -> file in turbokv/data (licenses: turbokv/data/README.md)
TEXTS = {
    "wikitext-2": "wiki.test.raw",   # WikiText-2 raw test split, CC BY-SA 3.0
    "moby-dick": "moby_dick.txt",    # Melville, public domain
}


def text(name: str = "wikitext-2") -> str:
    """A shipped text by name (``"wikitext-2"``, ``"moby-dick"``) or a path to a UTF-8 file."""
    if name in TEXTS:
        return resources.files("turbokv").joinpath("data", TEXTS[name]).read_text(encoding="utf-8")
    p = Path(name)
    if not p.is_file():
        raise FileNotFoundError(f"text {name!r} is neither a shipped text ({', '.join(TEXTS)}) "
                                "nor an existing file")
    return p.read_text(encoding="utf-8")


def resolve_text(text_or_name: Optional[str], default: str) -> tuple[str, str]:
    """(label, content): None means ``default``; a shipped name or a path is read."""
    if text_or_name is None:
        return default, text(default)
    if text_or_name in TEXTS or Path(text_or_name).is_file():
        return text_or_name, text(text_or_name)
    raise FileNotFoundError(f"text {text_or_name!r} is neither a shipped text "
                            f"({', '.join(TEXTS)}) nor an existing file")


def sha256_text(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


_file_sha: dict[str, str] = {}


def sha256_file(path: Union[str, Path]) -> str:
    """sha256 of a file, memoized per (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if key not in _file_sha:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _file_sha[key] = h.hexdigest()
    return _file_sha[key]
