"""featcache bounds on a cache (stored beside the labels, checked against the files), the full-spectrum
baseline row of compare and the bound beside every compared cell, re-drawn by featcache report."""

import json

import h5py
import numpy as np
import pytest

from featcache import open_cache
from featcache.information import bounds as file_bounds
from featcache.information import fit_cannon
from tests.helpers import CKPT, assert_cli_error, run_cli

from .world import World

SPLITS = {"train": (0, 300), "val": (300, 400), "test": (400, 500)}


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("boundcache")
    data = World().write(root / "w.h5", 500, seed=3, error=0.05)
    args = [a for name, (lo, hi) in SPLITS.items() for a in ("--data", f"{name}={data}:{lo}:{hi}")]
    run_cli("extract", "--ckpt", CKPT, *args, "--layer", "enc_last", "--layer", "input_flux", "--pool",
            "global_mean", "--mask", "quantile:0.9", "--noise-draws", "train=2", "-q", "--out", root / "c.zarr")
    return {"root": root, "data": data, "cache": root / "c.zarr"}


@pytest.fixture(scope="module")
def bounded(world_cache):
    result = run_cli("bounds", "--cache", world_cache["cache"], "-q")
    return world_cache | {"output": result.output}


def test_bounds_are_stored_beside_the_labels_and_equal_the_file_api(bounded):
    cache = open_cache(bounded["cache"])
    assert cache.bound_sources("test") == ["cannon"] and cache.bound_sources("train") == ["cannon"]
    train = cache.bounds("train")["log_g"]
    assert len(train) == 600 and np.array_equal(train[:300], train[300:])  # tiled over the two noise draws
    info = cache.bounds_info("test", "cannon")
    assert info["parameters"] == ["T_eff", "log_g", "M_H", "redshift"] and info["request"]["order"] == 2
    model = fit_cannon(bounded["data"], SPLITS["train"], show_progress=False)
    expected = file_bounds(bounded["data"], cache.mask, rows=SPLITS["test"], source="cannon", model=model,
                           show_progress=False)
    np.testing.assert_allclose(cache.bounds("test", draw=0)["log_g"], expected.values["log_g"], rtol=1e-10)
    assert "| test | cannon | log_g | 100 |" in bounded["output"]


def test_a_rerun_keeps_them_and_other_settings_need_overwrite(bounded):
    cache = bounded["cache"]
    before = open_cache(cache).bounds_info("val", "cannon")["created"]
    run_cli("bounds", "--cache", cache, "--split", "val", "-q")
    assert open_cache(cache).bounds_info("val", "cannon")["created"] == before
    assert_cli_error(run_cli("bounds", "--cache", cache, "--split", "val", "--cannon-order", "1", "-q", check=False),
                     "split 'val' has cannon bounds", "--overwrite")
    run_cli("bounds", "--cache", cache, "--split", "val", "--cannon-order", "1", "--overwrite", "-q")
    assert open_cache(cache).bounds_info("val", "cannon")["request"]["order"] == 1
    run_cli("bounds", "--cache", cache, "--split", "val", "--overwrite", "-q")  # back to the default


def test_the_exact_source_refuses_a_file_featcache_synth_did_not_write(bounded):
    assert_cli_error(run_cli("bounds", "--cache", bounded["cache"], "--source", "synth", "-q", check=False),
                     "not written by featcache synth", "--source cannon")


def test_a_changed_file_is_refused(bounded, tmp_path):
    import shutil

    copy = tmp_path / "c.zarr"
    shutil.copytree(bounded["cache"], copy)
    data = bounded["root"] / "w.h5"
    moved = tmp_path / "w.h5"
    shutil.copy(data, moved)
    meta = json.loads((copy / "zarr.json").read_text())
    for split in meta["attributes"]["featcache"]["splits"].values():
        split["path"] = str(moved)
    (copy / "zarr.json").write_text(json.dumps(meta))
    import pandas as pd

    frame = pd.read_hdf(moved, "dataset/params")
    frame.loc[450, "log_g"] += 0.5
    frame.to_hdf(moved, key="dataset/params", format="table", mode="a")
    assert_cli_error(run_cli("bounds", "--cache", copy, "--overwrite", "-q", check=False),
                     "label 'log_g'", "differs from what", "re-extract")


def test_compare_shows_the_full_spectrum_row_and_the_bound_and_report_redraws_it(bounded, tmp_path):
    out = tmp_path / "cmp"
    result = run_cli("compare", "--cache", bounded["cache"], "--target", "log_g", "--head", "ridge",
                     "--full-spectrum", "--out", out, "-q")
    summary = json.loads((out / "compare.json").read_text())
    rows = [c for c in summary["cells"] if c["kind"] == "full_spectrum"]
    assert len(rows) == 1 and rows[0]["encoder"] == "full-spectrum fit" and rows[0]["test_r2"] > 0.9
    bound = summary["populations"]["log_g"]["bound"]
    assert bound["source"] == "cannon" and set(bound["overall"]) >= {"full-spectrum fit", "raw input"}
    full = bound["overall"]["full-spectrum fit"]
    assert 0.3 < full["efficiency"] < 1.5  # the model is right in this world: near the bound
    # every cell carries its overall efficiency too, on the same resamples as the section's
    assert rows[0]["test_efficiency"] == pytest.approx(full["efficiency"], rel=1e-12)
    assert rows[0]["test_efficiency_lo"] == pytest.approx(full["efficiency_lo"], rel=1e-12)
    assert all(c["bound_source"] == "cannon" and c["test_efficiency"] > 0 for c in summary["cells"])
    assert "scatter beside the information bound" in result.output and "recovers" in result.output
    assert (out / "population_log_g_bound_by_snr.png").exists()
    before = (out / "compare.md").read_text()
    run_cli("report", out, "-q")
    assert (out / "compare.md").read_text() == before


