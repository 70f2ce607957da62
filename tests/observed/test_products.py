"""Reading the PFS products as written per the spec (the tests' own writer): wavelengths and the WCS
convention, decoded mask planes, identity, observations, old layouts, and the one-line refusal of other files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from featcache.common.errors import FeatcacheError
from featcache.observed.masks import DEFAULT_REJECT, MaskPlanes, parse_reject
from featcache.observed.products import decode_string, read_product
from featcache.observed.wavelength import fits_standard_wcs_wavelength, wcs_wavelength
from tests.helpers import assert_cli_error, run_cli

from .pfs_files import PLANES, write_coadd, write_object

WAVE = np.linspace(600.0, 700.0, 101)   # nm, 1 nm pixels
TARGETS = [{"catId": 10, "objId": 2**40 + 7, "ra": 150.1, "dec": 2.2, "targetType": 1},
           {"catId": 10, "objId": 8, "ra": 150.2, "dec": 2.3, "targetType": 3},
           {"catId": 3, "objId": 8, "ra": 150.3, "dec": 2.4, "targetType": 2}]


def coadd_arrays(n: int = 3, p: int = 101):
    rng = np.random.default_rng(0)
    flux = rng.uniform(100, 200, (n, p))
    variance = rng.uniform(1, 4, (n, p))
    mask = np.zeros((n, p), dtype=np.int64)
    mask[0, 5] = 1 << PLANES["CR"]
    mask[0, 6] = (1 << PLANES["REFLINE"]) | (1 << PLANES["INTRP"])   # informational planes: kept
    mask[1, :3] = 1 << PLANES["NO_DATA"]
    variance[1, :3] = np.inf
    flux[1, :3] = 0.0
    mask[2, 50] = 1 << 9          # a bit no plane declares
    flux[2, 60] = np.nan          # NaN flux with no plane set: unusable all the same
    return flux, variance, mask


def test_coadd_reads_every_part(tmp_path):
    flux, variance, mask = coadd_arrays()
    covar1 = np.full_like(variance, 0.25)
    path = write_coadd(tmp_path / "pfsCoadd_PFS_x_10_0_run.fits", wave_nm=WAVE, flux=flux, variance=variance,
                       mask=mask, targets=TARGETS, covar1=covar1, hierarch_target=2)
    product = read_product(path)
    assert (product.product, product.product_basis, product.layout) == ("pfsCoadd", "file name", "PfsTargetSpectra")
    assert product.damd_ver == 1 and product.versions == {"VERSION_DRP_STELLA": "w.2025.20"}
    assert len(product) == 3
    for i, s in enumerate(product.spectra):
        np.testing.assert_array_equal(s.wavelength, WAVE)
        np.testing.assert_allclose(s.flux, flux[i].astype(np.float32))
        np.testing.assert_allclose(s.variance, variance[i].astype(np.float32))
        np.testing.assert_allclose(s.covariance[1], 0.25)
        np.testing.assert_array_equal(s.mask, mask[i])
        assert dict(s.planes.bits) == PLANES  # from the METADATA YAML, HIERARCH-prefixed for target 2
        assert s.target.key == (TARGETS[i]["catId"], TARGETS[i]["objId"])
        assert (s.target.ra, s.target.dec, s.target.patch, s.target.tract) == (TARGETS[i]["ra"], TARGETS[i]["dec"],
                                                                              "1,2", 9813)
        assert s.target.fiber_flux == {"g_hsc": 100.0 + 2 * i, "r2_hsc": 101.0 + 2 * i}
        assert [(o["visit"], o["arm"]) for o in s.observations] == [(123400, "b"), (123400, "r"), (123401, "b"),
                                                                    (123401, "r")]
        assert s.observations[0]["obsTime"] == "2025-05-01 12:34:56"  # the blank survives the PA() decoding
    assert [s.target.target_type_name for s in product.spectra] == ["SCIENCE", "FLUXSTD", "SKY"]
    assert product.spectra[0].target.obj_id == 2**40 + 7  # int64 objId


def test_mask_planes_decoded_from_the_file(tmp_path):
    flux, variance, mask = coadd_arrays()
    product = read_product(write_coadd(tmp_path / "c.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask,
                                       targets=TARGETS))
    s0, s1, s2 = product.spectra
    decoded = s0.planes.decode(s0.mask)
    assert np.flatnonzero(decoded["CR"]).tolist() == [5]
    assert np.flatnonzero(decoded["REFLINE"]).tolist() == [6] and np.flatnonzero(decoded["INTRP"]).tolist() == [6]
    assert not decoded["NO_DATA"].any()
    assert np.flatnonzero(~s0.usable()).tolist() == [5]           # CR rejected; REFLINE and INTRP kept
    assert np.flatnonzero(~s1.usable()).tolist() == [0, 1, 2]     # NO_DATA (bit 3 here, not 8)
    assert np.flatnonzero(~s2.usable()).tolist() == [60]          # NaN flux; the undeclared bit 9 is not a reject
    assert s2.planes.counts(s2.mask)["(undeclared)"] == 1
    # the reject set is configurable: INTRP added, CR dropped
    assert np.flatnonzero(~s0.usable(parse_reject("NO_DATA,INTRP"))).tolist() == [6]
    assert parse_reject("default") == DEFAULT_REJECT and parse_reject("MP_cr,bad") == ("CR", "BAD")


def test_mask_plane_definitions_are_checked():
    with pytest.raises(FeatcacheError, match="both declare bit 3"):
        MaskPlanes.from_items([("MP_A", 3), ("MP_B", 3)], "f")
    with pytest.raises(FeatcacheError, match="not a bit number"):
        MaskPlanes.from_items([("MP_A", "x")], "f")
    assert MaskPlanes.from_yaml("HIERARCH MP_NO_DATA: 8\nMP_BAD: 0\nOTHER: 1\n", "f").bits == {"BAD": 0, "NO_DATA": 8}


def test_object_wavelength_from_the_datamodel_wcs(tmp_path):
    flux, variance, mask = coadd_arrays()
    path = write_object(tmp_path / "pfsObject-00010-09813-1,2-0000000000000008-002-0x1.fits", flux=flux[0],
                        variance=variance[0], mask=mask[0], cat_id=10, obj_id=8, ra=1.5, dec=-2.5,
                        wcs=(600.0, 700.0, 101))
    product = read_product(path)
    assert product.product == "pfsObject" and product.layout == "PfsFiberArray"
    s = product.spectra[0]
    np.testing.assert_allclose(s.wavelength, WAVE, rtol=0, atol=1e-9)   # pixel 0 is 600 nm, not 599
    with fits.open(path) as hdul:
        header = hdul["FLUX"].header
        assert header["CUNIT1"] == "m" and header["CRPIX1"] == 0.5 * 101 + 1.5
        standard = fits_standard_wcs_wavelength(header, 101)
        np.testing.assert_allclose(s.wavelength - standard, 1.0, atol=1e-9)  # one pixel redder than the standard
        np.testing.assert_allclose(wcs_wavelength(header, 101, "x"), WAVE, atol=1e-9)
    assert dict(s.planes.bits) == PLANES  # from the MASK header, HIERARCH for the long names
    assert np.flatnonzero(~s.usable()).tolist() == [5]
    assert s.target.key == (10, 8) and (s.target.ra, s.target.dec) == (1.5, -2.5)
    assert s.target.target_type_name == "FLUXSTD" and s.target.fiber_flux == {"g_hsc": 321.0}
    assert [o["visit"] for o in s.observations] == [5, 6]
    # an explicit WAVELENGTH HDU wins (here a non-uniform grid)
    wave = np.sort(np.random.default_rng(1).uniform(600, 700, 101))
    s = read_product(write_object(tmp_path / "o2.fits", flux=flux[0], variance=variance[0], mask=mask[0], cat_id=1,
                                  obj_id=2, ra=0.0, dec=0.0, wave_nm=wave)).spectra[0]
    np.testing.assert_array_equal(s.wavelength, wave)


def test_old_layout_and_variable_lengths(tmp_path):
    flux, variance, mask = coadd_arrays()
    product = read_product(write_coadd(tmp_path / "c.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask,
                                       targets=TARGETS, old_layout=True))
    assert product.damd_ver is None
    for i, s in enumerate(product.spectra):
        np.testing.assert_allclose(s.variance, variance[i].astype(np.float32))
        assert s.covariance.shape == (3, 101) and "expTime" not in s.observations[0]
    # FLUX/MASK/SKY/WAVELENGTH as one-column `value` tables when the lengths differ
    path = write_coadd(tmp_path / "v.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask, targets=TARGETS)
    lengths = [101, 60, 80]
    with fits.open(path) as hdul:
        for name, source in (("WAVELENGTH", np.tile(WAVE, (3, 1))), ("FLUX", flux), ("MASK", mask),
                             ("SKY", np.zeros_like(flux))):
            dtype = np.int32 if name == "MASK" else np.float64
            fmt = "PJ()" if name == "MASK" else "PD()"
            cells = np.array([np.asarray(source[i, :n], dtype=dtype) for i, n in enumerate(lengths)] + [None],
                             dtype=object)[:-1]
            hdul[name] = fits.BinTableHDU.from_columns([fits.Column("value", fmt, array=cells)], name=name)
        cells = np.array([np.asarray(variance[i, :n], np.float32) for i, n in enumerate(lengths)] + [None],
                         dtype=object)[:-1]
        hdul["COVAR"] = fits.BinTableHDU.from_columns([fits.Column("row_0", "PE()", array=cells)], name="COVAR")
        hdul.writeto(tmp_path / "v2.fits")
    product = read_product(tmp_path / "v2.fits")
    assert [s.flux.size for s in product.spectra] == lengths
    np.testing.assert_array_equal(product.spectra[1].wavelength, WAVE[:60])


def test_decode_string_keeps_blanks():
    assert decode_string(np.array(list("a b\nc"))) == "a b\nc"
    assert decode_string(b"xy\x00") == "xy" and decode_string("z") == "z"


def test_not_a_product_is_one_line(tmp_path):
    plain = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4))), fits.ImageHDU(np.ones(3), name="FLUX")]).writeto(plain)
    assert_cli_error(run_cli("inspect", plain, check=False), "not a PFS spectra product", "PRIMARY, FLUX")
    text = tmp_path / "notes.fits"
    text.write_text("hello")
    assert_cli_error(run_cli("inspect", text, check=False), "not a FITS file")
    with pytest.raises(FeatcacheError, match="without the METADATA"):
        flux, variance, mask = coadd_arrays()
        path = write_coadd(tmp_path / "c.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask, targets=TARGETS)
        with fits.open(path) as hdul:
            del hdul["METADATA"]
            hdul.writeto(tmp_path / "broken.fits")
        read_product(tmp_path / "broken.fits")


def test_inspect_describes_a_product(tmp_path):
    flux, variance, mask = coadd_arrays()
    path = write_coadd(tmp_path / "c.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask, targets=TARGETS)
    out = run_cli("inspect", path).output
    assert "pfsCoadd" in out and "CR=11" in out and "NO_DATA=3" in out and "600.000 - 700.000 nm" in out
    assert "1 SCIENCE, 1 FLUXSTD, 1 SKY" in out
    import json

    data = json.loads(run_cli("inspect", path, "--json").output)
    assert data["mask_pixels"]["CR"] == 1 and data["mask_pixels"]["NO_DATA"] == 3


def test_pfs_calibrated_by_name_and_by_layout(tmp_path):
    flux, variance, mask = coadd_arrays()
    by_name = write_coadd(tmp_path / "pfsCalibrated_PFS_123400_run.fits", wave_nm=WAVE, flux=flux, variance=variance,
                          mask=mask, targets=TARGETS)
    assert read_product(by_name).product_basis == "file name" and read_product(by_name).product == "pfsCalibrated"
    # one visit, merged arms ('brn'): the pfsCalibrated layout, whatever the name
    write_coadd(tmp_path / "spectra.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask, targets=TARGETS,
                arms=("brn",))
    merged = write_coadd(tmp_path / "spectra2.fits", wave_nm=WAVE, flux=flux, variance=variance, mask=mask,
                         targets=TARGETS, arms=("brn",), n_visits=1)
    product = read_product(merged)
    assert product.product == "pfsCalibrated" and product.product_basis.startswith("layout: one visit")
    assert read_product(tmp_path / "spectra.fits").product == "pfsCoadd"   # two visits
