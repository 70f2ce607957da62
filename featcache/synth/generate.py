"""Synthetic PFS red-arm stellar spectra: the embedded default benchmark (`featcache synth`).

The real pfsspec spectra are private, so featcache ships a generator that writes the same file layout
(`featcache.data.PfsDataset` reads it) with the same wavelength grid and noise regime, and with the
stellar labels encoded through (simplified) physics:

* continuum: a Planck curve at T_eff;
* atomic lines from ``featcache/data/lines.csv`` (real air wavelengths) plus a documented pseudo-random forest of
  weak metal lines; each line's equivalent width comes from a curve of growth (Voigt profile,
  thermal + microturbulent Doppler width, radiative + van der Waals damping) with a line opacity set by
  abundance ([M/H], [a/M], [C/M]), Boltzmann excitation and a Saha ion/neutral ratio whose electron
  pressure depends on T_eff, log_g and [M/H], relative to the H- continuum opacity;
* the strong lines (Ca II triplet, Na I 8183/8195, K I 7665/7699, Mg I 8807) and the Paschen series get
  explicit pressure-broadened (van der Waals / Stark) wings that grow with log_g;
* TiO bands in the coolest stars and CN bands (giants, [C/M]) from a molecular-equilibrium factor;
* everything at R ~ 5000, Doppler shifted by the radial velocity, median-normalised to 0.5;
* noise: a sky spectrum (smooth continuum + OH Meinel emission lines), object photon noise, read noise,
  scaled by magnitude; ``error`` is the resulting 1-sigma per pixel. The object term uses the line-free
  continuum, so the error vector does not encode the lines (nor log_g).

Spectrum ``i`` of a file with seed ``S`` depends only on ``(S, i)``: its random numbers come from its own
Philox generator keyed by ``random_seed = SeedSequence([S, i])`` (stored in the params table), and every
array operation is row-wise, so blocks can be generated in any order or in parallel and give bitwise the
same arrays. See ``data/README.md`` for the line table, the rules and the calibration figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..common.files import atomic_write, normalise_os_error
from .emulator import load_grid
from .model import get_model
from .observing import ObservingEffects, apply_effects, effect_draws
from .physics import (
    C_KMS,
    DEFAULT_MAG,
    DEFAULT_RV_MAX,
    GENERATOR_VERSION,
    LABEL_RANGES,
    N_OH_BANDS,
    N_PIXELS,
    NOISE,
    WAVE_MEDIUM,
    observed_wave,
)


# -- random numbers: one generator per spectrum -----------------------------------------------------
def spectrum_seed(seed: int, index: int) -> int:
    """The stored ``random_seed`` of spectrum ``index``: a 63-bit key derived from (seed, index)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def spectrum_rng(random_seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=int(random_seed)))


CHUNK_ROWS = 64
N_UNIFORMS = 5 + 1 + 2 + N_OH_BANDS  # labels, rv, sky and OH scales, per-band OH scales


