"""Fixtures the whole suite shares: the reference activations, one torch thread, and the labelled split
caches that fit, predict and compare tests read (built once per session)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .helpers import CKPT, FIXTURE, REPO, learnable_pfs, run_cli

LABELLED_SPLITS = {"train": (0, 200), "val": (200, 250), "test": (250, 300)}


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


@pytest.fixture(scope="session")
def labelled_caches(tmp_path_factory) -> dict[str, Path]:
    """A pretrained-encoder cache and a random-init one of the same 300 learnable spectra: train 200 (two
    noise draws), val 50, test 50; enc_last and the input_flux / input_error baselines x global_mean and
    seg_mean_K4. Tests read them and never write into them."""
    root = tmp_path_factory.mktemp("labelled")
    data = learnable_pfs(root / "d.h5", n=300)
    splits = [a for name, (lo, hi) in LABELLED_SPLITS.items() for a in ("--data", f"{name}={data}:{lo}:{hi}")]
    common = ["--pool", "global_mean,seg_mean_K4", "--mask", "none", "--noise-level", "0.1",
              "--noise-draws", "train=2", "-q"]
    run_cli("extract", "--ckpt", CKPT, *splits, "--layer", "enc_last", "--layer", "input_flux", "--layer",
            "input_error", *common, "--out", root / "pre.zarr")
    run_cli("extract", "--random-init", "--ckpt", CKPT, *splits, "--layer", "enc_last", *common,
            "--out", root / "rand.zarr")
    return {"pretrained": root / "pre.zarr", "random": root / "rand.zarr"}


@dataclass
class QuickDemo:
    """The quick demo's outputs in a folder laid out as a clone's root after `make demo`."""

    root: Path
    output: str  # what the first run printed

    @property
    def out(self) -> Path:
        return self.root / "reports" / "demo-quick"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> QuickDemo:
    """`featcache demo --size quick`, run once per session from a folder laid out as a clone's root:
    reports/demo-quick/, data/synth/, and featcache/data/ (a link to the package's embedded files, so examples
    naming featcache/data/encoders/... run). The demo test and the docs' examples read it."""
    root = tmp_path_factory.mktemp("clone")
    (root / "featcache").mkdir()
    (root / "featcache" / "data").symlink_to(REPO / "featcache" / "data", target_is_directory=True)
    with contextlib.chdir(root):
        result = run_cli("demo", "--size", "quick", "-q")
    return QuickDemo(root, result.output)
