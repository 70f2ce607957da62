"""Heads: ridge equals scikit-learn, MLP learns what ridge cannot, the loop is deterministic, errors are clear.

Training runs on one torch thread: on a shared 2-core machine, two OpenMP threads can be 10x slower.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from featcache.common.errors import FeatcacheError
from featcache.heads import count_parameters, create_head, is_trainable, list_heads
from featcache.heads.metrics import (
    bias,
    bootstrap_metrics,
    bootstrap_r2,
    bootstrap_r2_ci,
    mae,
    paired_r2_difference_ci,
    r2,
    regression_metrics,
    rmse,
)
from featcache.heads.recipe import TrainRecipe
from featcache.heads.ridge import RidgeHead, StreamingStats
from featcache.heads.training import TrainResult, clip_grad_norm, train_head


def linear_data(n: int = 600, d: int = 30, t: int = 1, seed: int = 0):
    """Few noisy train rows, features with very different scales and offsets (standardisation matters) and
    collinearity, so the best alpha sits inside the grid; 200 train, 200 validation, 200 test rows."""
    rng = np.random.default_rng(seed)
    scale, offset = rng.uniform(0.1, 20.0, d), rng.normal(size=d) * 100.0
    U = rng.normal(size=(n, d))
    U[:, 1::2] = 0.8 * U[:, 0::2] + 0.6 * U[:, 1::2]
    y = U @ rng.normal(size=(d, t)) + rng.normal(size=(n, t)) * 4.0
    X = U * scale + offset
    y = y[:, 0] if t == 1 else y
    return X[:200], y[:200], X[200:400], y[200:400], X[400:], y[400:]


def nonlinear_data(seed: int = 0):
    rng = np.random.default_rng(seed)

    def make(n):
        X = rng.uniform(-2, 2, size=(n, 8)).astype(np.float32)
        return X, (np.sin(X[:, 0]) * X[:, 1] + X[:, 2] ** 2).astype(np.float32)

    return (*make(4000), *make(1000), *make(1000))


def sk_ridge(X, y, alpha):
    scaler = StandardScaler().fit(X)
    return scaler, Ridge(alpha=alpha).fit(scaler.transform(X), y)


# ---------------------------------------------------------------- ridge

def test_ridge_matches_sklearn_at_same_alpha():
    Xt, yt, _, _, Xs, _ = linear_data()
    for alpha in (1e-3, 3.0, 250.0):
        head = RidgeHead(alphas=[alpha], scale_alphas=False).fit(Xt, yt)
        scaler, ref = sk_ridge(Xt, yt, alpha)
        np.testing.assert_allclose(head.coef_, ref.coef_ / scaler.scale_, rtol=1e-6)
        np.testing.assert_allclose(head.predict(Xs), ref.predict(scaler.transform(Xs)), rtol=1e-6)
        assert head.alpha_ == alpha


def test_ridge_alpha_choice_equals_exhaustive_validation_search():
    Xt, yt, Xv, yv, _, _ = linear_data(seed=1)
    head = RidgeHead().fit(Xt, yt, Xv, yv)
    assert head.alphas_.size == 21
    np.testing.assert_allclose(head.alphas_, np.logspace(-4, 6, 21) * len(Xt))  # relative grid x n_train
    scores = []
    for alpha in head.alphas_:
        scaler, ref = sk_ridge(Xt, yt, alpha)
        scores.append(skm.r2_score(yv, ref.predict(scaler.transform(Xv))))
    np.testing.assert_allclose(head.val_r2_per_alpha_, scores, rtol=1e-8, atol=1e-10)
    assert head.alpha_ == head.alphas_[int(np.argmax(scores))]
    assert 0 < int(np.argmax(scores)) < 20  # the default grid brackets the best alpha


def test_ridge_streaming_equals_in_memory_and_state_roundtrip():
    Xt, yt, Xv, yv, Xs, _ = linear_data(seed=2)
    whole = RidgeHead().fit(Xt, yt, Xv, yv, chunk_rows=10_000)
    chunked = RidgeHead().fit(Xt, yt, Xv, yv, chunk_rows=37)
    assert chunked.alpha_ == whole.alpha_
    np.testing.assert_allclose(chunked.coef_, whole.coef_, rtol=1e-9)
    np.testing.assert_allclose(chunked.predict(Xs), whole.predict(Xs), rtol=1e-9)
    stats = StreamingStats()
    for i in range(0, len(Xt), 123):
        stats.update(Xt[i:i + 123].astype(np.float32), yt[i:i + 123])
    assert stats.n == len(Xt)
    buf = io.BytesIO()
    torch.save(whole.to_state(), buf)
    buf.seek(0)
    loaded = RidgeHead.from_state(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(loaded.predict(Xs), whole.predict(Xs))
    assert loaded.alpha_ == whole.alpha_


def test_ridge_multi_target_picks_alpha_by_mean_val_r2():
    Xt, yt, Xv, yv, Xs, _ = linear_data(t=3, seed=3)
    head = RidgeHead(alpha_grid=(1e-3, 1e2, 6)).fit(Xt, yt, Xv, yv)
    assert head.coef_.shape == (30, 3) and head.predict(Xs).shape == (len(Xs), 3)
    assert head.val_r2_per_alpha_.shape == (6, 3)
    assert head.alpha_ == head.alphas_[np.argmax(head.val_r2_per_alpha_.mean(axis=1))]
    for j in range(3):
        scaler, ref = sk_ridge(Xt, yt[:, j], head.alpha_)
        np.testing.assert_allclose(head.predict(Xs)[:, j], ref.predict(scaler.transform(Xs)), rtol=1e-6)


def test_ridge_zero_variance_feature():
    Xt, yt, Xv, yv, Xs, _ = linear_data(seed=4)
    Xt, Xv, Xs = (np.column_stack([a[:, :3], np.full(len(a), 7.3), a[:, 3:]]) for a in (Xt, Xv, Xs))
    head = RidgeHead().fit(Xt, yt, Xv, yv, chunk_rows=64)
    assert head.coef_[3] == 0.0 and head.x_scale_[3] == 1.0
    assert np.all(np.isfinite(head.predict(Xs)))
    scaler, ref = sk_ridge(Xt, yt, head.alpha_)
    np.testing.assert_allclose(head.predict(Xs), ref.predict(scaler.transform(Xs)), rtol=1e-6)


def test_ridge_errors():
    Xt, yt, Xv, yv, _, _ = linear_data()
    with pytest.raises(FeatcacheError, match="validation split"):
        RidgeHead().fit(Xt, yt)
    Xbad = Xt.copy()
    Xbad[5, 2] = np.nan
    with pytest.raises(FeatcacheError, match="features contain NaN"):
        RidgeHead().fit(Xbad, yt, Xv, yv)
    with pytest.raises(FeatcacheError, match="target 'teff' is constant on the train split"):
        RidgeHead().fit(Xt, np.full(len(Xt), 5000.0), Xv, yv, target_names=["teff"])


# ---------------------------------------------------------------- registry

def test_registry():
    assert list_heads()[:5] == ["ridge", "knn", "linear", "mlp_1", "mlp_2"]
    mlp = create_head("mlp_1", 384, 1)
    assert count_parameters(mlp) == 98_817
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Dropout", "Linear"]
    assert mlp[2].p == 0.1 and mlp[0].out_features == 256
    assert count_parameters(create_head("mlp_2", 384, 1)) == 98_817 + 256 * 256 + 256
    assert count_parameters(create_head("linear", 384, 2)) == 770
    assert isinstance(create_head("ridge", 384, 1, alphas=[1.0]), RidgeHead)
    assert not is_trainable("ridge") and is_trainable("mlp_2")
    with pytest.raises(FeatcacheError, match="unknown head .mlp3.; choose from: ridge, knn, linear, mlp_1, mlp_2"):
        create_head("mlp3", 8, 1)
    with pytest.raises(FeatcacheError, match="--dropout"):
        create_head("mlp_1", 8, 1, dropout=1.5)


# ---------------------------------------------------------------- training

def test_mlp_learns_nonlinear_target_where_ridge_cannot():
    Xt, yt, Xv, yv, Xs, ys = nonlinear_data()
    ridge = RidgeHead().fit(Xt, yt, Xv, yv)
    assert r2(ys, ridge.predict(Xs)) < 0.7
    recipe = TrainRecipe(max_epochs=40, batch_size=64, lr=3e-3, seed=0)
    result = train_head(create_head("mlp_1", 8, 1, seed=0), Xt, yt, Xv, yv, recipe, progress=False, num_threads=1)
    assert r2(ys, result.predict(Xs)) >= 0.99
    buf = io.BytesIO()
    torch.save(result.to_state(), buf)
    buf.seek(0)
    loaded = TrainResult.from_state(create_head("mlp_1", 8, 1), torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(loaded.predict(Xs), result.predict(Xs))


def test_early_stopping_restores_best_epoch_and_runs_are_deterministic():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(700, 30)).astype(np.float32)
    y = X[:, 0] + 2.0 * rng.normal(size=700)  # mostly noise: a wide MLP overfits after a few epochs
    Xt, yt, Xv, yv = X[:500], y[:500], X[500:], y[500:]
    recipe = TrainRecipe(max_epochs=60, batch_size=32, lr=3e-3, patience=4, plateau_patience=100, seed=3)
    runs = [train_head(create_head("mlp_2", 30, 1, seed=1), Xt, yt, Xv, yv, recipe, progress=False, num_threads=1)
            for _ in range(2)]
    first, second = runs
    assert len(first.history) < 60  # stopped early
    best = max(first.history, key=lambda h: h["val_r2"])
    assert first.best_epoch == best["epoch"] < len(first.history)
    assert first.best_val_r2 == best["val_r2"]
    assert r2(yv, first.predict(Xv)) == pytest.approx(best["val_r2"], abs=1e-5)
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert set(first.history[0]) == {"epoch", "train_loss", "val_loss", "val_r2", "lr", "seconds"}


def test_training_errors():
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    y = X[:, 0].copy()
    model = create_head("linear", 4, 1)
    Xbad = X.copy()
    Xbad[3, 1] = np.nan
    with pytest.raises(FeatcacheError, match="features contain NaN"):
        train_head(model, Xbad, y, X, y, progress=False, num_threads=1)
    with pytest.raises(FeatcacheError, match="target 'logg' is constant on the train split"):
        train_head(model, X, np.ones(50), X, y, progress=False, target_names=["logg"], num_threads=1)
    with pytest.raises(FeatcacheError, match="--batch-size"):
        train_head(model, X, y, X, y, TrainRecipe(batch_size=0), progress=False, num_threads=1)


# ---------------------------------------------------------------- metrics

def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    yt = rng.normal(size=(300, 2))
    yp = yt + rng.normal(size=(300, 2)) * [0.3, 0.8] + [0.1, -0.2]
    np.testing.assert_allclose(r2(yt, yp), skm.r2_score(yt, yp, multioutput="raw_values"))
    np.testing.assert_allclose(rmse(yt, yp), np.sqrt(skm.mean_squared_error(yt, yp, multioutput="raw_values")))
    np.testing.assert_allclose(mae(yt, yp), skm.mean_absolute_error(yt, yp, multioutput="raw_values"))
    np.testing.assert_allclose(bias(yt, yp), (yp - yt).mean(axis=0))
    assert r2(yt[:, 0], yp[:, 0]) == pytest.approx(skm.r2_score(yt[:, 0], yp[:, 0]))
    m = regression_metrics(yt[:, 0], yp[:, 0])
    assert set(m) == {"n", "r2", "rmse", "mae", "bias", "sigma_mad", "outlier_fraction"} and m["n"] == 300
    assert isinstance(m["r2"], float)
    m2 = regression_metrics(yt, yp)
    assert len(m2["r2"]) == 2 and m2["r2_mean"] == pytest.approx(np.mean(m2["r2"]))


def test_robust_scatter_and_outliers_by_hand():
    residual = np.array([-0.3, -0.1, 0.0, 0.05, 0.1, 0.2, 5.0])  # one wild outlier
    m = regression_metrics(np.zeros(7), residual)
    median = 0.05
    mad = np.median(np.abs(residual - median))  # |r - 0.05| = .35 .15 .05 0 .05 .15 4.95 -> 0.15
    assert mad == pytest.approx(0.15)
    assert m["sigma_mad"] == pytest.approx(1.4826 * 0.15, abs=1e-12)
    assert m["outlier_fraction"] == pytest.approx(1 / 7)  # only 5.0 is beyond 3 sigma_MAD = 0.667
    assert m["bias"] == pytest.approx(residual.mean())
    draws = bootstrap_metrics(np.zeros(7), residual, n_boot=50, seed=3)
    assert set(draws) == {"r2", "rmse", "sigma_mad"} and draws["rmse"].shape == (50, 1)
    np.testing.assert_array_equal(draws["r2"], bootstrap_r2(np.zeros(7), residual, n_boot=50, seed=3))


def test_bootstrap_ci_brackets_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    yt = rng.normal(size=500)
    yp = yt + rng.normal(size=500) * 0.5
    lo, hi = bootstrap_r2_ci(yt, yp, n_boot=1000, seed=0)
    assert lo < r2(yt, yp) < hi and hi - lo < 0.2
    assert bootstrap_r2_ci(yt, yp, n_boot=1000, seed=0) == (lo, hi)
    assert bootstrap_r2_ci(yt, yp, n_boot=1000, seed=1) != (lo, hi)
    lo2, hi2 = bootstrap_r2_ci(np.column_stack([yt, yt]), np.column_stack([yp, yp]), n_boot=200)
    assert lo2.shape == (2,) and lo2[0] == lo2[1] and hi2[0] == hi2[1]


def test_training_without_validation_and_with_constant_feature():
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.normal(size=(200, 3)), np.full(200, 4.0)]).astype(np.float32)
    y = np.column_stack([X[:, 0] * 3.0 + 10.0, X[:, 1] - 2.0])
    result = train_head(create_head("linear", 4, 2, seed=0), X, y, recipe=TrainRecipe(max_epochs=3),
                        progress=False, num_threads=1)
    assert result.best_val_r2 is None and result.best_epoch == 3 and result.x_scale[3] == 1.0
    pred = result.predict(X)
    assert pred.shape == (200, 2) and np.all(np.isfinite(pred))


def test_near_constant_float32_column_is_not_amplified():
    """A column whose train spread is float32 rounding (std 6.5e-7 at 2.26) must not blow up a test row."""
    from featcache.heads.ridge import RidgeHead

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    X[:, 4] = np.float32(2.2577582) + rng.choice([0, 1], 400).astype(np.float32) * np.float32(2.4e-7)
    y = X[:, 0] - 0.5 * X[:, 1] + 0.1 * rng.standard_normal(400)
    Xt = X[:50].copy()
    Xt[0, 4] = 2.29  # a test value just outside the train rounding spread
    ridge = RidgeHead().fit(X[:300], y[:300], X[300:], y[300:])
    assert ridge.coef_[4] == 0.0
    pred = ridge.predict(Xt)
    assert np.abs(pred - y[:50]).max() < 1.0
    mlp = train_head(create_head("mlp_1", 5, 1, seed=0), X[:300], y[:300], X[300:], y[300:],
                     TrainRecipe(max_epochs=3), progress=False)
    assert np.abs(mlp.predict(Xt) - y[:50]).max() < 5.0


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipping active, and a no-op
def test_lean_gradient_clipping_equals_torch(max_norm):
    model = create_head("mlp_1", 24, 2, seed=3)
    grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(model.parameters())]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    expected_total = torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_norm, foreach=True)
    expected = [p.grad.clone() for p in model.parameters()]
    ours = [g.clone() for g in grads]
    total = clip_grad_norm(ours, max_norm)
    assert torch.equal(total, expected_total)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))
    assert (max_norm > 1e5) == all(torch.equal(a, g) for a, g in zip(ours, grads, strict=True))


def test_paired_r2_difference_interval():
    """Same resamples for both predictions: the draws are differences of bootstrap_r2's own draws, the
    interval brackets the point difference, identical predictions give exactly zero, and pairing makes the
    interval narrower than either prediction's own interval."""
    rng = np.random.default_rng(4)
    y = rng.normal(size=400)
    a = y + 0.5 * rng.normal(size=400)
    b = a + 0.3 * rng.normal(size=400)
    diff, lo, hi = paired_r2_difference_ci(y, a, b, n_boot=500, seed=2)
    assert diff == pytest.approx(r2(y, a) - r2(y, b)) and lo <= diff <= hi and lo > 0
    draws = bootstrap_r2(y, a, 500, 2)[:, 0] - bootstrap_r2(y, b, 500, 2)[:, 0]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert paired_r2_difference_ci(y, a, a, n_boot=100) == (0.0, 0.0, 0.0)
    a_lo, a_hi = bootstrap_r2_ci(y, a, n_boot=500, seed=2)
    assert hi - lo < a_hi - a_lo
    with pytest.raises(FeatcacheError, match="one shape"):
        paired_r2_difference_ci(y, a, b[:10])
