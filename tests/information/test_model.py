"""The Cannon model (rest-frame fit, derivatives), the spline it shifts with, and the full-spectrum fit, in a
world where the model is exactly right (world.py)."""

import numpy as np
import pytest

from featcache.information import CannonModel, FitSettings, bounds, fit_cannon, fit_spectra
from featcache.information.shift import catmull_rom, positions

from .world import C_KMS, LABELS, World


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    w = World()
    return {"world": w, "train": w.write(root / "train.h5", 1500, seed=1),
            "test": w.write(root / "test.h5", 200, seed=2, error=0.01)}


@pytest.fixture(scope="module")
def model(world) -> CannonModel:
    return fit_cannon(world["train"], show_progress=False)


def test_the_spline_is_the_generators_doppler_shift():
    from featcache.synth.model import get_model

    synth = get_model(300.0)
    rng = np.random.default_rng(0)
    rest = rng.uniform(0.3, 0.7, (3, len(synth.rest_wave))).astype(np.float32)
    z = np.array([-250.0, 3.3, 299.0]) / C_KMS
    expected = synth.shift(rest, z)
    pos = positions(synth.rest_wave, synth.wave[None, :] / (1.0 + z[:, None]))
    got, _, valid = catmull_rom(rest.astype(np.float64), pos)
    assert valid.all()
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_the_spline_derivative_is_the_derivative_along_the_grid():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 50))
    pos = rng.uniform(2.0, 46.0, (2, 30))
    _, slope, _ = catmull_rom(values, pos, derivative=True)
    h = 1e-6
    fd = (catmull_rom(values, pos + h)[0] - catmull_rom(values, pos - h)[0]) / (2 * h)
    np.testing.assert_allclose(slope, fd, rtol=1e-5, atol=1e-7)


def test_the_rest_frame_fit_recovers_the_world(world, model):
    w = world["world"]
    labels, _ = w.draw(20, seed=9)
    inner = slice(10, -10)  # the grid's ends are covered by fewer stars
    truth = w.rest_flux(labels, w.wave)
    np.testing.assert_allclose(model.rest_flux(labels)[:, inner], truth[:, inner], atol=5e-4)
    assert model.labels == LABELS and model.info["redshift_free"]


def test_the_observed_jacobian_is_the_model_s_derivative(model):
    rng = np.random.default_rng(3)
    labels = np.stack([rng.uniform(4500, 5500, 4), rng.uniform(2, 4, 4), rng.uniform(-0.8, 0.2, 4)], axis=1)
    z = rng.uniform(-200, 200, 4) / C_KMS
    pix = np.arange(20, 490)
    _, jac, _ = model.observed(labels, z, pix)
    steps = [1.0, 1e-3, 1e-3, 1e-3 / C_KMS]
    for k, h in enumerate(steps):
        up, down = labels.copy(), labels.copy()
        zu, zd = z.copy(), z.copy()
        if k < 3:
            up[:, k] += h
            down[:, k] -= h
        else:
            zu, zd = z + h, z - h
        upper = model.observed(up, zu, pix, jacobian=False)[0]
        fd = (upper - model.observed(down, zd, pix, jacobian=False)[0]) / (2 * h)
        scale = np.abs(fd).max()
        np.testing.assert_allclose(jac[:, k], fd, atol=1e-5 * scale)


