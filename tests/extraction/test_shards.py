"""Sharded extraction (torchrun ranks, --shard I/N job arrays) gives the single-process cache bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from featcache.cache import open_cache
from featcache.extraction.shards import detect_shard

from ..helpers import REPO, write_pfs

ARGS = ["extract", "--random-init", "--arch", "l6e16k9s1bn1d1", "--mask", "quantile:0.85",
        "--pool", "global_mean,seg_mean_K8", "--block-rows", "32", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    data = write_pfs(root / "d.h5", n=400, p=1024, seed=3)
    splits = ["--data", f"train={data}:0:300", "--data", f"val={data}:300:400"]
    single = root / "single.zarr"
    featcache(*ARGS, *splits, "--out", single)
    return root, splits, single


def featcache(*args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], cwd=REPO, check=check,
                          timeout=300, capture_output=True, text=True, env={**os.environ, **(env or {})})


def assert_same(a_path, b_path):
    a, b = open_cache(a_path), open_cache(b_path)
    assert b.is_complete() and a.fingerprint == b.fingerprint
    for split in a.splits:
        for layer in a.layers(split):
            for pool in a.pools(split, layer):
                assert np.array_equal(a.features(split, layer, pool), b.features(split, layer, pool))


def test_torchrun_two_ranks_bitwise_equal(setup):
    root, splits, single = setup
    out = root / "torchrun.zarr"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "featcache", *ARGS, *splits, "--out", out], cwd=REPO, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same(single, out)


def test_shards_with_prepare_and_a_killed_rank(setup):
    root, splits, single = setup
    out = root / "array.zarr"
    featcache(*ARGS, *splits, "--out", out, "--prepare")
    assert not open_cache(out).is_complete()
    markers = out / "_done" / "g0" / "train" / "c"
    proc = subprocess.Popen([sys.executable, "-m", "featcache", *ARGS, *splits, "--out", out, "--shard", "0/2"],
                            cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if markers.exists() and len(os.listdir(markers)) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "shard 0 finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    featcache(*ARGS, *splits, "--out", out, "--shard", "1/2")
    missing = open_cache(out).missing_blocks()
    assert missing and all(b < 7 for b in missing.get("g0/train", []))  # only shard 0's blocks are missing
    inspect = featcache("inspect", out).stdout
    assert "complete         NO" in inspect and "missing g0/train" in inspect
    featcache(*ARGS, *splits, "--out", out, "--shard", "0/2")
    assert_same(single, out)


def test_shard_detection(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    assert detect_shard(None)[0] is None
    assert detect_shard((1, 4)) == ((1, 4), "--shard")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert detect_shard(None)[0] is None  # the batch script itself is not a step
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert detect_shard(None)[0] == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert detect_shard(None) == ((1, 2), "torchrun (RANK/WORLD_SIZE)")
