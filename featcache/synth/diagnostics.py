"""Measurements of the benchmark's physics, shared by the physics report (benchmarks/synth_physics.py) and
the tests: a pseudo-continuum, equivalent widths of the gravity-sensitive lines, the weak-line forest's
density, and an independent line-spread degradation of the reference grid's samples.

Definitions (data/README.md, "Physics"): the pseudo-continuum is the running 95th percentile of the flux in
50 A windows; an equivalent width is the integral of 1 - flux / pseudo-continuum over a fixed window about
the line; the forest density is the fraction of pixels more than 5% below the pseudo-continuum.
"""

from __future__ import annotations

import math

import numpy as np

# line: (centre in air A, half-width of the equivalent-width window in A)
LINES: dict[str, tuple[float, float]] = {
    "Ca II 8498": (8498.02, 10.0), "Ca II 8542": (8542.09, 10.0), "Ca II 8662": (8662.14, 10.0),
    "Na I 8183": (8183.26, 3.0), "Na I 8195": (8194.82, 3.0), "Mg I 8807": (8806.76, 2.0),
    "K I 7699": (7698.96, 2.0), "Fe I 8688": (8688.62, 1.5)}
CA_TRIPLET = ("Ca II 8498", "Ca II 8542", "Ca II 8662")
NA_DOUBLET = ("Na I 8183", "Na I 8195")


def pseudo_continuum(wave: np.ndarray, flux: np.ndarray, width: float = 50.0, quantile: float = 95.0) -> np.ndarray:
    """Running ``quantile`` percentile of each row in windows of ``width`` A (edges: the window is cut)."""
    from scipy.ndimage import percentile_filter

    step = float(np.median(np.diff(wave)))
    size = 2 * int(round(0.5 * width / step)) + 1
    rows = np.atleast_2d(np.asarray(flux, dtype=float))
    out = np.stack([percentile_filter(row, quantile, size=size, mode="nearest") for row in rows])
    return out.reshape(np.shape(flux))


def equivalent_width(wave: np.ndarray, flux: np.ndarray, centre: float, half: float,
                     continuum: np.ndarray | None = None) -> np.ndarray:
    """Equivalent width (A) of each row in [centre - half, centre + half] against the pseudo-continuum."""
    continuum = pseudo_continuum(wave, flux) if continuum is None else continuum
    inside = (wave >= centre - half) & (wave <= centre + half)
    step = float(np.median(np.diff(wave)))
    return np.sum(1.0 - np.asarray(flux)[..., inside] / continuum[..., inside], axis=-1) * step


def line_table(wave: np.ndarray, flux: np.ndarray, lines: dict[str, tuple[float, float]] = LINES
               ) -> dict[str, np.ndarray]:
    """Equivalent widths of every line of ``lines`` (rows of ``flux``), one pseudo-continuum per row."""
    continuum = pseudo_continuum(wave, flux)
    return {name: equivalent_width(wave, flux, c, h, continuum) for name, (c, h) in lines.items()}


def forest_fraction(wave: np.ndarray, flux: np.ndarray, depth: float = 0.05) -> np.ndarray:
    """Fraction of pixels more than ``depth`` below the pseudo-continuum, per row."""
    return np.mean(np.asarray(flux) / pseudo_continuum(wave, flux) < 1.0 - depth, axis=-1)


def normalised_rms(wave: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """rms over pixels of the difference of two spectra, each divided by its own pseudo-continuum."""
    return np.sqrt(np.mean((np.asarray(a) / pseudo_continuum(wave, a) - np.asarray(b) / pseudo_continuum(wave, b))
                           ** 2, axis=-1))


def degrade(samples: np.ndarray, flux: np.ndarray, out_wave: np.ndarray, resolution: float = 5000.0) -> np.ndarray:
    """Monochromatic samples (rows of ``flux`` at wavelengths ``samples``) seen through a Gaussian line spread
    of FWHM lambda / R, at ``out_wave``: a direct weighted sum per output pixel (written apart from the
    generator's sparse matrix, as its check)."""
    rows = np.atleast_2d(np.asarray(flux, dtype=float))
    out = np.empty((rows.shape[0], len(out_wave)))
    for j, centre in enumerate(out_wave):
        sigma = centre / (resolution * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        near = np.abs(samples - centre) < 6.0 * sigma
        kernel = np.exp(-0.5 * ((samples[near] - centre) / sigma) ** 2)
        out[:, j] = rows[:, near] @ (kernel / kernel.sum())
    return out.reshape(*np.shape(flux)[:-1], len(out_wave))
