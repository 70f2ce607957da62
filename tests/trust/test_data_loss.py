"""Data loss and leftovers: an existing result is never lost before its replacement is complete, and a failed
command (a full disk included) leaves nothing that a rerun trips over."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from ..helpers import CKPT, REPO, assert_cli_error, assert_user_error, learnable_pfs, run_cli
from .test_bad_input import inputs, snapshot  # noqa: F401 -- the module fixture of built inputs


def extract(data, out, *extra):
    return ["extract", "--ckpt", CKPT, "--data", f"train={data}:0:450", "--data", f"val={data}:450:525",
            "--data", f"test={data}:525:600", "--layer", "enc_last", "--pool", "global_mean", "--mask", "none",
            "--block-rows", "16", "--batch-size", "16", "--out", out, *extra]


def fingerprint(cache) -> str | None:
    try:
        return json.loads((cache / "zarr.json").read_text())["attributes"]["featcache"]["fingerprint"]
    except (OSError, KeyError, ValueError):
        return None


def any_block_done(store) -> bool:
    return any(store.glob("_done/g*/*/c/*")) or any(store.glob("_done/g*/*/c/[0-9]*"))


def test_a_killed_overwrite_leaves_the_old_cache_complete_and_usable(tmp_path):
    from featcache.cache.reader import open_cache

    data = learnable_pfs(tmp_path / "d.h5", n=600, p=256, seed=1)
    out = tmp_path / "c.zarr"
    run_cli(*extract(data, out, "-q"))
    old = fingerprint(out)
    proc = subprocess.Popen([sys.executable, "-m", "featcache", *map(str, extract(data, out, "--noise-seed", "7",
                                                                                   "--overwrite", "-q"))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # the new cache's first block is on disk: beside the old one (or, before, in its place)
            if any_block_done(tmp_path / "c.zarr.new") or (fingerprint(out) not in (old, None)
                                                           and any_block_done(out)):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert fingerprint(out) == old, "the old cache was replaced by an incomplete one"
    cache = open_cache(out)
    assert cache.is_complete()
    run_cli("fit", "--cache", out, "--feature", "enc_last/global_mean", "--target", "log_g", "--out", tmp_path / "r")
    # the same command again finishes the replacement (resuming its blocks) and only then swaps it in
    run_cli(*extract(data, out, "--noise-seed", "7", "--overwrite", "-q"))
    assert fingerprint(out) not in (old, None) and open_cache(out).is_complete()
    assert not (tmp_path / "c.zarr.new").exists()


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_synth_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "s.h5"
    # a disk without room for the file: refused by size before HDF5 writes a byte
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    result = run_cli("synth", out, "--n", "100", "--seed", "1", check=False)
    assert_cli_error(result, "s.h5: needs about", "1 MB free")
    monkeypatch.undo()
    # a write that fails half way (the disk filled meanwhile): one line, no partial file, no crash at exit
    code = ("import errno, sys, h5py\n"
            "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "h5py.Dataset.__setitem__ = full\n"
            f"sys.argv = ['featcache', 'synth', {str(out)!r}, '--n', '100', '--seed', '1']\n"
            "from featcache_cli.main import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_user_error(proc, "s.h5: cannot write the HDF5 file (No space left on device)", "nothing was written")
    assert proc.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a partial or temporary file was left"


def test_a_real_full_disk_during_synth_does_not_crash(tiny_disk):
    """HDF5 after a failed write can crash the interpreter at exit (a segmentation fault): the command ends with
    its one line first. The size check is bypassed so that the write itself meets the full disk."""
    code = ("import sys, featcache.synth.generate as g\n"
            "g.check_free_space = lambda *a, **k: None\n"
            f"sys.argv = ['featcache', 'synth', {str(tiny_disk / 's.h5')!r}, '--n', '200', '--seed', '1']\n"
            "from featcache_cli.main import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert_user_error(proc, "s.h5: cannot write the HDF5 file (No space left on device)")
    assert list(tiny_disk.iterdir()) == []


def test_a_full_disk_fit_keeps_the_earlier_run_and_leaves_nothing(tmp_path, inputs, monkeypatch):  # noqa: F811
    import shutil

    import featcache.heads.runs as runs

    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run)
    before = snapshot(run)
    fit = ["fit", "--cache", inputs["cache"], "--feature", "enc_last/global_mean", "--target", "T_eff", "-q"]
    monkeypatch.setattr(runs.torch, "save", no_space)
    result = run_cli(*fit, "--out", run, "--overwrite", check=False)
    assert_cli_error(result, f"{run / 'head.pt'}: No space left on device", "free some space")
    assert snapshot(run) == before, "the earlier run was changed by a fit that could not be written"
    result = run_cli(*fit, "--out", tmp_path / "new", check=False)
    assert_cli_error(result, "No space left on device")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    run_cli(*fit, "--out", tmp_path / "new")  # the rerun is not refused by leftovers
    run_cli(*fit, "--out", run, "--overwrite")
    assert "T_eff" in (run / "metrics.json").read_text()


def test_a_full_disk_compare_and_extract_leave_nothing_a_rerun_trips_over(tmp_path, inputs, monkeypatch):  # noqa: F811
    import featcache.cache.writer as writer

    out = tmp_path / "cmp"
    compare = ["compare", "--cache", inputs["cache"], "--target", "log_g", "--head", "ridge", "--no-plots", "-q",
               "--out", out]
    monkeypatch.setattr(np, "savez", no_space)
    result = run_cli(*compare, check=False)
    assert_cli_error(result, "No space left on device")
    assert not out.exists(), "a compare that stored no fit left its folder"
    monkeypatch.undo()
    run_cli(*compare)
    # extract: the disk fills while the cache's first arrays are written; the rerun, with other options,
    # is not refused by a half-made cache of the first
    cache = tmp_path / "c.zarr"
    args = ["extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--layer", "enc_last", "--pool",
            "global_mean", "--mask", "none", "-q", "--out", cache]
    monkeypatch.setattr(writer, "_create_base", no_space)
    result = run_cli(*args, "--noise-draws", "3", check=False)
    assert_cli_error(result, "No space left on device")
    monkeypatch.undo()
    run_cli(*args)
    from featcache.cache.reader import open_cache

    assert open_cache(cache).is_complete() and open_cache(cache).n_rows("train") == 24
