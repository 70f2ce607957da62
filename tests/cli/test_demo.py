"""`featcache demo --size quick`: the whole pipeline on the embedded default, as `make demo` runs it."""

from __future__ import annotations

import re

from ..helpers import run_cli


def test_quick_demo_fills_every_cell(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--size", "quick", "--out", out, "--data-dir", tmp_path / "data", "-q")
    rows = [line for line in result.output.splitlines() if line.startswith("| demo encoder") or
            line.startswith("| raw input")]
    assert len(rows) == 10  # 3 layers (enc_3, enc_pre_latent, enc_last) x 3 poolings + the raw-flux baseline
    number = r"-?\d\.\d{3}( \[-?\d\.\d{3}, -?\d\.\d{3}\])?"
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")][4:]
        assert len(cells) == 6  # ridge test [CI], ridge val, mlp_1 test [CI], mlp_1 val, the Cannon's two
        for cell in cells[:4]:
            assert re.fullmatch(number, cell), cell
        assert cells[4:] == ["—", "—"]
    baseline = [line for line in result.output.splitlines() if line.startswith("| full-spectrum fit")]
    assert len(baseline) == 1  # the Cannon fit, a row of its own
    cells = [c.strip().strip("*") for c in baseline[0].strip("|").split("|")][4:]
    assert cells[:4] == ["—"] * 4 and all(re.fullmatch(number, cell) for cell in cells[4:]), cells
    assert "of the log_g information the test spectra hold" in result.output  # the information bound
    from featcache.synth.physics import GENERATOR_VERSION

    assert f"written by featcache.synth v{GENERATOR_VERSION}" in result.output  # which synthetic world
    assert "**" in result.output and (out / "report.md").exists() and (out / "heatmap_ridge_log_g.png").exists()
    again = run_cli("demo", "--size", "quick", "--out", out, "--data-dir", tmp_path / "data", "-q")
    assert "0 cells fitted, 20 reused" in again.output
