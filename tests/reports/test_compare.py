"""featcache compare: every cell filled, intervals around their estimates, the bold cell, reuse and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featcache.reports.cells as cells_module
from featcache.cache import open_cache
from featcache.common.errors import FeatcacheError
from featcache.heads.metrics import bootstrap_r2_ci
from featcache.heads.recipe import TrainRecipe
from featcache.reports.comparison import compare
from featcache.reports.rows import seed_mean_r2_ci
from featcache.reports.sources import open_sources, parse_cache_args

from ..helpers import assert_cli_error, run_cli

FAST = ["--max-epochs", "3", "-q"]


@pytest.fixture(scope="module")
def caches(labelled_caches):
    return labelled_caches


def cache_args(caches) -> list[str]:
    return [a for name, path in caches.items() for a in ("--cache", f"{name}={path}")]


def bold_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| ") and "**" in line]


def test_compare_fills_every_cell_and_rerun_refits_nothing(caches, tmp_path, monkeypatch):
    out = tmp_path / "report"
    result = run_cli("compare", *cache_args(caches), "--target", "log_g", *FAST, "--out", out)
    assert "| encoder | layer | pooling | D | ridge test R2 [95% CI] | ridge val R2 | mlp_1 test R2" in result.output
    table = pd.read_csv(out / "compare.csv", keep_default_na=False, na_values=[""])
    rows = {("pretrained", "enc_last"), ("random", "enc_last"), ("raw input", "input_flux"),
            ("raw input", "input_error")}
    expected = {(e, layer, pool, head) for e, layer in rows for pool in ("global_mean", "seg_mean_K4")
                for head in ("ridge", "mlp_1")}
    assert set(zip(table["encoder"], table["layer"], table["pool"], table["head"], strict=True)) == expected
    assert len(table) == len(expected) == 16
    assert np.isfinite(table[["test_r2", "test_r2_lo", "test_r2_hi", "val_r2"]].to_numpy()).all()
    assert (table["test_r2_lo"] <= table["test_r2"]).all() and (table["test_r2"] <= table["test_r2_hi"]).all()
    assert table["test_r2"].max() > 0.5  # the learnable data is learnt
    # the bold cell is the one with the highest validation R2 (test never chooses)
    best = table.loc[table["val_r2"].idxmax()]
    assert table["best"].sum() == 1 and bool(best["best"])
    markdown = (out / "compare.md").read_text()
    (bold,) = bold_rows(markdown)
    assert bold[:3] == [best["encoder"], best["layer"], best["pool"]]
    assert sum("**" in c for c in bold) == 2 and f"**{best['val_r2']:.3f}**" in bold
    assert "fingerprint" in markdown and "train 200 spectra x 2 draws = 400 rows, val 50 spectra, test 50" in markdown
    summary = json.loads((out / "compare.json").read_text())
    assert summary["fitted"] == 16 and summary["reused"] == 0 and summary["best"]["log_g"]["val_r2"] == best["val_r2"]
    # with one seed the interval is exactly the fit's own bootstrap interval
    for _, row in table.iterrows():
        record = json.loads((out / "cells" / f"{row['keys']}.json").read_text())
        assert record["metrics"]["test"]["r2_ci95"] == pytest.approx([row["test_r2_lo"], row["test_r2_hi"]])
    for name in ("report.md", "heatmap_ridge_log_g.png", "heatmap_mlp_1_log_g.png", "best_log_g.png"):
        assert (out / name).stat().st_size > 0, name
    assert "![best cell" in (out / "report.md").read_text()

    # re-running refits nothing and rewrites no cell
    cells = sorted((out / "cells").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in cells}

    def no_fit(*args, **kwargs):
        raise AssertionError("compare refitted a finished cell")

    monkeypatch.setattr(cells_module, "fit_head", no_fit)
    again = run_cli("compare", *cache_args(caches), "--target", "log_g", *FAST, "--out", out)
    assert again.output == result.output
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "cells").iterdir())} == stamps
    assert json.loads((out / "compare.json").read_text())["reused"] == 16

    # a changed MLP recipe refits the MLP cells only (batched in one pass); ridge does not depend on it
    before = set((out / "cells").glob("*.json"))
    run_cli("compare", *cache_args(caches), "--target", "log_g", "--max-epochs", "2", "-q", "--out", out)
    new = set((out / "cells").glob("*.json")) - before
    assert sorted(json.loads(p.read_text())["head"] for p in new) == ["mlp_1"] * 8
    assert all(p.stat().st_mtime_ns == stamps[p] for p in before)  # the ridge cells stay as they were


def test_seeds_runs_and_resume(caches, tmp_path):
    out = tmp_path / "seeds"
    recipe = TrainRecipe(max_epochs=3)
    kwargs = dict(heads=["mlp_1"], layers=["enc_last"], pools=["global_mean"], baselines=False, recipe=recipe,
                  out=out, plots=False, show_progress=False)
    result = compare(caches, ["log_g"], seeds=2, **kwargs)
    assert result.fitted == 4 and len(result.table) == 2
    for _, row in result.table.iterrows():
        assert row["seeds"] == 2 and np.isfinite(row["test_r2_std"]) and row["chosen_epochs"].count(";") == 1
        assert row["test_r2_lo"] <= row["test_r2"] <= row["test_r2_hi"]
    assert re.search(r"\d ± \d\.\d{3} \[", result.markdown) and "mean ± std over seeds 0..1" in result.markdown
    more = compare(caches, ["log_g"], seeds=3, **kwargs)
    assert more.fitted == 2 and more.reused == 4  # only seed 2 is new

    # a killed compare: one cell lost its .json (written last), a stray temporary file is left behind
    key = more.table.iloc[0]["keys"].split(";")[1]
    (out / "cells" / f"{key}.json").unlink()
    (out / "cells" / f".{key}.json.123.tmp").write_text("{")
    resumed = compare(caches, ["log_g"], seeds=3, **kwargs)
    assert resumed.fitted == 1  # alone now, batched with its seeds before: equal up to float32 summation order
    np.testing.assert_allclose(resumed.table["test_r2"], more.table["test_r2"], rtol=1e-6)

    # --run rows: a fit run reproduces the matching ridge cell, its interval from predictions.npz
    run = tmp_path / "ridge-run"
    run_cli("fit", "--cache", caches["pretrained"], "--layer", "enc_last", "--pool", "seg_mean_K4", "--target",
            "log_g", "--out", run)
    both = compare({"pretrained": caches["pretrained"]}, ["log_g"], heads=["ridge"], layers=["enc_last"],
                   pools=["seg_mean_K4"], baselines=False, runs=[run], out=tmp_path / "runs", plots=False,
                   show_progress=False)
    cell, from_run = both.table.iloc[0], both.table.iloc[1]
    assert from_run["encoder"] == "ridge-run" and from_run["kind"] == "run" and from_run["width"] == 32
    for column in ("test_r2", "val_r2", "test_r2_lo", "test_r2_hi", "chosen_alpha"):
        assert from_run[column] == pytest.approx(cell[column], rel=1e-9), column
    assert "| ridge-run | enc_last | seg_mean_K4 | 32 |" in both.markdown
    run_line = next(line for line in both.markdown.splitlines() if line.startswith("- run `ridge-run`"))
    assert "(fit), train 400 / val 50 / test 50 spectra" in run_line  # 200 spectra x 2 noise draws


def test_seed_mean_interval_reduces_to_the_plain_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    pred = y + rng.normal(scale=0.5, size=40)
    assert seed_mean_r2_ci(y, pred[:, None]) == pytest.approx(bootstrap_r2_ci(y, pred))


def test_encoder_labels(caches):
    assert parse_cache_args(["a=x.zarr", str(caches["random"])]) == [("a", Path("x.zarr")),
                                                                       (None, caches["random"])]
    sources = open_sources([caches["pretrained"], caches["random"]])
    assert [s.name for s in sources] == ["l5e8k5s1bn1d1", "l5e8k5s1bn1d1 random-init"]
    assert [s.baseline_name for s in sources] == ["raw input", None]


@pytest.mark.parametrize("args,fragments", [
    (["--layer", "enc_9"], ["unknown layer 'enc_9'", "enc_last, input_flux, input_error"]),
    (["--pool", "mean_max"], ["unknown pooling 'mean_max'", "global_mean, seg_mean_K4"]),
    (["--head", "mlp_9"], ["unknown head 'mlp_9'", "ridge"]),
    (["--target", "logg"], ["unknown label 'logg'", "log_g"]),
    (["--seeds", "0"], ["--seeds must be at least 1"]),
    (["--run", "{tmp}"], ["no metrics.json"]),
])
def test_bad_compare_requests(caches, tmp_path, args, fragments):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--target" not in args:
        args += ["--target", "log_g"]
    result = run_cli("compare", *cache_args(caches), *args, "-q", "--out", tmp_path / "r", check=False)
    assert_cli_error(result, *fragments)
    assert not (tmp_path / "r" / "cells").exists()


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one-by-one"])
def test_jobs_fill_the_same_cells_as_one_process(caches, tmp_path, batched):
    """--jobs 2 sends every fit or batched pass to worker processes: same cells, same fits (up to float32
    summation order), ridge cells equal, and a re-run with either setting refits nothing."""
    kwargs = dict(heads=["ridge", "mlp_1"], layers=["enc_last"], pools=["global_mean", "seg_mean_K4"],
                  baselines=False, recipe=TrainRecipe(max_epochs=3), plots=False, show_progress=False)
    serial = compare(caches, ["log_g"], out=tmp_path / "serial", batched=False, **kwargs)
    parallel = compare(caches, ["log_g"], out=tmp_path / "parallel", jobs=2, batched=batched, **kwargs)
    assert parallel.fitted == serial.fitted == 8
    a, b = serial.table, parallel.table
    assert a["keys"].tolist() == b["keys"].tolist()
    ridge = a["head"] == "ridge"
    np.testing.assert_allclose(b.loc[ridge, "test_r2"], a.loc[ridge, "test_r2"], rtol=1e-12)
    np.testing.assert_allclose(b.loc[~ridge, "test_r2"], a.loc[~ridge, "test_r2"], atol=1e-4)
    assert b["chosen_epochs"].tolist() == a["chosen_epochs"].tolist()
    again = compare(caches, ["log_g"], out=tmp_path / "parallel", jobs=2, **kwargs)
    assert again.fitted == 0 and again.reused == 8
    with pytest.raises(FeatcacheError, match="--jobs"):
        compare(caches, ["log_g"], out=tmp_path / "x", jobs=0, **kwargs)


def test_plan_units_balances_batched_passes_over_the_workers(caches):
    """Every fit lands in exactly one unit; with --jobs 2 a pass costlier than a worker's share is cut into
    passes of about equal cost; the units come costliest first; jobs 1 keeps one pass per batch group."""
    from featcache.heads.fit import FitSpec
    from featcache.reports.cells import Task, plan_units, unit_flop
    from featcache.reports.sources import Source

    cache = open_cache(caches["pretrained"])
    source = Source("pretrained", Path(caches["pretrained"]), cache)
    todo = []
    for layer, pool in (("enc_last", "global_mean"), ("enc_last", "seg_mean_K4"), ("input_flux", "seg_mean_K4"),
                        ("input_flux", "global_mean")):
        width = cache.features("train", layer, pool).shape[1]
        for head, seeds in (("ridge", [None]), ("mlp_1", [0, 1, 2])):
            for seed in seeds:
                spec = FitSpec([(layer, pool)], ["log_g"], head=head, recipe=TrainRecipe(seed=seed or 0))
                todo.append(Task(source, "pretrained", "encoder", layer, pool, width, head, "log_g", seed, spec,
                                 f"{layer}/{pool}/{head}/{seed}"))
    one = plan_units(todo, jobs=1, batched=True)
    two = plan_units(todo, jobs=2, batched=True)
    for units in (one, two):
        assert sorted(t.key for u in units for t in u) == sorted(t.key for t in todo)
        assert [unit_flop(u) for u in units] == sorted((unit_flop(u) for u in units), reverse=True)
    passes = [u for u in one if len(u) > 1]
    assert len(passes) == 1 and len(passes[0]) == 12  # all 12 mlp_1 fits of the cache share one pass
    cut = [u for u in two if u[0].head == "mlp_1"]
    assert len(cut) == 2 and sum(map(len, cut)) == 12
    costs = [unit_flop(u) for u in cut]
    assert max(costs) / min(costs) < 1.5  # about equal halves
    assert all(len(u) == 1 for u in plan_units(todo, jobs=2, batched=False))


def test_shards_split_the_fits_and_a_plain_compare_assembles_them(caches, tmp_path):
    """--shard I/N: every fit in exactly one shard's share, all into one OUT/cells, no table; the compare
    afterwards fits nothing and gives the unsharded table (same keys, same numbers)."""
    kwargs = dict(heads=["ridge", "mlp_1"], pools=["global_mean", "seg_mean_K4"], recipe=TrainRecipe(max_epochs=3),
                  plots=False, show_progress=False)
    whole = compare(caches, ["log_g"], out=tmp_path / "whole", **kwargs)
    out = tmp_path / "sharded"
    keys = []
    for i in (0, 1, 2):
        part = compare(caches, ["log_g"], out=out, shard=(i, 3), **kwargs)
        assert part.table is None and part.reused == 0 and not (out / "compare.csv").exists()
        assert f"shard {i}/3" in part.markdown
        keys.append({p.stem for p in (out / "cells").glob("*.json")} - {k for ks in keys for k in ks})
        assert len(keys[-1]) == part.fitted > 0
    assert sum(len(k) for k in keys) == whole.fitted == 16
    # the trainable fits are dealt round-robin: each shard gets some of the slow ones
    trainable = set(whole.table.loc[whole.table["head"] == "mlp_1", "keys"].str.split(";").sum())
    assert all(share & trainable for share in keys)
    assembled = compare(caches, ["log_g"], out=out, **kwargs)
    assert assembled.fitted == 0 and assembled.reused == 16
    assert assembled.table["keys"].tolist() == whole.table["keys"].tolist()
    np.testing.assert_allclose(assembled.table["test_r2"], whole.table["test_r2"], atol=1e-6)


@pytest.mark.parametrize("shard", ["3/3", "-1/3", "2", "a/b"])
def test_bad_shard_is_refused_before_anything_is_written(caches, tmp_path, shard):
    result = run_cli("compare", *cache_args(caches), "--target", "log_g", "--shard", shard, "-q",
                     "--out", tmp_path / "r", check=False)
    assert_cli_error(result, f"--shard {shard}", "I/N")
    assert not (tmp_path / "r").exists()


def test_sweep_keeps_the_setting_best_on_validation(caches, tmp_path):
    """--hidden 8,32 --lr 1e-3,1e-2: four fits per MLP cell; the table shows the setting with the best
    validation R2 (sweep.csv lists all four), and its numbers are those of a compare run with that setting
    alone (a second code path)."""
    kwargs = dict(heads=["ridge", "mlp_1"], layers=["enc_last"], pools=["global_mean"], baselines=False,
                  plots=False, show_progress=False)
    swept = compare(caches, ["log_g"], out=tmp_path / "swept", recipe=TrainRecipe(max_epochs=3),
                    sweep_values={"hidden": [8, 32], "lr": [1e-3, 1e-2]}, **kwargs)
    assert swept.fitted == 2 * (1 + 4)  # per encoder: one ridge fit, four MLP settings
    sweep_csv = pd.read_csv(tmp_path / "swept" / "sweep.csv")
    assert len(sweep_csv) == 8 and sweep_csv.groupby("encoder")["chosen"].sum().tolist() == [1, 1]
    mlp = swept.table[swept.table["head"] == "mlp_1"].set_index("encoder")
    for encoder, rows in sweep_csv.groupby("encoder"):
        winner = rows.loc[rows["val_r2"].idxmax()]
        assert bool(winner["chosen"]) and mlp.loc[encoder, "setting"] == winner["setting"]
        np.testing.assert_allclose(mlp.loc[encoder, "val_r2"], winner["val_r2"], rtol=1e-12)
        alone = compare(caches, ["log_g"], out=tmp_path / f"alone-{encoder}", hidden=int(winner["hidden"]),
                        recipe=TrainRecipe(max_epochs=3, lr=float(winner["lr"])), batched=False, **kwargs)
        row = alone.table[(alone.table["head"] == "mlp_1") & (alone.table["encoder"] == encoder)].iloc[0]
        assert row["keys"] == mlp.loc[encoder, "keys"]  # the sweep trained its settings in one pass, this alone:
        np.testing.assert_allclose(row["test_r2"], mlp.loc[encoder, "test_r2"], rtol=1e-6)  # float32 order
    ridge = swept.table[swept.table["head"] == "ridge"]
    assert ridge["setting"].isna().all() or (ridge["setting"] == "").all()  # ridge is not swept
    assert "## Hyper-parameter sweep" in swept.markdown and "hidden 8, 32; lr 0.001, 0.01" in swept.markdown
    # the default setting's fits are the unswept compare's: a sweep reuses them
    again = compare(caches, ["log_g"], out=tmp_path / "swept", recipe=TrainRecipe(max_epochs=3),
                    sweep_values={"hidden": [8, 32, 64], "lr": [1e-3, 1e-2]}, **kwargs)
    assert again.fitted == 2 * 2 and again.reused == 10


@pytest.mark.parametrize("args,fragment", [
    (["--hidden", "8,x"], "--hidden"), (["--hidden", "8,2.5"], "--hidden"), (["--lr", "1e-3,-1"], "--lr 0.001,-1.0"),
    (["--dropout", "0.1,1.5"], "--dropout"),
])
def test_bad_sweep_values_are_refused(caches, tmp_path, args, fragment):
    result = run_cli("compare", *cache_args(caches), "--target", "log_g", *args, "-q", "--out", tmp_path / "r",
                     check=False)
    assert_cli_error(result, fragment)
    assert not (tmp_path / "r").exists()
