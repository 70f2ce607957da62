"""Residuals in bins of S/N and of the labels: the statistics of stellar-parameter work, checked by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from featcache.heads.binning import Binning, assign_bins, binned_table, paired_bin_differences, quantile_edges
from featcache.heads.metrics import sigma_mad

from ..helpers import assert_cli_error, run_cli


def test_bins_of_a_hand_built_case():
    """Residuals set bin by bin: the table gives back the bias, RMSE and sigma_MAD put in."""
    truth = np.repeat([1.0, 2.0, 3.0, 4.0], 50)          # four log_g bins of 50 stars
    residual = np.tile(np.linspace(-1, 1, 50), 4) * np.repeat([0.1, 0.2, 0.3, 0.4], 50) + np.repeat(
        [0.0, 0.05, -0.05, 0.1], 50)
    labels = {"log_g": truth, "snr": np.tile(np.arange(50.0), 4)}
    rows = binned_table({"log_g": truth}, {"log_g": truth + residual}, labels,
                        Binning({"log_g": (0.5, 1.5, 2.5, 3.5, 4.5)}))
    by_logg = [r for r in rows if r["by"] == "log_g" and r["population"] == "all"]
    assert [r["n"] for r in by_logg] == [50, 50, 50, 50]
    for k, r in enumerate(by_logg):
        part = residual[k * 50:(k + 1) * 50]
        assert r["bias"] == pytest.approx(part.mean(), abs=1e-12)
        assert r["rmse"] == pytest.approx(np.sqrt(np.mean(part ** 2)), abs=1e-12)
        assert r["sigma_mad"] == pytest.approx(1.4826 * np.median(np.abs(part - np.median(part))), abs=1e-12)
        assert r["unit"] == "dex" and (r["lo"], r["hi"]) == (0.5 + k, 1.5 + k)
    # giants (log_g < 3.5) are the first three bins; dwarfs the last
    giants = [r["n"] for r in rows if r["by"] == "log_g" and r["population"] == "giants"]
    assert giants == [50, 50, 50, 0]
    # the S/N axis uses quantile edges: equal counts of at least 50, and the bins partition the rows
    snr = [r for r in rows if r["by"] == "snr" and r["population"] == "all"]
    assert sum(r["n"] for r in snr) == 200 and len(snr) == 3 and min(r["n"] for r in snr) >= 50  # ties: 4 x 48 < 50


def test_edges_and_assignment_partition_every_row():
    values = np.random.default_rng(0).normal(size=1003)
    edges = quantile_edges(values, min_count=50, max_bins=8)
    bins = assign_bins(values, edges)
    assert len(edges) == 9 and (bins >= 0).all() and np.bincount(bins).sum() == 1003
    assert bins[np.argmax(values)] == 7 and bins[np.argmin(values)] == 0  # both ends inside
    assert len(quantile_edges(values[:120], min_count=50)) == 3  # 2 bins of >= 50


def test_paired_bin_difference_against_a_second_code_path():
    """The vectorised paired bootstrap equals a plain loop over the same resamples."""
    rng = np.random.default_rng(1)
    n = 300
    y = rng.uniform(1, 5, n)
    by = rng.uniform(2, 20, n)
    a = y + rng.normal(scale=0.3, size=n)
    b = y + rng.normal(scale=0.3, size=n) * (1 + 1.0 / by)
    edges = np.array([2.0, 6.0, 12.0, 20.0])
    got = paired_bin_differences(y, a, b, by, edges, n_boot=200, seed=5)
    # the second path: draw the same indices with the same generator, loop in plain Python
    gen = np.random.default_rng(5)
    idx = gen.integers(0, n, size=(200, n))
    bins = np.digitize(by, edges[1:-1])
    for k, diff in enumerate(got):
        draws = []
        for rows in idx:
            chosen = rows[bins[rows] == k]
            draws.append(sigma_mad(a[chosen] - y[chosen]) - sigma_mad(b[chosen] - y[chosen]))
        lo, hi = np.percentile(draws, [2.5, 97.5])
        assert (diff.ci_lo, diff.ci_hi) == pytest.approx((lo, hi), abs=1e-12)
        keep = bins == k
        assert diff.difference == pytest.approx(sigma_mad(a[keep] - y[keep]) - sigma_mad(b[keep] - y[keep]))
        assert diff.n == keep.sum()


def test_fit_run_metrics_and_binned_csv_match_a_hand_computation(labelled_caches, tmp_path):
    out = tmp_path / "run"
    run_cli("fit", "--cache", labelled_caches["pretrained"], "--layer", "enc_last", "--pool", "seg_mean_K4",
            "--target", "log_g", "--out", out, "-q")
    metrics = json.loads((out / "metrics.json").read_text())
    preds = np.load(out / "predictions.npz")
    r = preds["test_pred"][:, 0] - preds["test_true"][:, 0]
    test = metrics["splits"]["test"]["targets"]["log_g"]
    median = np.median(r)
    mad = 1.4826 * np.median(np.abs(r - median))
    assert test["sigma_mad"] == pytest.approx(mad, abs=1e-9)
    assert test["bias"] == pytest.approx(r.mean(), abs=1e-9)
    assert test["outlier_fraction"] == pytest.approx(np.mean(np.abs(r - median) > 3 * mad), abs=1e-9)
    assert test["rmse_ci95"][0] <= test["rmse"] <= test["rmse_ci95"][1]
    assert test["sigma_mad_ci95"][0] <= test["sigma_mad"] <= test["sigma_mad_ci95"][1]
    binned = pd.read_csv(out / "binned.csv")
    assert {"by", "lo", "hi", "n", "bias", "rmse", "sigma_mad", "population"} <= set(binned.columns)
    for (pop, axis), group in binned.groupby(["population", "by"]):
        expected = {"all": len(r), "giants": int((preds["test_label_log_g"] < 3.5).sum()),
                    "dwarfs": int((preds["test_label_log_g"] >= 3.5).sum())}[pop]
        assert group["n"].sum() == expected, (pop, axis)
    assert set(binned["by"]) >= {"log_g", "T_eff"}


def test_given_edges_that_miss_rows_keep_them_in_an_outside_row():
    truth = np.linspace(1.0, 5.0, 120)
    rows = binned_table({"log_g": truth}, {"log_g": truth + 0.1}, {"log_g": truth},
                        Binning({"log_g": (2.0, 3.0, 4.0)}, giant_logg=2.5))
    by_all = [r for r in rows if r["population"] == "all"]
    assert [r["bin"] for r in by_all] == [0, 1, -1]
    assert sum(r["n"] for r in by_all) == 120 and by_all[2]["n"] == int(((truth < 2) | (truth > 4)).sum())
    assert sum(r["n"] for r in rows if r["population"] == "giants") == int((truth < 2.5).sum())


@pytest.mark.parametrize(("args", "fragment"), [
    (["--bins", "snr"], "expected AXIS=E1,E2"),
    (["--bins", "snr=3,1"], "strictly increasing"),
    (["--bins", "snr=1,x"], "numbers separated by commas"),
    (["--bins", "snr=1,2", "--bins", "snr=3,4"], "already given"),
    (["--bins", "sn=1,2,3"], "no label 'sn'"),
    (["--giant-logg", "nan"], "--giant-logg nan"),
])
def test_bad_bins_are_one_line_and_write_nothing(labelled_caches, tmp_path, args, fragment):
    out = tmp_path / "run"
    result = run_cli("fit", "--cache", labelled_caches["pretrained"], "--layer", "enc_last", "--pool",
                     "global_mean", "--target", "log_g", "--out", out, *args, check=False)
    assert_cli_error(result, fragment)
    assert not out.exists()


def test_given_bins_reach_binned_csv_and_report_rebins_without_fitting(labelled_caches, tmp_path):
    out = tmp_path / "run"
    run_cli("fit", "--cache", labelled_caches["pretrained"], "--layer", "enc_last", "--pool", "global_mean",
            "--target", "log_g", "--out", out, "--bins", "log_g=0,2,3.5,6", "--giant-logg", "3", "-q")
    binned = pd.read_csv(out / "binned.csv")
    logg = binned[(binned["by"] == "log_g") & (binned["population"] == "all")]
    assert logg["lo"].tolist() == [0, 2, 3.5] and logg["hi"].tolist() == [2, 3.5, 6]
    truth = np.load(out / "predictions.npz")["test_label_log_g"]
    assert binned[(binned["by"] == "log_g") & (binned["population"] == "giants")]["n"].sum() == (truth < 3).sum()
    before = (out / "metrics.json").read_bytes()
    run_cli("report", out, "--bins", "log_g=0,3,6")
    logg = pd.read_csv(out / "binned.csv").query("by == 'log_g' and population == 'all'")
    assert logg["hi"].tolist() == [3, 6] and (out / "metrics.json").read_bytes() == before
    assert_cli_error(run_cli("report", out, "--bins", "teff=1,2", check=False), "no label 'teff'")


def _bootstrap_bins_loop(residuals, bins, n_bins, n_boot, seed):
    """The statistic resample by resample, bin by bin, name by name with np.median (the vectorised one's
    reference)."""
    from featcache.heads.metrics import resamples, sigma_mad

    out = {k: {"sigma_mad": np.full((n_boot, n_bins), np.nan), "bias": np.full((n_boot, n_bins), np.nan)}
           for k in residuals}
    for start, _, idx in resamples(len(bins), n_boot, seed):
        for j, rows in enumerate(idx):
            for k in range(n_bins):
                chosen = rows[bins[rows] == k]
                for name, r in residuals.items():
                    if chosen.size:
                        out[name]["sigma_mad"][start + j, k] = sigma_mad(r[chosen])
                        out[name]["bias"][start + j, k] = r[chosen].mean()
    return out


def test_bootstrap_bins_equals_the_per_resample_medians():
    from featcache.heads.binning import bootstrap_bins

    rng = np.random.default_rng(4)
    n = 301
    residuals = {"a": rng.standard_t(3, n), "b": rng.normal(size=n), "c": np.round(rng.normal(size=n), 1)}
    # a bin of 3 rows (often empty in a resample), an empty bin, ties in "c", even and odd bin sizes
    bins = np.where(rng.random(n) < 0.01, 3, rng.integers(0, 3, n))
    bins[:3] = 3
    fast = bootstrap_bins(residuals, bins, 5, n_boot=300, seed=2)
    slow = _bootstrap_bins_loop(residuals, bins, 5, 300, 2)
    for name in residuals:
        np.testing.assert_array_equal(fast[name]["sigma_mad"], slow[name]["sigma_mad"])  # the same medians
        np.testing.assert_allclose(fast[name]["bias"], slow[name]["bias"], rtol=1e-12, atol=1e-15)
        assert np.isnan(fast[name]["sigma_mad"][:, 4]).all()  # bin 4 has no rows
        assert np.isnan(fast[name]["sigma_mad"][:, 3]).any() and np.isfinite(fast[name]["sigma_mad"][:, 3]).any()
