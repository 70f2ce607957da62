"""The bound itself on a linear-Gaussian toy: known J and sigma give the analytic covariance, and least squares
on Monte Carlo draws reaches it."""

import numpy as np
import pytest

from featcache.information.fisher import crb, fisher_matrix, inverse_fisher, prior_sigma


def _toy(n_stars: int = 4, k: int = 3, p: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(n_stars, k, p))
    sigma = rng.uniform(0.05, 0.3, size=(n_stars, p))
    return jac, sigma


def test_bound_equals_the_analytic_one():
    jac, sigma = _toy()
    bounds = crb(jac, sigma)
    for i in range(len(jac)):
        f = jac[i] @ np.diag(1.0 / sigma[i] ** 2) @ jac[i].T  # by hand
        expected = np.sqrt(np.diag(np.linalg.inv(f)))
        np.testing.assert_allclose(bounds[i], expected, rtol=1e-6)


def test_scaling_of_parameters_does_not_change_the_bound_in_their_units():
    jac, sigma = _toy(n_stars=2)
    scales = np.array([1e4, 1.0, 1e-4])  # K-like, dex-like and redshift-like units side by side
    bounds = crb(jac / scales[None, :, None], sigma)
    np.testing.assert_allclose(bounds, crb(jac, sigma) * scales[None, :], rtol=1e-6)


def test_ordinary_least_squares_on_monte_carlo_draws_reaches_the_bound():
    rng = np.random.default_rng(1)
    k, p, draws = 3, 200, 6000
    jac = rng.normal(size=(k, p))
    sigma = np.full(p, 0.2)  # homoscedastic: OLS is the efficient estimator
    truth = np.array([0.3, -1.0, 2.0])
    y = truth @ jac + sigma * rng.standard_normal((draws, p))
    estimates = np.linalg.lstsq(jac.T, y.T, rcond=None)[0].T
    bound = crb(jac[None], sigma[None])[0]
    np.testing.assert_allclose(estimates.std(axis=0, ddof=1), bound, rtol=0.03)
    np.testing.assert_allclose(estimates.mean(axis=0), truth, atol=4 * bound.max() / np.sqrt(draws))


def test_a_parameter_the_pixels_do_not_see_has_an_infinite_bound():
    jac, sigma = _toy(n_stars=1)
    jac[:, 2] = 0.0
    bounds = crb(jac, sigma)
    assert np.isinf(bounds[0, 2])
    # the others then are the bounds of the two-parameter problem
    np.testing.assert_allclose(bounds[0, :2], crb(jac[:, :2], sigma)[0], rtol=1e-9)


def test_degenerate_parameters_are_both_unconstrained():
    jac, sigma = _toy(n_stars=1)
    jac[:, 1] = 2.0 * jac[:, 0]
    bounds = crb(jac, sigma)
    assert np.isinf(bounds[0, 0]) and np.isinf(bounds[0, 1]) and np.isfinite(bounds[0, 2])


def test_inverse_is_the_covariance_and_bad_sigma_is_refused():
    jac, sigma = _toy(n_stars=2)
    f = fisher_matrix(jac, sigma)
    np.testing.assert_allclose(inverse_fisher(f) @ f, np.broadcast_to(np.eye(3), f.shape), atol=1e-8)
    sigma[0, 3] = 0.0
    from featcache.common.errors import FeatcacheError

    with pytest.raises(FeatcacheError, match="sigma must be positive"):
        fisher_matrix(jac, sigma)


def test_prior_sigma_is_the_uniform_spread():
    assert prior_sigma(1.0, 5.0) == pytest.approx(4.0 / np.sqrt(12.0))
    draws = np.random.default_rng(0).uniform(1.0, 5.0, 200000)
    assert prior_sigma(1.0, 5.0) == pytest.approx(draws.std(), rel=0.01)