def test_report_without_the_baseline_cells_says_so(bounded, tmp_path):
    out = tmp_path / "cmp2"
    run_cli("compare", "--cache", bounded["cache"], "--target", "log_g", "--head", "ridge", "--full-spectrum",
            "--out", out, "-q", "--no-plots")
    for cell in (out / "cells").glob("*.json"):
        if json.loads(cell.read_text()).get("kind") == "full_spectrum":
            cell.unlink()
    assert_cli_error(run_cli("report", out, check=False), "full-spectrum baseline", "compare --full-spectrum")


def test_synth_files_get_the_exact_bound_and_another_generator_version_is_refused(tmp_path):
    from featcache.synth import write_synth

    data = tmp_path / "s.h5"
    write_synth(data, 36, seed=5, mag=19.0)
    args = ["--data", f"train={data}:0:20", "--data", f"val={data}:20:28", "--data", f"test={data}:28:36"]
    run_cli("extract", "--ckpt", CKPT, *args, "--layer", "enc_last", "--pool", "global_mean", "--mask",
            "quantile:0.85", "--noise-level", "2", "-q", "--out", tmp_path / "s.zarr")
    run_cli("bounds", "--cache", tmp_path / "s.zarr", "--split", "test", "-q")
    cache = open_cache(tmp_path / "s.zarr")
    assert cache.bound_sources("test") == ["synth"]
    info = cache.bounds_info("test", "synth")
    assert info["settings"]["generator_version"] and info["prior"]["log_g"] == [1.0, 5.0]
    direct = file_bounds(data, cache.mask, rows=(28, 36), source="synth", noise_level=2.0, show_progress=False)
    np.testing.assert_allclose(cache.bounds("test", draw=0)["log_g"], direct.values["log_g"], rtol=1e-12)
    level1 = file_bounds(data, cache.mask, rows=(28, 36), source="synth", show_progress=False, workers=2)
    np.testing.assert_allclose(direct.values["log_g"], 2.0 * level1.values["log_g"], rtol=1e-9)
    with h5py.File(data, "a") as h5:
        h5.attrs["generator_version"] = "0-old"
    assert_cli_error(run_cli("bounds", "--cache", tmp_path / "s.zarr", "--split", "val", "-q", check=False),
                     str(data), "generator version 0-old", "regenerate")


def test_the_exact_source_refuses_observed_like_effects(tmp_path):
    from featcache.common.errors import FeatcacheError
    from featcache.synth import write_synth
    from featcache.synth.observing import ObservingEffects

    data = tmp_path / "o.h5"
    write_synth(data, 4, seed=6, effects=ObservingEffects(fluxcal_error=0.02))
    with pytest.raises(FeatcacheError, match="observed-like effects .*observed_fluxcal_error.*--source cannon"):
        file_bounds(data, source="synth", show_progress=False)
    with pytest.raises(FeatcacheError, match="observed-like effects"):
        file_bounds(data, source="auto", show_progress=False)


def test_compare_takes_the_cannon_order_and_cells_and_report_redraws_with_them(bounded, tmp_path):
    out = tmp_path / "cmp3"
    run_cli("compare", "--cache", bounded["cache"], "--target", "log_g", "--head", "ridge", "--full-spectrum",
            "--cannon-order", "1", "--cannon-cells", "none", "--out", out, "-q", "--no-plots")
    summary = json.loads((out / "compare.json").read_text())
    assert summary["request"]["cannon_order"] == 1 and summary["request"]["cannon_cells"] == "none"
    (row,) = [c for c in summary["cells"] if c["kind"] == "full_spectrum"]
    assert row["pool"] == "order1"
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    (spec,) = [r["spec"] for r in records if r.get("kind") == "full_spectrum"]
    assert spec["order"] == 1 and spec["cells"] == "none" and spec["fit"]["scale"] is True
    (key,) = [r["key"] for r in records if r.get("kind") == "full_spectrum"]
    with np.load(out / "cells" / f"{key}.npz") as arrays:
        assert arrays["test_scale"].shape == (100,) and np.all(arrays["test_scale"] > 0)
    before = (out / "compare.md").read_text()
    run_cli("report", out, "-q")  # finds the order-1 cells again (the request recorded the settings)
    assert (out / "compare.md").read_text() == before


def test_a_bad_cannon_setting_is_one_line_and_writes_nothing(bounded, tmp_path):
    out = tmp_path / "bad"
    assert_cli_error(run_cli("compare", "--cache", bounded["cache"], "--target", "log_g", "--full-spectrum",
                             "--cannon-cells", "4x4x4x4x4x4", "--out", out, check=False), "--cannon-cells 4x4x4x4x4x4")
    assert_cli_error(run_cli("compare", "--cache", bounded["cache"], "--target", "log_g", "--full-spectrum",
                             "--cannon-order", "4", "--out", out, check=False), "--cannon-order")
    assert not out.exists()
