"""What the tests share: the reference fixture's files, small pfsspec files, ways to run the CLI (in-process,
and as a user's shell would) with checks of the one-line error contract, and a format-1 cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# the reference checkpoint written by the original research code, copied into the repository so that a
# fresh clone tests itself (tests/fixtures/blindspot-l5e8k5/README.md says what each file is)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "blindspot-l5e8k5"
CKPT = FIXTURE / "l5e8k5s1bn1d1.ckpt"
DATASET = FIXTURE / "dataset.h5"
MASK = FIXTURE / "mask.npy"


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


def learnable_pfs(path, n: int, p: int = 512, seed: int = 0):
    """write_pfs, then flux that depends on log_g and T_eff, so R2 is well above 0 and intervals are honest."""
    write_pfs(path, n=n, p=p, seed=seed)
    params = pd.read_hdf(path, "dataset/params")
    rng = np.random.default_rng(seed + 1)
    g = ((params["log_g"].to_numpy() - 3.0) / 2.0)[:, None]
    t = ((params["T_eff"].to_numpy() - 4875.0) / 1125.0)[:, None]
    x = np.linspace(0.0, 1.0, p)[None, :]
    flux = 0.5 + 0.08 * g * (1 + np.sin(9 * x)) + 0.05 * t * np.cos(5 * x) + 0.01 * rng.standard_normal((n, p))
    with h5py.File(path, "a") as f:
        f["dataset/arrays/flux/value"][...] = flux.astype(np.float32)
    params["snr"] = rng.uniform(2.0, 10.0, n)  # a per-spectrum S/N column, as synth and pfsspec files have
    params.to_hdf(path, key="dataset/params", format="table", mode="a")
    return path


def data_args(splits: list[str]) -> list[str]:
    """["train=a.h5", ...] -> ["--data", "train=a.h5", ...]."""
    return [arg for split in splits for arg in ("--data", split)]


def write_format_1(cache) -> None:
    """Rewrite a cache's metadata as format 1 stored it (featcache 0.1 before the xarray layout): features named
    their dimensions `row, feature`, maps `row, channel, position`, no other array named any, and no group had
    a `coordinates` attribute. The chunks are untouched: formats 1 and 2 store the same arrays."""
    import json

    import zarr

    from featcache.cache.layout import quiet_zarr_warnings

    cache = Path(cache)
    for meta_file in cache.rglob("zarr.json"):
        node = json.loads(meta_file.read_text())
        node.pop("consolidated_metadata", None)
        parts = meta_file.parent.relative_to(cache).parts
        if node["node_type"] == "group":
            node["attributes"].pop("coordinates", None)
        elif len(parts) == 4 and parts[1] == "features":
            node["dimension_names"] = ["row", "feature"]
        elif len(parts) == 3 and parts[1] == "maps":
            node["dimension_names"] = ["row", "channel", "position"]
        else:
            node.pop("dimension_names", None)
        if not parts:
            node["attributes"]["featcache"]["format"] = 1
        meta_file.write_text(json.dumps(node, indent=2))
    with quiet_zarr_warnings():
        zarr.consolidate_metadata(str(cache))
