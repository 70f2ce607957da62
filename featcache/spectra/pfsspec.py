"""pfsspec HDF5 datasets: open, describe, and read row blocks with the original experiments' reading rules."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..common.describe import Description
from ..common.errors import FeatcacheError

WAVE_KEY = "spectrumdataset/wave"
ARRAY_KEYS = {
    "flux": "dataset/arrays/flux/value",
    "error": "dataset/arrays/error/value",
    "mask": "dataset/arrays/mask/value",
    "noisy": "dataset/arrays/noisy/value",
}
PARAMS_KEY = "dataset/params"


def apply_flux_rules(flux: np.ndarray) -> np.ndarray:
    """flux: NaN -> 0, then negative values clipped to 0 (the original experiments' rule)."""
    flux = np.nan_to_num(np.asarray(flux, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(flux, 0.0, out=flux)


def fill_error_nans(error: np.ndarray, *, source: str = "error", first_row: int = 0) -> np.ndarray:
    """Each non-finite error takes the value of its nearest valid neighbour in the same spectrum.

    Ties (equally near on both sides) take the left neighbour. A row with no valid value is an input error.
    """
    error = np.array(error, dtype=np.float32, copy=True)
    bad = ~np.isfinite(error)
    if not bad.any():
        return error
    rows_all_bad = bad.all(axis=1)
    if rows_all_bad.any():
        row = int(np.flatnonzero(rows_all_bad)[0]) + first_row
        raise FeatcacheError(f"{source}: row {row} has no valid error value (all NaN); "
                             "fix or drop that spectrum")
    n_pix = error.shape[1]
    pos = np.arange(n_pix)
    valid_pos = np.where(bad, -1, pos)
    left = np.maximum.accumulate(valid_pos, axis=1)  # index of the last valid at or before j
    valid_pos_r = np.where(bad, n_pix, pos)
    right = np.minimum.accumulate(valid_pos_r[:, ::-1], axis=1)[:, ::-1]  # first valid at or after j
    dist_left = np.where(left >= 0, pos - left, n_pix + 1)
    dist_right = np.where(right < n_pix, right - pos, n_pix + 1)
    nearest = np.where(dist_left <= dist_right, left, right)
    rows, cols = np.nonzero(bad)
    error[rows, cols] = error[rows, nearest[rows, cols]]
    return error


def check_error_values(error: np.ndarray, *, source: str = "error", first_row: int = 0) -> None:
    """The error is a 1-sigma: a negative value would pull the quantile mask toward the noisiest pixels and
    feed the encoder a negative sigma channel, so it is refused (NaN is filled, see fill_error_nans)."""
    with np.errstate(invalid="ignore"):
        negative = error < 0
    if negative.any():
        row, pixel = (int(v) for v in np.argwhere(negative)[0])
        raise FeatcacheError(f"{source}: negative error value {float(error[row, pixel]):.4g} at row "
                             f"{row + first_row}, pixel {pixel} ({int(negative.sum())} negative values in rows "
                             f"{first_row}:{first_row + error.shape[0]}); the error is a 1-sigma and must be >= 0")
    all_bad = ~np.isfinite(error).any(axis=1)
    if all_bad.any():
        row = int(np.flatnonzero(all_bad)[0]) + first_row
        raise FeatcacheError(f"{source}: row {row} has no valid error value (all NaN); fix or drop that spectrum")


@dataclass
class DatasetInfo:
    """What `featcache inspect FILE.h5` prints."""

    path: str
    n_rows: int
    n_pixels: int
    wave_min: float
    wave_max: float
    arrays: list[str]
    params_key: str | None
    params_columns: list[str] = field(default_factory=list)
    file_size: int = 0
    generator: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PfsDataset:
    """A pfsspec dataset file opened read-only; arrays are read in row blocks, never whole."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise FeatcacheError(f"{self.path}: no such file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatcacheError(f"{self.path}: not an HDF5 file ({exc})") from None
        try:
            self._validate()
        except Exception:
            self._file.close()
            raise
        self._params: Any = None

    # -- layout -------------------------------------------------------------------------------------
    def _require(self, key: str) -> h5py.Dataset:
        if key not in self._file:
            raise FeatcacheError(f"{self.path}: missing key '{key}' (expected the pfsspec layout)")
        obj = self._file[key]
        if not isinstance(obj, h5py.Dataset):
            raise FeatcacheError(f"{self.path}: '{key}' is not an array")
        return obj

    def _validate(self) -> None:
        wave = self._require(WAVE_KEY)
        if wave.ndim != 1:
            raise FeatcacheError(f"{self.path}: '{WAVE_KEY}' must be 1-D, got shape {wave.shape}")
        self.wave = np.asarray(wave[()], dtype=np.float64)
        self.n_pixels = int(self.wave.shape[0])
        self._arrays: dict[str, h5py.Dataset] = {}
        for name, key in ARRAY_KEYS.items():
            if name in ("flux", "error"):
                self._arrays[name] = self._require(key)
            elif key in self._file:
                self._arrays[name] = self._file[key]
        flux = self._arrays["flux"]
        if flux.ndim != 2:
            raise FeatcacheError(f"{self.path}: '{ARRAY_KEYS['flux']}' must be 2-D (N, P), got {flux.shape}")
        self.n_rows = int(flux.shape[0])
        for name, arr in self._arrays.items():
            if arr.shape != (self.n_rows, self.n_pixels):
                raise FeatcacheError(
                    f"{self.path}: shape mismatch: '{ARRAY_KEYS[name]}' is {arr.shape} but flux and wave "
                    f"give ({self.n_rows}, {self.n_pixels})")
        self.params_key = self._find_params_key()

    def _find_params_key(self) -> str | None:
        if PARAMS_KEY in self._file:
            return PARAMS_KEY
        found: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group) and "pandas_type" in obj.attrs:
                found.append(name)

        self._file.visititems(visit)
        if len(found) == 1:
            return found[0]
        return None  # zero or several pandas objects: no params table (labels() will say so)

    @property
    def arrays(self) -> list[str]:
        return list(self._arrays)

    @property
    def has_noisy(self) -> bool:
        return "noisy" in self._arrays

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            path=str(self.path), n_rows=self.n_rows, n_pixels=self.n_pixels,
            wave_min=float(self.wave.min()), wave_max=float(self.wave.max()), arrays=self.arrays,
            params_key=self.params_key,
            params_columns=list(self.params().columns) if self.params_key else [],
            file_size=self.path.stat().st_size, generator=self.generator)

    @property
    def generator(self) -> str | None:
        """Which program wrote the file, from its ``generator`` and ``generator_version`` attributes
        (``featcache.synth v2``); None for files that do not say (pfsspec's own)."""
        name = self._file.attrs.get("generator")
        if name is None:
            return None
        name = name.decode() if isinstance(name, bytes) else str(name)
        version = self._file.attrs.get("generator_version")
        if version is None:
            return name
        return f"{name} v{version.decode() if isinstance(version, bytes) else version}"

    # -- arrays -------------------------------------------------------------------------------------
    def _check_rows(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= self.n_rows):
            raise FeatcacheError(f"{self.path}: rows {start}:{stop} outside 0:{self.n_rows}")

    def read_raw(self, name: str, start: int, stop: int, *, native: bool = False) -> np.ndarray:
        """Rows [start, stop) of an array as stored (no reading rules): float32, or the stored dtype."""
        if name not in self._arrays:
            raise FeatcacheError(f"{self.path}: no '{name}' array (has: {', '.join(self.arrays)})")
        self._check_rows(start, stop)
        try:
            values = self._arrays[name][start:stop]
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # h5py's errors for damaged chunks
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise FeatcacheError(f"{self.path}: cannot read rows {start}:{stop} of '{ARRAY_KEYS[name]}' "
                                 f"(a damaged file? {reason})") from None
        return values if native else np.asarray(values, dtype=np.float32)

    def read_flux(self, start: int, stop: int) -> np.ndarray:
        return apply_flux_rules(self.read_raw("flux", start, stop))

    def read_error(self, start: int, stop: int) -> np.ndarray:
        raw = self.read_raw("error", start, stop)
        check_error_values(raw, source=str(self.path), first_row=start)
        return fill_error_nans(raw, source=str(self.path), first_row=start)

    def read_noisy(self, start: int, stop: int) -> np.ndarray:
        """The stored pre-noised flux as shipped: NaN -> 0, negative values kept (they are noise)."""
        if not self.has_noisy:
            raise FeatcacheError(f"{self.path}: no stored 'noisy' array ({ARRAY_KEYS['noisy']}); "
                                 "use generated noise instead")
        noisy = self.read_raw("noisy", start, stop)
        return np.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0, copy=False)

    # -- params -------------------------------------------------------------------------------------
    def params(self):  # -> pandas.DataFrame
        """The params DataFrame ('table' or 'fixed' format), read once (one row per spectrum)."""
        if self._params is None:
            if self.params_key is None:
                raise FeatcacheError(f"{self.path}: no params table (expected '{PARAMS_KEY}' or exactly "
                                     "one pandas object in the file)")
            import pandas as pd

            try:
                frame = pd.read_hdf(self.path, key=self.params_key)
            except Exception as exc:  # pandas/PyTables raise many kinds
                raise FeatcacheError(f"{self.path}: cannot read params '{self.params_key}' ({exc})") from None
            if len(frame) != self.n_rows:
                raise FeatcacheError(f"{self.path}: params has {len(frame)} rows but flux has {self.n_rows}")
            self._params = frame.reset_index(drop=True)
        return self._params

    def label_names(self) -> list[str]:
        """Numeric params columns: these become labels."""
        if self.params_key is None:
            return []
        frame = self.params()
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        return [str(c) for c in frame.columns if is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c])]

    def labels(self, names: list[str] | None = None, start: int = 0, stop: int | None = None
               ) -> dict[str, np.ndarray]:
        """Numeric params columns for rows [start, stop); unknown names list the available ones."""
        stop = self.n_rows if stop is None else stop
        self._check_rows(start, stop)
        available = self.label_names()
        names = available if names is None else names
        for name in names:
            if name not in available:
                raise FeatcacheError(f"{self.path}: unknown label '{name}'; available: {', '.join(available)}")
        frame = self.params()
        return {n: frame[n].to_numpy()[start:stop] for n in names}

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PfsDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PfsDataset('{self.path}', N={self.n_rows}, P={self.n_pixels})"


HASH_MODES = ("full", "sampled")
IDENTITY_BLOCK_ROWS = 1024


def file_identity(path: str | os.PathLike[str], *, mode: str = "full", n_samples: int = 8) -> dict[str, Any]:
    """Content identity of a data file for fingerprints: size, N, P and a sha256 of its arrays and labels.

    mode 'full' hashes every byte of every array (as stored) and the numeric params, and checks every error
    value on the way (negative or all-NaN rows are refused here, before any output exists); any edit of the
    content changes the identity. 'sampled' hashes 8 blocks of 16 rows: cheap, but blind to edits elsewhere.
    """
    import hashlib

    if mode not in HASH_MODES:
        raise FeatcacheError(f"--hash {mode}: expected full or sampled")
    with PfsDataset(path) as ds:
        digest = hashlib.sha256()
        digest.update(ds.wave.tobytes())
        n = ds.n_rows
        if mode == "full":
            width = IDENTITY_BLOCK_ROWS
            starts = list(range(0, n, width))
        else:
            width = min(n, 16)
            starts = sorted({int(s) for s in np.linspace(0, max(n - width, 0), n_samples)}) if n else []
        for name in ds.arrays:
            for s in starts:
                block = ds.read_raw(name, s, min(s + width, n), native=True)
                if name == "error":
                    check_error_values(block, source=str(ds.path), first_row=s)
                digest.update(np.ascontiguousarray(block).tobytes())
        if ds.params_key:
            frame = ds.params()
            digest.update(",".join(map(str, frame.columns)).encode())
            for name in ds.label_names():
                digest.update(np.ascontiguousarray(frame[name].to_numpy()).tobytes())
        identity = {"size": Path(path).stat().st_size, "n_rows": n, "n_pixels": ds.n_pixels,
                    "arrays": ds.arrays, "hash": f"{mode}:" + digest.hexdigest()[:32]}
        if ds.generator is not None:  # a cache keeps saying which synthetic world its rows came from
            identity["generator"] = ds.generator
        return identity


def describe_dataset(path: Path) -> Description:
    """What `featcache inspect FILE.h5` prints: size, pixels, wavelength range, arrays, params and labels."""
    with PfsDataset(path) as ds:
        info = ds.info().as_dict()
        labels = ds.label_names()
    lines = [
        f"pfsspec dataset {path}",
        f"  spectra N        {info['n_rows']}",
        f"  pixels P         {info['n_pixels']}",
        f"  wavelength       {info['wave_min']:.2f} - {info['wave_max']:.2f} A",
        f"  arrays           {', '.join(info['arrays'])}",
        f"  params           {info['params_key'] or '(none)'}",
        f"  params columns   {', '.join(info['params_columns']) or '(none)'}",
        f"  numeric labels   {', '.join(labels) or '(none)'}",
        f"  file size        {info['file_size'] / 1e6:.1f} MB",
    ]
    if info["generator"]:
        lines.insert(1, f"  written by       {info['generator']}")
    info["labels"] = labels
    return Description(info, "\n".join(lines))
