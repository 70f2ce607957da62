"""`featcache synth`: the layout the foundation reader expects, determinism, label ranges, noise regime."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featcache.spectra.pfsspec import PfsDataset
from featcache.synth import (
    C_KMS,
    LABEL_RANGES,
    N_PIXELS,
    N_UNIFORMS,
    generate_block,
    spectrum_rng,
    spectrum_seed,
    write_synth,
)

from ..helpers import DATASET, run_cli

ARRAYS = ("flux", "error", "noisy")


def _read_all(path) -> dict[str, np.ndarray]:
    with PfsDataset(path) as ds:
        out = {name: ds.read_raw(name, 0, ds.n_rows) for name in ds.arrays}
        out["params"] = ds.params()
    return out


def test_layout_is_read_by_the_foundation_reader(tmp_path):
    path = tmp_path / "s.h5"
    info = write_synth(path, 40, seed=3, block=16)
    assert info["n"] == 40 and path.exists() and not list(tmp_path.glob("*.partial"))  # no temporary left
    with PfsDataset(path) as ds:
        assert (ds.n_rows, ds.n_pixels) == (40, N_PIXELS)
        assert ds.wave[0] == 7100.0 and ds.wave[-1] == 8850.0
        assert sorted(ds.arrays) == sorted(ARRAYS) and ds.has_noisy
        assert ds.params_key == "dataset/params"
        for column in (*LABEL_RANGES, "mag", "redshift", "snr", "random_seed"):
            assert column in ds.label_names()
        flux, error, noisy = ds.read_flux(0, 40), ds.read_error(0, 40), ds.read_noisy(0, 40)
        assert flux.dtype == np.float32 and np.isfinite(flux).all() and np.isfinite(noisy).all()
        assert (error > 0).all() and np.isfinite(error).all()
        np.testing.assert_allclose(np.median(ds.read_raw("flux", 0, 40), axis=1), 0.5, atol=1e-6)
        assert ds.info().n_rows == 40
    with h5py.File(path, "r") as h5:
        assert h5["spectrumdataset/wave_edges"].shape == (N_PIXELS + 1,)
        assert h5["dataset/params/table"].shape == (40,)  # pandas 'table' format
        assert h5.attrs["seed"] == 3
    write_synth(tmp_path / "nf.h5", 5, seed=3, noise_free=True)
    with PfsDataset(tmp_path / "nf.h5") as ds:
        assert not ds.has_noisy and sorted(ds.arrays) == ["error", "flux"]


def test_same_seed_same_bits_and_blocks_do_not_matter(tmp_path):
    a = generate_block(7, 0, 30)
    b = generate_block(7, 0, 30)
    parts = [generate_block(7, s, e) for s, e in ((0, 1), (1, 13), (13, 30))]
    for name in ARRAYS:
        assert np.array_equal(a[name], b[name])
        assert np.array_equal(a[name], np.concatenate([p[name] for p in parts]))
    assert a["params"].equals(b["params"])
    # a block that starts later: row i only depends on (seed, i)
    late = generate_block(7, 20, 25)
    assert np.array_equal(late["flux"], a["flux"][20:25]) and np.array_equal(late["noisy"], a["noisy"][20:25])
    assert not np.array_equal(generate_block(8, 0, 3)["flux"], a["flux"][:3])

    serial, parallel = tmp_path / "serial.h5", tmp_path / "parallel.h5"
    write_synth(serial, 30, seed=7, block=30)
    write_synth(parallel, 30, seed=7, block=7, workers=2)
    one, two = _read_all(serial), _read_all(parallel)
    for name in ARRAYS:
        assert np.array_equal(one[name], two[name]) and np.array_equal(one[name], a[name])
    assert one["params"].equals(two["params"])


def test_labels_in_range_and_seeds_recorded():
    out = generate_block(11, 100, 400, rv_max=150.0)
    params = out["params"]
    assert list(params.index) == list(range(100, 400))
    for name, (lo, hi) in LABEL_RANGES.items():
        values = params[name].to_numpy()
        assert values.min() >= lo and values.max() <= hi
        assert values.max() - values.min() > 0.8 * (hi - lo)  # uniform over the range
    assert np.abs(params["redshift"]).max() <= 150.0 / C_KMS
    assert (params["mag"] == 21.5).all()
    assert params["random_seed"].tolist() == [spectrum_seed(11, i) for i in range(100, 400)]
    # the stored noisy is flux + N(0,1) x error, drawn from the spectrum's own random_seed
    gen = spectrum_rng(int(params["random_seed"].iloc[5]))
    gen.random(N_UNIFORMS)
    eps = gen.standard_normal(N_PIXELS, dtype=np.float32)
    np.testing.assert_array_equal(out["noisy"][5], (out["flux"][5] + eps * out["error"][5]).astype(np.float32))
    assert generate_block(11, 100, 102, noise_free=True)["noisy"] is None


def test_calibration_smoke_noise_regime():
    """500 spectra: the real set's error profile, and the per-pixel S/N that follows from it."""
    out = generate_block(5, 0, 500)
    flux, error, noisy = out["flux"].astype(np.float64), out["error"], out["noisy"]
    snr = np.linalg.norm(flux, axis=1) / np.linalg.norm(noisy - flux, axis=1)
    median_error = np.median(error, axis=0)
    floor = np.median(median_error)
    # continuum 0.5 and an error floor of 0.15-0.18 imply ||flux||/||noise|| ~ 2.5-3.2 (see data/README.md)
    assert 2.4 <= np.median(snr) <= 3.2
    assert np.median(out["params"]["snr"]) == pytest.approx(np.median(snr), rel=0.05)
    assert 0.15 <= floor <= 0.18
    assert np.median(median_error[:300]) > np.median(median_error[-300:])  # rises to the blue
    assert 0.30 <= median_error.max() <= 0.40  # sky-line spikes
    assert 0.10 <= (median_error > 1.1 * floor).mean() <= 0.20
    assert np.std((noisy - flux) / error) == pytest.approx(1.0, abs=0.01)
    # fainter means noisier; the noise-free flux does not depend on the magnitude
    faint = generate_block(5, 0, 50, mag=22.5)
    assert np.array_equal(faint["flux"], out["flux"][:50])
    assert np.median(faint["error"]) > 2 * floor


