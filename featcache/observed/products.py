"""Reading the PFS pipeline's spectra products as they are: pfsCoadd, pfsCalibrated, pfsObject, pfsSingle.

The layouts are those of `Subaru-PFS/datamodel` (see docs/observed-spectra.md and the reader's spec):

* pfsCoadd / pfsCalibrated (`PfsTargetSpectra`): TARGET, TARGETFLUX, OBSERVATIONS tables linked by targetId
  (= the row of every image); WAVELENGTH (one row shared, one per target, or a `value` table); FLUX, MASK
  (tile-compressed), SKY images (or `value` tables when the lengths differ); COVAR as a `row_k` table (an
  (NOBJ, 3, NPIX) image before 2025-02); METADATA: per target, the YAML of its metadata and mask planes.
* pfsObject / pfsSingle (`PfsFiberArray`): FLUX, MASK (MP_* in its header), SKY, COVAR (NCOVAR, NPIX) images;
  identity in the TARGET header; the wavelength from a WAVELENGTH HDU or else the data model's WCS (one pixel
  off the FITS convention, in metres: `wavelength.wcs_wavelength`).

Units are the data model's (there is no BUNIT): wavelength vacuum nm (barycentric), flux and sky nJy (f_nu),
variance nJy^2. Variable-length string cells (`PA()`) are decoded byte-wise, as astropy strips their blanks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from .masks import DEFAULT_REJECT, MaskPlanes
from .wavelength import wcs_wavelength

PRODUCTS = ("pfsCoadd", "pfsCalibrated", "pfsObject", "pfsSingle")
TARGET_TYPES = {1: "SCIENCE", 2: "SKY", 3: "FLUXSTD", 4: "UNASSIGNED", 5: "ENGINEERING", 6: "SUNSS_IMAGING",
                7: "SUNSS_DIFFUSE", 8: "DCB", 9: "HOME", 10: "BLACKSPOT", 11: "AFL", 12: "SCIENCE_MASKED"}
TARGET_TYPE_IDS = {name: value for value, name in TARGET_TYPES.items()}
MULTI_HDUS = ("TARGET", "OBSERVATIONS", "WAVELENGTH", "FLUX", "MASK", "COVAR", "METADATA")
SINGLE_HDUS = ("FLUX", "MASK", "TARGET", "COVAR")
UNITS = {"wavelength": "nm (vacuum, barycentric)", "flux": "nJy (f_nu)", "variance": "nJy^2", "sky": "nJy"}


def decode_string(cell: Any) -> str:
    """A string cell as written: a fixed-width str/bytes, or a `PA()` array of characters (whose blanks
    astropy hides when it hands out single characters; the bytes keep them)."""
    if isinstance(cell, bytes):
        return cell.decode(errors="replace").rstrip("\x00")
    if isinstance(cell, str):
        return cell
    array = np.asarray(cell)
    if array.ndim == 0:
        return str(array.item())
    return array.astype("S1").tobytes().decode(errors="replace").rstrip("\x00")


@dataclass(frozen=True)
class Target:
    """A target's identity: (catId, objId) identify it; RA/Dec in degrees ICRS (NaN when the file has none)."""

    cat_id: int
    obj_id: int
    ra: float
    dec: float
    target_type: int
    tract: int = -1
    patch: str = ""
    fiber_flux: dict[str, float] = field(default_factory=dict)

    @property
    def target_type_name(self) -> str:
        return TARGET_TYPES.get(int(self.target_type), f"type {self.target_type}")

    @property
    def key(self) -> tuple[int, int]:
        return (int(self.cat_id), int(self.obj_id))


