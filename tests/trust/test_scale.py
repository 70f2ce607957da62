"""Scale: ridge with far fewer train rows than features (72 spectra of a 13,920-wide `--pool none` map took
9.3 GB and ten minutes through the D x D Gram) goes through the N x N kernel: the same solution, and memory
that grows with N x D, not D x D."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from featcache.common.errors import FeatcacheError
from featcache.heads.ridge import RidgeHead, StreamingStats


def wide(n: int, d: int, n_val: int, seed: int = 0, targets: int = 1):
    rng = np.random.default_rng(seed)
    scale, shift = rng.uniform(0.1, 5.0, d), rng.normal(0.0, 3.0, d)
    w = rng.normal(size=(d, targets)) / np.sqrt(d)
    x = rng.normal(size=(n + n_val, d)) * scale + shift
    x[:, 7] = 1.5  # a constant column: scale 1, coefficient 0, as in the primal form
    y = (x - shift) / scale @ w + 0.3 * rng.normal(size=(n + n_val, targets))
    y = y[:, 0] if targets == 1 else y
    return x[:n], y[:n], x[n:], y[n:]


@pytest.mark.parametrize("targets", [1, 3])
def test_dual_ridge_equals_the_primal_form_and_scikit_learn(targets):
    from featcache.heads.ridge import ridge_memory

    x, y, xv, yv = wide(40, 300, 30, targets=targets)
    assert ridge_memory(40, 300)[0] == "dual"
    dual = RidgeHead().fit(x, y, xv, yv)
    primal = RidgeHead().fit_stats(StreamingStats.from_arrays(x, y), StreamingStats.from_arrays(xv, yv))
    assert dual.alpha_ == primal.alpha_
    np.testing.assert_allclose(dual.val_r2_per_alpha_, primal.val_r2_per_alpha_, rtol=0, atol=1e-6)
    scale = np.abs(primal.coef_).max()
    np.testing.assert_allclose(dual.coef_, primal.coef_, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(dual.intercept_, primal.intercept_, rtol=1e-6)
    assert np.all(np.asarray(dual.coef_)[7] == 0.0)
    scaler = StandardScaler().fit(x)
    reference = Ridge(alpha=dual.alpha_).fit(scaler.transform(x), y).predict(scaler.transform(xv))
    np.testing.assert_allclose(dual.predict(xv), reference, rtol=0, atol=1e-6 * np.abs(reference).max())


def test_dual_ridge_memory_grows_with_n_times_d_not_d_squared():
    """20 rows of 3,000 features: one D x D float64 matrix alone is 72 MB; the dual form holds a few MB."""
    x, y, xv, yv = wide(20, 3000, 20, seed=1)
    tracemalloc.start()
    try:
        RidgeHead().fit(x, y, xv, yv)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.1f} MB: the D x D Gram was built"


def test_a_ridge_that_cannot_fit_the_memory_budget_is_refused_before_reading():
    x, y, xv, yv = wide(600, 500, 20, seed=2)  # primal: 6 matrices of 500 x 500 float64 = 12 MB
    with pytest.raises(FeatcacheError, match=r"ridge on 600 train rows x 500 features needs about .* over the "
                                             r"4\.0 MB memory budget \(--max-memory\)"):
        RidgeHead().fit(x, y, xv, yv, max_memory="4MB")
    RidgeHead().fit(x, y, xv, yv, max_memory="64MB")
