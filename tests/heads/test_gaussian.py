"""The uncertainty head mlp_1_gauss: its NLL against a hand computation, calibration metrics, a sigma that
follows the noise, the sigma outputs through fit / predict, and finetune's refusal."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from featcache.common.errors import FeatcacheError
from featcache.heads import create_head
from featcache.heads.gaussian import SIGMA_FLOOR, GaussianMLP, gaussian_nll_torch, warmup_epochs
from featcache.heads.metrics import (
    bootstrap_calibration,
    calibration_metrics,
    coverage_curve,
    gaussian_nll,
    r2,
    split_metrics,
)
from featcache.heads.predict import predict_split
from featcache.heads.recipe import TrainRecipe
from featcache.heads.training import train_head

from ..helpers import run_cli


def test_nll_against_a_hand_computation():
    # y = 1, mean 0.5, sigma 2: 0.5 ln(2 pi 4) + 0.5 (0.5 / 2)^2
    hand = 0.5 * math.log(2 * math.pi * 4.0) + 0.5 * 0.0625
    assert gaussian_nll([1.0], [0.5], [2.0])[0] == pytest.approx(hand, abs=1e-12)
    assert float(gaussian_nll_torch(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64),
                                    torch.tensor(2.0, dtype=torch.float64))) == pytest.approx(hand, abs=1e-12)
    # the head's loss: sigma = softplus(raw) + floor, averaged over rows and targets
    head = create_head("mlp_1_gauss", 3, 2, hidden=4)
    assert isinstance(head, GaussianMLP) and head[-1].out_features == 4
    out = torch.tensor([[0.5, -1.0, 0.3, -2.0], [0.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.2, 1.0]], dtype=torch.float64)
    by_hand = []
    for row in range(2):
        for t in range(2):
            sd = math.log1p(math.exp(float(out[row, 2 + t]))) + SIGMA_FLOOR
            r = float(y[row, t] - out[row, t])
            by_hand.append(0.5 * math.log(2 * math.pi) + math.log(sd) + 0.5 * (r / sd) ** 2)
    assert float(head.nll(out, y)) == pytest.approx(np.mean(by_hand), abs=1e-12)
    with pytest.raises(FeatcacheError, match="sigma must be positive"):
        gaussian_nll([1.0], [0.0], [0.0])


def test_calibration_metrics_by_hand():
    offset = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 0.1, -3.0, 0.9])  # residuals, sigma 1: |z| = |offset|
    y = np.arange(8.0)
    mean, sigma = y + offset, np.ones(8)
    m = calibration_metrics(y, mean, sigma)
    assert m["coverage_1sigma"] == 4 / 8 and m["coverage_2sigma"] == 6 / 8
    assert m["z_std"] == pytest.approx(np.std(offset))
    assert m["nll"] == pytest.approx(np.mean(0.5 * np.log(2 * np.pi) + 0.5 * offset ** 2))
    expected, observed = coverage_curve(y, mean, sigma, levels=[0.682689492])
    assert observed[0] == pytest.approx(0.5)
    draws = bootstrap_calibration(y, mean, sigma, n_boot=50)
    assert draws["coverage_1sigma"].shape == (50,) and draws["coverage_1sigma"].min() >= 0
    entry = split_metrics("test", "test", y, mean, ["log_g"], sigma=sigma, n_boot=50)["targets"]["log_g"]
    assert entry["coverage_1sigma"] == 0.5 and len(entry["nll_ci95"]) == 2 and "z_std_ci95" in entry


def test_sigma_follows_the_noise_and_the_mean_matches_mlp_1(one_torch_thread):
    rng = np.random.default_rng(0)

    def make(n):
        X = rng.uniform(-2, 2, size=(n, 6)).astype(np.float32)
        noise = 0.1 + 0.6 * np.abs(X[:, 3])
        return X, np.sin(X[:, 0]) * X[:, 1] + X[:, 2] ** 2 + rng.normal(size=n) * noise, noise

    (Xt, yt, _), (Xv, yv, _), (Xs, ys, noise) = make(3000), make(800), make(800)
    recipe = TrainRecipe(max_epochs=25)
    gauss = train_head(create_head("mlp_1_gauss", 6, 1, seed=0), Xt, yt, Xv, yv, recipe=recipe, progress=False)
    plain = train_head(create_head("mlp_1", 6, 1, seed=0), Xt, yt, Xv, yv, recipe=recipe, progress=False)
    mean, sigma = gauss.predict_dist(Xs)
    assert gauss.gaussian and not plain.gaussian and np.array_equal(mean, gauss.predict(Xs))
    assert "val_nll" in gauss.history[0] and gauss.best_epoch > warmup_epochs(25)  # NLL epochs are the ones kept
    assert r2(ys, mean) > r2(ys, plain.predict(Xs)) - 0.03
    assert np.corrcoef(sigma, noise)[0, 1] > 0.8  # heteroscedastic: sigma tracks the true noise
    m = calibration_metrics(ys, mean, sigma)
    assert 0.6 < m["coverage_1sigma"] < 0.78 and 0.85 < m["z_std"] < 1.2
    # sigma's scale is chosen on validation: there z = residual / sigma has mean square 1 exactly
    mv, sv = gauss.predict_dist(Xv)
    assert np.mean(((yv - mv) / sv) ** 2) == pytest.approx(1.0, rel=1e-4)
    assert gauss.model.sigma_scale.shape == (1,) and float(gauss.model.sigma_scale) != 1.0
    with pytest.raises(FeatcacheError, match="predicts no uncertainty"):
        plain.predict_sigma(Xs)


def test_gauss_fit_writes_sigma_and_calibration_and_predict_gives_sigma(labelled_caches, tmp_path):
    cache = labelled_caches["pretrained"]
    out = tmp_path / "run"
    result = run_cli("fit", "--cache", cache, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target", "log_g",
                     "--head", "mlp_1_gauss", "--max-epochs", "8", "--out", out)
    assert "1-sigma coverage" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["splits"]["test"]["targets"]["log_g"]
    assert metrics["chosen"]["sigma_scale"] > 0
    for name in ("coverage_1sigma", "coverage_2sigma", "z_std", "nll"):
        assert math.isfinite(test[name]) and test[f"{name}_ci95"][0] <= test[name] <= test[f"{name}_ci95"][1]
    saved = np.load(out / "predictions.npz")
    assert saved["test_sigma"].shape == saved["test_pred"].shape and (saved["val_sigma"] > 0).all()
    z = (saved["test_pred"][:, 0] - saved["test_true"][:, 0]) / saved["test_sigma"][:, 0]
    assert test["coverage_1sigma"] == pytest.approx(np.mean(np.abs(z) <= 1))
    again = predict_split(out, cache, "test")
    np.testing.assert_allclose(again["sigma_log_g"], saved["test_sigma"][:, 0], rtol=1e-6)
    refused = run_cli("finetune", "--ckpt", "x.ckpt", "--data", "train=x.h5", "--layer", "enc_last", "--pool",
                      "global_mean", "--target", "log_g", "--head", "mlp_1_gauss", "--out", tmp_path / "ft",
                      check=False)
    assert refused.exit_code == 2 and "--head mlp_1_gauss" in refused.output
