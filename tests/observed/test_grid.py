"""Onto the encoder's grid: the resampling against hand calculations (flux conserved, errors propagated with the
covariance planes), the unit and medium conversions, the normalisation and the bad-pixel rule."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.common.errors import FeatcacheError
from featcache.observed.grid import C_ANGSTROM, NJY_CGS, GridOptions, Reference, to_reference_grid
from featcache.observed.masks import MaskPlanes
from featcache.observed.products import ObservedSpectrum, Target
from featcache.observed.resample import rebin_matrix, resample
from featcache.observed.wavelength import air_to_vacuum, convert, edges_from_centres, vacuum_to_air

from .pfs_files import PLANES


def test_rebin_hand_calculation():
    # source pixels [0,1], [1,2], [2,3]; target bins [0.5,1.5], [1.5,2.5]: each half of two pixels
    w = rebin_matrix(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.5])).toarray()
    np.testing.assert_allclose(w, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    f = np.array([2.0, 4.0, 8.0])
    v = np.array([1.0, 4.0, 9.0])
    c1 = np.array([0.5, -1.0, 0.0])   # Cov(0,1) = 0.5, Cov(1,2) = -1 (last element padding)
    out, planes = resample(f, np.stack([v, c1]), rebin_matrix(np.array([0.0, 1, 2, 3]), np.array([0.5, 1.5, 2.5])),
                           n_planes=2)
    np.testing.assert_allclose(out, [3.0, 6.0])
    np.testing.assert_allclose(planes[0], [(1 + 4 + 2 * 0.5) / 4, (4 + 9 - 2 * 1.0) / 4])
    # Cov(F0, F1) = 0.25 (Cov(f0,f1) + Cov(f0,f2) + Var(f1) + Cov(f1,f2)) = 0.25 (0.5 + 0 + 4 - 1)
    np.testing.assert_allclose(planes[1], [0.25 * 3.5, 0.0])


def test_flux_conserved():
    rng = np.random.default_rng(3)
    src = np.cumsum(rng.uniform(0.7, 0.9, 400)) + 7000.0        # uneven source pixels
    dst = np.linspace(src[20], src[-20], 517)                      # target bins inside the source
    w = rebin_matrix(src, dst)
    constant = w @ np.full(src.size - 1, 3.25)
    np.testing.assert_allclose(constant, 3.25, rtol=1e-6, atol=0)  # a constant stays that constant
    f = rng.uniform(0, 10, src.size - 1)
    # the integral over the span the target covers is kept (the source pixels cut at its ends count in part)
    inside = np.clip(np.minimum(src[1:], dst[-1]) - np.maximum(src[:-1], dst[0]), 0, None)
    np.testing.assert_allclose(np.sum((w @ f) * np.diff(dst)), np.sum(f * inside), rtol=1e-10)


def test_air_vacuum_and_units():
    # H alpha and the Ca II triplet: NIST's vacuum and air wavelengths (A, to 0.01 A)
    vac = np.array([6564.61, 8500.36, 8544.44, 8664.52])
    air = np.array([6562.80, 8498.02, 8542.09, 8662.14])
    np.testing.assert_allclose(vacuum_to_air(vac), air, atol=0.01)
    np.testing.assert_allclose(air_to_vacuum(vacuum_to_air(vac)), vac, atol=1e-9)
    np.testing.assert_allclose(convert(np.array([800.0]), unit_from="nm", medium_from="vacuum", unit_to="Angstrom",
                                       medium_to="air"), vacuum_to_air(np.array([8000.0])))
    with pytest.raises(FeatcacheError, match="wrong unit"):
        vacuum_to_air(np.array([800.0]))  # nm taken for Angstrom


def spectrum(wave_nm, flux, variance, mask=None, covar1=None) -> ObservedSpectrum:
    planes = [variance] + ([covar1] if covar1 is not None else [])
    return ObservedSpectrum(0, Target(1, 2, 0.0, 0.0, 1), np.asarray(wave_nm, float), np.asarray(flux, float),
                            np.stack(planes).astype(float),
                            np.zeros(len(flux), np.int64) if mask is None else mask, None, MaskPlanes(PLANES))


def reference(wave_a, medium="air", flux_density="f_lambda") -> Reference:
    wave_a = np.asarray(wave_a, float)
    return Reference(None, wave_a, edges_from_centres(wave_a), medium, flux_density, "test")  # type: ignore[arg-type]


def test_constant_f_nu_onto_an_f_nu_grid():
    wave_nm = np.linspace(700, 900, 4001)                          # 0.05 nm pixels
    ref = reference(np.linspace(7200, 8700, 3001), medium="vacuum", flux_density="f_nu")
    g = to_reference_grid(spectrum(wave_nm, np.full(4001, 1234.5), np.full(4001, 4.0)), ref,
                          GridOptions(normalise="none"))
    np.testing.assert_allclose(g.flux, 1234.5, rtol=1e-6)          # flux conserved to 1e-6 (float32 storage)
    # each 0.5 A target bin averages 1 source pixel of 0.5 A (or parts of two): sigma^2 = sum of w^2 var
    w = rebin_matrix(edges_from_centres(wave_nm * 10), ref.edges)
    expected = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel() * 4.0)
    np.testing.assert_allclose(g.error, expected, rtol=1e-6)
    assert g.n_bad == g.n_uncovered == 0 and g.snr > 0


def test_f_lambda_conversion_and_median_normalisation():
    wave_nm = np.linspace(700, 900, 4001)
    ref = reference(np.linspace(7200, 8700, 1501), medium="vacuum")
    fnu = np.full(4001, 1000.0)
    g = to_reference_grid(spectrum(wave_nm, fnu, np.full(4001, 1.0)), ref, GridOptions(normalise="none"))
    expected = 1000.0 * NJY_CGS * C_ANGSTROM / ref.wave ** 2          # f_lambda = f_nu c / lambda^2
    np.testing.assert_allclose(g.flux, expected, rtol=1e-5)
    g = to_reference_grid(spectrum(wave_nm, fnu, np.full(4001, 1.0)), ref, GridOptions())
    assert abs(np.median(g.flux) - 0.5) < 1e-6                      # median-normalised to 0.5
    np.testing.assert_allclose(g.flux / np.median(g.flux), expected / np.median(expected), rtol=1e-5)


def test_medium_moves_a_line_to_its_air_wavelength():
    wave_nm = np.linspace(790, 810, 2001)                          # 0.1 A pixels
    flux = np.ones(2001)
    flux[1000] = 0.0                                               # a one-pixel line at 800.000 nm vacuum
    ref = reference(np.linspace(7950, 8050, 1001))                 # air grid, 0.1 A
    g = to_reference_grid(spectrum(wave_nm, flux, np.full(2001, 0.01)), ref, GridOptions(normalise="none"))
    line = ref.wave[np.argmin(g.flux)]
    assert abs(line - vacuum_to_air(np.array([8000.0]))[0]) < 0.1    # 7997.80 A in air, not 8000


def test_bad_pixel_rule_and_uncovered_pixels():
    wave_nm = np.linspace(700, 800, 1001)                          # 1 A pixels
    flux = np.linspace(1.0, 2.0, 1001)
    mask = np.zeros(1001, np.int64)
    mask[500] = 1 << PLANES["CR"]
    flux[500] = 1e6                                                # the cosmic ray
    ref = reference(np.arange(7200.0, 7800.0, 1.0) + 0.25, medium="vacuum", flux_density="f_nu")
    g = to_reference_grid(spectrum(wave_nm, flux, np.full(1001, 0.04), mask), ref,
                          GridOptions(normalise="none", bad_error_factor=10.0))
    bad = np.flatnonzero(g.mask)
    assert bad.tolist() == [299, 300]                              # the two target bins touching pixel 500
    # flux: linear interpolation of the good neighbours; error: 10 x the median good error
    np.testing.assert_allclose(g.flux[bad], np.interp(bad, [298, 301], g.flux[[298, 301]]), rtol=1e-6)
    good_error = np.median(np.delete(g.error, bad))
    np.testing.assert_allclose(g.error[bad], 10 * good_error, rtol=1e-6)
    assert np.isfinite(g.flux).all() and np.isfinite(g.error).all() and g.flux.max() < 3
    # a reference grid reaching beyond the data: counted as uncovered, filled by the same rule
    ref = reference(np.arange(7950.0, 8100.0, 1.0), medium="vacuum", flux_density="f_nu")
    g = to_reference_grid(spectrum(wave_nm, flux, np.full(1001, 0.04), mask), ref,
                          GridOptions(normalise="none", uncovered="mask", max_bad_fraction=1.0))
    # the data's last pixel is centred on 8000 A, so its edge is 8000.5: the bins of 8001-8099 A are uncovered
    assert g.n_uncovered == 99 and (g.mask[-99:] == 2).all() and not g.mask[:-99].any()
    assert np.isfinite(g.flux).all() and (g.error[-99:] == 10 * np.median(g.error[:-99])).all()
    g = to_reference_grid(spectrum(wave_nm, flux, np.full(1001, 0.04), mask), ref, GridOptions(uncovered="mask"))
    assert g.skipped.startswith("99 of 150 reference pixels bad or uncovered")
