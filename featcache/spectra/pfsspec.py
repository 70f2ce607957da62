"""pfsspec HDF5 datasets: open, describe, and read row blocks with the original experiments' reading rules.

Long because it is the one place the HDF5 layout, its reading rules and the identity pass over a file live."""

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


# dtype kinds an array of spectra may have: floating point, or integers (counts); complex, strings, objects and
# compound types are refused (casting a complex flux to real would silently drop its imaginary part)
REAL_KINDS = "fiu"


def check_flux_values(flux: np.ndarray, *, source: str = "flux", first_row: int = 0, array: str = "flux") -> None:
    """The non-finite flux rule (docs/refusals.md): a NaN pixel is a missing value, which the reading rule sets
    to 0 (the original experiments' rule, counted and named by `scan_rows`); +-inf is not a missing value but
    an overflow or a broken file, and a spectrum with no finite pixel is no spectrum: both are refused."""
    with np.errstate(invalid="ignore"):
        infinite = np.isinf(flux)
    if infinite.any():
        row, pixel = (int(v) for v in np.argwhere(infinite)[0])
        raise FeatcacheError(f"{source}: {array} is {float(flux[row, pixel])} at row {row + first_row}, pixel {pixel} "
                             f"({int(infinite.sum())} infinite values in rows {first_row}:{first_row + flux.shape[0]});"
                             " a NaN marks a missing pixel, an infinite flux is refused: fix or drop that spectrum")
    if flux.shape[1]:
        empty = np.isnan(flux).all(axis=1)
        if empty.any():
            row = int(np.flatnonzero(empty)[0]) + first_row
            raise FeatcacheError(f"{source}: row {row} has no finite {array} value (all NaN, {int(empty.sum())} such "
                                 f"rows in {first_row}:{first_row + flux.shape[0]}); fix or drop that spectrum")


def apply_flux_rules(flux: np.ndarray) -> np.ndarray:
    """flux: NaN -> 0, then negative values clipped to 0 (the original experiments' rule; +-inf is refused
    before this, by check_flux_values)."""
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


def check_self_contained(file: h5py.File, path: Path) -> None:
    """Refuse an HDF5 file that reads other files: an external link, a dataset with external raw storage (its
    bytes in another file: /etc/passwd would be read as flux) or a virtual dataset (rows mapped from other
    files or datasets, so a "test" file can be train rows). Walks the links only: no value is read."""
    found: list[tuple[str, str]] = []

    def visit(name: str) -> None:
        if found:
            return
        link = file.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            found.append((name, f"an external link to '{link.path}' in {link.filename}"))
        elif isinstance(link, h5py.SoftLink):
            return
        elif not isinstance(link, h5py.HardLink):
            found.append((name, f"a link of another kind ({type(link).__name__})"))
        else:
            obj = file.get(name)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    found.append((name, "a virtual dataset (its rows are mapped from other datasets or files)"))
                elif obj.external:
                    found.append((name, f"a dataset whose bytes are stored in another file ({obj.external[0][0]!s})"))

    file.visit_links(visit)
    if found:
        name, what = found[0]
        raise FeatcacheError(f"{path}: '{name}' is {what}; featcache reads only data stored inside the files it is "
                             "given: write the arrays into the file itself (h5py: f.copy or create_dataset)")


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
        if self.path.is_dir():
            raise FeatcacheError(f"{self.path}: is a directory, expected a pfsspec HDF5 file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatcacheError(f"{self.path}: not an HDF5 file ({str(exc).splitlines()[0][:160]})") from None
        try:
            check_self_contained(self._file, self.path)  # before any value is read
            self._validate()
        except Exception:
            self._file.close()
            raise
        self._params: Any = None

    # -- layout -------------------------------------------------------------------------------------
    def _require(self, key: str, kinds: str = REAL_KINDS) -> h5py.Dataset:
        if key not in self._file:
            raise FeatcacheError(f"{self.path}: missing key '{key}' (expected the pfsspec layout)")
        obj = self._file[key]
        if not isinstance(obj, h5py.Dataset):
            raise FeatcacheError(f"{self.path}: '{key}' is not an array")
        if obj.dtype.kind not in kinds:
            raise FeatcacheError(f"{self.path}: '{key}' holds {obj.dtype} values; expected real numbers (float or "
                                 "integer): a complex or non-numeric array is not a spectrum")
        return obj

    def _validate(self) -> None:
        wave = self._require(WAVE_KEY)
        if wave.ndim != 1:
            raise FeatcacheError(f"{self.path}: '{WAVE_KEY}' must be 1-D, got shape {wave.shape}")
        self.wave = np.asarray(wave[()], dtype=np.float64)
        self.n_pixels = int(self.wave.shape[0])
        self._arrays: dict[str, h5py.Dataset] = {}
        for name, key in ARRAY_KEYS.items():
            if name in ("flux", "error") or key in self._file:
                self._arrays[name] = self._require(key, kinds=REAL_KINDS + ("b" if name == "mask" else ""))
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

    @property
    def observed(self) -> bool:
        """Observed spectra (written by `featcache import`): the flux is already noisy, so noise must not be
        generated on it."""
        return bool(self._file.attrs.get("featcache_observed", 0))

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
        raw = self.read_raw("flux", start, stop)
        check_flux_values(raw, source=str(self.path), first_row=start)
        return apply_flux_rules(raw)

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
        check_flux_values(noisy, source=str(self.path), first_row=start, array="noisy flux")
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
ROW_HASH_BYTES = 16  # blake2b-128 per spectrum: two uint64 words


def row_hashes(flux: np.ndarray) -> np.ndarray:
    """(n, 2) uint64: a blake2b-128 of each row's flux as float32 (a copy in float64 hashes the same), the
    content identity of a spectrum that judges copies across splits."""
    import hashlib

    rows = np.ascontiguousarray(flux, dtype="<f4")
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=ROW_HASH_BYTES).digest() for row in rows)
    return np.frombuffer(digests, dtype="<u8").reshape(len(rows), 2).copy()


