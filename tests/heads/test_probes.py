"""The scikit-learn probes: they pass scikit-learn's estimator checks (but for the documented few), predict
exactly what RidgeHead and train_head predict on the same rows, and go into cross_val_score, a Pipeline and
clone on features taken from a cache."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from featcache.cache import open_cache
from featcache.common.errors import FeatcacheError
from featcache.heads import TrainRecipe, create_head, train_head
from featcache.heads.probes import ProbeError
from featcache.heads.ridge import RidgeHead
from featcache.sklearn import MLPProbe, RidgeProbe

CONSTANT_VALIDATION = ("fits 10 rows whose integer target takes 3 values: the 2 validation rows split off for "
                       "alpha / early stopping have one value, validation R2 is undefined and the probe refuses "
                       "(a ValueError naming the constant target, not the check's '1 feature' message)")
# scikit-learn's documented mechanism for checks an estimator fails for a reason (check_estimator's
# expected_failed_checks); every other check of scikit-learn 1.9 passes
EXPECTED_FAILED_CHECKS = {
    "RidgeProbe": {"check_fit2d_1feature": CONSTANT_VALIDATION},
    "MLPProbe": {
        "check_fit2d_1feature": CONSTANT_VALIDATION,
        "check_methods_subset_invariance": "the head predicts in float32, as it was trained; the last bit of a "
                                           "float32 matrix product depends on how many rows the batch has (1e-7 "
                                           "relative, the check's tolerance is 1e-7 absolute)",
    },
}
# failures that hang on the last float32 bit of particular weights: listed, but a pass is no regression
MAY_PASS = {"check_methods_subset_invariance"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Training on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def cached(labelled_caches):
    """One draw of each spectrum (the probes' validation split must not separate draws of one spectrum)."""
    cache = open_cache(labelled_caches["pretrained"])
    X = cache.features("train", "enc_last", "seg_mean_K4", draw=0)
    y = cache.labels("train", "log_g", draw=0)
    Y = np.stack([y, cache.labels("train", "T_eff", draw=0)], axis=1)
    return X, y, Y


# check_array_api_input is skipped by scikit-learn itself unless SCIPY_ARRAY_API=1 (the probes take NumPy input)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.parametrize("probe", [RidgeProbe(), MLPProbe()], ids=["RidgeProbe", "MLPProbe"])
def test_scikit_learn_estimator_checks(probe):
    expected = EXPECTED_FAILED_CHECKS[type(probe).__name__]
    results = check_estimator(probe, expected_failed_checks=expected, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert not failed, failed
    # each documented failure still happens (else its entry should go), but for the last-bit ones
    assert set(expected) - MAY_PASS <= xfailed <= set(expected)
    assert sum(r["status"] == "passed" for r in results) >= 45


def _split_like_the_probe(X, y, seed: int = 0, fraction: float = 0.1):
    n_val = max(2, int(np.ceil(fraction * len(X))))
    return train_test_split(X, y, test_size=n_val, random_state=seed)


def test_ridge_probe_is_ridge_head(cached):
    X, y, Y = cached
    probe = RidgeProbe().fit(X, y)
    X_fit, X_val, y_fit, y_val = _split_like_the_probe(X, y)
    head = RidgeHead().fit(X_fit, y_fit, X_val, y_val)
    np.testing.assert_array_equal(probe.predict(X), head.predict(X))
    assert probe.alpha_ == head.alpha_ and probe.val_r2_ == head.val_r2_ and probe.n_features_in_ == 32
    single = RidgeProbe(alphas=[3.0]).fit(X, y)  # one alpha: nothing to choose, every row fits
    np.testing.assert_array_equal(single.predict(X), RidgeHead(alphas=[3.0]).fit(X, y).predict(X))
    both = RidgeProbe(alphas=[3.0]).fit(X, Y)
    assert both.coef_.shape == (2, 32) and both.predict(X).shape == (200, 2)  # scikit-learn's coef_ layout
    np.testing.assert_allclose(both.predict(X)[:, 0], single.predict(X), rtol=1e-10)


def test_mlp_probe_is_train_head(cached):
    X, y, _ = cached
    probe = MLPProbe(hidden=32, max_epochs=6, batch_size=32, random_state=3).fit(X, y)
    X_fit, X_val, y_fit, y_val = _split_like_the_probe(X, y, seed=3)
    model = create_head("mlp_1", 32, 1, hidden=32, seed=3)
    result = train_head(model, X_fit, y_fit, X_val, y_val, TrainRecipe(max_epochs=6, batch_size=32, seed=3),
                        progress=False)
    np.testing.assert_array_equal(probe.predict(X), result.predict(X))
    assert probe.best_epoch_ == result.best_epoch and probe.best_val_r2_ == result.best_val_r2
    assert len(probe.history_) == 6 and probe.predict(X).shape == (200,)
    again = clone(probe).fit(X, y)  # an int random_state: the same model every time
    np.testing.assert_array_equal(again.predict(X), probe.predict(X))
    whole = MLPProbe(hidden=32, max_epochs=3, validation_fraction=0, random_state=3).fit(X, y)
    assert whole.best_val_r2_ is None and whole.best_epoch_ == 3  # no validation rows: the last epoch


def test_cross_val_score_on_cached_features(cached):
    X, y, _ = cached
    folds = KFold(3, shuffle=True, random_state=0)
    mlp = cross_val_score(MLPProbe(hidden=256), X, y, cv=folds)
    ridge = cross_val_score(make_pipeline(StandardScaler(), RidgeProbe()), X, y, cv=folds)
    assert mlp.shape == ridge.shape == (3,) and np.isfinite(mlp).all() and np.isfinite(ridge).all()
    assert ridge.mean() > 0.5 and mlp.mean() > 0.3  # the learnable fixture: log_g is in the flux
    search = GridSearchCV(RidgeProbe(), {"alphas": [[1e-2], [1e2]]}, cv=folds).fit(X, y)
    assert search.best_params_["alphas"] in ([1e-2], [1e2]) and np.isfinite(search.best_score_)


def test_a_probe_in_a_pipeline_on_to_xarray(labelled_caches):
    pytest.importorskip("xarray")
    ds = open_cache(labelled_caches["pretrained"]).to_xarray("train", features=["enc_last/seg_mean_K4"], draw=0)
    X, y = ds["enc_last/seg_mean_K4"], ds["log_g"]
    scores = cross_val_score(make_pipeline(StandardScaler(), RidgeProbe()), X, y, cv=3)
    np.testing.assert_allclose(scores, cross_val_score(make_pipeline(StandardScaler(), RidgeProbe()),
                                                       X.values, y.values, cv=3))


@pytest.mark.parametrize("probe, fragment", [
    (MLPProbe(head="ridge"), "head 'ridge' is closed-form"),
    (MLPProbe(head="mlp_9"), "unknown head 'mlp_9'; choose from: ridge, knn, linear, mlp_1, mlp_2"),
    (MLPProbe(lr=-1.0), "--lr must be positive"),
    (MLPProbe(validation_fraction=1.5), "validation_fraction must be a number in (0, 1), got 1.5"),
    (RidgeProbe(alphas=[-1.0, 1.0]), "alphas must be positive"),
])
def test_mistakes_are_one_line_value_errors(cached, probe, fragment):
    X, y, _ = cached
    with pytest.raises(ProbeError) as raised:
        probe.fit(X, y)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, FeatcacheError)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)