@dataclass
class ObservedSpectrum:
    """One target's spectrum as the file holds it, in the file's units (see UNITS)."""

    row: int                     # targetId (the row of every image) in a multi-target file, 0 in a single one
    target: Target
    wavelength: np.ndarray       # (P,) vacuum nm
    flux: np.ndarray             # (P,) nJy
    covariance: np.ndarray       # (NCOVAR, P) nJy^2: plane 0 the variance, plane k element i Cov(i, i+k)
    mask: np.ndarray             # (P,) int64 bits
    sky: np.ndarray | None       # (P,) nJy, already subtracted from flux
    planes: MaskPlanes
    observations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def variance(self) -> np.ndarray:
        return self.covariance[0]

    def usable(self, reject: tuple[str, ...] = DEFAULT_REJECT) -> np.ndarray:
        """Pixels that carry none of the reject planes and have finite flux and a finite, positive variance."""
        bad_bits = self.planes.value(reject)
        with np.errstate(invalid="ignore"):
            return (((self.mask & bad_bits) == 0) & np.isfinite(self.flux) & np.isfinite(self.variance)
                    & (self.variance > 0))


@dataclass
class PfsProduct:
    """A PFS spectra file read whole: which product it is (and how that was decided), its versions, its spectra."""

    path: Path
    product: str
    product_basis: str           # 'file name' or what in the layout decided it
    layout: str                  # 'PfsTargetSpectra' (pfsCoadd/pfsCalibrated) or 'PfsFiberArray' (pfsObject/pfsSingle)
    spectra: list[ObservedSpectrum]
    wavelength_source: str
    damd_ver: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    hdus: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spectra)


def _hdu_names(hdul) -> list[str]:
    return [str(h.name).upper() for h in hdul]


def _open(path: Path):
    from astropy.io import fits

    if not path.exists():
        raise FeatcacheError(f"{path}: no such file")
    if path.is_dir():
        raise FeatcacheError(f"{path}: is a directory, expected a PFS FITS file")
    with open(path, "rb") as handle:
        magic = handle.read(9)
    if magic != b"SIMPLE  =":
        raise FeatcacheError(f"{path}: not a FITS file (expected a PFS pfsCoadd, pfsCalibrated, pfsObject or "
                             "pfsSingle file)")
    try:
        return fits.open(path, memmap=False, lazy_load_hdus=False)
    except Exception as exc:  # astropy raises OSError, ValueError, VerifyError... for damaged files
        raise FeatcacheError(f"{path}: cannot read as FITS ({str(exc).splitlines()[0][:160]})") from None


