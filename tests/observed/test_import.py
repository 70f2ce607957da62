"""featcache import end to end on the tests' own files (pfsspec output, provenance, labels, refusals), and the
library writer checked against the reader: an export onto the source's own pixels comes back exactly."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd

from featcache.observed.importer import read_provenance
from featcache.observed.products import read_product
from featcache.observed.writer import ExportOptions, export_pfsspec
from featcache.spectra.pfsspec import PfsDataset
from tests.helpers import assert_cli_error, run_cli

from .pfs_files import PLANES, write_coadd, write_object

WAVE_NM = np.linspace(700.0, 900.0, 2001)          # 1 A pixels, vacuum


def reference(path, medium: str | None = "air"):
    """A pfsspec reference: 7200-8600 A on 0.5 A pixels, stating its conventions unless medium is None."""
    wave = np.arange(7200.0, 8600.0, 0.5)
    with h5py.File(path, "w") as h5:
        h5["spectrumdataset/wave"] = wave
        h5["dataset/arrays/flux/value"] = np.full((2, wave.size), 0.5, np.float32)
        h5["dataset/arrays/error/value"] = np.full((2, wave.size), 0.1, np.float32)
        if medium:
            h5.attrs["wave_medium"], h5.attrs["flux_density"] = medium, "f_lambda"
    return path


def coadd(path, n: int = 4):
    rng = np.random.default_rng(0)
    flux = rng.normal(1000.0, 20.0, (n, WAVE_NM.size))
    variance = np.full((n, WAVE_NM.size), 400.0)
    mask = np.zeros((n, WAVE_NM.size), np.int64)
    mask[0, 700] = 1 << PLANES["CR"]
    targets = [{"catId": 10, "objId": i + 1, "ra": 150 + i / 1000, "dec": 2.0, "targetType": 1} for i in range(n)]
    targets[-1]["targetType"] = 2     # a sky fibre: not imported by default
    return write_coadd(path, wave_nm=WAVE_NM, flux=flux, variance=variance, mask=mask, targets=targets)


def test_import_writes_a_pfsspec_file(tmp_path):
    ref = reference(tmp_path / "ref.h5")
    c = coadd(tmp_path / "pfsCoadd-a.fits")
    o = write_object(tmp_path / "pfsObject-b.fits", flux=np.full(2001, 500.0), variance=np.full(2001, 25.0),
                     mask=np.zeros(2001, np.int64), cat_id=10, obj_id=1, ra=150.0, dec=2.0, wcs=(700.0, 900.0, 2001))
    pd.DataFrame({"catId": [10, 10], "objId": [1, 2], "logg": [4.4, 2.2]}).to_csv(tmp_path / "cat.csv", index=False)
    out = tmp_path / "observed.h5"
    result = run_cli("import", c, o, "--reference", ref, "--out", out, "--catalogue", tmp_path / "cat.csv",
                     "--label", "logg=log_g")
    assert "4 spectra -> " in result.output and "1 of other target types" in result.output
    assert "3 of 4 targets matched by id; 1 unmatched" in result.output
    assert "1 (catId, objId) occur more than once" in result.output   # (10, 1) in both files
    with PfsDataset(out) as ds:
        assert ds.observed and ds.has_noisy and ds.n_rows == 4
        np.testing.assert_array_equal(ds.wave, np.arange(7200.0, 8600.0, 0.5))
        noisy, error = ds.read_noisy(0, 4), ds.read_error(0, 4)
        params = ds.params()
    assert np.isfinite(noisy).all() and (error > 0).all()
    np.testing.assert_array_equal(params["objId"], [1, 2, 3, 1])
    np.testing.assert_array_equal(params["log_g"], [4.4, 2.2, np.nan, 4.4])
    assert params["n_bad_pixels"].tolist()[0] > 0 and params["n_bad_pixels"].tolist()[1:] == [0, 0, 0]
    with h5py.File(out) as h5:
        mask = h5["dataset/arrays/mask/value"][0]
        assert h5.attrs["wave_medium"] == "air"
    assert set(np.unique(mask)) == {0, 1}
    assert abs(np.median(noisy[0][mask == 0]) - 0.5) < 1e-6     # median-normalised over the good pixels
    np.testing.assert_allclose(np.median(noisy[1:], axis=1), 0.5, atol=1e-6)
    provenance = read_provenance(out)
    assert [s["product"] for s in provenance["sources"]] == ["pfsCoadd", "pfsObject"]
    assert provenance["reference"]["medium"] == "air" and "CR" in provenance["grid"]["reject_planes"]
    assert "f_lambda" in provenance["conversions"]["flux"] and provenance["labels"]["report"]["unmatched"] == 1
    # the file's grid is air: an import onto it in vacuum is refused (the file states air)
    assert_cli_error(run_cli("import", c, "--reference", ref, "--out", tmp_path / "x.h5", "--reference-medium",
                             "vacuum", check=False), "--reference-medium vacuum", "states air")
    assert_cli_error(run_cli("import", c, "--reference", ref, "--out", out, check=False), "exists")


def test_refusals_leave_nothing(tmp_path):
    c = coadd(tmp_path / "pfsCoadd-a.fits")
    out = tmp_path / "o.h5"
    silent = reference(tmp_path / "silent.h5", medium=None)
    assert_cli_error(run_cli("import", c, "--reference", silent, "--out", out, check=False),
                     "does not state its medium", "--reference-medium")
    wide = tmp_path / "wide.h5"
    with h5py.File(wide, "w") as h5:
        h5["spectrumdataset/wave"] = np.arange(7000.0, 9200.0, 1.0)
        h5["dataset/arrays/flux/value"] = np.zeros((1, 2200), np.float32)
        h5["dataset/arrays/error/value"] = np.ones((1, 2200), np.float32)
        h5.attrs["wave_medium"], h5.attrs["flux_density"] = "vacuum", "f_lambda"
    result = run_cli("import", c, "--reference", wide, "--out", out, check=False)
    assert_cli_error(result, "(10, 1)", "reference pixels", "uncovered", "and 2 more targets", "--uncovered mask")
    assert not out.exists() and not list(tmp_path.glob(".o.h5*"))
    plain = tmp_path / "plain.fits"
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros(3)).writeto(plain)
    assert_cli_error(run_cli("import", plain, "--reference", wide, "--out", out, check=False),
                     "not a PFS spectra product")
    # with --uncovered mask the counts are reported and the spectra kept
    run_cli("import", c, "--reference", wide, "--out", out, "--uncovered", "mask", "--max-bad-fraction", "0.2")
    with PfsDataset(out) as ds:
        assert ds.params()["n_uncovered_pixels"].tolist() == [199, 199, 199]  # 9001-9199 A (data end at 9000.5)


def test_generated_noise_refused_on_observed(tmp_path):
    from tests.helpers import CKPT, MASK

    ref = reference(tmp_path / "ref.h5")
    out = tmp_path / "observed.h5"
    run_cli("import", coadd(tmp_path / "pfsCoadd-a.fits"), "--reference", ref, "--out", out)
    result = run_cli("extract", "--ckpt", CKPT, "--data", f"obs={out}", "--mask", MASK, "--out",
                     tmp_path / "c.zarr", check=False)
    assert_cli_error(result, "observed spectra", "--noise stored")
    assert not (tmp_path / "c.zarr").exists()


def test_library_writer_round_trip(tmp_path):
    """Export a pfsspec file onto its own pixels (in vacuum nm) and import it back onto the same grid: the
    resampling is the identity, so the spectra come back to float32 precision (times the normalisation)."""
    rng = np.random.default_rng(1)
    wave = np.linspace(7100.0, 8850.0, 300)
    source = tmp_path / "s.h5"
    flux = 0.5 + 0.1 * np.sin(wave / 40.0)[None, :] * rng.uniform(0.5, 1.5, (5, 1))
    error = rng.uniform(0.05, 0.1, (5, 300))
    with h5py.File(source, "w") as h5:
        h5["spectrumdataset/wave"] = wave
        h5["dataset/arrays/flux/value"] = flux.astype(np.float32)
        h5["dataset/arrays/error/value"] = error.astype(np.float32)
        h5["dataset/arrays/noisy/value"] = flux.astype(np.float32)
        h5.attrs["wave_medium"], h5.attrs["flux_density"] = "air", "f_lambda"
    pd.DataFrame({"log_g": rng.uniform(1, 5, 5), "mag": np.full(5, 21.0)}).to_hdf(source, key="dataset/params",
                                                                                    format="table", mode="a")
    info = export_pfsspec(source, tmp_path / "pfsCoadd-x.fits", ExportOptions(grid="native",
                                                                             catalogue=tmp_path / "cat.csv"))
    assert info["covered_pixels"] == 300
    product = read_product(tmp_path / "pfsCoadd-x.fits")
    s = product.spectra[0]
    assert s.covariance.shape == (2, 300) and s.target.key == (1, 1)
    ab = 3631e9 * 10 ** (-0.4 * 21.0)
    assert abs(np.median(s.flux) / ab - 1) < 0.05                  # nJy at the AB flux of mag 21
    run_cli("import", tmp_path / "pfsCoadd-x.fits", "--reference", source, "--out", tmp_path / "back.h5",
            "--catalogue", tmp_path / "cat.csv", "--label", "log_g")
    with PfsDataset(tmp_path / "back.h5") as back:
        noisy, err, params = back.read_noisy(0, 5), back.read_error(0, 5), back.params()
    scale = np.median(flux, axis=1, keepdims=True) / 0.5
    np.testing.assert_allclose(noisy * scale, flux, rtol=2e-6)
    np.testing.assert_allclose(err * scale, error, rtol=2e-6)
    with PfsDataset(source) as ds:
        np.testing.assert_allclose(params["log_g"], ds.params()["log_g"])
    # pfsObject files from the library writer: the WCS of a uniform grid, read back by the data model's rule
    export_pfsspec(source, tmp_path / "objects", ExportOptions(product="pfsObject", grid="mr", stop=2))
    files = sorted((tmp_path / "objects").glob("pfsObject-*.fits"))
    assert len(files) == 2
    obj = read_product(files[0])
    assert obj.wavelength_source.startswith("WCS") and obj.spectra[0].wavelength[0] == np.float64(695.0)
    assert json.loads(run_cli("inspect", files[0], "--json").output)["product"] == "pfsObject"
