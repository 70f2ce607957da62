"""Reading pfsspec files with the original rules, masks, and counter-based noise."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featcache.common.errors import FeatcacheError
from featcache.spectra.mask import load_mask_file, parse_mask_spec, quantile_mask, streamed_median
from featcache.spectra.noise import add_noise, fresh_stream, standard_normal_rows
from featcache.spectra.pfsspec import PfsDataset, apply_flux_rules, fill_error_nans
from featcache.spectra.splits import parse_split_spec, parse_split_specs

from ..helpers import DATASET, MASK, write_pfs


def test_fixture_reading_rules_and_mask(reference):
    mask = np.load(MASK)
    with PfsDataset(DATASET) as ds:
        assert (ds.n_rows, ds.n_pixels) == (12, 4096) and ds.has_noisy
        assert ds.wave[0] == pytest.approx(7100) and ds.wave[-1] == pytest.approx(8850)
        raw_flux = ds.read_raw("flux", 0, 1)
        assert (raw_flux < 0).any()  # the fixture's negative flux at the start of spectrum 0
        assert (ds.read_flux(0, 12) >= 0).all()
        assert np.isnan(ds.read_raw("error", 0, 12)).any()
        error = ds.read_error(0, 12)
        assert np.isfinite(error).all()
        noisy = ds.read_noisy(0, 12)
        np.testing.assert_allclose(noisy[:, mask], reference["noisy_masked"], atol=1e-6)
        np.testing.assert_allclose(error[:, mask], reference["error_masked"], atol=1e-6)
        assert set(ds.label_names()) >= {"T_eff", "log_g", "M_H", "a_M", "C_M"}
        np.testing.assert_array_equal(quantile_mask(ds.read_error, ds.n_rows, ds.n_pixels, 0.85), mask)


def test_flux_rules_by_hand():
    out = apply_flux_rules(np.array([[np.nan, -0.5, 0.25, np.inf]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.25, 0.0]])


def test_error_nan_takes_nearest_valid_neighbour():
    err = np.array([[np.nan, np.nan, 1.0, 2.0, np.nan, np.nan, np.nan, 5.0, np.nan]], dtype=np.float32)
    # pixel 4 is nearer 2.0 (left), pixel 5 ties (left wins), pixel 6 nearer 5.0, edges take their side
    np.testing.assert_array_equal(fill_error_nans(err), [[1, 1, 1, 2, 2, 2, 5, 5, 5]])


def test_row_without_valid_error_is_an_error():
    err = np.array([[0.1, 0.2], [np.nan, np.nan]], dtype=np.float32)
    with pytest.raises(FeatcacheError, match="row 11 has no valid error"):
        fill_error_nans(err, first_row=10)


def test_streamed_median_is_exact():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((999, 40))
    data[:, 0] = 1.0  # a constant column
    data[:600, 1] = 0.5  # heavy ties
    data[:, 2] = np.round(data[:, 2], 1)
    for gather_limit in (10, 1 << 25):  # forces the multi-level narrowing, then the direct path
        got = streamed_median(lambda s, e: data[s:e], *data.shape, block_rows=100, bins=8,
                              gather_limit=gather_limit)
        np.testing.assert_array_equal(got, np.median(data, axis=0))
    even = data[:998]
    got = streamed_median(lambda s, e: even[s:e], *even.shape, block_rows=64)
    np.testing.assert_array_equal(got, np.median(even, axis=0))


def test_params_table_fixed_and_single_pandas_object(tmp_path):
    for fmt in ("table", "fixed"):
        path = write_pfs(tmp_path / f"{fmt}.h5", fmt=fmt)
        with PfsDataset(path) as ds:
            assert ds.label_names() == ["T_eff", "log_g"]  # 'name' is not numeric
            assert ds.labels(["log_g"], 2, 4)["log_g"].shape == (2,)
    other = write_pfs(tmp_path / "other.h5", params_key="meta/stars")
    with PfsDataset(other) as ds:
        assert ds.params_key == "meta/stars" and "log_g" in ds.label_names()


def test_unknown_label_lists_available(tmp_path):
    with PfsDataset(write_pfs(tmp_path / "a.h5")) as ds, \
            pytest.raises(FeatcacheError, match="unknown label 'logg'; available: T_eff, log_g"):
        ds.labels(["logg"])


@pytest.mark.parametrize("case,fragment", [
    ("missing_file", "no such file"),
    ("missing_key", "missing key 'dataset/arrays/error/value'"),
    ("shape", "shape mismatch"),
    ("not_hdf5", "not an HDF5 file"),
])
def test_bad_files(tmp_path, case, fragment):
    path = tmp_path / "bad.h5"
    if case == "missing_key":
        write_pfs(path)
        with h5py.File(path, "a") as f:
            del f["dataset/arrays/error"]
    elif case == "shape":
        write_pfs(path, flux_shape=(6, 63))
    elif case == "not_hdf5":
        path.write_text("hello")
    with pytest.raises(FeatcacheError, match=fragment):
        PfsDataset(path)


def test_mask_specs(tmp_path):
    assert parse_mask_spec("quantile:0.85").ratio == 0.85
    assert parse_mask_spec("none").kind == "none"
    assert parse_mask_spec("m.npy").kind == "file"
    for bad in ("quantile:2", "quantile:x", "median"):
        with pytest.raises(FeatcacheError, match="--mask"):
            parse_mask_spec(bad)
    np.save(tmp_path / "short.npy", np.ones(100, dtype=bool))
    with pytest.raises(FeatcacheError, match=r"has shape \(100,\), expected \(4096,\)"):
        load_mask_file(tmp_path / "short.npy", 4096)
    assert load_mask_file(MASK, 4096).sum() == 3481


def test_split_specs():
    spec = parse_split_spec("val=data/all.h5:100:200")
    assert (spec.name, str(spec.path), spec.resolve(1000)) == ("val", "data/all.h5", (100, 200))
    assert parse_split_spec("test=t.h5:-10:").resolve(50) == (40, 50)
    with pytest.raises(FeatcacheError, match="has no rows"):
        parse_split_spec("train=a.h5:5:5").resolve(10)
    with pytest.raises(FeatcacheError, match="given twice"):
        parse_split_specs(["train=a.h5", "train=b.h5"])
    with pytest.raises(FeatcacheError, match="NAME=FILE"):
        parse_split_spec("a.h5")


def test_noise_independent_of_batching():
    rows = np.arange(100, 164)
    whole = standard_normal_rows(42, rows, 4096)
    for batch in (1, 7, 64):
        parts = np.concatenate([standard_normal_rows(42, rows[i:i + batch], 4096)
                                for i in range(0, len(rows), batch)])
        assert np.array_equal(parts, whole)
    halves = np.concatenate([standard_normal_rows(42, rows[:32], 4096), standard_normal_rows(42, rows[32:], 4096)])
    assert np.array_equal(halves, whole)
    shuffled = rows[::-1]
    assert np.array_equal(standard_normal_rows(42, shuffled, 4096)[::-1], whole)
    assert not np.array_equal(standard_normal_rows(43, rows, 4096), whole)
    assert not np.array_equal(standard_normal_rows(42, rows, 4096, stream=1), whole)
    assert not np.array_equal(standard_normal_rows(42, rows, 4096, stream=fresh_stream(0)), whole)
    assert abs(whole.mean()) < 0.01 and abs(whole.std() - 1) < 0.01


def test_add_noise_formula():
    flux = np.full((2, 8), 0.5, np.float32)
    error = np.full((2, 8), 0.2, np.float32)
    noisy, sigma = add_noise(flux, error, np.array([3, 4]), seed=1, noise_level=2.0)
    eps = standard_normal_rows(1, np.array([3, 4]), 8)
    np.testing.assert_allclose(noisy, 0.5 + eps * 0.4, rtol=1e-6)
    np.testing.assert_allclose(sigma, 0.4)
