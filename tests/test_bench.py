"""`featcache bench --quick` runs every measurement end to end (no timing assertions: shared machines)."""

from __future__ import annotations

import json

from .conftest import run_cli


def test_quick_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--quick", "--workdir", tmp_path / "work", "--out", out, "-q")
    figures = json.loads(out.read_text())
    for dtype in ("float32", "bfloat16"):
        assert figures["bare_encoder_spectra_per_s"][dtype] > 0
        extract = figures["extract"][dtype]
        assert extract["spectra_per_s"] > 0 and extract["ratio_to_bare_encoder"] > 0
        assert 0 < extract["peak_rss_mb"] < 8000
    assert figures["sharded"]["speedup"] > 0
    assert figures["hdf5_read_mb_per_s"] > 0
    heads = figures["heads"]
    assert heads["ridge_s"] > 0 and heads["mlp_1_epochs_run"] == 2 and heads["ridge_n_alphas"] == 21
    assert "x bare" in result.output and "2 torchrun ranks vs 1 process" in result.output
