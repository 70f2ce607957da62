"""The astronomer's view of a comparison: per-population tables with paired differences, the curves, the
Kiel diagram, and `featcache report` re-drawing runs and comparisons without refitting."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featcache.reports.cells as cells_module
from featcache.reports.plots import kiel_figure

from ..helpers import run_cli


@pytest.fixture(scope="module")
def comparison(labelled_caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("populations") / "cmp"
    run_cli("compare", "--cache", f"pretrained={labelled_caches['pretrained']}", "--target", "log_g", "--head",
            "ridge", "--layer", "enc_last", "--layer", "input_flux", "-q", "--out", out)
    return out


def test_compare_has_a_per_population_section_with_paired_differences(comparison):
    markdown = (comparison / "compare.md").read_text()
    assert "## Per population" in markdown
    assert "where each cell's scatter lies (sigma_MAD of pred - true, dex)" in markdown
    assert "snr bin" in markdown and "log_g (dex) bin" in markdown
    assert "pretrained - raw input [95% CI]" in markdown  # the encoder's paired difference from the reference
    assert "raw input = ridge on input_flux/" in markdown
    summary = json.loads((comparison / "compare.json").read_text())
    data = summary["populations"]["log_g"]
    assert data["reference"] == "raw input"
    axes = {a["axis"]: a for a in data["axes"]}
    assert {"log_g", "snr"} <= set(axes)
    for axis in axes.values():
        curves = axis["curves"]
        assert len(curves) == 2 and sum(curves[0]["n"]) == 50  # the 50 test spectra, every bin counted
        (diffs,) = axis["differences"].values()
        for (d, lo, hi), a, b in zip(diffs, curves[0]["sigma_mad"], curves[1]["sigma_mad"], strict=True):
            assert d == pytest.approx(a - b) and lo <= hi
    assert {row["population"] for row in data["populations"]} == {"giants", "dwarfs"}
    for row in data["populations"]:
        if row["member"] == "pretrained":  # paired difference = the two members' sigma_MAD in that population
            ref = next(r for r in data["populations"] if r["member"] == "raw input"
                       and r["population"] == row["population"])
            assert row["difference"] == pytest.approx(row["sigma_mad"] - ref["sigma_mad"])
            assert row["difference_lo"] <= row["difference_hi"]
    report = (comparison / "report.md").read_text()
    assert "population_log_g_by_snr.png" in report and "population_log_g_kiel.png" in report
    assert (comparison / "population_log_g_kiel.png").stat().st_size > 0


def test_the_kiel_diagram_is_drawn_as_astronomers_draw_it():
    rng = np.random.default_rng(0)
    fig = kiel_figure(rng.uniform(3750, 6000, 200), rng.uniform(1, 5, 200), rng.normal(size=200))
    ax = fig.axes[0]
    assert ax.xaxis_inverted() and ax.yaxis_inverted()  # hot stars left, giants (low log g) up
    assert ax.get_xlabel() == "T_eff (K)" and ax.get_ylabel() == "log g (dex)"
    assert "median log_g residual (dex)" in fig.axes[1].get_ylabel()


def test_report_redraws_runs_and_comparisons_without_fitting(comparison, labelled_caches, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_cli("fit", "--cache", labelled_caches["pretrained"], "--layer", "enc_last", "--pool", "global_mean",
            "--target", "log_g", "--out", run, "-q")
    (run / "binned.csv").unlink()

    def no_fit(*args, **kwargs):
        raise AssertionError("featcache report fitted something")

    monkeypatch.setattr(cells_module, "fit_head", no_fit)
    result = run_cli("report", run, comparison)
    assert "files written" in result.output
    assert (run / "binned.csv").exists() and (run / "report_log_g_kiel.png").exists()
    report = (run / "report.md").read_text()
    assert "sigma_MAD" in report and "dex" in report and "report_best_log_g.png" in report
    assert (comparison / "report.md").exists()


def test_report_draws_cells_an_earlier_fit_code_version_made(comparison, labelled_caches, tmp_path, monkeypatch):
    """After an upgrade that changes the fits' numbers (FIT_CODE_VERSION), `featcache report` still draws a
    finished comparison from its cells and says they are older; compare refits them."""
    import shutil

    import featcache.heads.fit as fit_module

    copy = tmp_path / "cmp"
    shutil.copytree(comparison, copy)
    before = (copy / "compare.md").read_text()
    import featcache.common.progress as progress_module

    monkeypatch.setattr(fit_module, "FIT_CODE_VERSION", fit_module.FIT_CODE_VERSION + 1)
    monkeypatch.setattr(progress_module, "_quiet", False)  # an earlier -q in this process silenced status lines
    result = run_cli("report", copy)
    assert "made by an earlier featcache" in result.output
    assert (copy / "compare.md").read_text() == before
    run_cli("compare", "--cache", f"pretrained={labelled_caches['pretrained']}", "--target", "log_g", "--head",
            "ridge", "--layer", "enc_last", "--layer", "input_flux", "-q", "--out", copy)
    summary = json.loads((copy / "compare.json").read_text())
    assert summary["reused"] == 0 and summary["fitted"] > 0


def _members(snr):
    from featcache.reports.populations import Member

    rng = np.random.default_rng(3)
    truth = rng.uniform(1, 5, len(snr))
    labels = {"snr": np.asarray(snr, dtype=float), "T_eff": rng.uniform(4000, 6000, len(snr))}
    return [Member("enc", truth, truth + rng.normal(0, 0.3, len(snr)), labels, cell="mlp_1 on enc_3/K8"),
            Member("raw", truth, truth + rng.normal(0, 0.4, len(snr)), labels, cell="ridge on input_flux/none")]


def test_bins_with_too_few_spectra_are_named_not_drawn():
    from featcache.heads.binning import Binning
    from featcache.reports.populations import MIN_BIN_SPECTRA, section

    members = _members(np.linspace(2, 20, 200))
    binning = Binning.parse(["snr=0,3,19.99,50,100"])  # 3-19.99 holds most rows; 50-100 none; 19.99-50 one
    lines, data, results = section(members, "log_g", "raw", n_boot=50, binning=binning)
    text = "\n".join(lines)
    assert "nan" not in text
    assert f"too few spectra (0 < {MIN_BIN_SPECTRA})" in text and f"too few spectra (1 < {MIN_BIN_SPECTRA})" in text
    (snr,) = [r for r in results if r.axis == "snr"]
    for curve in snr.curves:  # flagged bins are gaps in the plots, never points a line runs through
        for n, value in zip(curve.n, curve.sigma_mad, strict=True):
            assert (n < MIN_BIN_SPECTRA) == (not np.isfinite(value))
    assert all(not np.isfinite(d) for d, _, _ in snr.differences["enc"][-2:])


def test_an_snr_axis_too_narrow_for_a_trend_is_named_not_binned(tmp_path):
    from featcache.reports.populations import draw, section

    lines, data, results = section(_members(np.linspace(2.6, 2.82, 200)), "log_g", "raw", n_boot=50)
    assert "snr" not in {r.axis for r in results} and "snr" in data["narrow_axes"]
    assert "S/N (snr) spans only 2.6-2.82" in "\n".join(lines)
    images = draw(results, _members(np.linspace(2.6, 2.82, 200)), "log_g", tmp_path, "pop",
                  title="log g residuals on 'test' (N = 200 spectra); bands: 95% bootstrap intervals")
    assert not any("by_snr" in p.name for _, p in images) and any("by_T_eff" in p.name for _, p in images)
    wide_lines, _, wide = section(_members(np.linspace(2, 20, 200)), "log_g", "raw", n_boot=50)
    assert "snr" in {r.axis for r in wide}


def test_plots_use_physical_names_and_units(tmp_path):
    from featcache.heads.binning import axis_label, display_scale
    from featcache.reports.plots import _with_gaps

    assert axis_label("M_H", "sigma_MAD") == "[M/H] sigma_MAD (dex)"
    assert axis_label("redshift") == "radial velocity (km/s)" and display_scale("redshift") == pytest.approx(299792.458)
    assert axis_label("T_eff") == "T_eff (K)" and axis_label("a_M") == "[alpha/M] (dex)"
    x, y = _with_gaps(np.array([0.0, 1.0, 3.0]), np.array([0.1, 0.2, 0.4]))  # block 2 was not measured
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0] and np.isnan(y[2]) and y[3] == 0.4
