"""Labels from a catalogue: a CSV, FITS or Parquet table joined to the observed targets by (catId, objId) or by
sky position within a radius (astropy's coordinate matching).

Nothing is invented: a target without exactly one catalogue row keeps NaN labels, and the join reports every
case: unmatched targets, ambiguous ones (several catalogue rows for one target: a repeated id, or several rows
within the radius), catalogue rows claimed by several targets, and targets that occur more than once among the
inputs (the same (catId, objId) in several files or visits).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError

JOIN_MODES = ("id", "position")
ID_COLUMNS = ("catId", "objId")
POSITION_COLUMNS = ("ra", "dec")


def read_catalogue(path: str | os.PathLike[str]):  # -> pandas.DataFrame
    """A table by its suffix: .csv, .fits/.fit/.fits.gz (first table HDU) or .parquet."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"--catalogue {path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".csv"):
            return pd.read_csv(path)
        if name.endswith((".fits", ".fit", ".fits.gz")):
            from astropy.table import Table

            table = Table.read(path, format="fits")
            scalar = [c for c in table.colnames if table[c].ndim == 1]
            frame = table[scalar].to_pandas()
            for column in frame.columns:  # FITS strings arrive as bytes
                if frame[column].dtype == object:
                    frame[column] = frame[column].map(lambda v: v.decode().strip() if isinstance(v, bytes) else v)
            return frame
        if name.endswith(".parquet"):
            try:
                return pd.read_parquet(path)
            except ImportError:
                raise FeatcacheError(f"--catalogue {path}: reading Parquet needs pyarrow or fastparquet "
                                     "(pip install 'featcache[parquet]')") from None
    except FeatcacheError:
        raise
    except Exception as exc:  # pandas, astropy and the Parquet engines raise many kinds
        raise FeatcacheError(f"--catalogue {path}: cannot read ({str(exc).splitlines()[0][:160]})") from None
    raise FeatcacheError(f"--catalogue {path}: expected a .csv, .fits or .parquet table")


def parse_label_specs(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """--label COLUMN or COLUMN=NAME (repeatable): catalogue column -> label name in the output."""
    out: dict[str, str] = {}
    for spec in specs:
        for part in str(spec).split(","):
            column, sep, name = part.partition("=")
            column, name = column.strip(), (name.strip() if sep else column.strip())
            if not column or not name:
                raise FeatcacheError(f"--label {spec}: expected COLUMN or COLUMN=NAME (e.g. logg=log_g)")
            if name in out.values():
                raise FeatcacheError(f"--label {spec}: the label name '{name}' is given twice")
            out[column] = name
    return out


@dataclass
class JoinReport:
    """What the join found, per target row of the inputs."""

    mode: str
    n_targets: int
    n_catalogue: int
    matched: int = 0
    unmatched: list[int] = field(default_factory=list)       # target rows with no catalogue row
    ambiguous: list[int] = field(default_factory=list)       # target rows with several catalogue rows
    shared_rows: list[int] = field(default_factory=list)     # catalogue rows matched by several distinct targets
    duplicated_targets: dict[tuple[int, int], int] = field(default_factory=dict)  # (catId, objId) -> count > 1
    missing_values: dict[str, int] = field(default_factory=dict)  # label -> matched targets whose value is NaN
    separation_arcsec: list[float] = field(default_factory=list)  # matched targets (position mode)

    def summary(self) -> str:
        parts = [f"{self.matched} of {self.n_targets} targets matched by {self.mode}",
                 f"{len(self.unmatched)} unmatched", f"{len(self.ambiguous)} ambiguous"]
        if self.shared_rows:
            parts.append(f"{len(self.shared_rows)} catalogue rows matched by several targets")
        if self.duplicated_targets:
            parts.append(f"{len(self.duplicated_targets)} (catId, objId) occur more than once among the spectra "
                         f"({sum(self.duplicated_targets.values())} spectra)")
        if any(self.missing_values.values()):
            parts.append("missing values: " + ", ".join(f"{k} {v}" for k, v in self.missing_values.items() if v))
        return "; ".join(parts)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "n_targets": self.n_targets, "n_catalogue": self.n_catalogue,
                "matched": self.matched, "unmatched": len(self.unmatched), "ambiguous": len(self.ambiguous),
                "catalogue_rows_matched_by_several_targets": len(self.shared_rows),
                "duplicated_targets": {f"{c},{o}": n for (c, o), n in self.duplicated_targets.items()},
                "missing_values": dict(self.missing_values),
                "max_separation_arcsec": max(self.separation_arcsec) if self.separation_arcsec else None}


def _column(frame, name: str, path: str) -> str:
    """The catalogue's column of that name, matched case-insensitively when unique."""
    if name in frame.columns:
        return name
    hits = [c for c in frame.columns if str(c).lower() == name.lower()]
    if len(hits) == 1:
        return str(hits[0])
    raise FeatcacheError(f"--catalogue {path}: no column '{name}' (has: {', '.join(map(str, frame.columns))})")