def test_noise_regime_matches_the_real_fixture():
    """tests/fixtures/dataset.h5 was written by the real simulator at mag 21.5 (its snr column says 7.5): synth
    at mag 21.5 must reproduce its measured S/N, continuum level and error floor, not the nominal column."""
    with PfsDataset(DATASET) as ds:
        real_flux, real_error = ds.read_flux(0, ds.n_rows), ds.read_error(0, ds.n_rows)
        real_noisy = ds.read_noisy(0, ds.n_rows)
        assert np.all(ds.params()["snr"] == 7.5)
    real_snr = np.median(np.linalg.norm(real_flux, axis=1) / np.linalg.norm(real_noisy - real_flux, axis=1))
    out = generate_block(7, 0, 200)
    flux = out["flux"].astype(np.float64)
    synth_snr = np.median(np.linalg.norm(flux, axis=1) / np.linalg.norm(out["noisy"] - flux, axis=1))
    assert 2.5 < real_snr < 3.0  # what ||flux|| / ||noisy - flux|| gives on real files at "snr 7.5"
    assert synth_snr == pytest.approx(real_snr, rel=0.05)
    assert np.median(out["flux"]) == pytest.approx(np.median(real_flux), rel=0.1)
    assert np.median(out["error"]) == pytest.approx(np.median(real_error), rel=0.1)


def test_cli_synth_writes_and_reports(tmp_path):
    path = tmp_path / "cli.h5"
    result = run_cli("synth", path, "--n", "12", "--seed", "2", "--block-size", "5", "--noise-free")
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"wrote {path}: 12 spectra") and "S/N" in lines[-1]
    with PfsDataset(path) as ds:
        assert ds.n_rows == 12 and not ds.has_noisy
    assert "Example" in run_cli("synth", "--help").output
    made = run_cli("synth", tmp_path / "new" / "x.h5", "--n", "3", "--seed", "1")  # a missing folder is made
    assert made.exit_code == 0 and (tmp_path / "new" / "x.h5").is_file()
    (tmp_path / "plain").write_text("")
    bad = run_cli("synth", tmp_path / "plain" / "x.h5", "--n", "3", "--seed", "1", check=False)
    assert bad.exit_code == 2 and "plain: is a file" in bad.output


def test_noise_free_flux_is_the_written_flux():
    from featcache.synth import noise_free_flux

    block = generate_block(5, 10, 80)
    params = block["params"]
    labels = {name: params[name].to_numpy() for name in LABEL_RANGES}
    np.testing.assert_array_equal(noise_free_flux(labels, params["redshift"].to_numpy()), block["flux"])
    with pytest.raises(Exception, match="missing labels"):
        noise_free_flux({"T_eff": labels["T_eff"]}, params["redshift"].to_numpy())