@dataclass
class RowScan:
    """Per-row facts of a file's flux, gathered where its rows are read anyway: each row's content hash
    (copies across splits, and whether two caches hold the same test spectra) and its count of NaN pixels
    (missing values the reading rule sets to 0). Infinite and all-NaN rows are refused while scanning."""

    path: Path
    start: int
    hashes: np.ndarray      # (n, 2) uint64
    nan_pixels: np.ndarray  # (n,) int32

    def rows(self, start: int, stop: int) -> RowScan:
        """The scan of file rows [start, stop), which it must cover."""
        if not self.start <= start <= stop <= self.start + len(self.hashes):
            raise ValueError(f"rows {start}:{stop} outside the scanned {self.start}:{self.start + len(self.hashes)}")
        a, b = start - self.start, stop - self.start
        return RowScan(self.path, start, self.hashes[a:b], self.nan_pixels[a:b])

    def nan_summary(self) -> dict[str, Any]:
        """{'rows': spectra with NaN flux, 'pixels': NaN pixels, 'first_rows': up to 5 file rows} (rows 0: none)."""
        rows = np.flatnonzero(self.nan_pixels)
        return {"rows": int(len(rows)), "pixels": int(self.nan_pixels.sum()),
                "first_rows": [int(r) + self.start for r in rows[:5]]}

    @staticmethod
    def concatenate(parts: list[RowScan]) -> RowScan:
        parts = sorted(parts, key=lambda p: p.start)
        return RowScan(parts[0].path, parts[0].start, np.concatenate([p.hashes for p in parts]),
                       np.concatenate([p.nan_pixels for p in parts]))


def scan_block(flux: np.ndarray, *, path: Path, first_row: int) -> RowScan:
    """RowScan of a block of raw flux rows (as stored), refusing infinite values and all-NaN rows."""
    check_flux_values(flux, source=str(path), first_row=first_row)
    values = np.asarray(flux, dtype=np.float32)
    return RowScan(path, first_row, row_hashes(values), np.isnan(values).sum(axis=1).astype(np.int32))


def scan_rows(ds: PfsDataset, start: int, stop: int) -> RowScan:
    """RowScan of rows [start, stop) of an open file, read in blocks."""
    parts = [scan_block(ds.read_raw("flux", s, min(s + IDENTITY_BLOCK_ROWS, stop), native=True), path=ds.path,
                        first_row=s) for s in range(start, stop, IDENTITY_BLOCK_ROWS)]
    if not parts:
        return RowScan(ds.path, start, np.zeros((0, 2), np.uint64), np.zeros(0, np.int32))
    return RowScan.concatenate(parts)


