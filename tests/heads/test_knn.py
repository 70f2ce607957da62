"""The knn head: scikit-learn's KNeighborsRegressor on the same standardised arrays, k chosen on validation
(checked by hand), a saved head that predicts, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor

from featcache.common.errors import FeatcacheError
from featcache.heads import knn as knn_module
from featcache.heads.fit import FitSpec, fit_head
from featcache.heads.knn import KNNHead, parse_ks
from featcache.heads.predict import predict_split

from ..helpers import assert_cli_error, run_cli


def blobs(n: int = 900, d: int = 12, t: int = 1, seed: int = 0):
    """Features of very different scales and offsets (standardisation matters), a smooth nonlinear target."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n, d))
    X = (U * rng.uniform(0.1, 30.0, d) + rng.normal(size=d) * 50).astype(np.float32)
    y = np.stack([np.sin(U[:, j]) + 0.3 * U[:, j + 1] ** 2 for j in range(t)], axis=1) + rng.normal(size=(n, t)) * 0.2
    y = y[:, 0] if t == 1 else y
    return X[:500], y[:500], X[500:700], y[500:700], X[700:], y[700:]


@pytest.mark.parametrize("weights,t", [("uniform", 1), ("distance", 1), ("uniform", 3)])
def test_knn_equals_sklearn_on_the_same_standardised_arrays(weights, t, monkeypatch):
    monkeypatch.setattr(knn_module, "BLOCK_ELEMENTS", 500 * 37)  # several query blocks, one of them partial
    Xt, yt, Xv, yv, Xs, ys = blobs(t=t)
    head = KNNHead(weights=weights).fit(Xt, yt, Xv, yv)
    assert head.ks_ == [1, 2, 4, 8, 16, 32, 64, 128, 256] and 1 < head.k_ < 256
    reference = KNeighborsRegressor(n_neighbors=head.k_, weights=weights, algorithm="brute")
    reference.fit(head.standardise(Xt).astype(np.float64), yt)
    expected = reference.predict(head.standardise(Xs).astype(np.float64))
    np.testing.assert_allclose(head.predict(Xs), expected, rtol=0, atol=1e-6)
    # the train standardisation is the population mean / std of each column (StandardScaler's)
    np.testing.assert_allclose(head.x_scale_, Xt.astype(np.float64).std(axis=0), rtol=1e-9)


def test_k_choice_by_validation_r2_checked_by_hand():
    # 1-D: train x = 0..9 with targets chosen so that k = 2 is best on the two validation rows
    Xt = np.arange(10, dtype=np.float32)[:, None]
    yt = np.array([0.0, 2.0, 0.0, 2.0, 0.0, 10.0, 0.0, 2.0, 0.0, 2.0])
    Xv, yv = np.array([[0.4], [4.6]], dtype=np.float32), np.array([1.0, 5.0])
    head = KNNHead(ks=[1, 2, 4]).fit(Xt, yt, Xv, yv)
    # standardised distances keep the order of raw distances in 1-D: the neighbours by hand
    # x=0.4: nearest 0, 1, 2, 3 -> k1: 0, k2: 1, k4: 1; x=4.6: nearest 5, 4, 6, 3 -> k1: 10, k2: 5, k4: 3
    by_hand = {1: [0.0, 10.0], 2: [1.0, 5.0], 4: [1.0, 3.0]}
    sst = np.sum((yv - yv.mean()) ** 2)
    r2 = {k: 1 - np.sum((yv - np.array(p)) ** 2) / sst for k, p in by_hand.items()}
    np.testing.assert_allclose(head.val_r2_per_k_[:, 0], [r2[1], r2[2], r2[4]], atol=1e-12)
    assert r2[2] == 1.0 and head.k_ == 2
    np.testing.assert_allclose(head.predict(Xv), by_hand[2])


def test_knn_refusals():
    Xt, yt, Xv, yv, _, _ = blobs(n=720)
    with pytest.raises(FeatcacheError, match="validation split"):
        KNNHead().fit(Xt, yt)
    with pytest.raises(FeatcacheError, match="exceeds the 500 train rows"):
        KNNHead(ks=[600, 1000]).fit(Xt, yt, Xv, yv)
    assert KNNHead(ks=[3, 1000]).fit(Xt, yt, Xv, yv).ks_ == [3]  # values above n_train are dropped
    with pytest.raises(FeatcacheError, match="--knn-weights"):
        KNNHead(weights="gaussian")
    with pytest.raises(FeatcacheError, match="--knn-k 1,x"):
        parse_ks("1,x")
    assert parse_ks("4,1") == [4, 1] and parse_ks(None) is None


def test_knn_fit_run_and_predict(labelled_caches, tmp_path):
    cache = labelled_caches["pretrained"]
    out = tmp_path / "run"
    result = run_cli("fit", "--cache", cache, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target", "log_g",
                     "--head", "knn", "--knn-weights", "distance", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["head"] == "knn" and metrics["chosen"]["k"] in (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert "; k " in result.output and metrics["splits"]["test"]["targets"]["log_g"]["r2"] > 0.3
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "k,val_r2_log_g" and len(history) == 10  # 400 train rows (two draws): k up to 256
    saved = np.load(out / "predictions.npz")
    again = predict_split(out, cache, "test")
    np.testing.assert_allclose(again["pred_log_g"], saved["test_pred"][:, 0], rtol=0, atol=1e-9)
    # the Python API gives the same k and the same predictions
    spec = FitSpec(features=[("enc_last", "seg_mean_K4")], targets=["log_g"], head="knn", knn_weights="distance")
    api = fit_head(cache, spec, progress=False)
    assert api.chosen == metrics["chosen"]
    np.testing.assert_allclose(api.predictions["test"]["pred"][:, 0], saved["test_pred"][:, 0], atol=1e-12)
    bad = run_cli("fit", "--cache", cache, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target", "log_g",
                  "--head", "knn", "--knn-k", "0,2", "--out", tmp_path / "bad", check=False)
    assert_cli_error(bad, "--knn-k 0,2", "positive")
