"""Putting an observed spectrum on the encoder's grid: the reference file's wavelengths, unit, medium and
flux convention, a flux-conserving resampling with the covariance propagated, the normalisation, and the
documented rule for pixels without good data.

The steps, in order (each recorded in the output's provenance):

1. wavelengths: the product's vacuum nm -> the reference's unit (Angstrom) and medium (air or vacuum, stated by
   the reference file or by --reference-medium; never guessed);
2. flux density: nJy (f_nu) -> f_lambda = f_nu c / lambda^2 (erg s^-1 cm^-2 A^-1, lambda the vacuum wavelength,
   per unit of the reference's wavelength) when the reference is f_lambda; nJy kept for an f_nu reference;
3. resampling onto the reference pixels (`resample.py`): usable source pixels only (no reject plane set, finite
   flux, finite positive variance); a reference pixel is *bad* if it overlaps any unusable source pixel and
   *uncovered* if the source's pixels do not cover it whole;
4. normalisation (`median`, the reference set's rule): flux and error times value / median(flux over the good
   pixels); `none` keeps the converted units;
5. the bad-pixel rule: a bad or uncovered pixel's flux is the linear interpolation of its nearest good
   neighbours (the end value beyond them) and its error bad_error_factor x the spectrum's median good error,
   so the encoder's sigma channel sees it as a pixel without information; it is also flagged in the mask array.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from .masks import DEFAULT_REJECT
from .products import ObservedSpectrum
from .resample import rebin_matrix, resample
from .wavelength import MEDIA, convert, edges_from_centres

FLUX_DENSITIES = ("f_lambda", "f_nu")
NORMALISATIONS = ("median", "none")
UNCOVERED = ("refuse", "mask")
NJY_CGS = 1e-32                 # erg s^-1 cm^-2 Hz^-1 per nJy
C_ANGSTROM = 2.99792458e18      # speed of light in A/s
BAD_SOURCE, UNCOVERED_BIT = 1, 2  # values of the written mask array

# What featcache knows about reference files that do not state their conventions themselves.
KNOWN_GENERATORS = {"featcache.synth": {"medium": "air", "flux_density": "f_lambda"}}


@dataclass(frozen=True)
class Reference:
    """The grid the encoder was trained on: pixel centres and edges in Angstrom, their medium, the flux convention."""

    path: Path
    wave: np.ndarray
    edges: np.ndarray
    medium: str
    flux_density: str
    basis: str
    unit: str = "Angstrom"

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "n_pixels": int(self.wave.size), "wave_min": float(self.wave[0]),
                "wave_max": float(self.wave[-1]), "unit": self.unit, "medium": self.medium,
                "flux_density": self.flux_density, "conventions_from": self.basis}


def load_reference(path: str | os.PathLike[str], *, medium: str | None = None,
                   flux_density: str | None = None) -> Reference:
    """The reference pfsspec file's grid (`spectrumdataset/wave`, and `wave_edges` when present) and conventions:
    the file's own `wave_medium` / `flux_density` attributes, what featcache knows of its generator, or the
    options; an option that contradicts the file is refused, and a convention nobody states is asked for."""
    import h5py

    from ..spectra.pfsspec import WAVE_KEY, PfsDataset

    path = Path(path)
    with PfsDataset(path) as ds:
        wave = np.asarray(ds.wave, dtype=np.float64)
    with h5py.File(path, "r") as h5:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        edges = np.asarray(h5["spectrumdataset/wave_edges"][()], dtype=np.float64) \
            if "spectrumdataset/wave_edges" in h5 else None
    if not (np.isfinite(wave).all() and (np.diff(wave) > 0).all()):
        raise FeatcacheError(f"--reference {path}: '{WAVE_KEY}' must be finite and strictly increasing")
    if edges is None:
        edges = edges_from_centres(wave)
    elif edges.shape != (wave.size + 1,) or not (np.diff(edges) > 0).all():
        raise FeatcacheError(f"--reference {path}: 'spectrumdataset/wave_edges' must be {wave.size + 1} increasing "
                             "edges")
    known = KNOWN_GENERATORS.get(str(attrs.get("generator", "")), {})
    stated = {"medium": attrs.get("wave_medium", known.get("medium")),
              "flux_density": attrs.get("flux_density", known.get("flux_density"))}
    basis = "file attributes" if "wave_medium" in attrs else (
        f"generator {attrs.get('generator')} (air wavelengths, f_lambda)" if known else "options")
    chosen = {}
    for name, option, given, allowed in (("medium", "--reference-medium", medium, MEDIA),
                                         ("flux_density", "--reference-flux", flux_density, FLUX_DENSITIES)):
        if given is not None and given not in allowed:
            raise FeatcacheError(f"{option} {given}: choose from {', '.join(allowed)}")
        if stated[name] is not None and given is not None and given != stated[name]:
            raise FeatcacheError(f"{option} {given}: the reference {path} states {stated[name]} ({basis})")
        value = given if given is not None else stated[name]
        if value is None:
            raise FeatcacheError(f"--reference {path}: the file does not state its {name.replace('_', ' ')}; pass "
                                 f"{option} {'|'.join(allowed)} (an air/vacuum mix-up shifts lines by about 2.2 A at "
                                 "8000 A)" if name == "medium" else
                                 f"--reference {path}: the file does not state its flux convention; pass "
                                 f"{option} {'|'.join(allowed)}")
        chosen[name] = str(value)
    if basis == "options" and (medium is None or flux_density is None):
        basis = "file attributes and options"
    return Reference(path, wave, edges, chosen["medium"], chosen["flux_density"], basis)


@dataclass(frozen=True)
class GridOptions:
    """How spectra go onto the reference grid (one options object for `featcache import`)."""

    reject: tuple[str, ...] = DEFAULT_REJECT
    normalise: str = "median"
    norm_value: float = 0.5
    uncovered: str = "refuse"
    bad_error_factor: float = 10.0
    max_bad_fraction: float = 0.25
    covariance: bool = True

    def validate(self) -> GridOptions:
        if self.normalise not in NORMALISATIONS:
            raise FeatcacheError(f"--normalise {self.normalise}: choose from {', '.join(NORMALISATIONS)}")
        if not (math.isfinite(self.norm_value) and self.norm_value > 0):
            raise FeatcacheError(f"--norm-value {self.norm_value}: expected a positive number (the reference set's "
                                 "median, 0.5)")
        if self.uncovered not in UNCOVERED:
            raise FeatcacheError(f"--uncovered {self.uncovered}: choose from {', '.join(UNCOVERED)}")
        if not (math.isfinite(self.bad_error_factor) and self.bad_error_factor >= 1):
            raise FeatcacheError(f"--bad-error-factor {self.bad_error_factor}: expected a number >= 1")
        if not 0 <= self.max_bad_fraction <= 1:
            raise FeatcacheError(f"--max-bad-fraction {self.max_bad_fraction}: expected a fraction in [0, 1]")
        return self

    def describe(self) -> dict[str, Any]:
        return {"reject_planes": list(self.reject), "normalise": self.normalise, "norm_value": self.norm_value,
                "uncovered": self.uncovered, "bad_error_factor": self.bad_error_factor,
                "max_bad_fraction": self.max_bad_fraction, "covariance": self.covariance,
                "bad_pixel_rule": "flux: linear interpolation of the nearest good pixels (end values beyond); "
                                  "error: bad_error_factor x the median good error; mask array: 1 bad source, "
                                  "2 uncovered"}


@dataclass
class Gridded:
    """One spectrum on the reference grid (float32), or the reason it was left out."""

    flux: np.ndarray | None
    error: np.ndarray | None
    mask: np.ndarray | None          # uint8: BAD_SOURCE | UNCOVERED_BIT
    n_bad: int
    n_uncovered: int
    n_rejected_source: int
    scale: float = math.nan
    snr: float = math.nan
    skipped: str = ""
    rejected_by_plane: dict[str, int] = field(default_factory=dict)


def to_reference_grid(spectrum: ObservedSpectrum, reference: Reference, options: GridOptions) -> Gridded:
    """The spectrum on the reference grid by the module's rule (see the module docstring)."""
    wave_nm = np.asarray(spectrum.wavelength, dtype=np.float64)
    n_ref = reference.wave.size
    usable = spectrum.usable(options.reject)
    finite_wave = np.isfinite(wave_nm)
    usable &= finite_wave
    counts = {name: int(v.sum()) for name, v in spectrum.planes.decode(spectrum.mask).items()
              if name in options.reject and v.any()}
    if not finite_wave.all():
        # a grid with NaN wavelengths (pixels without data): only the finite, increasing part is a grid
        wave_nm = np.where(finite_wave, wave_nm, np.interp(np.arange(wave_nm.size), np.flatnonzero(finite_wave),
                                                           wave_nm[finite_wave]))
    try:
        edges_nm = edges_from_centres(wave_nm)
    except FeatcacheError as exc:
        raise FeatcacheError(f"target {spectrum.target.key}: {exc}") from None
    edges = convert(edges_nm, unit_from="nm", medium_from="vacuum", unit_to=reference.unit,
                    medium_to=reference.medium)
    flux = np.where(usable, spectrum.flux, 0.0)
    planes = np.atleast_2d(spectrum.covariance if options.covariance else spectrum.covariance[:1]).copy()
    for k in range(planes.shape[0]):
        ok = usable.copy()
        if k:
            ok[:-k] &= usable[k:]
            ok[-k:] = False
        planes[k] = np.where(ok, planes[k], 0.0)
    if reference.flux_density == "f_lambda":
        wave_vac_a = wave_nm * 10.0
        jacobian = np.diff(edges_nm * 10.0) / np.diff(edges)   # per unit of the reference's wavelength
        factor = NJY_CGS * C_ANGSTROM / wave_vac_a ** 2 * jacobian
        flux = flux * factor
        for k in range(planes.shape[0]):
            planes[k, : planes.shape[1] - k] *= factor[: factor.size - k] * factor[k:]
    weights = rebin_matrix(edges, reference.edges)
    covered = np.asarray(weights.sum(axis=1)).ravel()
    uncovered = covered < 1.0 - 1e-9
    bad = (np.asarray(weights @ (~usable).astype(np.float64)).ravel() > 0) & ~uncovered
    values, out_planes = resample(flux, planes, weights, n_planes=1)
    variance = out_planes[0]
    flagged = bad | uncovered
    good = ~flagged
    result = Gridded(None, None, None, n_bad=int(bad.sum()), n_uncovered=int(uncovered.sum()),
                     n_rejected_source=int((~usable).sum()), rejected_by_plane=counts)
    if not good.any():
        result.skipped = "no good pixel on the reference grid"
        return result
    if flagged.sum() > options.max_bad_fraction * n_ref:
        result.skipped = (f"{int(flagged.sum())} of {n_ref} reference pixels bad or uncovered (more than "
                          f"--max-bad-fraction {options.max_bad_fraction:g})")
        return result
    error = np.sqrt(np.maximum(variance, 0.0))
    scale = 1.0
    if options.normalise == "median":
        centre = float(np.median(values[good]))
        if not (math.isfinite(centre) and centre > 0):
            result.skipped = f"median flux {centre:.3g} over the good pixels: nothing to normalise by"
            return result
        scale = options.norm_value / centre
    values, error = values * scale, error * scale
    index = np.arange(n_ref)
    if flagged.any():
        values[flagged] = np.interp(index[flagged], index[good], values[good])
        error[flagged] = options.bad_error_factor * float(np.median(error[good]))
    snr = float(np.sqrt(np.sum(values[good] ** 2) / np.sum(error[good] ** 2))) if np.any(error[good] > 0) \
        else math.inf
    mask = (bad * BAD_SOURCE + uncovered * UNCOVERED_BIT).astype(np.uint8)
    result.flux, result.error, result.mask = values.astype(np.float32), error.astype(np.float32), mask
    result.scale, result.snr = float(scale), snr
    return result
