"""Wavelengths: the PFS products' vacuum nm against a reference grid's unit and medium, and the data model's
wavelength WCS.

Every conversion is explicit and named: nm <-> Angstrom (x10) and vacuum <-> air by the IAU standard
(Morton 2000, Ciddor's dispersion at 15 C, 101325 Pa, dry air: n - 1 = 8.34254e-5 + 2.406147e-2 / (130 - s^2)
+ 1.5998e-4 / (38.9 - s^2), s = 1e4 / lambda_vac in inverse microns); air -> vacuum inverts that formula by
Newton iteration (round trip below 1e-9 A). At 8000 A the air wavelength is 2.2 A (about 5 pixels of the red
arm's 0.43 A sampling) shorter than the vacuum one, so choosing the wrong medium shifts every line.
"""

from __future__ import annotations

import numpy as np

from ..common.errors import FeatcacheError

MEDIA = ("air", "vacuum")
UNITS = {"nm": 1.0, "Angstrom": 0.1}  # unit -> nm per unit
WCS_UNITS = {"m": 1e9, "nm": 1.0, "Angstrom": 0.1, "angstrom": 0.1, "A": 0.1}  # CUNIT1 -> nm per unit


def refractive_index_air(wave_vacuum_angstrom: np.ndarray) -> np.ndarray:
    """n(lambda_vac) of standard air (IAU, Morton 2000); valid above 2000 A."""
    s2 = (1e4 / np.asarray(wave_vacuum_angstrom, dtype=np.float64)) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wave_angstrom: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave_angstrom, dtype=np.float64)
    _check_optical(wave, "vacuum")
    return wave / refractive_index_air(wave)


def air_to_vacuum(wave_angstrom: np.ndarray) -> np.ndarray:
    """The vacuum wavelength whose air wavelength is the given one (Newton on vacuum_to_air)."""
    air = np.asarray(wave_angstrom, dtype=np.float64)
    _check_optical(air, "air")
    vac = air * refractive_index_air(air)
    for _ in range(6):
        step = 1e-3
        f = vac / refractive_index_air(vac) - air
        slope = ((vac + step) / refractive_index_air(vac + step) - (vac - step) / refractive_index_air(vac - step)) \
            / (2 * step)
        vac = vac - f / slope
    return vac


def _check_optical(wave: np.ndarray, medium: str) -> None:
    finite = wave[np.isfinite(wave)]
    if finite.size and (finite.min() < 2000.0 or finite.max() > 1e6):
        raise FeatcacheError(f"{medium} wavelengths {finite.min():.4g}-{finite.max():.4g} A are outside 2000 A - "
                             "100 um, where the air refractive index formula holds (a wrong unit?)")


def convert(wave: np.ndarray, *, unit_from: str, medium_from: str, unit_to: str, medium_to: str) -> np.ndarray:
    """Wavelengths from one (unit, medium) to another: the unit first (through Angstrom), then the medium."""
    for unit in (unit_from, unit_to):
        if unit not in UNITS:
            raise FeatcacheError(f"wavelength unit {unit!r}: choose from {', '.join(UNITS)}")
    for medium in (medium_from, medium_to):
        if medium not in MEDIA:
            raise FeatcacheError(f"wavelength medium {medium!r}: choose from {', '.join(MEDIA)}")
    angstrom = np.asarray(wave, dtype=np.float64) * (UNITS[unit_from] / UNITS["Angstrom"])
    if medium_from != medium_to:
        angstrom = vacuum_to_air(angstrom) if medium_to == "air" else air_to_vacuum(angstrom)
    return angstrom * (UNITS["Angstrom"] / UNITS[unit_to])


def edges_from_centres(centres: np.ndarray) -> np.ndarray:
    """Pixel edges (P + 1) of increasing pixel centres: midpoints inside, half a neighbouring step outside."""
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 1 or c.size < 2:
        raise FeatcacheError(f"a wavelength grid needs at least two pixels, got shape {c.shape}")
    if not (np.isfinite(c).all() and (np.diff(c) > 0).all()):
        raise FeatcacheError("wavelengths must be finite and strictly increasing")
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def wcs_wavelength(header, n_pixels: int, source: str) -> np.ndarray:
    """Vacuum nm of each pixel from the data model's 1-D wavelength WCS (pfsObject/pfsSingle without a
    WAVELENGTH HDU).

    The data model writes CRPIX1 = 0.5 n + 1.5 and reads pixel i (0-based) as astropy's pixel_to_world(i + 1),
    so its wavelengths are CRVAL1 + CDELT1 (i + 2 - CRPIX1): one pixel redder than the FITS standard's
    CRVAL1 + CDELT1 (i + 1 - CRPIX1). astropy writes the cards in metres (CUNIT1 = 'm'); other units are
    converted by their CUNIT1.
    """
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    if not ctype.startswith("WAVE"):
        raise FeatcacheError(f"{source}: no WAVELENGTH HDU and no wavelength WCS (CTYPE1 is {ctype or 'missing'}, "
                             "expected 'WAVE')")
    unit = str(header.get("CUNIT1", "m")).strip()
    if unit not in WCS_UNITS:
        raise FeatcacheError(f"{source}: wavelength WCS unit CUNIT1 = {unit!r}; expected one of "
                             f"{', '.join(WCS_UNITS)}")
    missing = [k for k in ("CRVAL1", "CRPIX1") if k not in header]
    if "CDELT1" not in header and "CD1_1" not in header:
        missing.append("CDELT1")
    if missing:
        raise FeatcacheError(f"{source}: wavelength WCS lacks {', '.join(missing)}")
    step = float(header["CD1_1"]) if "CD1_1" in header else float(header["CDELT1"]) * float(header.get("PC1_1", 1.0))
    pixels = np.arange(n_pixels, dtype=np.float64)
    wave = float(header["CRVAL1"]) + step * (pixels + 2.0 - float(header["CRPIX1"]))
    return wave * WCS_UNITS[unit]


def fits_standard_wcs_wavelength(header, n_pixels: int) -> np.ndarray:
    """The FITS-standard reading of the same cards (pixel i at i + 1): what a generic reader would give."""
    unit = WCS_UNITS.get(str(header.get("CUNIT1", "m")).strip(), 1e9)
    step = float(header["CD1_1"]) if "CD1_1" in header else float(header["CDELT1"]) * float(header.get("PC1_1", 1.0))
    pixels = np.arange(n_pixels, dtype=np.float64)
    return (float(header["CRVAL1"]) + step * (pixels + 1.0 - float(header["CRPIX1"]))) * unit
