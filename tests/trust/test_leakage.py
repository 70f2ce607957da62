"""Silent wrong science, third pass: spectra copied from one split into another (judged by content, not by
file), paired statistics over different test spectra, a resumed pretraining run on other data, and flux that
is not a finite real number. Each test failed on the code before these checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from ..helpers import CKPT, assert_cli_error, learnable_pfs, run_cli, write_pfs
from .test_bad_input import refused


def copy_rows(source, path, rows, *, dtype=np.float64, error_scale=1.1):
    """A new file holding copies of `rows` of `source` (flux as float64, errors rescaled: no byte of the file is
    the same as the source's, but its spectra are)."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as dst:
        dst["spectrumdataset/wave"] = src["spectrumdataset/wave"][()]
        dst["dataset/arrays/flux/value"] = src["dataset/arrays/flux/value"][()][rows].astype(dtype)
        dst["dataset/arrays/error/value"] = src["dataset/arrays/error/value"][()][rows] * error_scale
    pd.read_hdf(source, "dataset/params").iloc[rows].reset_index(drop=True).to_hdf(
        path, key="dataset/params", format="table", mode="a")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    source = learnable_pfs(root / "d.h5", n=60, p=256, seed=3)
    leaked = copy_rows(source, root / "test.h5", [5, 3, 7, 1, 0, 2, 9, 11, 4, 6, 8, 10])  # train rows, shuffled
    return {"d": source, "leaked": leaked, "root": root}


def extract_args(d, test, out):
    return ["extract", "--ckpt", CKPT, "--data", f"train={d}:0:36", "--data", f"val={d}:36:48",
            "--data", f"test={test}", "--layer", "enc_last", "--layer", "input_flux", "--pool", "global_mean",
            "--mask", "none", "-q", "--out", out]


def test_copied_rows_are_refused_by_extract_finetune_and_compare(tmp_path, data, monkeypatch):
    fragments = ("'train'", "'test'", "hold the same spectra", "12 of 36 rows")
    refused(tmp_path, *extract_args(data["d"], data["leaked"], tmp_path / "c.zarr"), fragments=fragments)
    refused(tmp_path, "finetune", "--ckpt", CKPT, "--data", f"train={data['d']}:0:36",
            "--data", f"val={data['d']}:36:48", "--data", f"test={data['leaked']}", "--target", "log_g",
            "--mask", "none", "--max-epochs", "1", "--out", tmp_path / "ft", "-q", fragments=fragments)
    # a cache holding the copies (as a featcache without the check wrote it): fit and compare refuse it
    import featcache.extraction.plan as plan

    monkeypatch.setattr(plan, "check_rows_disjoint", lambda *a, **k: None, raising=False)
    cache = tmp_path / "leaky.zarr"
    run_cli(*extract_args(data["d"], data["leaked"], cache))
    monkeypatch.undo()
    result = run_cli("compare", "--cache", cache, "--target", "log_g", "--head", "ridge", "--no-plots",
                     "--out", tmp_path / "cmp", check=False)
    assert_cli_error(result, "leaky.zarr", "'train'", "'test'", "hold the same spectra")
    assert not (tmp_path / "cmp").exists(), "a refused compare left its folder"
    result = run_cli("fit", "--cache", cache, "--feature", "enc_last/global_mean", "--target", "log_g",
                     "--out", tmp_path / "run", check=False)
    assert_cli_error(result, "hold the same spectra")


def test_compare_does_not_pair_different_test_spectra(tmp_path, data):
    """Two caches with as many test rows, but other spectra: no paired interval between them."""
    other = learnable_pfs(tmp_path / "other.h5", n=12, p=256, seed=9)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for cache, test in ((a, f"{data['d']}:48:60"), (b, other)):
        run_cli("extract", "--ckpt", CKPT, "--data", f"train={data['d']}:0:36", "--data", f"val={data['d']}:36:48",
                "--data", f"test={test}", "--layer", "enc_last", "--layer", "input_flux", "--pool", "global_mean",
                "--mask", "none", "-q", "--out", cache)
    out = tmp_path / "cmp"
    result = run_cli("compare", "--cache", f"a={a}", "--cache", f"b={b}", "--target", "log_g", "--head", "ridge",
                     "--no-plots", "--bins", "log_g=1,3,5", "--out", out, "-q")
    summary = json.loads((out / "compare.json").read_text())
    section = summary["populations"]["log_g"]
    members = {c["label"] for axis in section["axes"] for c in axis["curves"]}
    differences = {label for axis in section["axes"] for label in axis["differences"]}
    # the first cache's encoder is paired with the raw input of the same rows only; b is left out, and said so
    assert "b" not in members and "b" not in differences, section
    assert section["unpaired"] == ["b"]
    assert "Not paired: b scored other test spectra" in result.output


def test_pretrain_resume_refuses_other_data(tmp_path):
    out = tmp_path / "p.ckpt"
    n, p = 16, 256
    data, other = tmp_path / "data.h5", tmp_path / "other.h5"
    write_pfs(data, n=n, p=p, seed=12)
    write_pfs(other, n=n, p=p, seed=11)
    args = ["pretrain", "--num-layers", "3", "--embed-dim", "4", "--kernel-size", "3", "--max-train", "16",
            "--batch-size", "8", "--mask", "none", "-q", "--out", out]
    run_cli(*args, "--max-epochs", "1", "--data", f"train={data}")
    before = out.read_bytes()
    result = run_cli(*args, "--max-epochs", "2", "--data", f"train={other}", "--resume", check=False)
    assert_cli_error(result, "--resume", "train data", "another file")
    write_pfs(data, n=n, p=p, seed=13)  # other content at the path it was trained on
    result = run_cli(*args, "--max-epochs", "2", "--data", f"train={data}", "--resume", check=False)
    assert_cli_error(result, "train data", "other content")
    assert out.read_bytes() == before, "a refused resume changed the checkpoint"


def infinite_file(path, *, value=np.inf, row=4):
    write_pfs(path, n=20, p=128, seed=2)
    with h5py.File(path, "a") as f:
        f["dataset/arrays/flux/value"][row, 10:13] = value
    return path


def test_nonfinite_and_nonreal_flux(tmp_path):
    args = ["--ckpt", CKPT, "--mask", "none", "--layer", "enc_last", "--pool", "global_mean", "-q"]
    bad = infinite_file(tmp_path / "inf.h5")
    refused(tmp_path, "extract", *args, "--data", f"train={bad}", "--out", tmp_path / "c.zarr",
            fragments=("inf.h5", "flux is inf at row 4, pixel 10", "3 infinite values"))
    empty = infinite_file(tmp_path / "empty.h5", value=np.nan, row=7)
    with h5py.File(empty, "a") as f:
        f["dataset/arrays/flux/value"][7] = np.nan
    refused(tmp_path, "extract", *args, "--data", f"train={empty}", "--out", tmp_path / "c.zarr",
            fragments=("empty.h5", "row 7 has no finite flux value"))
    complex_file = tmp_path / "complex.h5"
    write_pfs(complex_file, n=20, p=128, seed=2)
    with h5py.File(complex_file, "a") as f:
        flux = f["dataset/arrays/flux/value"][()]
        del f["dataset/arrays/flux/value"]
        f["dataset/arrays/flux/value"] = flux.astype(np.complex64) + 1j
    refused(tmp_path, "extract", *args, "--data", f"train={complex_file}", "--out", tmp_path / "c.zarr",
            fragments=("complex.h5", "'dataset/arrays/flux/value' holds complex64 values", "real numbers"))
    refused(tmp_path, "inspect", complex_file, fragments=("complex64",))
    # NaN pixels are missing values: read as 0 (the documented rule), counted and named in the cache
    some = infinite_file(tmp_path / "nan.h5", value=np.nan, row=3)
    out = tmp_path / "nan.zarr"
    from featcache.common.progress import set_quiet

    set_quiet(False)  # an earlier -q in this process silenced status lines
    result = run_cli("extract", *args[:-1], "--data", f"train={some}", "--out", out)
    assert "split 'train': 1 spectra have NaN flux pixels (3 pixels; rows 3 of" in result.output
    from featcache.cache.reader import open_cache

    assert open_cache(out).meta["splits"]["train"]["nan_flux"] == {"rows": 1, "pixels": 3, "first_rows": [3]}
