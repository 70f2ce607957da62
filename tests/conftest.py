"""Shared test helpers: the fixture's location and ways to run the CLI (in-process and as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# the reference checkpoint written by the original research code, copied into the repository so that a
# fresh clone tests itself (tests/fixtures/blindspot-l5e8k5/README.md says what each file is)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "blindspot-l5e8k5"
CKPT = FIXTURE / "l5e8k5s1bn1d1.ckpt"
DATASET = FIXTURE / "dataset.h5"
MASK = FIXTURE / "mask.npy"


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz") as ref:
        return {k: ref[k] for k in ref.files}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared, oversubscribed CPU two spinning threads run several times
    slower (the results do not depend on it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args: str, check: bool = True):
    """Run `featcache ARGS` in-process; returns click's Result."""
    from featcache_cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if check and result.exit_code != 0:
        raise AssertionError(f"featcache {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}")
    return result


def assert_cli_error(result, *fragments: str) -> None:
    """In-process twin of assert_user_error: exit 2, one 'Error:' line last, naming the problem."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def run_process(*args: str, timeout: float = 300, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Run `python -m featcache ARGS` in a subprocess, as a user's shell would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=REPO)


def assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Non-zero exit, one 'Error:' line (the last on stderr) naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def write_pfs(path, n=6, p=64, *, params=True, noisy=False, params_key="dataset/params", fmt="table",
              flux_shape=None, seed=0):
    """A small pfsspec-layout file for tests."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["spectrumdataset/wave"] = np.linspace(7100, 8850, p)
        f["dataset/arrays/flux/value"] = rng.uniform(0.3, 0.7, flux_shape or (n, p)).astype(np.float32)
        f["dataset/arrays/error/value"] = rng.uniform(0.1, 0.3, (n, p)).astype(np.float32)
        if noisy:
            f["dataset/arrays/noisy/value"] = rng.uniform(0.3, 0.7, (n, p)).astype(np.float32)
    if params:
        frame = pd.DataFrame({"T_eff": rng.uniform(3750, 6000, n), "log_g": rng.uniform(1, 5, n),
                              "name": [f"s{i}" for i in range(n)]})
        frame.to_hdf(path, key=params_key, format=fmt, mode="a")
    return path