def join_labels(catalogue, targets: list[tuple[int, int, float, float]], labels: dict[str, str], *,
                by: str = "id", radius_arcsec: float = 1.0, id_columns: tuple[str, str] = ID_COLUMNS,
                position_columns: tuple[str, str] = POSITION_COLUMNS, source: str = "catalogue"
                ) -> tuple[dict[str, np.ndarray], JoinReport]:
    """Labels for each target (catId, objId, ra, dec): {label name: (n,) float64, NaN where unknown}, and the report.

    by='id': the catalogue row(s) with the target's (catId, objId). by='position': the catalogue rows within
    radius_arcsec of the target (ICRS degrees). Exactly one row gives the labels; none or several give NaN."""
    if by not in JOIN_MODES:
        raise FeatcacheError(f"--join {by}: choose from {', '.join(JOIN_MODES)}")
    n = len(targets)
    columns = {_column(catalogue, col, source): name for col, name in labels.items()}
    values = {}
    for col, name in columns.items():
        try:
            values[name] = catalogue[col].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise FeatcacheError(f"--label {col}: the catalogue column is not numeric") from None
    report = JoinReport(by, n, len(catalogue))
    keys = [(int(c), int(o)) for c, o, _, _ in targets]
    seen: dict[tuple[int, int], int] = {}
    for key in keys:
        seen[key] = seen.get(key, 0) + 1
    report.duplicated_targets = {k: v for k, v in seen.items() if v > 1}
    candidates = _id_candidates(catalogue, keys, id_columns, source) if by == "id" else \
        _position_candidates(catalogue, targets, radius_arcsec, position_columns, source, report)
    out = {name: np.full(n, np.nan) for name in values}
    claimed: dict[int, set[tuple[int, int]]] = {}
    for t, rows in enumerate(candidates):
        if not rows:
            report.unmatched.append(t)
        elif len(rows) > 1:
            report.ambiguous.append(t)
        else:
            report.matched += 1
            claimed.setdefault(rows[0], set()).add(keys[t])
            for name, column in values.items():
                out[name][t] = column[rows[0]]
    report.shared_rows = sorted(r for r, owners in claimed.items() if len(owners) > 1)
    report.missing_values = {name: int(np.isnan(out[name][[t for t, rows in enumerate(candidates)
                                                            if len(rows) == 1]]).sum()) for name in out}
    return out, report


def _id_candidates(catalogue, keys: list[tuple[int, int]], id_columns: tuple[str, str], source: str
                   ) -> list[list[int]]:
    cat_col, obj_col = (_column(catalogue, c, source) for c in id_columns)
    try:
        cats = catalogue[cat_col].to_numpy(dtype=np.int64)
        objs = catalogue[obj_col].to_numpy(dtype=np.int64)
    except (TypeError, ValueError):
        raise FeatcacheError(f"--catalogue {source}: the id columns {cat_col}, {obj_col} must be integers "
                             "without gaps") from None
    rows: dict[tuple[int, int], list[int]] = {}
    for r, key in enumerate(zip(cats.tolist(), objs.tolist(), strict=True)):
        rows.setdefault(key, []).append(r)
    return [rows.get(key, []) for key in keys]


def _position_candidates(catalogue, targets: list[tuple[int, int, float, float]], radius_arcsec: float,
                         position_columns: tuple[str, str], source: str, report: JoinReport) -> list[list[int]]:
    if not (math.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise FeatcacheError(f"--radius {radius_arcsec}: expected a positive number of arcseconds")
    import astropy.units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    ra_col, dec_col = (_column(catalogue, c, source) for c in position_columns)
    try:
        ra = catalogue[ra_col].to_numpy(dtype=np.float64)
        dec = catalogue[dec_col].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise FeatcacheError(f"--catalogue {source}: {ra_col}/{dec_col} must be numbers (degrees)") from None
    good_cat = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    t_ra = np.array([t[2] for t in targets], dtype=np.float64)
    t_dec = np.array([t[3] for t in targets], dtype=np.float64)
    good_t = np.isfinite(t_ra) & np.isfinite(t_dec)
    out: list[list[int]] = [[] for _ in targets]
    if not good_cat.any() or not good_t.any():
        return out
    cat_index, tgt_index = np.flatnonzero(good_cat), np.flatnonzero(good_t)
    cat = SkyCoord(ra[cat_index] * u.deg, dec[cat_index] * u.deg, frame="icrs")
    tgt = SkyCoord(t_ra[tgt_index] * u.deg, t_dec[tgt_index] * u.deg, frame="icrs")
    idx_t, idx_c, sep, _ = search_around_sky(tgt, cat, radius_arcsec * u.arcsec)
    separation: dict[int, float] = {}
    for t, c, s in zip(idx_t.tolist(), idx_c.tolist(), sep.to_value(u.arcsec).tolist(), strict=True):
        out[int(tgt_index[t])].append(int(cat_index[c]))
        separation[int(tgt_index[t])] = float(s)
    report.separation_arcsec = [separation[t] for t, rows in enumerate(out) if len(rows) == 1]
    return [sorted(rows) for rows in out]