@dataclass
class FileScan:
    """A data file's content identity (for fingerprints) and the RowScan of the rows that were asked for."""

    identity: dict[str, Any]
    scans: list[RowScan]

    def rows(self, start: int, stop: int) -> RowScan:
        for scan in self.scans:
            if scan.start <= start and stop <= scan.start + len(scan.hashes):
                return scan.rows(start, stop)
        raise ValueError(f"rows {start}:{stop} were not scanned")


def scan_file(path: str | os.PathLike[str], *, mode: str = "full", ranges: list[tuple[int, int]] | None = None,
              n_samples: int = 8) -> FileScan:
    """Content identity of a data file and the per-row scan of `ranges` (every row when None).

    mode 'full' hashes every byte of every array (as stored) and the numeric params, and checks every error
    value on the way (negative or all-NaN rows are refused here, before any output exists); any edit of the
    content changes the identity; the flux rows it reads are scanned in the same pass. 'sampled' hashes 8
    blocks of 16 rows: cheap, but blind to edits elsewhere; the asked-for flux rows are then read once more
    for their scan (the row hashes judge copies however the file is identified).
    """
    import hashlib

    if mode not in HASH_MODES:
        raise FeatcacheError(f"--hash {mode}: expected full or sampled")
    with PfsDataset(path) as ds:
        n = ds.n_rows
        wanted = [(0, n)] if ranges is None else _merge_ranges(ranges)
        digest = hashlib.sha256()
        digest.update(ds.wave.tobytes())
        if mode == "full":
            width = IDENTITY_BLOCK_ROWS
            starts = list(range(0, n, width))
        else:
            width = min(n, 16)
            starts = sorted({int(s) for s in np.linspace(0, max(n - width, 0), n_samples)}) if n else []
        blocks: list[RowScan] = []
        for name in ds.arrays:
            for s in starts:
                stop = min(s + width, n)
                block = ds.read_raw(name, s, stop, native=True)
                if name == "error":
                    check_error_values(block, source=str(ds.path), first_row=s)
                elif name == "flux" and mode == "full":
                    blocks.append(_scan_wanted(block, ds.path, s, wanted))
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
        if mode == "full":
            scans = [RowScan.concatenate([b.rows(max(a, b.start), min(z, b.start + len(b.hashes)))
                                          for b in blocks if b.start < z and a < b.start + len(b.hashes)])
                     if a < z else scan_rows(ds, a, z) for a, z in wanted]
        else:
            scans = [scan_rows(ds, a, z) for a, z in wanted]
    return FileScan(identity, scans)


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged row ranges (overlapping or touching ones joined)."""
    merged: list[tuple[int, int]] = []
    for a, z in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], z))
        else:
            merged.append((a, z))
    return merged


def _scan_wanted(block: np.ndarray, path: Path, first_row: int, wanted: list[tuple[int, int]]) -> RowScan:
    """The RowScan of a block's rows that fall in `wanted` (the rest of the file is hashed, not scanned: an
    infinite value outside the splits is not refused); rows outside get empty entries."""
    n = block.shape[0]
    keep = np.zeros(n, dtype=bool)
    for a, z in wanted:
        lo, hi = max(a, first_row) - first_row, min(z, first_row + n) - first_row
        if lo < hi:
            keep[lo:hi] = True
    hashes = np.zeros((n, 2), np.uint64)
    nans = np.zeros(n, np.int32)
    if keep.any():
        lo, hi = int(np.flatnonzero(keep)[0]), int(np.flatnonzero(keep)[-1]) + 1
        part = scan_block(block[lo:hi], path=path, first_row=first_row + lo)
        hashes[lo:hi], nans[lo:hi] = part.hashes, part.nan_pixels
    return RowScan(path, first_row, hashes, nans)


def file_identity(path: str | os.PathLike[str], *, mode: str = "full", n_samples: int = 8) -> dict[str, Any]:
    """Content identity of a data file for fingerprints: size, N, P and a sha256 of its arrays and labels
    (scan_file's identity; see there)."""
    return scan_file(path, mode=mode, ranges=[], n_samples=n_samples).identity


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
