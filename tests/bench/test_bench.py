"""`featcache bench --quick` runs every measurement end to end (no timing assertions: shared machines)."""

from __future__ import annotations

import json

from ..helpers import run_cli


def test_quick_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--quick", "--workdir", tmp_path / "work", "--out", out, "-q")
    figures = json.loads(out.read_text())
    for dtype in ("float32", "bfloat16"):
        assert figures["bare_encoder_spectra_per_s"][dtype] > 0
        extract = figures["extract"][dtype]
        assert extract["spectra_per_s"] > 0 and extract["ratio_to_bare_encoder"] > 0
        assert 0 < extract["peak_rss_mb"] < 8000
    memory = figures["memory_vs_n"]
    assert (memory["n_small"], memory["n_large"]) == (96, 192) and memory["peak_rss_mb_large"] > 0
    assert memory["ratio"] == memory["peak_rss_mb_large"] / memory["peak_rss_mb_small"]
    assert figures["sharded"]["speedup"] > 0
    assert figures["hdf5_read_mb_per_s"] > 0
    heads = figures["heads"]
    assert heads["ridge_s"] > 0 and heads["mlp_1_epochs_run"] == 2 and heads["ridge_n_alphas"] == 21
    assert "x bare" in result.output and "2 torchrun ranks vs 1 process" in result.output
    assert "peak RSS vs N" in result.output


def test_bench_with_one_non_default_dtype(tmp_path):
    """The extra-pooling cost is measured against whichever dtype is timed first (not always float32)."""
    from featcache.bench.run import BenchConfig, run_bench

    config = BenchConfig.quick(dtypes=("bfloat16",), shards=False, heads=False, memory_scale=0,
                               workdir=tmp_path / "work", out=None)
    figures = run_bench(config)
    assert set(figures["extract"]) >= {"bfloat16", "cost_of_second_layer_and_two_more_pools"}
    assert "float32" not in figures["extract"] and "memory_vs_n" not in figures
    again = run_bench(BenchConfig.quick(dtypes=("float32",), shards=False, heads=False, memory_scale=0,
                                        workdir=tmp_path / "work", out=None))  # same workdir, other dtype
    assert again["extract"]["float32"]["spectra_per_s"] > 0  # timed a full extraction, not a resumed no-op
