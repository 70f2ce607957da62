"""The tests' own writer of small PFS spectra products, built HDU by HDU from the reader's spec
(pfs-datamodel-spectra.md sections 3 and 4), independent of featcache.observed.writer.

The mask planes use an unusual numbering on purpose (NO_DATA is not bit 8, CR not bit 3), so a reader that
assumed the usual bits would fail these tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

# deliberately not the usual numbering
PLANES = {"SAT": 0, "REFLINE": 1, "NO_DATA": 3, "BAD": 7, "CR": 11, "INTRP": 12, "BAD_FLUXCAL": 20,
          "BAD_SKY": 21, "SUSPECT": 5}


def pa(name: str, values: list[str]) -> fits.Column:
    return fits.Column(name=name, format="PA()", array=list(values))


def metadata_yaml(planes: dict[str, int], hierarch: bool = False) -> str:
    prefix = "HIERARCH " if hierarch else ""
    keys = {f"{prefix}MP_{k}": v for k, v in planes.items()}
    keys["VERSION_DRP_STELLA"] = "w.2025.20"
    return "".join(f"{k}: {v}\n" for k, v in sorted(keys.items()))


def write_coadd(path: Path, *, wave_nm: np.ndarray, flux: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                targets: list[dict], covar1: np.ndarray | None = None, sky: np.ndarray | None = None,
                planes: dict[str, int] = PLANES, hierarch_target: int | None = None, old_layout: bool = False,
                arms: tuple[str, ...] = ("b", "r"), n_visits: int = 2) -> Path:
    """A pfsCoadd (or pfsCalibrated: same layout). targets: dicts with catId, objId, ra, dec, targetType.
    old_layout: the 2022-2025-01 drp_stella variant (no PRIMARY keys, COVAR an (NOBJ, 3, NPIX) image, WAVELENGTH
    one row per target)."""
    n, p = flux.shape
    primary = fits.PrimaryHDU()
    if not old_layout:
        primary.header["DAMD_VER"] = 1
        primary.header["HIERARCH VERSION_DRP_STELLA"] = "w.2025.20"
    target = fits.BinTableHDU.from_columns([
        fits.Column("targetId", "I", array=np.arange(n, dtype=np.int16)),
        fits.Column("catId", "J", array=[t["catId"] for t in targets]),
        fits.Column("tract", "J", array=[9813] * n),
        pa("patch", ["1,2"] * n),
        fits.Column("objId", "K", array=[t["objId"] for t in targets]),
        fits.Column("ra", "D", array=[t["ra"] for t in targets]),
        fits.Column("dec", "D", array=[t["dec"] for t in targets]),
        fits.Column("targetType", "I", array=[t.get("targetType", 1) for t in targets])], name="TARGET")
    targetflux = fits.BinTableHDU.from_columns([
        fits.Column("targetId", "I", array=np.repeat(np.arange(n, dtype=np.int16), 2)),
        pa("filterName", ["g_hsc", "r2_hsc"] * n),
        fits.Column("fiberFlux", "E", array=np.arange(2 * n, dtype=np.float32) + 100)], name="TARGETFLUX")
    rows = [(i, 123400 + v, arm) for i in range(n) for v in range(n_visits) for arm in arms]
    obs_cols = [fits.Column("targetId", "I", array=[r[0] for r in rows]),
                fits.Column("visit", "J", array=[r[1] for r in rows]),
                pa("arm", [r[2] for r in rows]),
                fits.Column("spectrograph", "I", array=[2] * len(rows)),
                fits.Column("pfsDesignId", "K", array=[0x1234] * len(rows)),
                fits.Column("fiberId", "J", array=[77] * len(rows)),
                fits.Column("pfiNominal", "2D", array=np.zeros((len(rows), 2))),
                fits.Column("pfiCenter", "2D", array=np.ones((len(rows), 2)))]
    if not old_layout:
        obs_cols += [pa("obsTime", ["2025-05-01 12:34:56"] * len(rows)),
                     fits.Column("expTime", "E", array=[900.0] * len(rows))]
    observations = fits.BinTableHDU.from_columns(obs_cols, name="OBSERVATIONS")
    wave = fits.ImageHDU(np.tile(wave_nm, (n, 1)) if old_layout else wave_nm, name="WAVELENGTH")
    planes_k = [variance, covar1 if covar1 is not None else np.zeros_like(variance)]
    if old_layout:
        covar = fits.ImageHDU(np.stack([planes_k[0], planes_k[1], np.zeros_like(variance)], axis=1)
                              .astype(np.float32), name="COVAR")
        mask_hdu = fits.ImageHDU(mask.astype(np.int32), name="MASK")
    else:
        covar = fits.BinTableHDU.from_columns([
            fits.Column(f"row_{k}", "PE()", array=np.array([np.asarray(planes_k[k][i], dtype=np.float32)
                                                            for i in range(n)] + [None], dtype=object)[:-1])
            for k in range(2)], name="COVAR")
        mask_hdu = fits.CompImageHDU(mask.astype(np.int32), name="MASK", compression_type="RICE_1")
    meta = [metadata_yaml(planes, hierarch=(i == hierarch_target)) for i in range(n)]
    metadata = fits.BinTableHDU.from_columns([fits.Column("targetId", "I", array=np.arange(n, dtype=np.int16)),
                                              pa("metadata", meta)], name="METADATA")
    fluxtable = fits.BinTableHDU.from_columns([
        fits.Column("targetId", "I", array=np.arange(n, dtype=np.int16)),
        fits.Column("wavelength", "QD()", array=np.array([wave_nm[::2] for _ in range(n)] + [None], dtype=object)[:-1]),
        fits.Column("flux", "QE()", array=np.array([f[::2] for f in flux] + [None], dtype=object)[:-1]),
        fits.Column("error", "QE()", array=np.array([np.sqrt(v[::2]) for v in variance] + [None], dtype=object)[:-1]),
        fits.Column("mask", "QJ()", array=np.array([m[::2] for m in mask] + [None], dtype=object)[:-1])],
        name="FLUXTABLE")
    notes = fits.BinTableHDU.from_columns(fits.ColDefs([]), name="NOTES")
    notes.header["DAMD_VER"], notes.header["INHERIT"] = 3, True
    hdus = [primary, target, targetflux, observations, wave, fits.ImageHDU(flux.astype(np.float32), name="FLUX"),
            mask_hdu, fits.ImageHDU((sky if sky is not None else np.zeros_like(flux)).astype(np.float32), name="SKY"),
            covar, fits.ImageHDU(np.zeros((n, 1, 1), np.float32), name="COVAR2"), metadata, fluxtable, notes]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_object(path: Path, *, flux: np.ndarray, variance: np.ndarray, mask: np.ndarray, cat_id: int, obj_id: int,
                 ra: float, dec: float, wave_nm: np.ndarray | None = None, wcs: tuple[float, float, int] | None = None,
                 planes: dict[str, int] = PLANES) -> Path:
    """A pfsObject: the wavelength either as the data model's WCS of (min nm, max nm, n) (CUNIT1 m, CRPIX1 =
    0.5 n + 1.5, CRVAL1 the middle) or as an explicit WAVELENGTH HDU."""
    def image(data, name, compressed=False):
        hdu = fits.CompImageHDU(data, name=name, compression_type="RICE_1") if compressed else \
            fits.ImageHDU(data, name=name)
        if wcs is not None:
            lo, hi, n = wcs
            hdu.header.update({"WCSAXES": 1, "CTYPE1": "WAVE", "CUNIT1": "m", "CRPIX1": 0.5 * n + 1.5,
                               "CRVAL1": 0.5 * (lo + hi) * 1e-9, "CDELT1": (hi - lo) / (n - 1) * 1e-9,
                               "CNAME1": "Wavelength"})
        hdu.header["DAMD_VER"] = 2
        return hdu

    mask_hdu = image(mask.astype(np.int32), "MASK", compressed=True)
    for name, bit in planes.items():
        mask_hdu.header[f"HIERARCH MP_{name}" if len(name) > 5 else f"MP_{name}"] = bit
    hdus = [fits.PrimaryHDU(), image(flux.astype(np.float32), "FLUX"), mask_hdu]
    if wcs is None:
        hdus.append(fits.ImageHDU(np.asarray(wave_nm, dtype=np.float64), name="WAVELENGTH"))
    target = fits.BinTableHDU.from_columns([fits.Column("filterName", "6A", array=["g_hsc"]),
                                            fits.Column("fiberFlux", "E", array=[321.0])], name="TARGET")
    target.header.update({"CATID": cat_id, "TRACT": 1, "PATCH": "3,4", "OBJID": obj_id, "RA": ra, "DEC": dec})
    target.header["HIERARCH TARGETTYPE"] = 3
    observations = fits.BinTableHDU.from_columns([
        fits.Column("visit", "J", array=[5, 6]), fits.Column("arm", "1A", array=["r", "r"]),
        fits.Column("spectrograph", "J", array=[1, 1]), fits.Column("fiberId", "J", array=[9, 9]),
        fits.Column("pfsDesignId", "K", array=[1, 1]), fits.Column("pfiNominal", "2E", array=np.zeros((2, 2))),
        fits.Column("pfiCenter", "2E", array=np.zeros((2, 2))), fits.Column("obsTime", "19A", array=["UNKNOWN"] * 2),
        fits.Column("expTime", "E", array=[450.0, 450.0])], name="OBSERVATIONS")
    hdus += [target, image(np.zeros_like(flux, dtype=np.float32), "SKY"),
             image(np.stack([variance, np.zeros_like(variance)]).astype(np.float32), "COVAR"),
             fits.ImageHDU(np.zeros((1, 1), np.float32), name="COVAR2"), observations,
             fits.BinTableHDU.from_columns(fits.ColDefs([]), name="NOTES")]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path
