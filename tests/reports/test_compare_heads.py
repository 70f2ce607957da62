"""compare with the heads of issue 17: knn cells (one fit whatever --seeds, chosen k in the table, reused on a
re-run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featcache.reports.cells as cells_module
from featcache.heads.recipe import TrainRecipe
from featcache.reports.comparison import compare


@pytest.fixture(scope="module")
def caches(labelled_caches):
    return {"pretrained": labelled_caches["pretrained"]}


def test_compare_knn_cells(caches, tmp_path, monkeypatch):
    out = tmp_path / "knn"
    kwargs = dict(heads=["ridge", "knn"], layers=["enc_last"], baselines=False, out=out, show_progress=False,
                  plots=False, seeds=2)
    result = compare(caches, ["log_g"], **kwargs)
    table = result.table
    knn = table[table["head"] == "knn"]
    assert len(knn) == 2 and (knn["seeds"] == 1).all()  # deterministic: one fit per cell
    assert set(knn["chosen_k"]) <= {1, 2, 4, 8, 16, 32, 64, 128, 256} and np.isfinite(knn["test_r2_lo"]).all()
    assert "knn test R2 [95% CI]" in result.markdown
    record = json.loads((out / "cells" / f"{knn.iloc[0]['keys']}.json").read_text())
    assert record["spec"]["knn"] == {"ks": None, "weights": "uniform"} and "k" in record["chosen"]

    monkeypatch.setattr(cells_module, "fit_head", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    again = compare(caches, ["log_g"], **kwargs)
    assert again.reused == 4 and again.fitted == 0


def test_compare_uncertainty_cells_show_calibration(caches, tmp_path):
    out = tmp_path / "gauss"
    result = compare(caches, ["log_g"], heads=["ridge", "mlp_1_gauss"], layers=["enc_last"], pools=["seg_mean_K4"],
                     baselines=False, out=out, show_progress=False, recipe=TrainRecipe(max_epochs=6))
    table = result.table
    gauss, ridge = table[table["head"] == "mlp_1_gauss"].iloc[0], table[table["head"] == "ridge"].iloc[0]
    assert np.isfinite(gauss[["test_coverage_1sigma", "test_z_std", "test_nll", "val_nll"]].astype(float)).all()
    assert gauss["test_coverage_1sigma_lo"] <= gauss["test_coverage_1sigma"] <= gauss["test_coverage_1sigma_hi"]
    assert np.isnan(ridge["test_coverage_1sigma"])
    assert "Calibration of the uncertainty heads" in result.markdown
    (line,) = [x for x in result.markdown.splitlines() if x.startswith("| mlp_1_gauss |")]
    assert f"{gauss['test_coverage_1sigma']:.3f} [" in line
    cell = np.load(out / "cells" / f"{gauss['keys']}.npz")
    assert (cell["test_sigma"] > 0).all() and cell["test_sigma"].shape == cell["test_pred"].shape
    assert (out / "calibration_log_g.png").stat().st_size > 0
    assert "calibration_log_g.png" in (out / "report.md").read_text()
    assert (out / "heatmap_mlp_1_gauss_log_g.png").exists()

    # --jobs: the uncertainty cells train in worker processes and come back with their sigma
    jobs = compare(caches, ["log_g"], heads=["mlp_1_gauss"], layers=["enc_last"], baselines=False, out=tmp_path / "j",
                   show_progress=False, plots=False, recipe=TrainRecipe(max_epochs=6), jobs=2, seeds=2)
    assert jobs.fitted == 4 and np.isfinite(jobs.table["test_coverage_1sigma"]).all()
    for keys in jobs.table["keys"]:
        for key in keys.split(";"):
            assert (np.load(tmp_path / "j" / "cells" / f"{key}.npz")["test_sigma"] > 0).all()
