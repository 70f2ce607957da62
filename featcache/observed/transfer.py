"""Train on simulations, test on observations: a head fitted on a simulated cache applied to a cache of observed
spectra whose features were made the same way, and a report of how far the observed data sit from the
training world.

The features must be computed identically (encoder, mask, direction, dtypes, pooling: the head's provenance);
only the data source may differ, which for a cache means the noise (generated on simulations, carried by the
observation). The report puts the observed split beside a simulated split the head never trained on (the
training cache's test split by default) so every number has its in-distribution counterpart:

* the usual metrics (R2, RMSE, bias, sigma_MAD, outliers) with bootstrap intervals, where labels exist;
* residual scatter per S/N bin and per population (giants/dwarfs), where labels exist;
* an uncertainty head's coverage within 1 and 2 sigma per S/N bin, with binomial intervals: coverage far from
  68%/95% on observed rows while it holds on simulated ones is the out-of-distribution alarm; the predicted
  sigma itself (no labels needed) is compared too;
* the distance of each observed row's features from the training features: nearest-neighbour distance in the
  train split's standardised feature space, against the 99th percentile of the same distance for the
  simulated reference split (about 1% of in-distribution rows exceed it by construction).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import FeatcacheError

STELLAR_AXES = ("snr", "T_eff", "log_g", "M_H", "a_M", "C_M")
REPORT_FILES = ("report.md", "transfer.json", "predictions.csv")
MAX_REFERENCE_ROWS = 50_000


@dataclass(frozen=True)
class TransferOptions:
    """`featcache transfer`: the head, the observed cache and split, the simulated reference split."""

    head: Path
    cache: Path
    split: str
    out: Path
    train_cache: Path | None = None      # default: the cache the head was fitted on (its metrics.json)
    reference_split: str | None = None   # default: the head's test split, else its validation split
    n_boot: int = 1000
    percentile: float = 99.0
    max_train_rows: int = MAX_REFERENCE_ROWS
    overwrite: bool = False
    command: str = ""

    def validate(self) -> TransferOptions:
        if not 50.0 <= self.percentile < 100.0:
            raise FeatcacheError(f"--percentile {self.percentile}: expected a percentile in [50, 100)")
        if self.n_boot < 100:
            raise FeatcacheError(f"--n-boot {self.n_boot}: expected at least 100 resamples")
        if self.max_train_rows < 100:
            raise FeatcacheError(f"--max-train-rows {self.max_train_rows}: expected at least 100")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise FeatcacheError(f"--out {out}: is a file, expected a report directory")
        earlier = [n for n in REPORT_FILES if (out / n).exists()]
        if earlier and not self.overwrite:
            raise FeatcacheError(f"--out {out}: holds an earlier report ({', '.join(earlier)}); pass --overwrite")
        return self


def _run_info(head: Path) -> dict[str, Any]:
    path = Path(head) / "metrics.json" if Path(head).is_dir() else Path(head).parent / "metrics.json"
    if not path.exists():
        raise FeatcacheError(f"--head {head}: no metrics.json beside head.pt (expected a featcache fit run)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FeatcacheError(f"{path}: not valid JSON ({exc})") from None


def _role_split(info: dict[str, Any], role: str) -> str | None:
    for name, entry in (info.get("splits") or {}).items():
        if isinstance(entry, dict) and entry.get("role") == role:
            return str(name)
    return None


def nearest_distances(train: np.ndarray, queries: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance of each query row to its nearest train row (exact, brute force in blocks)."""
    from sklearn.neighbors import NearestNeighbors

    k = 2 if exclude_self else 1
    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train)
    distances, _ = index.kneighbors(queries)
    return distances[:, k - 1]


def _binomial_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return math.nan, math.nan
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@dataclass
class SplitResult:
    """Predictions and facts of one split (the simulated reference or the observed one)."""

    name: str
    cache: str
    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    distance: np.ndarray
    n: int


