"""`featcache demo --size quick`: the whole pipeline on the embedded default, as `make demo` runs it."""

from __future__ import annotations

import re

from ..helpers import run_cli


def test_quick_demo_fills_every_cell(quick_demo):
    out, result = quick_demo.out, quick_demo
    rows = [line for line in result.output.splitlines() if line.startswith("| demo encoder") or
            line.startswith("| raw input")]
    assert len(rows) == 10  # 3 layers (enc_3, enc_pre_latent, enc_last) x 3 poolings + the raw-flux baseline
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")][4:]
        assert len(cells) == 4  # ridge test [CI], ridge val, mlp_1 test [CI], mlp_1 val
        for cell in cells:
            assert re.fullmatch(r"-?\d\.\d{3}( \[-?\d\.\d{3}, -?\d\.\d{3}\])?", cell), cell
    assert "20 cells fitted, 0 reused" in result.output
    assert "**" in result.output and (out / "report.md").exists() and (out / "heatmap_ridge_log_g.png").exists()
    assert (out / "report.html").exists()
    again = run_cli("demo", "--size", "quick", "--out", out, "--data-dir", quick_demo.root / "data" / "synth", "-q")
    assert "0 cells fitted, 20 reused" in again.output
