"""The one input stage: read_inputs applies the reading rules, the noise over all pixels, then the mask, in
that order, for extract, finetune and pretrain alike (checked against a hand computation)."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.common.errors import FeatcacheError
from featcache.spectra.inputs import Inputs, NoiseSpec, read_inputs
from featcache.spectra.noise import standard_normal_rows
from featcache.spectra.pfsspec import PfsDataset, apply_flux_rules, fill_error_nans

from ..helpers import DATASET, MASK


def test_generated_noise_by_hand():
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        got = read_inputs(ds, 2, 7, mask, NoiseSpec("generated", seed=5, level=0.5), stream=3, need_flux=True)
        flux = apply_flux_rules(ds.read_raw("flux", 2, 7))
        error = fill_error_nans(ds.read_raw("error", 2, 7))
    eps = standard_normal_rows(5, np.arange(2, 7), flux.shape[1], stream=3)
    noisy = flux + eps * (error * np.float32(0.5))  # noise over all 4096 pixels, then the mask
    np.testing.assert_allclose(got.noisy, noisy[:, mask], rtol=1e-6)
    np.testing.assert_array_equal(got.sigma, (error * np.float32(0.5))[:, mask])
    np.testing.assert_array_equal(got.flux, flux[:, mask])
    assert got.encoder_input(True).shape == (5, 2, int(mask.sum()))
    assert got.encoder_input(False).shape == (5, 1, int(mask.sum()))


def test_stored_noise_uses_the_file_and_its_error(reference):
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        got = read_inputs(ds, 0, 12, mask, NoiseSpec("stored"))
    np.testing.assert_allclose(got.noisy, reference["noisy_masked"], atol=1e-6)
    np.testing.assert_allclose(got.sigma, reference["error_masked"], atol=1e-6)
    assert got.flux is None


def test_blocks_concatenate_to_the_whole():
    noise = NoiseSpec("generated", seed=1)
    with PfsDataset(DATASET) as ds:
        whole = read_inputs(ds, 0, 12, None, noise, need_flux=True)
        parts = Inputs.concatenate([read_inputs(ds, a, b, None, noise, need_flux=True)
                                    for a, b in ((0, 5), (5, 6), (6, 12))])
    for name in ("noisy", "sigma", "flux"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name))


@pytest.mark.parametrize("spec,fragment", [
    (NoiseSpec("fresh"), "--noise fresh: expected generated or stored"),
    (NoiseSpec(level=-1.0), "--noise-level must be a positive finite number"),
    (NoiseSpec(level=float("nan")), "--noise-level must be a positive finite number"),
    (NoiseSpec(level=float("inf")), "--noise-level must be a positive finite number"),
    (NoiseSpec(seed=-1), "--noise-seed must be an integer"),
])
def test_bad_noise_settings(spec, fragment):
    with pytest.raises(FeatcacheError, match=fragment):
        spec.validate()
