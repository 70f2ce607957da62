"""The exact source of J for `featcache synth` files: central finite differences of the generator's own
noise-free spectrum (featcache.synth.noise_free_flux), the function that wrote the file's `flux`.

Step sizes: the generator reads every line's strength off a bilinear curve-of-growth table, so its
derivatives are piecewise constant; a step much smaller than a table cell sees single kinks (at log_g steps
of 0.01 one star in 64 moved its bound by 41%), a step that spans several averages them. The defaults below
move the bounds by a median 1% (90th percentile 4-5%) when halved (`step_stability` measures it on a file;
docs/information-bound.md has the table). The file must come from the installed generator version: another
version's physics would give another J.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from .fisher import crb

GENERATOR = "featcache.synth"
# central-difference half steps (label units; the redshift's as v/c, 2 km/s)
DEFAULT_STEPS: dict[str, float] = {"T_eff": 20.0, "log_g": 0.04, "M_H": 0.04, "a_M": 0.04, "C_M": 0.04,
                                   "redshift": 2.0 / 299792.458}


def generator_info(path: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    """The file's generator settings, refusing a file that the installed generator did not write."""
    from ..synth.physics import GENERATOR_VERSION

    generator = attrs.get("generator")
    if generator is not None and not isinstance(generator, str):
        generator = generator.decode() if isinstance(generator, bytes) else str(generator)
    if generator != GENERATOR:
        raise FeatcacheError(f"{path}: not written by featcache synth (attribute generator={generator!r}); the exact "
                             "bound needs the generator: use --source cannon")
    version = str(attrs.get("generator_version"))
    if version != str(GENERATOR_VERSION):
        raise FeatcacheError(f"{path}: written by featcache synth generator version {version}, but version "
                             f"{GENERATOR_VERSION} is installed and its physics differs; regenerate the file or use "
                             "--source cannon")
    effects = sorted(k for k in attrs if str(k).startswith("observed_"))
    if effects:
        raise FeatcacheError(f"{path}: written with observed-like effects ({', '.join(effects)}), which the "
                             "generator's noise-free spectrum does not include; use --source cannon")
    return {"generator": GENERATOR, "generator_version": version, "rv_max": float(attrs.get("rv_max", 300.0))}


def synth_parameters(has_redshift: bool) -> list[str]:
    """Every label of the generator, then the redshift when it is a free (varying) nuisance parameter."""
    from ..synth.physics import LABEL_RANGES

    return [*LABEL_RANGES, *(["redshift"] if has_redshift else [])]


def synth_jacobian(labels: dict[str, np.ndarray], redshift: np.ndarray, pixels: np.ndarray, rv_max: float,
                   parameters: list[str], steps: dict[str, float] | None = None) -> np.ndarray:
    """J (n, K, M): central differences of the generator's noise-free flux on the observed pixels `pixels`
    with respect to each parameter (a label of LABEL_RANGES or 'redshift')."""
    from ..synth.generate import noise_free_flux
    from ..synth.physics import C_KMS

    steps = {**DEFAULT_STEPS, **(steps or {})}
    z = np.asarray(redshift, dtype=np.float64)
    values = {k: np.asarray(v, dtype=np.float64) for k, v in labels.items()}
    # the padding must hold the shifted spectra too (it only sets the rest-frame grid's extent)
    pad = float(rv_max) + 2.0 * steps["redshift"] * C_KMS + 1.0
    jac = np.empty((len(z), len(parameters), len(pixels)))
    for k, name in enumerate(parameters):
        h = float(steps[name])
        if name == "redshift":
            up, down = noise_free_flux(values, z + h, pad), noise_free_flux(values, z - h, pad)
        else:
            plus, minus = dict(values), dict(values)
            plus[name], minus[name] = values[name] + h, values[name] - h
            up, down = noise_free_flux(plus, z, pad), noise_free_flux(minus, z, pad)
        jac[:, k] = (up[:, pixels].astype(np.float64) - down[:, pixels].astype(np.float64)) / (2.0 * h)
    return jac


def synth_bounds(labels: dict[str, np.ndarray], redshift: np.ndarray, sigma: np.ndarray, pixels: np.ndarray,
                 rv_max: float, parameters: list[str], steps: dict[str, float] | None = None,
                 block: int = 128, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Per-star bounds (n, K) of `parameters`, in blocks of `block` stars (J of a block: block x K x M doubles)."""
    n = len(redshift)
    out = np.empty((n, len(parameters)))
    for a in range(0, n, block):
        b = min(a + block, n)
        jac = synth_jacobian({k: v[a:b] for k, v in labels.items()}, redshift[a:b], pixels, rv_max, parameters,
                             steps)
        out[a:b] = crb(jac, sigma[a:b])
        if progress is not None:
            progress(b - a)
    return out


def step_stability(labels: dict[str, np.ndarray], redshift: np.ndarray, sigma: np.ndarray, pixels: np.ndarray,
                   rv_max: float, parameters: list[str], steps: dict[str, float] | None = None
                   ) -> dict[str, dict[str, float]]:
    """Bounds with the steps and with half of them: per parameter the median, 90th percentile and largest
    relative change of a star's bound (what docs/information-bound.md reports for the defaults)."""
    steps = {**DEFAULT_STEPS, **(steps or {})}
    half = {k: 0.5 * v for k, v in steps.items()}
    full_b = synth_bounds(labels, redshift, sigma, pixels, rv_max, parameters, steps)
    half_b = synth_bounds(labels, redshift, sigma, pixels, rv_max, parameters, half)
    change = np.abs(half_b / full_b - 1.0)
    return {name: {"median": float(np.median(change[:, k])), "p90": float(np.percentile(change[:, k], 90)),
                   "max": float(change[:, k].max()), "step": float(steps[name])}
            for k, name in enumerate(parameters)}
