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
    spec = FitSpec(features=[("enc_last", "seg_mean_K4")], targets=["log_g"], head="knn",
                   options={"knn_weights": "distance"})
    api = fit_head(cache, spec, progress=False)
    assert api.chosen == metrics["chosen"]
    np.testing.assert_allclose(api.predictions["test"]["pred"][:, 0], saved["test_pred"][:, 0], atol=1e-12)
    bad = run_cli("fit", "--cache", cache, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target", "log_g",
                  "--head", "knn", "--knn-k", "0,2", "--out", tmp_path / "bad", check=False)
    assert_cli_error(bad, "--knn-k 0,2", "positive")


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_streamed_search_equals_the_in_memory_one(labelled_caches, weights, monkeypatch):
    """Train rows over the memory budget stay in the cache: searched block by block with a running top-k
    (several train blocks, several query blocks), the same k, curve and predictions as loading them."""
    from featcache.cache import open_cache
    from featcache.cache.reader import FeatureMatrix

    monkeypatch.setattr(knn_module, "BLOCK_ELEMENTS", 70 * 37)
    cache = open_cache(labelled_caches["pretrained"])
    X, y = cache.features("train", "enc_last", "seg_mean_K4"), cache.labels("train", "log_g")
    Xv, yv = cache.features("val", "enc_last", "seg_mean_K4"), cache.labels("val", "log_g")
    Xs = np.asarray(cache.features("test", "enc_last", "seg_mean_K4"))
    lazy = FeatureMatrix(cache, "train", [("enc_last", "seg_mean_K4")], draw=None)
    loaded = KNNHead(weights=weights).fit(np.asarray(X), y, np.asarray(Xv), yv)
    budget = 3 * 70 * X.shape[1] * knn_module.IN_MEMORY_BYTES_PER_VALUE  # 70-row blocks of 400 train rows
    streamed = KNNHead(weights=weights).fit(lazy, y, np.asarray(Xv), yv, max_memory=budget)
    assert streamed.train_z_ is None and streamed.block_rows_ == 70 and streamed.rows["sampler"] == "streamed-search"
    assert loaded.rows == {"sampler": "in-memory"}
    assert streamed.k_ == loaded.k_
    np.testing.assert_allclose(streamed.val_r2_per_k_, loaded.val_r2_per_k_, rtol=1e-12)
    np.testing.assert_allclose(streamed.predict(Xs), loaded.predict(Xs), rtol=1e-12)
    # saved, the head refers to the cache's rows; loaded again it reopens them
    state = streamed.to_state()
    assert state["train_z"] is None and state["train_source"]["fingerprint"] == cache.fingerprint
    again = KNNHead.from_state(state)
    np.testing.assert_allclose(again.predict(Xs), loaded.predict(Xs), rtol=1e-12)
    changed = {**state, "train_source": {**state["train_source"], "fingerprint": "0" * 32}}
    with pytest.raises(FeatcacheError, match="is not the 000000000000 this knn head was fitted on"):
        KNNHead.from_state(changed)
    with pytest.raises(FeatcacheError, match="stream=True needs"):
        KNNHead().fit(np.asarray(X), y, np.asarray(Xv), yv, stream=True)


def test_streamed_knn_run_predicts_from_its_cache_and_refuses_a_changed_one(labelled_caches, tmp_path):
    import shutil

    cache = tmp_path / "c.zarr"
    shutil.copytree(labelled_caches["pretrained"], cache)
    out = tmp_path / "run"
    # the command line's smallest budget is 1MB, more than these 400 x 32 rows need: the Python API's bytes
    from featcache.heads.runs import save_run

    spec = FitSpec(features=[("enc_last", "seg_mean_K4")], targets=["log_g"], head="knn",
                   max_memory=3 * 100 * 32 * 24)
    result = fit_head(cache, spec, progress=False)
    assert "train rows searched in the cache in 100-row blocks" in result.summary()
    save_run(result, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_rows"]["sampler"] == "streamed-search"
    in_memory = run_cli("fit", "--cache", cache, "--layer", "enc_last", "--pool", "seg_mean_K4", "--target", "log_g",
                        "--head", "knn", "--max-memory", "1MB", "--out", tmp_path / "mem")
    assert "searched in the cache" not in in_memory.output
    assert json.loads((tmp_path / "mem" / "metrics.json").read_text())["chosen"] == metrics["chosen"]
    saved = np.load(out / "predictions.npz")
    np.testing.assert_allclose(predict_split(out, cache, "test")["pred_log_g"], saved["test_pred"][:, 0], atol=1e-9)
    # the head's train rows live in that cache: moved away, predict says so in one line, exit 2
    cache.rename(tmp_path / "moved.zarr")
    bad = run_cli("predict", "--head", out, "--cache", tmp_path / "moved.zarr", "--split", "test", "--out",
                  tmp_path / "p.npz", check=False)
    assert_cli_error(bad, "knn head searches the train rows", str(cache))
    assert not (tmp_path / "p.npz").exists()
