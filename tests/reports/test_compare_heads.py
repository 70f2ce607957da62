"""compare with the heads of issue 17: knn cells (one fit whatever --seeds, chosen k in the table, reused on a
re-run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featcache.reports.cells as cells_module
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
