"""Every runnable code block of the README and the docs site runs as written, on the quick demo's outputs
(tests/docs/examples.py: which blocks, how they are run); the skipped ones are listed with their reasons in
the summary (-ra). Then the demo's cache and cells are as they were, and the demo re-run fits nothing and
prints the same table: the examples never write into the demo's folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import REPO, run_cli
from .examples import find_blocks, shell_commands

BLOCKS = find_blocks()
_STATE: dict[str, object] = {}


def _demo_state(out: Path) -> dict[str, str]:
    """A digest of every file of the demo's cache and cell store (what an example must never change)."""
    digests = {}
    for sub in ("cache.zarr", "cells"):
        for path in sorted((out / sub).rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def workdirs(quick_demo, tmp_path_factory):
    """One working folder per document, laid out as a clone's root: the demo's folders and the embedded
    files linked in, everything else the document's own."""
    _STATE.setdefault("before", _demo_state(quick_demo.out))
    made: dict[Path, Path] = {}

    def workdir(document: Path) -> Path:
        if document not in made:
            root = tmp_path_factory.mktemp("docs-" + document.stem.lower())
            (root / "reports").mkdir()
            (root / "reports" / "demo-quick").symlink_to(quick_demo.out, target_is_directory=True)
            (root / "data").mkdir()
            (root / "data" / "synth").symlink_to(quick_demo.root / "data" / "synth", target_is_directory=True)
            (root / "featcache").mkdir()
            (root / "featcache" / "data").symlink_to(REPO / "featcache" / "data", target_is_directory=True)
            made[document] = root
        return made[document]

    return workdir


def _run_bash(code: str, cwd: Path, where: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg"}
    for line, words in shell_commands(code):
        if words[0] == "featcache":  # in-process: the same command, without a new interpreter's start-up
            with contextlib.chdir(cwd):
                result = run_cli(*words[1:], check=False)
            assert result.exit_code == 0, f"{where}: {line}\nexited {result.exit_code}:\n{result.output}"
        else:
            done = subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{where}: {line}\nexited {done.returncode}:\n{done.stdout}{done.stderr}"


def _run_python(code: str, cwd: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    with contextlib.chdir(cwd):
        exec(compile(code, where, "exec"), {"__name__": "__docs__"})  # noqa: S102 - the docs' own example


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_example_runs(block, workdirs):
    if block.skip is not None:
        pytest.skip(f"docs example {block.where} not run: {block.skip}")
    cwd = workdirs(block.path)
    code = block.for_quick_demo()
    if block.lang == "python":
        _run_python(code, cwd, block.where)
    else:
        _run_bash(code, cwd, block.where)


def test_every_document_has_runnable_examples():
    """The docs test tests something: the README and the guides have examples that run, and every skip says
    why."""
    runnable = [b for b in BLOCKS if b.skip is None]
    assert any(b.path.name == "README.md" and b.path.parent == REPO for b in runnable)
    for page in ("getting-started.md", "heads.md", "python-api.md", "your-data.md"):
        assert any(b.path.name == page for b in runnable), page
    assert all(b.skip.strip() for b in BLOCKS if b.skip is not None)


def test_demo_untouched_by_the_examples(quick_demo, workdirs):
    """After every example ran: the demo's cache and cells are byte for byte as they were, and the demo run
    again fits nothing and prints the same table (what a fresh `make demo` after the README's tour does)."""
    before = _STATE.get("before") or _demo_state(quick_demo.out)
    assert _demo_state(quick_demo.out) == before
    with contextlib.chdir(quick_demo.root):
        again = run_cli("demo", "--size", "quick", "-q")
    assert "0 cells fitted, 20 reused" in again.output

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    assert table(again.output) == table(quick_demo.output)
