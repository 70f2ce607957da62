"""featcache fit / predict on a real cache: numbers against scikit-learn, outputs, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler

from featcache.cache import open_cache, open_root
from featcache.common.errors import FeatcacheError
from featcache.heads.fit import FitSpec, fit_head
from featcache.heads.predict import predict_split
from featcache.heads.recipe import TrainRecipe
from featcache.heads.ridge import alpha_grid
from featcache.heads.runs import load_head

from ..helpers import CKPT, assert_cli_error, run_cli, write_pfs


@pytest.fixture(scope="module")
def cache_path(labelled_caches):
    return labelled_caches["pretrained"]


def sklearn_reference(cache, feature, target):
    """Exhaustive alpha search on validation with scikit-learn, then test R2 of the chosen alpha."""
    layer, pool = feature
    xtr, ytr = cache.features("train", layer, pool, dtype=np.float64), cache.labels("train", target)
    xv, yv = cache.features("val", layer, pool, draw=0, dtype=np.float64), cache.labels("val", target, draw=0)
    xt, yt = cache.features("test", layer, pool, draw=0, dtype=np.float64), cache.labels("test", target, draw=0)
    scaler = StandardScaler().fit(xtr)
    best = None
    for alpha in alpha_grid() * len(xtr):
        model = Ridge(alpha=alpha).fit(scaler.transform(xtr), ytr)
        score = r2_score(yv, model.predict(scaler.transform(xv)))
        if best is None or score > best[0] + 1e-12:
            best = (score, alpha, model)
    score, alpha, model = best
    return alpha, score, r2_score(yt, model.predict(scaler.transform(xt))), model.predict(scaler.transform(xt))


def test_ridge_fit_matches_sklearn_and_writes_outputs(cache_path, tmp_path):
    out = tmp_path / "run"
    result = run_cli("fit", "--cache", cache_path, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target",
                     "log_g", "--out", out)
    assert "ridge on enc_last/seg_mean_K4 (D=32)" in result.output and "test R2" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    cache = open_cache(cache_path)
    alpha, val_r2, test_r2, test_pred = sklearn_reference(cache, ("enc_last", "seg_mean_K4"), "log_g")
    assert metrics["chosen"]["alpha"] == pytest.approx(alpha)
    assert metrics["splits"]["val"]["targets"]["log_g"]["r2"] == pytest.approx(val_r2, rel=1e-6, abs=1e-9)
    test = metrics["splits"]["test"]["targets"]["log_g"]
    assert test["r2"] == pytest.approx(test_r2, rel=1e-6, abs=1e-9)
    assert test["r2_ci95"][0] <= test["r2"] <= test["r2_ci95"][1]
    # training uses both noise draws; validation and test one row per spectrum
    assert metrics["splits"]["train"]["n"] == 400 and metrics["splits"]["val"]["n"] == 50
    assert metrics["cache_fingerprint"] == cache.fingerprint
    preds = np.load(out / "predictions.npz")
    np.testing.assert_allclose(preds["test_pred"][:, 0], test_pred, rtol=1e-6)
    np.testing.assert_array_equal(preds["test_index"], np.arange(250, 300))
    head = torch.load(out / "head.pt", weights_only=True)
    assert head["head"] == "ridge" and head["in_dim"] == 32
    assert yaml.safe_load((out / "config.yaml").read_text())["target"] == ["log_g"]
    assert (out / "history.csv").read_text().startswith("alpha,val_r2_log_g")


def test_replay_from_config_gives_the_same_numbers(cache_path, tmp_path):
    run_cli("fit", "--cache", cache_path, "--feature", "enc_last/global_mean", "--feature", "input_flux/global_mean",
            "--target", "log_g", "--target", "T_eff", "--out", tmp_path / "a")
    run_cli("fit", "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b")
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["in_dim"] == 9 and a["targets"] == ["log_g", "T_eff"]
    assert a["splits"] == b["splits"]


def test_mlp_fit_is_deterministic_and_predict_reproduces_it(cache_path, tmp_path):
    args = ["fit", "--cache", cache_path, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target", "log_g",
            "--head", "mlp_1", "--max-epochs", "4", "--seed", "3"]
    run_cli(*args, "--out", tmp_path / "a")
    run_cli(*args, "--out", tmp_path / "b")
    pa, pb = np.load(tmp_path / "a" / "predictions.npz"), np.load(tmp_path / "b" / "predictions.npz")
    np.testing.assert_array_equal(pa["test_pred"], pb["test_pred"])
    history = (tmp_path / "a" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss,val_r2,lr") and len(history) == 5
    run_cli("predict", "--head", tmp_path / "a", "--cache", cache_path, "--split", "test", "--out",
            tmp_path / "p.npz")
    again = np.load(tmp_path / "p.npz")
    np.testing.assert_allclose(again["pred_log_g"], pa["test_pred"][:, 0], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(again["index"], pa["test_index"])


def test_python_api_matches_cli(cache_path):
    spec = FitSpec(features=[("input_flux", "seg_mean_K4")], targets=["T_eff"], head="linear",
                   recipe=TrainRecipe(max_epochs=3, seed=1))
    result = fit_head(cache_path, spec, progress=False)
    assert result.in_dim == 4 and set(result.metrics["splits"]) == {"train", "val", "test"}
    assert result.chosen["epochs_run"] == 3


@pytest.mark.parametrize("args,fragments", [
    (["--layer", "enc_0", "--pool", "global_mean"], ["unknown layer in split 'train' 'enc_0'", "enc_last"]),
    (["--layer", "enc_last", "--pool", "mean_max"], ["choose from: global_mean, seg_mean_K4"]),
    (["--layer", "enc_last", "--pool", "global_mean", "--target", "logg"], ["unknown label 'logg'", "log_g"]),
    (["--layer", "enc_last", "--pool", "global_mean", "--test-split", "holdout"], ["no split 'holdout'"]),
    (["--layer", "enc_last", "--pool", "global_mean", "--head", "mlp_9"], ["unknown head 'mlp_9'", "mlp_1"]),
    (["--feature", "enc_last"], ["expected LAYER/POOL"]),
])
def test_bad_fit_requests(cache_path, tmp_path, args, fragments):
    if "--target" not in args:
        args = [*args, "--target", "log_g"]
    result = run_cli("fit", "--cache", cache_path, *args, "--out", tmp_path / "r", check=False)
    assert_cli_error(result, *fragments)


def test_constant_target_and_nan_features(tmp_path):
    data = write_pfs(tmp_path / "d.h5", n=60, p=512, seed=2)
    out = tmp_path / "c.zarr"
    run_cli("extract", "--ckpt", CKPT, "--data", f"train={data}:0:40", "--data", f"val={data}:40:50",
            "--data", f"test={data}:50:60", "--layer", "enc_last", "--pool", "global_mean", "--mask", "none",
            "--out", out, "-q")
    root = open_root(out, "r+")
    root["train/labels/T_eff"][:] = 5000.0
    root["train/features/enc_last/global_mean"][3, 2] = np.nan
    spec = FitSpec(features=[("enc_last", "global_mean")], targets=["T_eff"])
    with pytest.raises(FeatcacheError, match="NaN"):
        fit_head(out, spec)
    root["train/features/enc_last/global_mean"][3, 2] = 0.5
    with pytest.raises(FeatcacheError, match="target 'T_eff' is constant on the train split"):
        fit_head(out, spec)


def test_predict_refuses_other_width_and_other_encoder(cache_path, tmp_path):
    run_cli("fit", "--cache", cache_path, "--layer", "enc_last", "--pool", "global_mean", "--target", "log_g",
            "--out", tmp_path / "run")
    data = write_pfs(tmp_path / "d.h5", n=20, p=512, seed=5)
    other = tmp_path / "other.zarr"
    run_cli("extract", "--random-init", "--ckpt", CKPT, "--data", f"test={data}", "--layer", "enc_last",
            "--pool", "global_mean", "--mask", "none", "--direction", "both", "--out", other, "-q")
    result = run_cli("predict", "--head", tmp_path / "run", "--cache", other, "--split", "test", "--out",
                     tmp_path / "p.csv", check=False)
    assert_cli_error(result, "made with another encoder", "--force")
    result = run_cli("predict", "--head", tmp_path / "run", "--cache", other, "--split", "test", "--out",
                     tmp_path / "p.csv", "--force", check=False)
    assert_cli_error(result, "are 16 wide", "the head expects 8")
    loaded = load_head(tmp_path / "run")
    assert loaded.features == [("enc_last", "global_mean")]
    with pytest.raises(FeatcacheError, match="no head.pt"):
        predict_split(tmp_path, cache_path, "test")
