"""`featcache bench --quick` runs every measurement end to end (no timing assertions: shared machines)."""

from __future__ import annotations

import json

import torch

from ..helpers import CKPT, run_cli


def test_quick_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--quick", "--workdir", tmp_path / "work", "--out", out, "-q")
    figures = json.loads(out.read_text())
    for dtype in ("float32", "bfloat16"):
        fig = figures["extract"][dtype]
        assert set(fig["rates"]) >= {"reference", "original", "lean_direct"}
        assert all(rate > 0 for per in fig["rates"].values() for rate in per.values())
        assert fig["extract"]["spectra_per_s"] > 0 and fig["ratio_extract_to_reference"] > 0
        assert fig["reference_best"]["spectra_per_s"] == max(fig["rates"]["reference"].values())
        assert 0 < fig["extract"]["peak_rss_mb"] < 8000 and fig["matmul_peak_gflops"] > 0
        # l4e8k5 at 96 x 3481 kept pixels: the direct convolutions' operations counted from the architecture
        assert fig["flops_per_spectrum"] == 2 * (2 * 8 * 5 * 3481 + 8 * 8 * 5 * (3481 + 1740 + 870 + 435))
    assert "lean_auto" in figures["extract"]["float32"]["rates"]  # FFT convolutions are float32 only
    memory = figures["memory_vs_n"]
    assert (memory["n_small"], memory["n_large"]) == (96, 192) and memory["peak_rss_mb_large"] > 0
    assert memory["ratio"] == memory["peak_rss_mb_large"] / memory["peak_rss_mb_small"]
    assert figures["sharded"]["speedup"] > 0
    assert figures["hdf5_read_mb_per_s"] > 0
    heads = figures["heads"]
    assert heads["ridge_s"] > 0 and heads["mlp_1_epochs_run"] == 2 and heads["ridge_n_alphas"] == 21
    batched = figures["heads_batched"]
    assert batched["fits"] == 12 and batched["batched_s"] > 0 and batched["max_rel_prediction_difference"] < 1e-4
    assert "mlp_1 fits (3 seeds" in result.output
    assert "x the minimal forward" in result.output and "2 torchrun ranks vs 1 process" in result.output
    assert "peak RSS vs N" in result.output


def test_the_minimal_forward_is_the_model_it_times():
    """The reference is written from the spec, apart from featcache.model: it must compute the same taps."""
    from featcache.bench.reference import MinimalEncoder
    from featcache.model.checkpoint import load_encoder

    loaded = load_encoder(CKPT)
    reference = MinimalEncoder(loaded.model.state_dict())
    x = torch.rand(3, 2, 700, generator=torch.Generator().manual_seed(0))  # not the suite's global RNG state
    with torch.inference_mode():
        pre, last = reference(x)
        ours = loaded.model.encode(x, ["enc_pre_latent", "enc_last"])
    # float32 sums in another order: up to 1.8e-6 over 200 random inputs; a wrong tap is off by O(0.1)
    assert torch.allclose(pre, ours["enc_pre_latent"], atol=1e-5)
    assert torch.allclose(last, ours["enc_last"], atol=1e-5)
