"""`featcache demo --size quick`: the whole pipeline on the embedded default, as `make demo` runs it."""

from __future__ import annotations

import contextlib
import re

from ..helpers import run_cli


def test_quick_demo_fills_every_cell(quick_demo):
    out, result = quick_demo.out, quick_demo
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
    assert "20 cells fitted, 0 reused" in result.output
    assert "**" in result.output and (out / "report.md").exists() and (out / "heatmap_ridge_log_g.png").exists()
    assert (out / "report.html").exists()
    with contextlib.chdir(quick_demo.root):  # the cache names its spectra as the first run gave them
        again = run_cli("demo", "--size", "quick", "-q")
    assert "0 cells fitted, 20 reused" in again.output


def test_report_html_is_one_self_contained_file_with_a_header(quick_demo):
    page = (quick_demo.out / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]*)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)  # every figure inlined
    assert "featcache demo --size quick" in page and "featcache" in page and "UTC" in page  # command, date
    assert "train 400, val 150, test 150 spectra" in page  # data sizes
    assert "<table>" in page and "nan [nan" not in page
