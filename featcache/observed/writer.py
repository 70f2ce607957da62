"""Writing the PFS spectra products (pfsCoadd / pfsCalibrated and pfsObject / pfsSingle) in the data model's
current layout, and exporting pfsspec spectra (the synthetic benchmark) as such files.

The layout follows `Subaru-PFS/datamodel` (PfsTargetSpectra DAMD_VER 1; PfsFiberArray DAMD_VER 2): the
mask planes written per target in METADATA (multi-target) or in the MASK header (single target), the MASK
tile-compressed, COVAR a `row_k` table (multi-target) or an (NCOVAR, NPIX) image, a uniform single-target grid
written as the data model's wavelength WCS (in metres, CRPIX1 = 0.5 n + 1.5), anything else as a WAVELENGTH HDU.
The optional FLUXTABLE and the per-arm data are not written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..common.files import atomic_write
from .masks import MaskPlanes
from .products import Target
from .resample import rebin_matrix, resample
from .wavelength import convert, edges_from_centres

# The usual numbering (LSST afw planes 0-8, then drp_stella's in its import order); readers must not rely on it.
TYPICAL_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6,
                  "SUSPECT": 7, "NO_DATA": 8, "BAD_FLAT": 9, "FIBERTRACE": 10, "BAD_FIBERTRACE": 11, "BAD_SKY": 12,
                  "BAD_FLUXCAL": 13, "IPC": 14, "REFLINE": 15, "BAD_FIBERNORMS": 16, "UNMASKEDNAN": 17,
                  "BAD_PFI_CORRECTION": 18}
GRIDS = ("mr", "lr", "native")
AB_ZERO_NJY = 3631e9  # nJy of AB magnitude 0


def pfs_grid(name: str) -> np.ndarray:
    """drp_stella's wavelength sampling (vacuum nm): 'lr' 370-1270 nm at 0.08 nm (11251 pixels); 'mr' its
    medium-resolution segment, 695-905 nm at 0.045 nm (4667 pixels)."""
    if name == "lr":
        return np.linspace(370.0, 1270.0, int((1270.0 - 370.0) / 0.08 + 1))
    if name == "mr":
        return np.linspace(695.0, 905.0, int((905.0 - 695.0) / 0.045 + 1))
    raise FeatcacheError(f"--grid {name}: choose from {', '.join(GRIDS)}")


@dataclass
class SpectrumToWrite:
    """One target's spectrum in the data model's units: vacuum nm, nJy, nJy^2 (covariance planes)."""

    target: Target
    wavelength: np.ndarray
    flux: np.ndarray
    covariance: np.ndarray
    mask: np.ndarray
    sky: np.ndarray | None = None
    observations: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _versions(header) -> None:
    from .._version import __version__

    header["HIERARCH VERSION_DATAMODEL"] = "featcache-writer"
    header["HIERARCH VERSION_DRP_STELLA"] = f"featcache {__version__} (not the PFS pipeline)"


def _string_column(name: str, values: Sequence[str]):
    from astropy.io import fits

    return fits.Column(name=name, format="PA()", array=[str(v) if v else " " for v in values])


def _observation_columns(spectra: Sequence[SpectrumToWrite], with_target_id: bool):
    from astropy.io import fits

    rows = [(i, o) for i, s in enumerate(spectra) for o in s.observations]
    get = lambda key, default: [o.get(key, default) for _, o in rows]  # noqa: E731
    columns = [fits.Column("targetId", "I", array=np.array([i for i, _ in rows], dtype=np.int16))] \
        if with_target_id else []
    pair = lambda key: np.array(get(key, [0.0, 0.0]), dtype=np.float64).reshape(len(rows), 2)  # noqa: E731
    columns += [fits.Column("visit", "J", array=np.array(get("visit", 0), dtype=np.int32)),
                _string_column("arm", get("arm", "x")),
                fits.Column("spectrograph", "I", array=np.array(get("spectrograph", 0), dtype=np.int16)),
                fits.Column("pfsDesignId", "K", array=np.array(get("pfsDesignId", -1), dtype=np.int64)),
                fits.Column("fiberId", "J", array=np.array(get("fiberId", 0), dtype=np.int32)),
                fits.Column("pfiNominal", "2D", array=pair("pfiNominal")),
                fits.Column("pfiCenter", "2D", array=pair("pfiCenter")),
                _string_column("obsTime", get("obsTime", "UNKNOWN")),
                fits.Column("expTime", "E", array=np.array(get("expTime", math.nan), dtype=np.float32))]
    return columns


def write_target_spectra(path: str | os.PathLike[str], spectra: Sequence[SpectrumToWrite], planes: MaskPlanes,
                         *, overwrite: bool = False) -> Path:
    """A pfsCoadd / pfsCalibrated file (the two share the PfsTargetSpectra layout), written atomically."""
    import yaml
    from astropy.io import fits

    path = _check_out(path, overwrite)
    n = len(spectra)
    if not 0 < n <= 32767:
        raise FeatcacheError(f"{path}: a PfsTargetSpectra file holds 1 to 32767 targets (targetId is int16), got {n}")
    lengths = {s.flux.size for s in spectra}
    if len(lengths) != 1:
        raise FeatcacheError(f"{path}: this writer needs one length for every spectrum, got {sorted(lengths)}")
    primary = fits.PrimaryHDU()
    primary.header["DAMD_VER"] = (1, "PfsTargetSpectra datamodel version")
    _versions(primary.header)
    targets = [s.target for s in spectra]
    target_hdu = fits.BinTableHDU.from_columns([
        fits.Column("targetId", "I", array=np.arange(n, dtype=np.int16)),
        fits.Column("catId", "J", array=np.array([t.cat_id for t in targets], dtype=np.int32)),
        fits.Column("tract", "J", array=np.array([t.tract for t in targets], dtype=np.int32)),
        _string_column("patch", [t.patch for t in targets]),
        fits.Column("objId", "K", array=np.array([t.obj_id for t in targets], dtype=np.int64)),
        fits.Column("ra", "D", array=np.array([t.ra for t in targets], dtype=np.float64)),
        fits.Column("dec", "D", array=np.array([t.dec for t in targets], dtype=np.float64)),
        fits.Column("targetType", "I", array=np.array([t.target_type for t in targets], dtype=np.int16))],
        name="TARGET")
    flux_rows = [(i, f, v) for i, t in enumerate(targets) for f, v in t.fiber_flux.items()]
    targetflux = fits.BinTableHDU.from_columns([
        fits.Column("targetId", "I", array=np.array([r[0] for r in flux_rows], dtype=np.int16)),
        _string_column("filterName", [r[1] for r in flux_rows]),
        fits.Column("fiberFlux", "E", array=np.array([r[2] for r in flux_rows], dtype=np.float32))], name="TARGETFLUX")
    observations = fits.BinTableHDU.from_columns(_observation_columns(spectra, True), name="OBSERVATIONS")
    waves = np.stack([np.asarray(s.wavelength, dtype=np.float64) for s in spectra])
    wave_data = waves[0] if np.array_equal(waves, np.broadcast_to(waves[0], waves.shape)) else waves
    n_cov = max(np.atleast_2d(s.covariance).shape[0] for s in spectra)
    covar = fits.BinTableHDU.from_columns([
        fits.Column(f"row_{k}", "PE()", array=np.array([_plane(s.covariance, k).astype(np.float32) for s in spectra],
                                                      dtype=object)) for k in range(n_cov)], name="COVAR")
    metadata_text = []
    for s in spectra:
        meta = {**s.metadata, **{f"MP_{name}": bit for name, bit in planes.bits.items()}}
        metadata_text.append(yaml.dump(meta, sort_keys=True))
    metadata = fits.BinTableHDU.from_columns([fits.Column("targetId", "I", array=np.arange(n, dtype=np.int16)),
                                              _string_column("metadata", metadata_text)], name="METADATA")
    notes = fits.BinTableHDU.from_columns(fits.ColDefs([]), name="NOTES")
    notes.header["DAMD_VER"] = 3
    notes.header["INHERIT"] = True
    hdus = fits.HDUList([
        primary, target_hdu, targetflux, observations,
        fits.ImageHDU(wave_data, name="WAVELENGTH"),
        fits.ImageHDU(np.stack([s.flux for s in spectra]).astype(np.float32), name="FLUX"),
        fits.CompImageHDU(np.stack([s.mask for s in spectra]).astype(np.int32), name="MASK", compression_type="RICE_1"),
        fits.ImageHDU(np.stack([s.sky if s.sky is not None else np.zeros_like(s.flux) for s in spectra])
                      .astype(np.float32), name="SKY"),
        covar,
        fits.ImageHDU(np.zeros((n, 1, 1), dtype=np.float32), name="COVAR2"),
        metadata, notes])
    atomic_write(path, lambda tmp: hdus.writeto(tmp, output_verify="exception"))
    return path


def _plane(covariance: np.ndarray, k: int) -> np.ndarray:
    cov = np.atleast_2d(covariance)
    return cov[k] if k < cov.shape[0] else np.zeros(cov.shape[1])


def datamodel_wcs(wavelength_nm: np.ndarray) -> dict[str, Any] | None:
    """The data model's WCS cards of a uniform grid (metres; CRPIX1 = 0.5 n + 1.5, so pixel i is read as
    CRVAL1 + CDELT1 (i + 2 - CRPIX1)); None when the grid is not uniform to 1e-9 of its step."""
    wave = np.asarray(wavelength_nm, dtype=np.float64)
    n = wave.size
    step = (wave[-1] - wave[0]) / (n - 1)
    if not np.allclose(np.diff(wave), step, rtol=0, atol=1e-9 * abs(step)):
        return None
    return {"WCSAXES": 1, "CTYPE1": "WAVE", "CUNIT1": "m", "CRPIX1": 0.5 * n + 1.5,
            "CRVAL1": 0.5 * (wave[0] + wave[-1]) * 1e-9, "CDELT1": step * 1e-9, "CNAME1": "Wavelength"}


def write_fiber_array(path: str | os.PathLike[str], spectrum: SpectrumToWrite, planes: MaskPlanes, *,
                      overwrite: bool = False, use_wcs: bool = True) -> Path:
    """A pfsObject / pfsSingle file: the wavelength as the data model's WCS when uniform (and use_wcs), else a
    WAVELENGTH HDU; the mask planes in the MASK header."""
    from astropy.io import fits

    path = _check_out(path, overwrite)
    t = spectrum.target
    wcs = datamodel_wcs(spectrum.wavelength) if use_wcs else None

    def image(data: np.ndarray, name: str, compressed: bool = False):
        hdu = fits.CompImageHDU(data, name=name, compression_type="RICE_1") if compressed else \
            fits.ImageHDU(data, name=name)
        for key, value in (wcs or {}).items():
            hdu.header[key] = value
        hdu.header["DAMD_VER"] = (2, "PfsFiberArray datamodel version")
        return hdu

    flux = image(np.asarray(spectrum.flux, dtype=np.float32), "FLUX")
    _versions(flux.header)
    mask = image(np.asarray(spectrum.mask, dtype=np.int32), "MASK", compressed=True)
    for name, bit in planes.bits.items():
        mask.header[f"MP_{name}" if len(name) <= 5 else f"HIERARCH MP_{name}"] = bit
    hdus = [fits.PrimaryHDU(), flux, mask]
    if wcs is None:
        wave = fits.ImageHDU(np.asarray(spectrum.wavelength, dtype=np.float64), name="WAVELENGTH")
        wave.header["DAMD_VER"] = 2
        hdus.append(wave)
    target = fits.BinTableHDU.from_columns([
        fits.Column("filterName", f"{max([len(k) for k in t.fiber_flux] + [1])}A", array=list(t.fiber_flux)),
        fits.Column("fiberFlux", "E", array=np.array(list(t.fiber_flux.values()), dtype=np.float32))], name="TARGET")
    for key, value in (("CATID", t.cat_id), ("TRACT", t.tract), ("PATCH", t.patch), ("OBJID", t.obj_id)):
        target.header[key] = value
    if math.isfinite(t.ra) and math.isfinite(t.dec):
        target.header["RA"], target.header["DEC"] = t.ra, t.dec
    target.header["HIERARCH TARGETTYPE"] = t.target_type
    target.header["DAMD_VER"] = 1
    observations = fits.BinTableHDU.from_columns(_observation_columns([spectrum], False), name="OBSERVATIONS")
    observations.header["DAMD_VER"] = 2
    notes = fits.BinTableHDU.from_columns(fits.ColDefs([]), name="NOTES")
    notes.header["DAMD_VER"], notes.header["INHERIT"] = 3, True
    hdus += [target,
             image(np.asarray(spectrum.sky if spectrum.sky is not None else np.zeros_like(spectrum.flux),
                              dtype=np.float32), "SKY"),
             image(np.atleast_2d(spectrum.covariance).astype(np.float32), "COVAR"),
             fits.ImageHDU(np.zeros((1, 1), dtype=np.float32), name="COVAR2"), observations, notes]
    atomic_write(path, lambda tmp: fits.HDUList(hdus).writeto(tmp, output_verify="exception"))
    return path


def object_file_name(target: Target, visits: Sequence[int]) -> str:
    """The Gen2 pfsObject name: catId, tract, patch, objId, the number of distinct visits and their hash."""
    import hashlib

    distinct = sorted({int(v) for v in visits})
    text = str([str(v).encode() for v in distinct])
    digest = int(hashlib.sha1(text.encode()).hexdigest()[:16], 16) & 0x7FFFFFFFFFFFFFFF
    return (f"pfsObject-{target.cat_id:05d}-{max(target.tract, 0):05d}-{target.patch or '0,0'}-{target.obj_id:016x}-"
            f"{len(distinct) % 1000:03d}-0x{digest:016x}.fits")


def _check_out(path: str | os.PathLike[str], overwrite: bool) -> Path:
    path = Path(path)
    if path.is_dir():
        raise FeatcacheError(f"{path}: is a directory, expected a FITS file name")
    if not path.parent.is_dir():
        raise FeatcacheError(f"{path}: no such folder {path.parent}")
    if path.exists() and not overwrite:
        raise FeatcacheError(f"{path}: exists; pass --overwrite to replace it")
    return path


# -- export of pfsspec spectra ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportOptions:
    """How pfsspec spectra become PFS products (`featcache export`)."""

    product: str = "pfsCoadd"
    grid: str = "mr"
    medium: str | None = None          # the pfsspec file's wavelength medium (synth files say air)
    cat_id: int = 1
    start: int = 0
    stop: int | None = None
    cosmic_rays: float = 0.0           # fraction of pixels hit: flux spiked and flagged CR
    seed: int = 0
    n_covariance: int = 2
    catalogue: Path | None = None      # also write the labels as a CSV catalogue (catId, objId, ra, dec, labels)

    def validate(self) -> ExportOptions:
        if self.product not in ("pfsCoadd", "pfsCalibrated", "pfsObject"):
            raise FeatcacheError(f"--product {self.product}: choose from pfsCoadd, pfsCalibrated, pfsObject")
        if self.grid not in GRIDS:
            raise FeatcacheError(f"--grid {self.grid}: choose from {', '.join(GRIDS)}")
        if not 0 <= self.cosmic_rays < 0.5:
            raise FeatcacheError(f"--cosmic-rays {self.cosmic_rays}: expected a fraction in [0, 0.5)")
        if not 1 <= self.n_covariance <= 3:
            raise FeatcacheError(f"--covariance-planes {self.n_covariance}: expected 1, 2 or 3")
        return self


def export_pfsspec(source: str | os.PathLike[str], out: str | os.PathLike[str], options: ExportOptions, *,
                   overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write rows of a pfsspec file (its stored `noisy` flux and `error`) as a PFS product. Long because the
    unit conversions, the resampling and the product's layout are one pass over the rows, kept whole.

    The spectra are taken as median-normalised f_lambda on the file's grid (air or vacuum Angstrom), converted to
    vacuum nm and nJy (f_nu = f_lambda lambda^2 / c, scaled so the median is the AB flux of the file's `mag`),
    resampled onto the PFS grid with the variance propagated (COVAR planes 0 and 1 from W C W^T); grid pixels the
    file does not cover are NO_DATA with zero flux and infinite variance, as in the pipeline's coadds. With
    cosmic_rays > 0 that fraction of pixels gets a spike of 50 sigma and the CR plane.
    """
    import h5py

    from ..spectra.pfsspec import PfsDataset

    options.validate()
    source, out = Path(source), Path(out)
    with h5py.File(source, "r") as h5:
        generator = h5.attrs.get("generator")
        generator = generator.decode() if isinstance(generator, bytes) else generator
        stated = h5.attrs.get("wave_medium")
    medium = options.medium or (stated.decode() if isinstance(stated, bytes) else stated) or (
        "air" if generator == "featcache.synth" else None)
    if medium is None:
        raise FeatcacheError(f"{source}: the file does not state whether its wavelengths are in air or vacuum; pass "
                             "--medium air|vacuum")
    rng = np.random.default_rng(options.seed)
    planes = MaskPlanes(dict(TYPICAL_PLANES), "featcache writer")
    with PfsDataset(source) as ds:
        stop = ds.n_rows if options.stop is None else min(options.stop, ds.n_rows)
        if not 0 <= options.start < stop:
            raise FeatcacheError(f"--rows {options.start}:{options.stop}: outside the file's 0:{ds.n_rows} rows")
        if not ds.has_noisy:
            raise FeatcacheError(f"{source}: no stored 'noisy' array to export (write it without --noise-free)")
        params = ds.params() if ds.params_key else None
        noisy = ds.read_noisy(options.start, stop).astype(np.float64)
        error = ds.read_error(options.start, stop).astype(np.float64)
        src_edges_a = edges_from_centres(ds.wave)
    if options.product == "pfsObject" and not (out.is_dir() or not out.suffix):
        raise FeatcacheError(f"--out {out}: pfsObject holds one target a file; give a folder for the files")
    src_edges_nm = convert(src_edges_a, unit_from="Angstrom", medium_from=medium, unit_to="nm", medium_to="vacuum")
    centres_nm = 0.5 * (src_edges_nm[1:] + src_edges_nm[:-1])
    jacobian = np.diff(src_edges_a) / (np.diff(src_edges_nm) * 10.0)   # d lambda_file / d lambda_vac
    to_fnu = (centres_nm * 10.0) ** 2 * jacobian                       # f_nu ~ f_lambda lambda_vac^2, any unit
    grid = 0.5 * (src_edges_nm[1:] + src_edges_nm[:-1]) if options.grid == "native" else pfs_grid(options.grid)
    weights = rebin_matrix(src_edges_nm, src_edges_nm if options.grid == "native" else edges_from_centres(grid))
    covered = np.asarray(weights.sum(axis=1)).ravel() > 1.0 - 1e-9
    ra0, dec0 = 150.0, 2.0
    spectra: list[SpectrumToWrite] = []
    catalogue_rows = []
    for k in range(stop - options.start):
        row = options.start + k
        mag = float(params["mag"].iloc[row]) if params is not None and "mag" in params else 21.5
        fnu = noisy[k] * to_fnu
        var = (error[k] * to_fnu) ** 2
        scale = AB_ZERO_NJY * 10 ** (-0.4 * mag) / float(np.median(np.abs(noisy[k]) * to_fnu))
        flux, cov = resample(fnu * scale, (var * scale ** 2)[None, :], weights, n_planes=options.n_covariance)
        mask = np.zeros(grid.size, dtype=np.int64)
        mask[~covered] = 1 << planes.bits["NO_DATA"]
        flux[~covered] = 0.0
        cov[:, ~covered] = 0.0
        cov[0, ~covered] = np.inf
        if options.cosmic_rays > 0:
            hits = covered & (rng.random(grid.size) < options.cosmic_rays)
            flux[hits] += 50.0 * np.sqrt(cov[0, hits])
            mask[hits] |= 1 << planes.bits["CR"]
        ra = ra0 + rng.uniform(-0.5, 0.5)
        dec = dec0 + rng.uniform(-0.5, 0.5)
        target = Target(cat_id=options.cat_id, obj_id=row + 1, ra=ra, dec=dec, target_type=1, tract=0, patch="0,0",
                        fiber_flux={"i2_hsc": float(AB_ZERO_NJY * 10 ** (-0.4 * mag))})
        observations = [{"visit": 100001, "arm": "m", "spectrograph": 1 + row % 4, "fiberId": 1 + row % 2394,
                         "pfsDesignId": 1, "pfiNominal": [0.0, 0.0], "pfiCenter": [0.0, 0.0],
                         "obsTime": "UNKNOWN", "expTime": 900.0}]
        spectra.append(SpectrumToWrite(target, grid, flux, cov, mask, None, observations,
                                       {"SOURCE": f"{source.name} row {row}"}))
        if params is not None:
            catalogue_rows.append({"catId": options.cat_id, "objId": row + 1, "ra": ra, "dec": dec,
                                   **{c: params[c].iloc[row] for c in params.columns}})
        if progress is not None:
            progress(1)
    written: list[Path] = []
    if options.product == "pfsObject":
        out.mkdir(parents=True, exist_ok=True)
        for s in spectra:
            written.append(write_fiber_array(out / object_file_name(s.target, [o["visit"] for o in s.observations]), s,
                                             planes, overwrite=overwrite))
    else:
        written.append(write_target_spectra(out, spectra, planes, overwrite=overwrite))
    if options.catalogue is not None and catalogue_rows:
        import pandas as pd

        frame = pd.DataFrame(catalogue_rows)
        atomic_write(options.catalogue, lambda tmp: frame.to_csv(tmp, index=False))
    return {"files": [str(p) for p in written], "n": len(spectra), "grid": options.grid, "n_pixels": int(grid.size),
            "medium": medium, "covered_pixels": int(covered.sum()), "catalogue": str(options.catalogue or "")}