def test_the_model_round_trips_through_a_file(model, tmp_path):
    again = CannonModel.load(model.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(again.theta, model.theta)
    assert again.labels == model.labels and again.info == model.info


def test_the_full_spectrum_fit_recovers_noise_free_labels_and_velocity(world, model):
    w = world["world"]
    labels, z = w.draw(40, seed=11)
    flux = w.observed(labels, z)
    pix = np.arange(len(w.wave))
    result = fit_spectra(model, flux, np.full(flux.shape, 0.01), pix)
    assert np.abs(result.label("log_g") - labels[:, 1]).max() < 0.01
    assert np.abs(result.label("T_eff") - labels[:, 0]).max() < 5.0
    assert np.abs(result.redshift - z).max() * C_KMS < 0.5
    assert (result.labels >= model.low - 1e-9).all() and (result.labels <= model.high + 1e-9).all()


def test_the_full_spectrum_fit_reaches_the_bound_where_the_model_is_right(world, model):
    """An unbiased efficient estimator in this world: scatter within 1.3x of the rms bound (200 stars)."""
    w = world["world"]
    labels, z = w.draw(200, seed=12)
    sigma = np.full((200, len(w.wave)), 0.01)
    noisy = w.observed(labels, z) + sigma * np.random.default_rng(5).standard_normal(sigma.shape)
    pix = np.arange(len(w.wave))
    result = fit_spectra(model, noisy, sigma, pix, FitSettings(grid=3))
    from featcache.information.api import cannon_bounds

    bound = cannon_bounds(model, labels, z, sigma, pix, with_redshift=True)
    inside = (labels[:, 1] > 1.3) & (labels[:, 1] < 4.7)  # away from the fit's box, which truncates errors
    for k, name in enumerate(LABELS):
        resid = result.label(name)[inside] - labels[inside, k]
        ratio = np.sqrt(np.mean(resid ** 2)) / np.sqrt(np.mean(bound[inside, k] ** 2))
        assert 0.75 < ratio < 1.3, (name, ratio)


def test_bounds_of_a_file_from_a_fitted_or_a_given_model(world, model):
    mask = np.ones(512, dtype=bool)
    mask[::7] = False
    given = bounds(world["test"], mask, source="cannon", model=model, show_progress=False)
    assert given.source == "cannon" and given.parameters == [*LABELS, "redshift"]
    assert given.prior["log_g"][0] >= 1.0 and given.prior["log_g"][1] <= 5.0
    fitted = bounds(world["test"], mask, source="cannon", train=world["train"], show_progress=False)
    np.testing.assert_allclose(fitted.values["log_g"], given.values["log_g"], rtol=1e-9)
    auto = bounds(world["test"], mask, source="auto", model=model, show_progress=False)
    assert auto.source == "cannon"  # not a featcache synth file
    # the noise level scales every bound
    doubled = bounds(world["test"], mask, source="cannon", model=model, noise_level=2.0, show_progress=False)
    np.testing.assert_allclose(doubled.values["log_g"], 2.0 * given.values["log_g"], rtol=1e-9)


def test_piecewise_models_fit_their_cells_and_round_trip(world, model, tmp_path):
    from featcache.information import PiecewiseCannon, fit_with, load_model
    from featcache.information.api import cannon_bounds

    piecewise = fit_cannon(world["train"], cells=(2, 2), show_progress=False)
    assert isinstance(piecewise, PiecewiseCannon) and len(piecewise.cells) == 4
    assert piecewise.info["cells"] == [2, 2]
    # each local model fits its own stars at least as well as the global one does
    for part in piecewise.cells.values():
        assert np.nanmedian(part.scatter) <= np.nanmedian(model.scatter) * 1.01
    w = world["world"]
    labels, z = w.draw(30, seed=21)
    pix = np.arange(len(w.wave))
    sigma = np.full((30, len(pix)), 0.01)
    both = cannon_bounds(piecewise, labels, z, sigma, pix, with_redshift=True)
    one = cannon_bounds(model, labels, z, sigma, pix, with_redshift=True)
    np.testing.assert_allclose(both, one, rtol=0.05)  # the world is one quadratic: local models agree
    result = fit_with(piecewise, w.observed(labels, z), sigma, pix)
    assert np.abs(result.label("log_g") - labels[:, 1]).max() < 0.01
    again = load_model(piecewise.save(tmp_path / "p.npz"))
    assert isinstance(again, PiecewiseCannon) and set(again.cells) == set(piecewise.cells)
    np.testing.assert_array_equal(again.cells[(1, 1)].theta, piecewise.cells[(1, 1)].theta)
    assert isinstance(load_model(model.save(tmp_path / "m.npz")), CannonModel)


def test_a_flux_scale_no_label_predicts_is_divided_out_not_learnt_as_misfit(world, model, tmp_path):
    """Train spectra each times 1 + N(0, 1%) (as synth's median normalisation moves with the velocity): with
    flux_scale the model is the world's again and its misfit stays near zero; without, the jitter is misfit."""
    w = world["world"]
    jittered = w.write(tmp_path / "jitter.h5", 1500, seed=1, scale_jitter=0.01)
    freed = fit_cannon(jittered, show_progress=False)
    fixed = fit_cannon(jittered, flux_scale=False, show_progress=False)
    inner = slice(10, -10)
    assert np.nanmedian(fixed.scatter[inner]) > 0.003  # about 1% of a flux of 0.5
    assert np.nanmedian(freed.scatter[inner]) < 0.1 * np.nanmedian(fixed.scatter[inner])
    assert freed.info["flux_scale"]["std"] == pytest.approx(0.01, rel=0.15)
    labels, _ = w.draw(20, seed=9)
    truth = w.rest_flux(labels, w.wave)[:, inner]
    got = freed.rest_flux(labels)[:, inner]
    # the shape is the world's; its scale is free up to a smooth function of the labels that the free scale
    # of the full-spectrum fit takes up (the train stars' scales are known only relative to the model's)
    per_star = (got * truth).sum(axis=1) / (truth * truth).sum(axis=1)
    np.testing.assert_allclose(per_star, 1.0, atol=0.01)
    np.testing.assert_allclose(got / per_star[:, None], truth, atol=3e-4)
    # without jitter the scales are 1 and the model is the one fitted without them
    assert model.info["flux_scale"]["std"] < 1e-4


def test_the_full_spectrum_fit_frees_each_star_s_flux_scale(world, model):
    w = world["world"]
    labels, z = w.draw(40, seed=13)
    factor = np.linspace(0.6, 1.5, 40)
    flux = w.observed(labels, z) * factor[:, None]
    pix = np.arange(len(w.wave))
    sigma = np.full(flux.shape, 0.01)
    result = fit_spectra(model, flux, sigma, pix)
    np.testing.assert_allclose(result.scale, factor, rtol=2e-3)
    assert np.abs(result.label("log_g") - labels[:, 1]).max() < 0.01
    fixed = fit_spectra(model, flux, sigma, pix, FitSettings(scale=False))
    np.testing.assert_array_equal(fixed.scale, 1.0)
    assert np.abs(fixed.label("log_g") - labels[:, 1]).max() > 0.1  # a 40% scale error is read as labels


def test_a_bad_cell_grid_is_refused(world):
    from featcache.common.errors import FeatcacheError

    with pytest.raises(FeatcacheError, match="--cannon-cells 4x4x4x4x4"):
        fit_cannon(world["train"], cells="4x4x4x4x4", show_progress=False)
    assert fit_cannon(world["train"], cells="auto", show_progress=False).info["cells"] is None  # 1500 < 10000


def test_max_train_fits_on_the_first_rows(world):
    capped = fit_cannon(world["train"], max_train=400, show_progress=False)
    assert capped.info["n"] == 400 and capped.info["rows"] == [0, 400]
    same = fit_cannon(world["train"], rows=(0, 400), show_progress=False)
    np.testing.assert_array_equal(capped.theta, same.theta)