def _draws(seed: int, start: int, stop: int, noisy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    seeds = np.array([spectrum_seed(seed, i) for i in range(start, stop)], dtype=np.int64)
    uni = np.empty((stop - start, N_UNIFORMS))
    eps = np.empty((stop - start, N_PIXELS), dtype=np.float32) if noisy else None
    for row, rs in enumerate(seeds):
        gen = spectrum_rng(int(rs))
        uni[row] = gen.random(N_UNIFORMS)
        if eps is not None:
            eps[row] = gen.standard_normal(N_PIXELS, dtype=np.float32)
    return seeds, uni, eps


def _check_args(seed: int, start: int, stop: int, rv_max: float, mag: float = DEFAULT_MAG) -> None:
    if not 0 <= int(seed) <= 2**63 - 1:  # the params table stores it as int64
        raise FeatcacheError(f"--seed must be an integer in 0..2**63-1, got {seed}")
    if not 0 <= start <= stop:
        raise FeatcacheError(f"bad row range {start}:{stop}")
    if not (math.isfinite(rv_max) and 0 <= rv_max < 3000):
        raise FeatcacheError(f"--rv-max must be in [0, 3000) km/s, got {rv_max}")
    if not (math.isfinite(mag) and 5.0 <= mag <= 35.0):
        raise FeatcacheError(f"--mag must be a finite magnitude in [5, 35] (the noise model's counts scale with "
                             f"10^(-0.4 mag)), got {mag}")


def generate_block(seed: int, start: int, stop: int, mag: float = DEFAULT_MAG, rv_max: float = DEFAULT_RV_MAX,
                   noise_free: bool = False, effects: ObservingEffects | None = None) -> dict[str, Any]:
    """Spectra [start, stop) of the benchmark with this seed.

    Returns ``{"wave": (P,), "flux": (n, P), "error": (n, P), "noisy": (n, P) or None, "params": DataFrame}``
    (float32 arrays). Spectrum i depends only on (seed, i): any split into blocks gives the same rows.
    ``effects`` adds the observed-like effects (observing.py); without them the labels, ``flux`` and the
    noise are those of the default benchmark, bitwise.
    """
    import pandas as pd

    _check_args(seed, start, stop, rv_max, mag)
    effects = effects if effects is not None else ObservingEffects()
    model = get_model(float(rv_max))
    seeds, uni, eps = _draws(seed, start, stop, noisy=not noise_free)
    draws = effect_draws(seeds) if effects.active else None
    extra: dict[str, list[np.ndarray]] = {}
    labels = {}
    for k, (name, (lo, hi)) in enumerate(LABEL_RANGES.items()):
        labels[name] = lo + (hi - lo) * uni[:, k]
    rv = rv_max * (2.0 * uni[:, 5] - 1.0)
    redshift = rv / C_KMS
    sky_scale = 1.0 + NOISE.sky_jitter * (2.0 * uni[:, 6] - 1.0)
    oh_scale = ((1.0 + NOISE.oh_jitter * (2.0 * uni[:, 7] - 1.0))[:, None]
                * (1.0 + 0.1 * (2.0 * uni[:, 8:8 + N_OH_BANDS] - 1.0)))
    n = stop - start
    flux = np.empty((n, N_PIXELS), np.float32)
    error = np.empty((n, N_PIXELS), np.float32)
    noisy = None if eps is None else eps  # filled in place, chunk by chunk
    snr = np.empty(n)
    for a in range(0, n, CHUNK_ROWS):  # row chunks keep the temporaries in cache; rows are independent
        b = min(a + CHUNK_ROWS, n)
        sub = {k: v[a:b] for k, v in labels.items()}
        obs = _observed(model, sub, redshift[a:b])
        cont = model.planck(sub["T_eff"], model.wave)  # the noise model's object shape (T_eff only)
        if draws is not None:
            obs, cont, columns = apply_effects(model, effects, obs, cont, draws[a:b], mag, oh_scale[a:b])
            for name, values in columns.items():
                extra.setdefault(name, []).append(values)
        err = model.noise_sigma(cont, mag, sky_scale[a:b], oh_scale[a:b])
        flux[a:b], error[a:b] = obs, err
        snr[a:b] = np.sqrt(np.einsum("ij,ij->i", obs, obs, dtype=np.float64)
                           / np.einsum("ij,ij->i", err, err, dtype=np.float64))
        if noisy is not None:
            chunk = noisy[a:b]
            chunk *= err
            chunk += obs
    params = pd.DataFrame({**labels, "mag": np.full(n, float(mag)), "redshift": redshift, "snr": snr,
                           "random_seed": seeds, **{k: np.concatenate(v) for k, v in extra.items()}})
    params.index = pd.RangeIndex(start, stop)
    return {"wave": model.wave.copy(), "flux": flux, "error": error, "noisy": noisy, "params": params}


def _observed(model, labels: dict[str, np.ndarray], redshift: np.ndarray) -> np.ndarray:
    """The noise-free observed flux (median 0.5) of one row chunk."""
    rest, _ = model.rest_frame_flux(labels)
    obs = model.shift(rest, redshift)
    obs *= (0.5 / np.median(obs, axis=1, keepdims=True)).astype(np.float32)
    return obs


def noise_free_flux(labels: dict[str, np.ndarray], redshift: np.ndarray,
                    rv_max: float = DEFAULT_RV_MAX) -> np.ndarray:
    """The noise-free ``flux`` the generator writes for these labels and redshifts, (n, P) float32.

    ``labels`` maps every name of ``LABEL_RANGES`` to an (n,) array (values outside the ranges are
    extrapolated by the model, not refused); ``redshift`` is v / c. The same function ``write_synth`` uses,
    so finite differences of it are derivatives of the benchmark itself (the information bound).
    ``rv_max`` sets only the rest-frame padding: |v| must stay within it.
    """
    missing = set(LABEL_RANGES) - set(labels)
    if missing:
        raise FeatcacheError(f"noise_free_flux: missing labels {sorted(missing)}")
    redshift = np.asarray(redshift, dtype=float).reshape(-1)
    values = {k: np.asarray(labels[k], dtype=float).reshape(-1) for k in LABEL_RANGES}
    n = len(redshift)
    if any(len(v) != n for v in values.values()):
        raise FeatcacheError("noise_free_flux: every label and the redshift need the same length")
    if n and float(np.max(np.abs(redshift))) * C_KMS > rv_max * (1 + 1e-9):
        raise FeatcacheError(f"noise_free_flux: |v| exceeds rv_max={rv_max} km/s")
    model = get_model(float(rv_max))
    out = np.empty((n, N_PIXELS), np.float32)
    for a in range(0, n, CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, n)
        out[a:b] = _observed(model, {k: v[a:b] for k, v in values.items()}, redshift[a:b])
    return out


# -- writing a file ---------------------------------------------------------------------------------
def _block_job(args: tuple[int, int, int, float, float, bool, ObservingEffects]) -> dict[str, Any]:
    return generate_block(*args[:3], mag=args[3], rv_max=args[4], noise_free=args[5], effects=args[6])


def write_synth(path: str | os.PathLike[str], n: int, seed: int, *, mag: float = DEFAULT_MAG,
                rv_max: float = DEFAULT_RV_MAX, noise_free: bool = False, block: int = 1000, workers: int = 1,
                progress: Callable[[int], None] | None = None, overwrite: bool = False,
                effects: ObservingEffects | None = None) -> dict[str, Any]:
    """Write ``n`` spectra in the pfsspec layout, streaming blocks of ``block`` rows (bounded memory).

    ``workers`` > 1 generates blocks in that many processes (each block depends only on its rows, so the
    file is bitwise the same); the writer keeps at most ``2 * workers`` blocks in flight.
    ``progress(k)`` is called with the number of rows just written. An existing file is replaced only with
    ``overwrite`` (it may be someone's real dataset); the new file appears whole or not at all. ``effects``
    switches on the observed-like effects (telluric absorption, sky residuals, calibration error), recorded
    in the file's attributes and params.
    """
    import h5py
    import pandas as pd

    if n < 1:
        raise FeatcacheError(f"--n must be >= 1, got {n}")
    if block < 1:
        raise FeatcacheError(f"--block-size must be >= 1, got {block}")
    _check_args(seed, 0, n, rv_max, mag)
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise FeatcacheError(f"{path.parent}: is a file, expected a folder for {path.name}")
    if path.is_dir():
        raise FeatcacheError(f"{path}: is a directory, expected an HDF5 file name")
    if path.exists() and not overwrite:
        raise FeatcacheError(f"{path}: exists; pass --overwrite to replace it or choose another name")
    names = ["flux", "error"] + ([] if noise_free else ["noisy"])
    path.parent.mkdir(parents=True, exist_ok=True)  # as extract, fit and compare make their --out folders
    check_free_space(path, n * N_PIXELS * 4 * len(names) + n * PARAMS_BYTES + (1 << 20))
    effects = effects if effects is not None else ObservingEffects()
    jobs = [(int(seed), s, min(s + block, n), float(mag), float(rv_max), bool(noise_free), effects)
            for s in range(0, n, block)]
    frames: list[Any] = []
    chunk_rows = max(1, min(64, n))

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            wave = observed_wave()
            h5.create_dataset("spectrumdataset/wave", data=wave)
            edges = np.concatenate([[wave[0] - 0.5 * (wave[1] - wave[0])], 0.5 * (wave[1:] + wave[:-1]),
                                    [wave[-1] + 0.5 * (wave[-1] - wave[-2])]])
            h5.create_dataset("spectrumdataset/wave_edges", data=edges)
            dsets = {name: h5.create_dataset(f"dataset/arrays/{name}/value", shape=(n, N_PIXELS),
                                             dtype=np.float32, chunks=(chunk_rows, N_PIXELS))
                     for name in names}
            h5.attrs.update({"generator": "featcache.synth", "generator_version": GENERATOR_VERSION,
                             "reference_grid": load_grid().source, "wave_medium": WAVE_MEDIUM,
                             "seed": int(seed), "n": int(n), "mag": float(mag), "rv_max": float(rv_max),
                             "noise_free": int(bool(noise_free)),
                             **{f"observed_{k}": v for k, v in effects.attrs().items()}})
            for out in _iterate_blocks(jobs, workers):
                s, e = int(out["params"].index[0]), int(out["params"].index[-1]) + 1
                for name in names:
                    dsets[name][s:e] = out[name]
                frames.append(out["params"])
                if progress is not None:
                    progress(e - s)
        params = pd.concat(frames)
        params.index = pd.RangeIndex(0, n)
        params.to_hdf(tmp, key="dataset/params", format="table", mode="a")
        snr.append(float(np.median(params["snr"])))

    snr: list[float] = []
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError from a close that follows a failed write
        error = normalise_os_error(exc if isinstance(exc, OSError) else OSError(None, str(exc)), path)
        words = error.strerror if error.errno else str(exc).strip().splitlines()[0][:160]
        raise HDF5WriteFailed(f"{path}: cannot write the HDF5 file ({words}); nothing was written: free some space "
                              "or write elsewhere") from None
    return {"path": str(path), "n": n, "seed": seed, "mag": mag, "arrays": names, "snr_median": snr[0],
            "size": path.stat().st_size}


PARAMS_BYTES = 400  # a params-table row (labels, seeds, S/N) as PyTables stores it, with room to spare


class HDF5WriteFailed(FeatcacheError):
    """Writing the HDF5 file failed (a full disk): the partial file is gone, but the HDF5 library may be left
    in a state that crashes at interpreter exit, so a command-line caller should end its process at once."""


def check_free_space(path: Path, need: int) -> None:
    """Refuse before writing when the file cannot fit: HDF5 handles a full disk badly (a write that fails leaves
    the library in a state that can crash the process), so the size is checked first."""
    import shutil

    try:
        free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    except OSError:
        return
    if need > free:
        raise FeatcacheError(f"{path}: needs about {need / 1e6:.0f} MB and the disk has {free / 1e6:.0f} MB free; "
                             "free some space, write elsewhere or give a smaller --n")


def _iterate_blocks(jobs: list[tuple[int, int, int, float, float, bool, ObservingEffects]], workers: int):
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _block_job(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = []
        it = iter(jobs)
        for job in it:
            pending.append(pool.submit(_block_job, job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_block_job, nxt))
            yield result