def transfer_report(options: TransferOptions) -> dict[str, Any]:
    """Apply the head to the observed split and to the simulated reference split; write report.md,
    transfer.json and predictions.csv into options.out; return transfer.json's content. Long because the
    report's sections are made in one place, in the order report.md shows them."""
    from ..cache.reader import FeatureMatrix, open_cache
    from ..common.files import write_json, write_text
    from ..heads.predict import DATA_SOURCE_PARTS, predict_split, provenance_differences
    from ..heads.runs import load_head

    options.validate()
    started = time.time()
    info = _run_info(options.head)
    loaded = load_head(options.head)
    train_cache_path = Path(options.train_cache or info.get("cache") or "")
    if not (train_cache_path / "zarr.json").exists():
        raise FeatcacheError(f"the head's training cache {train_cache_path} is not there; pass --train-cache")
    train_cache = open_cache(train_cache_path)
    obs_cache = open_cache(options.cache)
    if options.split not in obs_cache.splits:
        raise FeatcacheError(f"{options.cache}: no split '{options.split}' (has: {', '.join(obs_cache.splits)})")
    train_split = _role_split(info, "train")
    if train_split is None or train_split not in train_cache.splits:
        raise FeatcacheError(f"--head {options.head}: its metrics.json names no train split of {train_cache_path}")
    reference = options.reference_split or _role_split(info, "test") or _role_split(info, "val")
    if reference is None or reference not in train_cache.splits:
        raise FeatcacheError(f"--reference-split {reference}: not a split of {train_cache_path} (has: "
                             f"{', '.join(train_cache.splits)})")
    if reference == train_split:
        raise FeatcacheError(f"--reference-split {reference}: the head trained on it; choose a held-out split")
    features_differ = provenance_differences(loaded, obs_cache, options.split, ignore=DATA_SOURCE_PARTS)
    if features_differ:
        raise FeatcacheError(f"{options.cache}: its features were made another way than the head's "
                             f"({features_differ}); a transfer compares data sources, not feature recipes: extract the "
                             "observed spectra with the head's encoder, --mask, --layer/--pool, --direction and dtypes")
    source_changes = provenance_differences(loaded, obs_cache, options.split)
    # training features, standardised by their own mean and spread (a deterministic subsample when large)
    train_x = FeatureMatrix(train_cache, train_split, loaded.features, draw=0)
    n_train = len(train_x)
    if n_train > options.max_train_rows:
        keep = np.sort(np.random.default_rng(0).choice(n_train, options.max_train_rows, replace=False))
        train = np.asarray(train_x.load(), dtype=np.float64)[keep]
    else:
        train = np.asarray(train_x.load(), dtype=np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    train_z = (train - mean) / std

    def split_result(cache, split: str) -> SplitResult:
        pred = predict_split(loaded, cache, split, other_source=True)
        x = (np.asarray(FeatureMatrix(cache, split, loaded.features, draw=0).load(), dtype=np.float64) - mean) / std
        if not np.isfinite(x).all():
            raise FeatcacheError(f"{cache.path}: split '{split}' has non-finite features")
        labels = {name: np.asarray(cache.labels(split, name, draw=0), dtype=np.float64)
                  for name in cache.label_names(split) if name in STELLAR_AXES}
        return SplitResult(split, str(cache.path), pred, labels, nearest_distances(train_z, x), len(x))

    sim = split_result(train_cache, reference)
    obs = split_result(obs_cache, options.split)
    threshold = float(np.percentile(sim.distance, options.percentile))
    result: dict[str, Any] = {
        "head": str(options.head), "head_kind": loaded.head, "features": ["/".join(f) for f in loaded.features],
        "targets": loaded.targets, "train": {"cache": str(train_cache_path), "split": train_split, "n": n_train,
                                             "n_used_for_distance": int(train.shape[0])},
        "reference": {"cache": str(train_cache_path), "split": reference, "n": sim.n},
        "observed": {"cache": str(options.cache), "split": options.split, "n": obs.n,
                     "source": _observed_source(obs_cache, options.split)},
        "data_source_differences": source_changes or "none",
        "distance": _distance_section(sim, obs, threshold, options.percentile, options.n_boot),
        "targets_report": {}, "command": options.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for target in loaded.targets:
        result["targets_report"][target] = {
            "reference": _target_section(sim, target, options.n_boot),
            "observed": _target_section(obs, target, options.n_boot),
        }
    result["seconds"] = time.time() - started
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.csv", obs, threshold, loaded.targets)
    write_json(out / "transfer.json", result, finite_only=True)
    write_text(out / "report.md", render(result))
    return result


def _observed_source(cache, split: str) -> dict[str, Any]:
    """What the observed split's file says of its origin (an imported file's provenance), if readable."""
    entry = cache.metadata.splits.get(split)
    path = entry.path if entry is not None else None
    if not path or not Path(path).exists():
        return {"file": path}
    try:
        from .importer import read_provenance

        provenance = read_provenance(path)
    except (OSError, ValueError):
        return {"file": path}
    return {"file": path, "sources": [s.get("path") for s in provenance.get("sources", [])],
            "products": sorted({s.get("product") for s in provenance.get("sources", [])} - {None}),
            "reference": (provenance.get("reference") or {}).get("path"),
            "normalise": (provenance.get("grid") or {}).get("normalise"),
            "labels": (provenance.get("labels") or {}).get("report")}


def _distance_section(sim: SplitResult, obs: SplitResult, threshold: float, percentile: float, n_boot: int
                      ) -> dict[str, Any]:
    out: dict[str, Any] = {"percentile": percentile, "threshold": threshold,
                           "definition": "Euclidean nearest-neighbour distance to the train rows in the train split's "
                                         "standardised feature space"}
    for role, split in (("reference", sim), ("observed", obs)):
        beyond = split.distance > threshold
        lo, hi = _binomial_interval(int(beyond.sum()), split.n)
        out[role] = {"n": split.n, "median_distance": float(np.median(split.distance)),
                     "fraction_beyond": float(beyond.mean()), "fraction_beyond_ci95": [lo, hi]}
    out["median_ratio"] = out["observed"]["median_distance"] / max(out["reference"]["median_distance"], 1e-300)
    return out


def _target_section(split: SplitResult, target: str, n_boot: int) -> dict[str, Any]:
    from ..heads.binning import assign_bins, populations, quantile_edges
    from ..heads.metrics import bootstrap_metrics, percentile_interval, regression_metrics

    pred = np.asarray(split.predictions[f"pred_{target}"], dtype=np.float64)
    sigma = split.predictions.get(f"sigma_{target}")
    truth = split.predictions.get(f"true_{target}")
    section: dict[str, Any] = {"n": split.n, "pred_median": float(np.median(pred)),
                               "pred_range": [float(np.min(pred)), float(np.max(pred))]}
    if sigma is not None:
        section["sigma_median"] = float(np.median(sigma))
    labelled = np.isfinite(np.asarray(truth, dtype=np.float64)) if truth is not None else np.zeros(split.n, bool)
    section["n_labelled"] = int(labelled.sum())
    if labelled.sum() < 2:
        return section
    y, p = np.asarray(truth, dtype=np.float64)[labelled], pred[labelled]
    metrics = regression_metrics(y, p)
    for name, draws in bootstrap_metrics(y, p, n_boot=n_boot, seed=0).items():
        lo, hi = percentile_interval(draws, 0.95)
        metrics[f"{name}_ci95"] = [float(lo[0]), float(hi[0])]
    section["metrics"] = metrics
    residual = p - y
    labels = {k: v[labelled] for k, v in split.labels.items()}
    labels.setdefault(target, y)
    pops = populations(labels)
    z = None if sigma is None else residual / np.asarray(sigma, dtype=np.float64)[labelled]
    binned = []
    for axis in [a for a in ("snr", target) if a in labels]:
        values = labels[axis]
        if not np.isfinite(values).all():
            continue
        edges = quantile_edges(values, min_count=max(10, min(50, len(values) // 4)), max_bins=4)
        bins = assign_bins(values, edges)
        for pop, keep in pops.items():
            for k in range(len(edges) - 1):
                rows = keep & (bins == k)
                n = int(rows.sum())
                entry: dict[str, Any] = {"by": axis, "population": pop, "bin": k, "lo": float(edges[k]),
                                         "hi": float(edges[k + 1]), "n": n}
                if n:
                    r = residual[rows]
                    centre = float(np.median(r))
                    entry.update({"bias": float(np.mean(r)),
                                  "sigma_mad": float(1.4826 * np.median(np.abs(r - centre)))})
                    if z is not None and axis == "snr":  # coverage given the truth is biased by design
                        for level, ideal in ((1, 0.682689), (2, 0.9545)):
                            hits = int((np.abs(z[rows]) <= level).sum())
                            lo, hi = _binomial_interval(hits, n)
                            entry[f"coverage_{level}sigma"] = hits / n
                            entry[f"coverage_{level}sigma_ci95"] = [lo, hi]
                            entry[f"coverage_{level}sigma_alarm"] = bool(not lo <= ideal <= hi)
                binned.append(entry)
    section["binned"] = binned
    return section


def _write_predictions(path: Path, obs: SplitResult, threshold: float, targets: list[str]) -> None:
    import pandas as pd

    from ..common.files import atomic_write

    frame = pd.DataFrame({"index": obs.predictions["index"]})
    for target in targets:
        for key in (f"pred_{target}", f"sigma_{target}", f"true_{target}"):
            if key in obs.predictions:
                frame[key] = obs.predictions[key]
    frame["nn_distance"] = obs.distance
    frame["beyond_threshold"] = obs.distance > threshold
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(pair: Any, digits: int = 3) -> str:
    return f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]" if pair else "-"


def render(result: dict[str, Any]) -> str:
    """report.md of a transfer."""
    ref, obs = result["reference"], result["observed"]
    dist = result["distance"]
    lines = [f"# Simulations -> observations: {', '.join(result['targets'])} from {', '.join(result['features'])} "
             f"({result['head_kind']})", "",
             f"- head: `{result['head']}`, fitted on split `{result['train']['split']}` of "
             f"`{result['train']['cache']}` ({result['train']['n']} spectra)",
             f"- simulated reference: split `{ref['split']}` of the same cache ({ref['n']} spectra, never trained on)",
             f"- observed: split `{obs['split']}` of `{obs['cache']}` ({obs['n']} spectra)"]
    source = obs.get("source") or {}
    if source.get("sources"):
        lines.append(f"- observed file `{source.get('file')}` imported from {len(source['sources'])} PFS file(s) "
                     f"({', '.join(source.get('products') or [])}), normalisation {source.get('normalise')}")
    lines += [f"- features made the same way (encoder, mask, pooling, dtypes); data-source differences: "
              f"{result['data_source_differences']}", "",
              "## Distance from the training features", "",
              f"{dist['definition']}; threshold: the {dist['percentile']:g}th percentile of the simulated reference "
              f"split's distances ({dist['threshold']:.3f}).", "",
              "| split | n | median distance | fraction beyond the threshold | 95% interval |",
              "|---|---:|---:|---:|---|"]
    for role, name in (("reference", f"simulated `{ref['split']}`"), ("observed", f"observed `{obs['split']}`")):
        d = dist[role]
        lines.append(f"| {name} | {d['n']} | {d['median_distance']:.3f} | {d['fraction_beyond']:.3f} | "
                     f"{_ci(d['fraction_beyond_ci95'])} |")
    lines += ["", f"Observed rows sit {dist['median_ratio']:.2f}x as far from the training features as simulated "
                  "held-out rows (median nearest-neighbour distance).", ""]
    for target, sections in result["targets_report"].items():
        lines += [f"## {target}", "", "| split | n labelled | R2 [95%] | RMSE [95%] | bias | sigma_MAD [95%] | "
                  "outliers | median pred | median sigma |", "|---|---:|---|---|---:|---|---:|---:|---:|"]
        for role, name in (("reference", f"simulated `{ref['split']}`"), ("observed", f"observed `{obs['split']}`")):
            s = sections[role]
            m = s.get("metrics")
            if m:
                lines.append(f"| {name} | {s['n_labelled']} | {m['r2']:.3f} {_ci(m['r2_ci95'])} | {m['rmse']:.3f} "
                             f"{_ci(m['rmse_ci95'])} | {m['bias']:+.3f} | {m['sigma_mad']:.3f} "
                             f"{_ci(m['sigma_mad_ci95'])} | {m['outlier_fraction']:.3f} | {s['pred_median']:.3f} | "
                             f"{_fmt(s.get('sigma_median'))} |")
            else:
                lines.append(f"| {name} | {s['n_labelled']} | - | - | - | - | - | {s['pred_median']:.3f} | "
                             f"{_fmt(s.get('sigma_median'))} |")
        rows = [(role, b) for role in ("reference", "observed") for b in sections[role].get("binned", [])]
        if rows:
            has_cov = any("coverage_1sigma" in b for _, b in rows)
            lines += ["", "Per bin (quantile bins of each split's S/N and true label; residual = pred - true"
                      + ("; per S/N bin the coverage within 1 and 2 sigma with Wilson 95% intervals, ALARM where the "
                         "ideal 0.683 / 0.954 lies outside (per true-label bin coverage is skewed by regression to the "
                         "mean even in distribution, so it is not shown)" if has_cov else "") + "):", "",
                      "| split | by | population | bin | n | bias | sigma_MAD |"
                      + (" cover 1s [95%] | cover 2s [95%] |" if has_cov else ""),
                      "|---|---|---|---|---:|---:|---:|" + ("---|---|" if has_cov else "")]
            for role, b in rows:
                if not b["n"]:
                    continue
                cells = (f"| {role} | {b['by']} | {b['population']} | {b['lo']:.3g}-{b['hi']:.3g} | {b['n']} | "
                         f"{b['bias']:+.3f} | {b['sigma_mad']:.3f} |")
                if has_cov and "coverage_1sigma" not in b:
                    cells += " | |"
                elif has_cov:
                    for level in (1, 2):
                        flag = " ALARM" if b.get(f"coverage_{level}sigma_alarm") else ""
                        value, interval = b.get(f"coverage_{level}sigma"), b.get(f"coverage_{level}sigma_ci95")
                        cells += f" {_fmt(value)} {_ci(interval)}{flag} |"
                lines.append(cells)
        lines.append("")
    lines += ["Intervals: percentile bootstrap of the rows (1000 resamples, seed 0) for the metrics, Wilson score "
              "intervals for fractions. A synthetic 'observed' split measures the shift of its own generator and "
              "pipeline, not that of the real instrument.", "",
              f"Command: `{result.get('command') or ''}`", ""]
    return "\n".join(lines)


def describe_transfer(path: str | os.PathLike[str]) -> dict[str, Any]:
    """transfer.json of an earlier report."""
    return json.loads((Path(path) / "transfer.json").read_text())
