"""The full-spectrum baseline as compare rows (`compare --full-spectrum`): the field's answer to "what do the
spectra give a standard fit?", one row per target beside the raw-input rows.

One fit per distinct data (the caches' data, mask and noise, as for the raw-input rows) serves every target;
its per-target records go into OUT/cells like any cell (keyed by the data and the fit's settings), so a
re-run or `featcache report` reuses them and fits nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError
from ..heads.metrics import regression_metrics
from .cells import CELL_FORMAT, CellStore, Task
from .rows import cell_row
from .sources import Source, data_identity

KIND = "full_spectrum"
LABEL = "full-spectrum fit"
HEAD = "cannon"


def baseline_key(identity: str, described: dict[str, Any], target: str, splits: list[str]) -> str:
    payload = {"format": CELL_FORMAT, "kind": KIND, "data": identity, "spec": described, "target": target,
               "splits": splits}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def full_spectrum_rows(sources: list[Source], targets: list[str], splits: list[str], store: CellStore, *,
                       fit: bool, n_boot: int, order: int = 2, cells: str = "auto", show_progress: bool = True
                       ) -> list[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
    """(row, test truth, test prediction) of the full-spectrum baseline per distinct data and target it
    predicts; fitted now when its cells are missing (fit=False: they must be in the store)."""
    from ..information.baseline import describe
    from ..information.fullfit import FitSettings

    settings = FitSettings()
    described = describe(order, "flux", settings, cells)
    out = []
    firsts: dict[str, Source] = {}
    for src in sources:  # one fit per distinct data, mask and noise, under the first cache that has it
        firsts.setdefault(data_identity(src.cache), src)
    for identity, src in firsts.items():
        label = LABEL if len(firsts) == 1 else f"{LABEL} ({src.name})"
        keys = {t: baseline_key(identity, described, t, splits) for t in targets}
        loaded = {t: store.load(k) for t, k in keys.items()}
        if any(v is None for v in loaded.values()):
            if not fit:
                raise FeatcacheError(f"{store.dir}: the full-spectrum baseline of {src.path} is not in the cell "
                                     "store; run compare --full-spectrum to fit it")
            loaded = _fit_and_store(src, targets, splits, store, keys, described, order, cells, settings,
                                    show_progress)
        width = int(src.cache.mask.sum())
        for target in targets:
            if loaded.get(target) is None:
                continue  # not a label the model fits (e.g. snr)
            record, arrays = loaded[target]
            task = Task(src, label, KIND, KIND, f"order{order}", width, HEAD, target, None, None,  # type: ignore[arg-type]
                        keys[target])
            row, truth, pred = cell_row([task], [(record, arrays)], n_boot)
            out.append((row, truth, pred))
    return out


def _fit_and_store(src: Source, targets: list[str], splits: list[str], store: CellStore, keys: dict[str, str],
                   described: dict[str, Any], order: int, cells: str, settings: Any, show_progress: bool
                   ) -> dict[str, Any]:
    from ..information.baseline import full_spectrum_baseline

    train, val, test = splits
    base = full_spectrum_baseline(src.cache, train, {"val": val, "test": test}, order=order, settings=settings,
                                  cells=cells, show_progress=show_progress)
    loaded: dict[str, Any] = {}
    for target in targets:
        if target not in base.fits["test"].label_names:
            loaded[target] = None
            continue
        record: dict[str, Any] = {"format": CELL_FORMAT, "key": keys[target], "kind": KIND, "target": target,
                                  "cache": str(src.path), "spec": described, "model": base.model,
                                  "chosen": {}, "fit_seconds": base.seconds, "metrics": {}, "n": {}}
        arrays: dict[str, np.ndarray] = {}
        record["metrics"]["train"] = {"r2": float("nan")}  # the train stars are not fitted
        record["n"]["train"] = base.n_train
        for role, split in (("val", val), ("test", test)):
            truth = np.asarray(src.cache.labels(split, target, draw=0), dtype=np.float64)
            pred = base.fits[role].label(target)
            record["metrics"][role] = regression_metrics(truth, pred)
            record["n"][role] = len(truth)
            arrays[f"{role}_true"], arrays[f"{role}_pred"] = truth, pred
            arrays[f"{role}_index"] = np.asarray(src.cache.index(split, draw=0))
            arrays[f"{role}_redshift"] = base.fits[role].redshift
            arrays[f"{role}_chi2"] = base.fits[role].chi2
            arrays[f"{role}_scale"] = base.fits[role].scale
        store.save(keys[target], record, arrays)
        loaded[target] = (record, arrays)
    return loaded
