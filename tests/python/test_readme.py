"""The README stays true: its C example compiles against include/turbokv.h and runs on a
model, and its test command is the one CI runs."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tiny_models import TinyConfig, write_tiny_model
from turbokv import _lib

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def test_readme_c_example_compiles_and_runs(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    (src,) = _blocks("c")
    prog = tmp_path / "example.c"
    prog.write_text(src, encoding="utf-8")
    lib = Path(_lib._dll._name).resolve()
    # an installed wheel holds the library under one name only, without the soname link the
    # program asks the loader for: give it that name next to the program
    libdir = tmp_path / "lib"
    libdir.mkdir()
    soname = "libturbokv.so.0"
    readelf = shutil.which("readelf")
    if readelf:
        m = re.search(r"SONAME\)\s+Library soname: \[([^\]]+)\]",
                      subprocess.run([readelf, "-d", str(lib)], capture_output=True,
                                     text=True).stdout)
        soname = m.group(1) if m else soname
    (libdir / soname).symlink_to(lib)
    (libdir / "libturbokv.so").symlink_to(lib)
    exe = tmp_path / "example"
    build = subprocess.run(
        [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'include'}", str(prog),
         f"-L{libdir}", "-lturbokv", f"-Wl,-rpath,{libdir}", "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    model = tmp_path / "tiny.gguf"
    write_tiny_model(model, TinyConfig(seed=3))
    run = subprocess.run([str(exe), str(model), "hello world"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert re.search(r"\[\d+ KV bytes per token\]", run.stdout), run.stdout
    bad = subprocess.run([str(exe), str(tmp_path / "missing.gguf"), "x"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("TKV_ERR_IO: "), bad.stderr


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (first,) = _blocks("bash")[:1]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("pip install . && turbokv generate ")
    assert commands[1] == 'pip install ".[test]" && python -m pytest -q tests/python'
    assert commands[1] in ci


def test_readme_codec_table_is_what_its_command_gives(tmp_path):
    """The "which codec for which goal" table is generated: running the command its marker
    holds on the committed results rewrites it unchanged, and it marks the library's default."""
    import shlex
    import sys

    from turbokv.config import DEFAULT_CODEC

    sys.path.insert(0, str(ROOT / "tools"))
    import codec_table

    m = codec_table.BEGIN.search(README)
    assert m, "README has no codec-table block"
    argv = shlex.split(m.group("cmd"))
    assert argv[:2] == ["python", "tools/codec_table.py"], argv
    copy = tmp_path / "README.md"
    copy.write_text(README, encoding="utf-8")
    args = [a if not a.startswith(("benchmarks/", "docs/")) else str(ROOT / a) for a in argv[2:]]
    assert codec_table.main(args + ["--write", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == README, "run the marker's command to regenerate"
    block = README[m.end():README.index(codec_table.END, m.end())]
    assert f"| `{DEFAULT_CODEC}` (default) |" in block
