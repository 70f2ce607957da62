"""The last tracebacks of the third hostile pass: each case is one `Error:` line naming the option or file,
exit status 2, and nothing left on disk."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from ..helpers import CKPT, assert_cli_error, run_cli, write_pfs
from .test_bad_input import inputs, refused  # noqa: F401 -- the module fixture of built inputs


@pytest.mark.parametrize("args,fragments", [
    (["fit", "--head", "mlp_1", "--seed", "-1"], ["--seed must be an integer in 0..2**63-1, got -1"]),
    (["fit", "--head", "mlp_1", "--seed", str(10**20)], ["--seed must be an integer in 0..2**63-1"]),
    (["fit", "--head", "mlp_1", "--lr", "inf"], ["must be finite numbers", "lr inf"]),
    (["fit", "--head", "mlp_1", "--lr", "nan"], ["must be finite numbers", "lr nan"]),
    (["compare", "--train-sizes", "nan"], ["--train-sizes nan"]),
    (["compare", "--train-sizes", "inf"], ["--train-sizes inf"]),
    (["compare", "--train-sizes", "10", "--subset-seed", "-1"], ["--subset-seed -1"]),
    (["compare", "--head", "mlp_1", "--seed", "-1"], ["--seed must be an integer"]),
])
def test_options_out_of_range(tmp_path, inputs, args, fragments):  # noqa: F811
    command, rest = args[0], args[1:]
    cache = ["--cache", inputs["cache"], "--target", "log_g"]
    if command == "fit":
        cache += ["--feature", "enc_last/global_mean"]
    refused(tmp_path, command, *cache, *rest, "-q", "--out", tmp_path / "out", fragments=fragments)


def test_synth_seed_and_extract_draws_out_of_range(tmp_path, inputs):  # noqa: F811
    refused(tmp_path, "synth", tmp_path / "s.h5", "--n", "2", "--seed", str(2**64),
            fragments=("--seed must be an integer in 0..2**63-1",))
    # 24 spectra x 1e9 draws: checked by count before a 180 GB row index is allocated or a cache created
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--noise-draws",
            "1000000000", "--layer", "enc_last", "--pool", "global_mean", "--mask", "none", "-q",
            "--out", tmp_path / "big.zarr", fragments=("--noise-draws", "24,000,000,000 rows", "1,000,000,000 draws"))


def test_a_cache_with_a_feature_array_deleted(tmp_path, inputs):  # noqa: F811
    cache = tmp_path / "c.zarr"
    shutil.copytree(inputs["cache"], cache)
    shutil.rmtree(cache / "train" / "features" / "enc_last" / "global_mean")
    fragments = ("'train/features/enc_last/global_mean' is missing from the cache", "--overwrite")
    refused(tmp_path, "fit", "--cache", cache, "--feature", "enc_last/global_mean", "--target", "log_g",
            "--out", tmp_path / "r", fragments=fragments)
    refused(tmp_path, "inspect", cache, fragments=fragments)


def _damaged_head(run, tmp_path, name, change):
    target = tmp_path / name
    shutil.copytree(run, target)
    saved = torch.load(target / "head.pt", weights_only=True)
    change(saved)
    torch.save(saved, target / "head.pt")
    return target


@pytest.mark.parametrize("name,change,fragment", [
    ("shape", lambda s: s["state"].__setitem__("coef", torch.zeros(3, 3)), "weights do not fit its 8 features"),
    ("kind", lambda s: s.__setitem__("head", "knn"), "says 'knn' but holds a 'ridge' state"),
    ("unknown", lambda s: s.__setitem__("head", "gbm"), "unknown head 'gbm'"),
    ("missing", lambda s: s.pop("in_dim"), "no 'in_dim'"),
    ("state", lambda s: s["state"].pop("x_scale"), "a damaged 'ridge' head file (KeyError"),
    ("nan", lambda s: s["state"]["coef"].fill_(float("nan")), "hold NaN or infinite values"),
])
def test_damaged_head_files(tmp_path, inputs, name, change, fragment):  # noqa: F811
    run = _damaged_head(inputs["run"], tmp_path, name, change)
    refused(tmp_path, "predict", "--head", run, "--cache", inputs["cache"], "--split", "test",
            "--out", tmp_path / "p.csv", fragments=(f"{name}/head.pt", fragment))


def test_a_checkpoint_with_nan_weights(tmp_path, inputs):  # noqa: F811
    ckpt = tmp_path / "nan.ckpt"
    state = torch.load(CKPT, weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    state["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(state, ckpt)
    shutil.copy(CKPT.with_suffix(".yaml"), ckpt.with_suffix(".yaml"))
    refused(tmp_path, "extract", "--ckpt", ckpt, "--data", f"train={inputs['data']}:0:24", "--mask", "none",
            "--out", tmp_path / "c.zarr", "-q",
            fragments=("nan.ckpt", key.removeprefix("model."), "holds 1 NaN or infinite values"))


@pytest.mark.parametrize("damage,fragment", [
    (lambda run: (run / "predictions.npz").write_bytes(b"PK\x03\x04 not a zip"), "not a readable .npz archive"),
    (lambda run: (run / "metrics.json").write_text("[1, 2"), "metrics.json is not readable JSON"),
    (lambda run: (run / "metrics.json").write_text("[1, 2]"), "metrics.json is not a run's metrics"),
    (lambda run: np.savez(run / "predictions.npz", test_true=np.zeros(3), test_pred=np.zeros(5),
                          targets=np.array(["log_g"])), "'test_pred' is float64 of shape (5,)"),
    (lambda run: np.savez(run / "predictions.npz", test_true=np.array(["a"]), test_pred=np.zeros(1),
                          targets=np.array(["log_g"])), "'test_true' is <U1"),
])
def test_malformed_run_folders(tmp_path, inputs, damage, fragment):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run)
    damage(run)
    refused(tmp_path, "report", run, fragments=(str(run), fragment))
    result = run_cli("compare", "--cache", inputs["cache"], "--target", "log_g", "--head", "ridge", "--run", run,
                     "--no-plots", "--out", tmp_path / "cmp", check=False)
    assert_cli_error(result, f"--run {run}", fragment)
    assert not (tmp_path / "cmp").exists(), "a refused compare left its folder"


def test_a_streamed_knn_head_predicts_from_another_folder(tmp_path, inputs, monkeypatch):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(inputs["cache"], work / "c.zarr")
    monkeypatch.chdir(work)
    from featcache.heads.fit import FitSpec, fit_head
    from featcache.heads.runs import save_run

    # the command line's smallest budget (1MB) holds these rows: the Python API takes bytes, and a relative path
    spec = FitSpec(features=[("enc_last", "global_mean")], targets=["log_g"], head="knn", max_memory=3 * 8 * 8 * 10)
    save_run(fit_head("c.zarr", spec, progress=False), work / "knn")
    assert json.loads((work / "knn" / "metrics.json").read_text())["train_rows"]["sampler"] == "streamed-search"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_cli("predict", "--head", work / "knn", "--cache", work / "c.zarr", "--split", "test", "--out", "p.csv")
    assert (elsewhere / "p.csv").exists()


def test_outputs_inside_a_cache_are_refused(tmp_path, inputs):  # noqa: F811
    cache = tmp_path / "c.zarr"
    shutil.copytree(inputs["cache"], cache)
    fragments = ("is inside the cache", "c.zarr")
    refused(tmp_path, "fit", "--cache", cache, "--feature", "enc_last/global_mean", "--target", "log_g",
            "--out", cache / "run", fragments=fragments)
    refused(tmp_path, "fit", "--cache", cache, "--feature", "enc_last/global_mean", "--target", "log_g",
            "--out", cache, fragments=(f"--out {cache}: is inside the cache {cache}",))
    refused(tmp_path, "compare", "--cache", cache, "--target", "log_g", "--out", cache / "train" / "cmp",
            fragments=fragments)
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--mask", "none",
            "--out", cache / "inner.zarr", "-q", fragments=fragments)
    refused(tmp_path, "predict", "--head", inputs["run"], "--cache", cache, "--split", "test",
            "--out", cache / "p.csv", fragments=fragments)


def test_a_shifted_wavelength_grid_says_how_it_differs(tmp_path):
    a = write_pfs(tmp_path / "a.h5", n=8, p=256)
    b = write_pfs(tmp_path / "b.h5", n=8, p=256, seed=1)
    with h5py.File(b, "a") as f:
        f["spectrumdataset/wave"][...] = f["spectrumdataset/wave"][()] + 0.5
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={a}", "--data", f"val={b}", "--mask", "none",
            "--out", tmp_path / "c.zarr", "-q",
            fragments=("b.h5: wavelength grid differs", "both 256 pixels", "a shift of +0.5 A"))


def test_an_os_error_without_a_file_name_names_the_output():
    import errno

    from featcache_cli.common import os_error_message

    message = os_error_message(OSError(errno.ENOSPC, "No space left on device"), "c.zarr")
    assert message == "--out c.zarr: No space left on device; free some space or write elsewhere"
