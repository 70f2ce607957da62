"""The bound section's findings: a fraction of the information above 100% is named as a biased estimator's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from featcache.reports.bounds import BoundInfo, sentences


def _totals(lo: float, eff: float, hi: float) -> dict:
    return {"efficiency": eff, "efficiency_lo": lo, "efficiency_hi": hi, "n": 8, "bound_rms": 0.7}


def test_a_fraction_above_one_is_called_biased_and_one_below_is_not():
    members = [SimpleNamespace(label="probe"), SimpleNamespace(label="fit")]
    totals = {"probe": _totals(0.29, 0.35, 0.43), "fit": _totals(1.31, 1.61, 2.02)}
    bound = BoundInfo(values=np.full(10, 0.7), source="exact", prior_sigma=1.15)
    lines = sentences("log_g", {}, totals, members, bound)
    probe = next(line for line in lines if line.startswith("- probe recovers"))
    fit = next(line for line in lines if line.startswith("- fit recovers"))
    assert "35% [29%, 43%]" in probe and "biased" not in probe
    assert "161% [131%, 202%]" in fit and "above 100%" in fit and "biased" in fit
    assert lines[-1].startswith("- 2 of 10 test stars have a log_g bound above the prior's spread")
