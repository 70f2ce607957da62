"""Shared test helpers: the fixture's location and ways to run the CLI (in-process and as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURE = SHARED / "fixtures" / "blindspot-l5e8k5"
CKPT = FIXTURE / "l5e8k5s1bn1d1.ckpt"
DATASET = FIXTURE / "dataset.h5"
MASK = FIXTURE / "mask.npy"


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz") as ref:
        return {k: ref[k] for k in ref.files}


def run_cli(*args: str, check: bool = True):
    """Run `featcache ARGS` in-process; returns click's Result."""
    from featcache_cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if check and result.exit_code != 0:
        raise AssertionError(f"featcache {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}")
    return result


def run_process(*args: str, timeout: float = 300, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Run `python -m featcache ARGS` in a subprocess, as a user's shell would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=REPO)


def assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
