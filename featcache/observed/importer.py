"""`featcache import`: PFS FITS products -> one pfsspec HDF5 file on a reference grid, the one way in.

Observed spectra become a pfsspec file like any other (`dataset/arrays/noisy` the observed flux, `error` its
propagated 1-sigma, `mask` which pixels the bad-pixel rule filled, `params` the identity, quality and catalogue
labels), so `--noise stored` reads them through the one input stage (spectra/inputs.py) and every command
takes them with `--data`. `flux` holds the same observed values (the layout requires it) and the file says
that it is observed, so `--noise generated` on it is refused. The file's attributes record the provenance:
source files, the reference and its conventions, every conversion, the normalisation and the masks.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..common.files import atomic_write
from .catalogue import ID_COLUMNS, POSITION_COLUMNS, JoinReport, join_labels, read_catalogue
from .grid import GridOptions, Reference, load_reference, to_reference_grid
from .products import TARGET_TYPE_IDS, read_product

OBSERVED_ATTR = "featcache_observed"  # root attribute: 1 in files written here (their flux is noisy)
IMPORT_VERSION = 1
DEFAULT_TARGET_TYPES = ("SCIENCE", "FLUXSTD")


@dataclass(frozen=True)
class ImportOptions:
    """Everything `featcache import` takes."""

    files: tuple[Path, ...]
    reference: Path
    out: Path
    reference_medium: str | None = None
    reference_flux: str | None = None
    grid: GridOptions = field(default_factory=GridOptions)
    target_types: tuple[str, ...] = DEFAULT_TARGET_TYPES
    catalogue: Path | None = None
    join: str = "id"
    radius_arcsec: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)
    id_columns: tuple[str, str] = ID_COLUMNS
    position_columns: tuple[str, str] = POSITION_COLUMNS
    overwrite: bool = False
    command: str = ""

    def validate(self) -> ImportOptions:
        if not self.files:
            raise FeatcacheError("featcache import: give at least one PFS FITS file")
        out = Path(self.out)
        if out.suffix not in (".h5", ".hdf5"):
            raise FeatcacheError(f"--out {out}: expected an .h5 file name")
        if out.is_dir():
            raise FeatcacheError(f"--out {out}: is a directory, expected an .h5 file name")
        if not out.parent.is_dir():
            raise FeatcacheError(f"--out {out}: no such folder {out.parent}")
        if out.exists() and not self.overwrite:
            raise FeatcacheError(f"--out {out}: exists; pass --overwrite to replace it")
        for path in (*self.files, self.reference, *( [self.catalogue] if self.catalogue else [])):
            if Path(path).resolve() == out.resolve():
                raise FeatcacheError(f"--out {out}: is also an input; choose another name")
        for path in self.files:
            if not Path(path).is_file():
                raise FeatcacheError(f"{path}: no such file")
        unknown = [t for t in self.target_types if t not in TARGET_TYPE_IDS and t != "ALL"]
        if unknown:
            raise FeatcacheError(f"--target-types {','.join(unknown)}: choose from ALL, "
                                 f"{', '.join(TARGET_TYPE_IDS)}")
        if self.labels and self.catalogue is None:
            raise FeatcacheError("--label needs --catalogue (the table the labels come from)")
        if self.catalogue is not None and not self.labels:
            raise FeatcacheError("--catalogue needs at least one --label COLUMN[=NAME]")
        self.grid.validate()
        return self


@dataclass
class ImportReport:
    """What an import did: rows written, what was left out and why, the join, the pixels it filled."""

    out: Path
    reference: dict[str, Any]
    n_written: int = 0
    n_read: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    not_selected: dict[str, int] = field(default_factory=dict)
    join: JoinReport | None = None
    bad_pixels: int = 0
    uncovered_pixels: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.n_written} spectra -> {self.out} ({self.n_read} read from {len(self.files)} files; "
                 f"{len(self.skipped)} left out, {sum(self.not_selected.values())} of other target types)",
                 f"reference grid: {self.reference['n_pixels']} pixels {self.reference['wave_min']:.2f}-"
                 f"{self.reference['wave_max']:.2f} A ({self.reference['medium']}, {self.reference['flux_density']}; "
                 f"from {self.reference['conventions_from']})",
                 f"pixels filled by the bad-pixel rule: {self.bad_pixels} bad, {self.uncovered_pixels} uncovered"]
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s["reason"].split(" (")[0]] = reasons.get(s["reason"].split(" (")[0], 0) + 1
        lines += [f"left out: {n} x {reason}" for reason, n in reasons.items()]
        if self.join is not None:
            lines.append("labels: " + self.join.summary())
        return "\n".join(lines)


def _selected(target_type: int, wanted: tuple[str, ...]) -> bool:
    return "ALL" in wanted or any(TARGET_TYPE_IDS[t] == int(target_type) for t in wanted)


def import_spectra(options: ImportOptions, *, progress: Callable[[int], None] | None = None) -> ImportReport:
    """Read every file, put its spectra on the reference grid, join the labels, write the pfsspec file
    atomically (nothing is left behind on an error)."""
    import h5py
    import pandas as pd

    options.validate()
    start = time.time()
    reference = load_reference(options.reference, medium=options.reference_medium,
                               flux_density=options.reference_flux)
    catalogue = read_catalogue(options.catalogue) if options.catalogue is not None else None
    report = ImportReport(Path(options.out), reference.describe())
    n_pix = reference.wave.size
    rows: list[dict[str, Any]] = []

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("spectrumdataset/wave", data=reference.wave)
            h5.create_dataset("spectrumdataset/wave_edges", data=reference.edges)
            arrays = {name: h5.create_dataset(f"dataset/arrays/{name}/value", shape=(0, n_pix), maxshape=(None, n_pix),
                                              dtype=dtype, chunks=(64, n_pix))
                      for name, dtype in (("flux", np.float32), ("error", np.float32), ("noisy", np.float32),
                                          ("mask", np.uint8))}
            for file_index, path in enumerate(options.files):
                _import_file(Path(path), file_index, reference, options, arrays, rows, report)
                if progress is not None:
                    progress(1)
            if not rows:
                raise FeatcacheError(f"featcache import: no spectrum to write ({report.n_read} read, "
                                     f"{len(report.skipped)} left out, {sum(report.not_selected.values())} of other "
                                     f"target types than {','.join(options.target_types)})")
            _write_attrs(h5, options, reference, report)
        params = pd.DataFrame(rows)
        if catalogue is not None:
            targets = list(zip(params["catId"], params["objId"], params["ra"], params["dec"], strict=True))
            labels, report.join = join_labels(
                catalogue, targets, options.labels, by=options.join, radius_arcsec=options.radius_arcsec,
                id_columns=options.id_columns, position_columns=options.position_columns, source=str(options.catalogue))
            for name, values in labels.items():
                if name in params.columns:
                    raise FeatcacheError(f"--label {name}: the name is taken by an identity column; rename it "
                                         "(COLUMN=NAME)")
                params[name] = values
            with h5py.File(tmp, "a") as h5:
                h5.attrs["labels"] = json.dumps({"catalogue": str(options.catalogue), "join": options.join,
                                                 "radius_arcsec": options.radius_arcsec if options.join == "position"
                                                 else None, "columns": options.labels,
                                                 "report": report.join.describe()})
        params.to_hdf(tmp, key="dataset/params", format="table", mode="a")

    atomic_write(options.out, write)
    report.n_written = len(rows)
    report.seconds = time.time() - start
    return report


def _import_file(path: Path, file_index: int, reference: Reference, options: ImportOptions, arrays: dict[str, Any],
                 rows: list[dict[str, Any]], report: ImportReport) -> None:
    product = read_product(path)
    entry = {"path": str(path), "product": product.product, "product_basis": product.product_basis,
             "n_targets": len(product), "damd_ver": product.damd_ver, "versions": product.versions,
             "wavelength_source": product.wavelength_source, "written": 0}
    report.files.append(entry)
    uncovered_targets: list[tuple[tuple[int, int], int]] = []
    buffer: dict[str, list[np.ndarray]] = {"flux": [], "error": [], "mask": []}
    for spectrum in product.spectra:
        report.n_read += 1
        target = spectrum.target
        if not _selected(target.target_type, options.target_types):
            report.not_selected[target.target_type_name] = report.not_selected.get(target.target_type_name, 0) + 1
            continue
        gridded = to_reference_grid(spectrum, reference, options.grid)
        if gridded.n_uncovered and options.grid.uncovered == "refuse":
            uncovered_targets.append((target.key, gridded.n_uncovered))
            continue
        if gridded.skipped:
            report.skipped.append({"file": str(path), "row": spectrum.row, "catId": target.cat_id,
                                   "objId": target.obj_id, "reason": gridded.skipped})
            continue
        buffer["flux"].append(gridded.flux)
        buffer["error"].append(gridded.error)
        buffer["mask"].append(gridded.mask)
        report.bad_pixels += gridded.n_bad
        report.uncovered_pixels += gridded.n_uncovered
        visits = {int(o["visit"]) for o in spectrum.observations if "visit" in o}
        rows.append({"catId": target.cat_id, "objId": target.obj_id, "ra": target.ra, "dec": target.dec,
                     "target_type": target.target_type, "source_file": file_index, "source_row": spectrum.row,
                     "n_visits": len(visits), "snr": gridded.snr, "n_bad_pixels": gridded.n_bad,
                     "n_uncovered_pixels": gridded.n_uncovered, "n_rejected_source_pixels": gridded.n_rejected_source,
                     "norm_scale": gridded.scale})
        entry["written"] += 1
    if uncovered_targets:
        (key, count), more = uncovered_targets[0], len(uncovered_targets) - 1
        ref = reference.describe()
        raise FeatcacheError(
            f"{path}: the spectrum of (catId, objId) {key} leaves {count} of {ref['n_pixels']} reference pixels "
            f"({ref['wave_min']:.1f}-{ref['wave_max']:.1f} A, {ref['medium']}) uncovered"
            + (f", and {more} more targets of this file do too" if more else "")
            + "; pass --uncovered mask to fill them by the bad-pixel rule, or use a reference grid inside the data")
    if buffer["flux"]:
        n, k = arrays["flux"].shape[0], len(buffer["flux"])
        for name in arrays:
            arrays[name].resize(n + k, axis=0)
        arrays["flux"][n:] = arrays["noisy"][n:] = np.stack(buffer["flux"])
        arrays["error"][n:] = np.stack(buffer["error"])
        arrays["mask"][n:] = np.stack(buffer["mask"])


def _write_attrs(h5, options: ImportOptions, reference: Reference, report: ImportReport) -> None:
    from .._version import __version__

    provenance = {
        "import_version": IMPORT_VERSION, "featcache_version": __version__, "command": options.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sources": report.files, "target_types": list(options.target_types),
        "reference": reference.describe(),
        "conversions": {
            "wavelength": f"vacuum nm -> {reference.medium} {reference.unit}"
                          + (" (IAU / Morton 2000 refractive index of standard air)" if reference.medium == "air"
                             else ""),
            "flux": ("nJy (f_nu) -> f_lambda = f_nu * 1e-32 * c / lambda_vac^2 (erg/s/cm2/A), per unit of the "
                     "reference's wavelength" if reference.flux_density == "f_lambda" else "nJy (f_nu) kept"),
            "resampling": "flux-conserving overlap average onto the reference pixel edges; variance from W C W^T "
                          + ("with the files' COVAR off-diagonal planes" if options.grid.covariance
                             else "with the variance only"),
        },
        "grid": options.grid.describe(),
        "skipped": report.skipped,
        "not_selected": report.not_selected,
    }
    h5.attrs.update({OBSERVED_ATTR: 1, "generator": "featcache.observed.import", "wave_medium": reference.medium,
                     "wave_unit": reference.unit, "flux_density": reference.flux_density,
                     "normalise": options.grid.normalise, "norm_value": float(options.grid.norm_value),
                     "provenance": json.dumps(provenance, default=_plain)})


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    return str(value)


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance an import recorded in a file's attributes ({} for files featcache did not import)."""
    import h5py

    with h5py.File(path, "r") as h5:
        text = h5.attrs.get("provenance")
        labels = h5.attrs.get("labels")
    out = json.loads(text) if text is not None else {}
    if labels is not None:
        out["labels"] = json.loads(labels)
    return out