def read_product(path: str | os.PathLike[str]) -> PfsProduct:
    """Read a pfsCoadd, pfsCalibrated, pfsObject or pfsSingle file; anything else is refused in one line."""
    path = Path(path)
    hdul = _open(path)
    try:
        names = _hdu_names(hdul)
        kind = product_layout(hdul, path)
        try:
            if kind == "PfsTargetSpectra":
                product = _read_target_spectra(hdul, path)
            else:
                product = _read_fiber_array(hdul, path)
        except FeatcacheError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise FeatcacheError(f"{path}: a {kind} layout that cannot be read ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        product.hdus = names
        return product
    finally:
        hdul.close()


def product_layout(hdul, path: Path) -> str:
    """'PfsTargetSpectra' or 'PfsFiberArray', from the HDUs; a one-line error for any other FITS file."""
    from astropy.io import fits

    names = _hdu_names(hdul)
    target = hdul["TARGET"] if "TARGET" in names else None
    if isinstance(target, fits.BinTableHDU) and "targetId" in target.columns.names and "FLUX" in names:
        missing = [n for n in MULTI_HDUS if n not in names]
        if missing:
            raise FeatcacheError(f"{path}: a pfsCoadd/pfsCalibrated layout without the {', '.join(missing)} HDU(s) "
                                 f"(has {', '.join(names)})")
        return "PfsTargetSpectra"
    if target is not None and "CATID" in target.header and "OBJID" in target.header and "FLUX" in names:
        missing = [n for n in SINGLE_HDUS if n not in names]
        if missing:
            raise FeatcacheError(f"{path}: a pfsObject/pfsSingle layout without the {', '.join(missing)} HDU(s) "
                                 f"(has {', '.join(names)})")
        return "PfsFiberArray"
    raise FeatcacheError(f"{path}: not a PFS spectra product (pfsCoadd, pfsCalibrated, pfsObject or pfsSingle): "
                         f"its HDUs are {', '.join(names)}; expected a TARGET table with targetId (or CATID/OBJID "
                         "cards) and a FLUX HDU")


def _name_product(path: Path) -> str | None:
    match = re.match(r"(pfsCoadd|pfsCalibrated|pfsObject|pfsSingle)([-_]|\.fits)", path.name)
    return match.group(1) if match else None


def _column(table, name: str, default: Any = None) -> Any:
    return table[name] if name in table.columns.names else default


def _observation_rows(table, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
    """OBSERVATIONS rows as plain dicts (visit, arm, spectrograph, fiberId, pfsDesignId, pfiNominal, pfiCenter,
    obsTime, expTime; the older layouts lack obsTime/expTime)."""
    data = table.data
    index = np.arange(len(data)) if rows is None else rows
    out = []
    for i in index:
        row = data[int(i)]
        entry: dict[str, Any] = {}
        for name in table.columns.names:
            if name == "targetId":
                continue
            value = row[name]
            if name in ("arm", "obsTime"):
                entry[name] = decode_string(value).strip()
            elif np.ndim(value):
                entry[name] = [float(v) for v in np.asarray(value).ravel()]
            elif isinstance(value, float | np.floating):
                entry[name] = float(value)
            else:
                entry[name] = int(value)
        out.append(entry)
    return out


def _per_row(hdu, n_rows: int, what: str, path: Path, dtype: Any) -> list[np.ndarray]:
    """One 1-D array per target from an image (NOBJ, NPIX), a shared row (NPIX,) or a `value` table."""
    from astropy.io import fits

    if isinstance(hdu, fits.BinTableHDU):
        if "value" not in hdu.columns.names:
            raise FeatcacheError(f"{path}: {what} is a table without a 'value' column")
        cells = hdu.data["value"]
        if len(cells) != n_rows:
            raise FeatcacheError(f"{path}: {what} has {len(cells)} rows, TARGET has {n_rows}")
        return [np.asarray(c, dtype=dtype).ravel() for c in cells]
    data = hdu.data
    if data is None:
        raise FeatcacheError(f"{path}: {what} is empty")
    data = np.asarray(data, dtype=dtype)
    if data.ndim == 1:
        return [data] * n_rows
    if data.ndim == 2 and data.shape[0] == n_rows:
        return list(data)
    raise FeatcacheError(f"{path}: {what} has shape {data.shape}; expected ({n_rows}, NPIX) or (NPIX,)")


def _covariance_rows(hdu, n_rows: int, path: Path) -> list[np.ndarray]:
    """(NCOVAR, NPIX) per target: a `row_k` table (since 2025-02) or an (NOBJ, NCOVAR, NPIX) image before."""
    from astropy.io import fits

    if isinstance(hdu, fits.BinTableHDU):
        planes = sorted((c for c in hdu.columns.names if re.fullmatch(r"row_\d+", c)), key=lambda c: int(c[4:]))
        if not planes or planes[0] != "row_0":
            raise FeatcacheError(f"{path}: COVAR table has no row_0 column (has {', '.join(hdu.columns.names)})")
        if len(hdu.data) != n_rows:
            raise FeatcacheError(f"{path}: COVAR has {len(hdu.data)} rows, TARGET has {n_rows}")
        return [np.stack([np.asarray(hdu.data[c][i], dtype=np.float64).ravel() for c in planes])
                for i in range(n_rows)]
    data = np.asarray(hdu.data, dtype=np.float64)
    if data.ndim == 3 and data.shape[0] == n_rows:
        return list(data)
    raise FeatcacheError(f"{path}: COVAR image has shape {data.shape}; expected ({n_rows}, NCOVAR, NPIX)")


def _versions(header) -> dict[str, str]:
    return {k: str(v) for k, v in header.items() if str(k).upper().startswith("VERSION_")}


def _read_target_spectra(hdul, path: Path) -> PfsProduct:
    target_hdu = hdul["TARGET"]
    table = target_hdu.data
    n = len(table)
    target_ids = np.asarray(table["targetId"], dtype=np.int64)
    row_of = {int(t): i for i, t in enumerate(target_ids)}
    if len(row_of) != n:
        raise FeatcacheError(f"{path}: TARGET has repeated targetId values")
    fluxes: dict[int, dict[str, float]] = {i: {} for i in range(n)}
    if "TARGETFLUX" in _hdu_names(hdul):
        tf = hdul["TARGETFLUX"].data
        for tid, name, value in zip(tf["targetId"], tf["filterName"], tf["fiberFlux"], strict=True):
            if int(tid) in row_of:
                fluxes[row_of[int(tid)]][decode_string(name).strip()] = float(value)
    obs_hdu = hdul["OBSERVATIONS"]
    obs_tid = np.asarray(obs_hdu.data["targetId"], dtype=np.int64)
    wave = _per_row(hdul["WAVELENGTH"], n, "WAVELENGTH", path, np.float64)
    flux = _per_row(hdul["FLUX"], n, "FLUX", path, np.float64)
    mask = _per_row(hdul["MASK"], n, "MASK", path, np.int64)
    sky = _per_row(hdul["SKY"], n, "SKY", path, np.float64) if "SKY" in _hdu_names(hdul) else [None] * n
    covar = _covariance_rows(hdul["COVAR"], n, path)
    metadata = hdul["METADATA"].data
    if len(metadata) != n or "metadata" not in metadata.columns.names:
        raise FeatcacheError(f"{path}: METADATA must hold one 'metadata' row per target ({n})")
    meta_row = {int(t): i for i, t in enumerate(np.asarray(metadata["targetId"], dtype=np.int64))} \
        if "targetId" in metadata.columns.names else {int(t): i for i, t in enumerate(target_ids)}
    spectra = []
    for i in range(n):
        tid = int(target_ids[i])
        where = f"{path} target {tid}"
        lengths = {len(wave[i]), len(flux[i]), len(mask[i]), covar[i].shape[1]} | (
            {len(sky[i])} if sky[i] is not None else set())
        if len(lengths) != 1:
            raise FeatcacheError(f"{where}: WAVELENGTH, FLUX, MASK, SKY and COVAR differ in length ({sorted(lengths)})")
        planes = MaskPlanes.from_yaml(decode_string(metadata["metadata"][meta_row.get(tid, i)]), where)
        if not planes.bits:
            raise FeatcacheError(f"{where}: its METADATA declares no MP_* mask planes")
        row = table[i]
        target = Target(cat_id=int(row["catId"]), obj_id=int(row["objId"]), ra=float(_get(row, "ra", np.nan)),
                        dec=float(_get(row, "dec", np.nan)), target_type=int(_get(row, "targetType", 0)),
                        tract=int(_get(row, "tract", -1)), patch=decode_string(_get(row, "patch", "")).strip(),
                        fiber_flux=fluxes[i])
        spectra.append(ObservedSpectrum(
            row=tid, target=target, wavelength=wave[i], flux=flux[i], covariance=covar[i], mask=mask[i],
            sky=sky[i], planes=planes, observations=_observation_rows(obs_hdu, np.flatnonzero(obs_tid == tid))))
    by_name = _name_product(path)
    if by_name in ("pfsCoadd", "pfsCalibrated"):
        product, basis = by_name, "file name"
    else:
        visits = {int(v) for v in obs_hdu.data["visit"]} if len(obs_hdu.data) else set()
        arms = {decode_string(a).strip() for a in obs_hdu.data["arm"]} if len(obs_hdu.data) else set()
        merged = bool(arms) and all(len(a) > 1 for a in arms)
        product = "pfsCalibrated" if (len(visits) == 1 and merged) else "pfsCoadd"
        basis = (f"layout: one visit with merged arms ({', '.join(sorted(arms))})" if product == "pfsCalibrated"
                 else "layout: per-(visit, arm) observations")
    wave_hdu = hdul["WAVELENGTH"]
    shape = "one row shared" if getattr(wave_hdu, "data", None) is not None and np.ndim(wave_hdu.data) == 1 \
        else "one row per target"
    primary = hdul[0].header
    return PfsProduct(path=path, product=product, product_basis=basis, layout="PfsTargetSpectra", spectra=spectra,
                      wavelength_source=f"WAVELENGTH HDU ({shape})",
                      damd_ver=int(primary["DAMD_VER"]) if "DAMD_VER" in primary else None,
                      versions=_versions(primary))


def _get(row, name: str, default: Any) -> Any:
    try:
        return row[name]
    except KeyError:
        return default


def _read_fiber_array(hdul, path: Path) -> PfsProduct:
    names = _hdu_names(hdul)
    flux = np.asarray(hdul["FLUX"].data, dtype=np.float64).ravel()
    n_pix = flux.size
    mask = np.asarray(hdul["MASK"].data, dtype=np.int64).ravel()
    covar = np.asarray(hdul["COVAR"].data, dtype=np.float64)
    covar = covar.reshape(1, -1) if covar.ndim == 1 else covar
    sky = np.asarray(hdul["SKY"].data, dtype=np.float64).ravel() if "SKY" in names else None
    if "WAVELENGTH" in names:
        wave = np.asarray(hdul["WAVELENGTH"].data, dtype=np.float64).ravel()
        source = "WAVELENGTH HDU"
    else:
        wave = wcs_wavelength(hdul["FLUX"].header, n_pix, f"{path} FLUX")
        source = "WCS of FLUX (data model convention: CRVAL1 + CDELT1 (i + 2 - CRPIX1), CUNIT1 " \
                 f"{str(hdul['FLUX'].header.get('CUNIT1', 'm')).strip()})"
    lengths = {wave.size, mask.size, covar.shape[-1]} | ({sky.size} if sky is not None else set())
    if lengths != {n_pix}:
        raise FeatcacheError(f"{path}: WAVELENGTH, FLUX, MASK, SKY and COVAR differ in length "
                             f"({sorted(lengths | {n_pix})})")
    planes = MaskPlanes.from_header(hdul["MASK"].header, f"{path} MASK header")
    if not planes.bits:
        raise FeatcacheError(f"{path}: its MASK header declares no MP_* mask planes")
    header = hdul["TARGET"].header
    fiber_flux = {}
    table = hdul["TARGET"].data
    if table is not None and "filterName" in hdul["TARGET"].columns.names:
        fiber_flux = {decode_string(n).strip(): float(v) for n, v in zip(table["filterName"], table["fiberFlux"],
                                                                        strict=True)}
    target = Target(cat_id=int(header["CATID"]), obj_id=int(header["OBJID"]), ra=float(header.get("RA", np.nan)),
                    dec=float(header.get("DEC", np.nan)), target_type=int(header.get("TARGETTYPE", 0)),
                    tract=int(header.get("TRACT", -1)), patch=str(header.get("PATCH", "")).strip(),
                    fiber_flux=fiber_flux)
    observations = _observation_rows(hdul["OBSERVATIONS"]) if "OBSERVATIONS" in names else []
    by_name = _name_product(path)
    if by_name in ("pfsObject", "pfsSingle"):
        product, basis = by_name, "file name"
    else:
        product, basis = "pfsObject", "layout: one object (pfsObject and pfsSingle share it)"
    spectrum = ObservedSpectrum(row=0, target=target, wavelength=wave, flux=flux, covariance=covar, mask=mask,
                                sky=sky, planes=planes, observations=observations)
    damd = hdul["FLUX"].header.get("DAMD_VER")
    return PfsProduct(path=path, product=product, product_basis=basis, layout="PfsFiberArray", spectra=[spectrum],
                      wavelength_source=source, damd_ver=int(damd) if damd is not None else None,
                      versions=_versions(hdul["FLUX"].header))
