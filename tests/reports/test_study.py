"""The probing study: nested train subsets, K folds, the three uncertainties, depth and checkpoints."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score

import featcache
from featcache.cache.metadata import CacheMetadata
from featcache.heads.selection import RowSelection, fold_of, nested_subset, role_rows
from featcache.reports.study import checkpoint_rows, depth_rows, depth_table, study_sections

from ..helpers import assert_cli_error, run_cli

FEATURE = [("enc_last", "global_mean")]


def test_nested_subsets_are_prefixes_of_one_permutation():
    small, large = nested_subset(1000, 100, seed=3), nested_subset(1000, 400, seed=3)
    assert set(small) <= set(large) and len(set(large)) == 400 and np.all(np.diff(large) > 0)
    assert not np.array_equal(nested_subset(1000, 100, seed=4), small)  # the seed draws them


def test_subsets_take_every_draw_and_are_the_same_for_every_cache(labelled_caches):
    pre, rand = (featcache.open_cache(labelled_caches[k]) for k in ("pretrained", "random"))
    rows = {}
    for name, cache in (("pre", pre), ("rand", rand)):
        for size in (50, 120):
            data = role_rows(cache, FEATURE, ["log_g"], "train", "val", "test", RowSelection(train_size=size))
            rows[name, size] = data["train"].x.rows
            spectra = nested_subset(200, size, seed=0)
            assert np.array_equal(rows[name, size], np.sort(np.r_[spectra, spectra + 200]))  # both noise draws
            np.testing.assert_array_equal(data["train"].y[:, 0], cache.labels("train", "log_g")[rows[name, size]])
            features = cache.features("train", *FEATURE[0])
            np.testing.assert_array_equal(data["train"].x.load(), features[rows[name, size]])
            assert len(data["val"].y) == 50 and len(data["test"].y) == 50  # validation and test unchanged
    assert np.array_equal(rows["pre", 50], rows["rand", 50]) and set(rows["pre", 50]) <= set(rows["pre", 120])


def test_folds_partition_train_and_val_and_never_touch_test(labelled_caches):
    cache = featcache.open_cache(labelled_caches["pretrained"])
    folds = fold_of(250, 4, seed=0)
    assert sorted(np.bincount(folds)) == [62, 62, 63, 63]
    held: list[tuple[str, int]] = []
    for k in range(4):
        data = role_rows(cache, FEATURE, ["log_g"], "train", "val", "test", RowSelection(fold=k, n_folds=4))
        val = list(zip(data["val"].splits.tolist(), data["val"].index.tolist(), strict=True))
        held += val
        trained = len(data["train"].y)  # every draw of the other folds' spectra: 2 of train, 1 of val
        n_train_held = sum(s == "train" for s, _ in val)
        assert trained == 2 * (200 - n_train_held) + (50 - (len(val) - n_train_held))
        np.testing.assert_array_equal(data["test"].index, cache.index("test", draw=0))
        assert not set(cache.index("test", draw=0)) & {i for _, i in val}
        x_val = data["val"].x.load()  # the held-out rows are the draw-0 features of those spectra
        first = next(j for j, (s, _) in enumerate(val) if s == "val")
        position = int(np.flatnonzero(cache.index("val", draw=0) == val[first][1])[0])
        np.testing.assert_array_equal(x_val[first], cache.features("val", *FEATURE[0], draw=0)[position])
    assert len(held) == len(set(held)) == 250  # the folds partition train + val


@pytest.fixture(scope="module")
def stability(labelled_caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "cmp"
    run_cli("compare", "--cache", f"pretrained={labelled_caches['pretrained']}", "--target", "log_g", "--head",
            "ridge", "--head", "mlp_1", "--layer", "enc_last", "--layer", "input_flux", "--pool", "global_mean",
            "--seeds", "2", "--folds", "3", "--max-epochs", "3", "-q", "--out", out)
    return out


def _cells(out):
    records = {}
    for path in (out / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        records[record["key"]] = (record, np.load(path.with_suffix(".npz")))
    return records


def test_the_three_uncertainties_come_from_their_own_quantities(stability):
    table = pd.read_csv(stability / "compare.csv")
    records = _cells(stability)
    row = table[(table["layer"] == "enc_last") & (table["head"] == "mlp_1")].iloc[0]
    # the seed std: over the two full-data fits' test R2, recomputed from their predictions
    full = [records[k] for k in row["keys"].split(";")]
    assert [r["spec"].get("rows") for r, _ in full] == [None, None]
    r2s = [r2_score(a["test_true"], a["test_pred"]) for _, a in full]
    assert row["test_r2_std"] == pytest.approx(np.std(r2s, ddof=1), abs=1e-9)
    # the fold std: over folds of the seed-mean validation R2 on each fold's held-out spectra
    fold_val = {}
    for record, arrays in records.values():
        rows = record["spec"].get("rows") or {}
        if (record["layer"], record["head"]) == ("enc_last", "mlp_1") and "fold" in rows:
            fold_val.setdefault(rows["fold"], []).append(r2_score(arrays["val_true"], arrays["val_pred"]))
    assert sorted(fold_val) == [0, 1, 2] and all(len(v) == 2 for v in fold_val.values())
    per_fold = [np.mean(fold_val[k]) for k in range(3)]
    assert row["folds"] == 3
    assert row["fold_val_r2"] == pytest.approx(np.mean(per_fold), abs=1e-9)
    assert row["fold_val_r2_std"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-9)
    # the bootstrap interval: of the seed-mean test R2 (the main table's, untouched by the folds)
    assert row["test_r2_lo"] <= row["test_r2"] <= row["test_r2_hi"]
    markdown = (stability / "compare.md").read_text()
    assert "### Stability: test sampling, training seed, data split" in markdown
    assert f"{row['fold_val_r2']:.3f} ± {row['fold_val_r2_std']:.3f}" in markdown
    ridge = table[(table["layer"] == "enc_last") & (table["head"] == "ridge")].iloc[0]
    assert ridge["seeds"] == 1 and ridge["folds"] == 3  # ridge is deterministic: one fit per fold


def test_label_efficiency_curves_and_report(labelled_caches, tmp_path):
    out = tmp_path / "cmp"
    base = ["compare", "--cache", f"pretrained={labelled_caches['pretrained']}", "--target", "log_g", "--head",
            "ridge", "--layer", "enc_last", "--layer", "input_flux", "--pool", "global_mean", "-q"]
    args = [*base, "--train-sizes", "60,120", "--out", out]
    run_cli(*args)
    curve = pd.read_csv(out / "label_efficiency.csv")
    assert sorted(set(curve["n_train"])) == [60, 120, 200] and len(curve) == 6  # two cells x (two sizes + full)
    table = pd.read_csv(out / "compare.csv")
    full = curve[curve["full"]].set_index("layer")["test_r2"]
    for layer in ("enc_last", "input_flux"):  # the full-data point is the table's cell
        assert full[layer] == pytest.approx(table.set_index("layer").loc[layer, "test_r2"])
    records = _cells(out)
    for record, arrays in records.values():
        rows = record["spec"].get("rows") or {}
        if rows.get("train_size") == 60:
            assert record["n"]["train"] == 120  # 60 spectra x 2 draws
            point = curve[(curve["layer"] == record["layer"]) & (curve["n_train"] == 60)].iloc[0]
            assert point["test_r2"] == pytest.approx(r2_score(arrays["test_true"], arrays["test_pred"]), abs=1e-9)
    markdown = (out / "compare.md").read_text()
    assert "### Label efficiency" in markdown and "the raw flux's full-data test R2" in markdown
    assert "label_efficiency_log_g.png" in (out / "report.md").read_text()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    run_cli(*args)  # everything reused: no cell written again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == before
    assert_cli_error(run_cli(*base, "--train-sizes", "500", "--out", tmp_path / "x", check=False),
                     "--train-sizes 500", "200 train spectra")
    assert_cli_error(run_cli(*base, "--train-sizes", "60", "--folds", "3", "--out", tmp_path / "y", check=False),
                     "separate studies")
    assert_cli_error(run_cli(*base, "--train-sizes", "1e9x", "--out", tmp_path / "z", check=False), "not a number")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def _source(name, num_layers, tag="l5e8k5", random_init_seed=None):
    meta = {"encoder": {"num_layers": num_layers, "tag": tag},
            "parts": {"encoder": {"random_init_seed": random_init_seed}}}
    metadata = CacheMetadata(format=2, fingerprint="f", splits={}, generations=(), parts=meta["parts"],
                             encoder=meta["encoder"])
    return SimpleNamespace(name=name, cache=SimpleNamespace(meta=meta, metadata=metadata))


def test_depth_picks_the_pooling_on_validation_and_reports_its_test():
    table = pd.DataFrame([
        {"target": "log_g", "encoder": "a", "kind": "encoder", "layer": "enc_1", "pool": "p", "head": "ridge",
         "val_r2": 0.2, "test_r2": 0.9, "test_r2_lo": 0.8, "test_r2_hi": 1.0},
        {"target": "log_g", "encoder": "a", "kind": "encoder", "layer": "enc_1", "pool": "q", "head": "ridge",
         "val_r2": 0.3, "test_r2": 0.1, "test_r2_lo": 0.0, "test_r2_hi": 0.2},
        {"target": "log_g", "encoder": "a", "kind": "encoder", "layer": "enc_last", "pool": "p", "head": "ridge",
         "val_r2": 0.5, "test_r2": 0.4, "test_r2_lo": 0.3, "test_r2_hi": 0.5},
        {"target": "log_g", "encoder": "raw", "kind": "baseline", "layer": "input_flux", "pool": "none",
         "head": "ridge", "val_r2": 0.9, "test_r2": 0.9, "test_r2_lo": 0.9, "test_r2_hi": 0.9},
    ])
    rows = depth_rows(table, [_source("a", 5)], "log_g")
    assert [(r["depth"], r["pool"], r["test_r2"]) for r in rows] == [(1, "q", 0.1), (5, "p", 0.4)]  # val, not test
    assert checkpoint_rows(table, [_source("a", 5)], "log_g") == []  # one cache: no checkpoint curve
    two = pd.concat([table, table.assign(encoder=table["encoder"].replace("a", "b"))])
    two = two.reset_index(drop=True)
    points = checkpoint_rows(two, [_source("a", 5), _source("b", 5)], "log_g")
    assert [(p["checkpoint"], p["layer"]) for p in points] == [("a", "enc_last"), ("b", "enc_last")]
    # a random-init copy has the architecture's tag but is no checkpoint of the pretraining
    assert checkpoint_rows(two, [_source("a", 5), _source("b", 5, random_init_seed=0)], "log_g") == []
    # two depths are the table's two taps, not a depth curve; a third block makes one
    sections = study_sections(table, [], [_source("a", 5)], ["log_g"], 0, [])
    assert "depth" not in sections.get("log_g", {}).get("data", {})
    three = pd.concat([table, table.iloc[[2]].assign(layer="enc_3")]).reset_index(drop=True)
    curve = study_sections(three, [], [_source("a", 5)], ["log_g"], 0, [])["log_g"]
    assert [r["depth"] for r in curve["data"]["depth"]] == [1, 3, 5] and "### Depth" in curve["lines"]
    lines = depth_table(rows)
    assert lines[2] == "| 1 | 0.100 [0.000, 0.200] (q) |" and lines[3].startswith("| 5 | 0.400 [0.300, 0.500] (p)")
