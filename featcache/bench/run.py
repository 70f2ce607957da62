"""`featcache bench`: throughput and memory of the pipeline, as ratios measured in one run.

Every figure is measured here, now, on this machine: `featcache extract` (the whole pipeline, default
options) against an independent minimal eager forward of the encoder at its best batch size; the lean
encoder against the original one; the fraction of the machine's matrix-multiply peak; the cost of extra
layers and poolings; the peak resident memory at N and k x N spectra; the 2-rank speed-up; the HDF5 read
bandwidth; and the heads' fit times against their references.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.device import resolve_device
from ..common.files import write_text
from ..common.progress import status
from .config import BenchConfig
from .extraction import extract_in_subprocess, extraction_figures, read_inputs_in_memory


def hdf5_read_rate(path: Path, block: int = 1024) -> float:
    """MB/s reading flux and error in row blocks (the input side of extraction)."""
    from ..spectra.pfsspec import PfsDataset

    total = 0
    start = time.perf_counter()
    with PfsDataset(path) as ds:
        for s in range(0, ds.n_rows, block):
            e = min(s + block, ds.n_rows)
            total += ds.read_raw("flux", s, e).nbytes + ds.read_raw("error", s, e).nbytes
    return total / 1e6 / (time.perf_counter() - start)


def memory_vs_n(config: BenchConfig, workdir: Path, small: Path, mask: Path) -> dict[str, Any]:
    """Peak RSS of whole extraction processes at n and k*n spectra (small encoder: the pipeline's own memory).

    Blocks stream through bounded queues, so the two should agree; their difference is what 100k spectra
    would add to the large encoder's figure."""
    from ..synth.generate import write_synth

    large = workdir / f"synth-{config.memory_scale * config.n_spectra}.h5"
    if not large.exists():
        write_synth(large, config.memory_scale * config.n_spectra, seed=1)
    peaks = {}
    for path in (small, large):
        options = {"data": [f"train={path}"], "out": str(workdir / f"mem-{path.stem}.zarr"), "random_init": True,
                   "arch": config.memory_arch, "layers": ["enc_pre_latent", "enc_last"],
                   "pools": ["global_mean", "mean_max", "seg_mean_K8"], "device": config.device, "mask": str(mask)}
        run = extract_in_subprocess(options)
        peaks[run["rows"]] = run["peak_rss_mb"]
    (n_small, rss_small), (n_large, rss_large) = sorted(peaks.items())
    return {"arch": config.memory_arch, "n_small": n_small, "peak_rss_mb_small": rss_small, "n_large": n_large,
            "peak_rss_mb_large": rss_large, "ratio": rss_large / rss_small}


def _inputs(config: BenchConfig, workdir: Path) -> tuple[Path, Path, Path, np.ndarray]:
    """The synthetic file, a random-init checkpoint of the architecture and the 0.85 quantile mask."""
    from ..model.checkpoint import random_encoder, save_checkpoint
    from ..model.config import EncoderConfig
    from ..spectra.mask import make_mask
    from ..spectra.pfsspec import PfsDataset
    from ..synth.generate import write_synth

    data = workdir / f"synth-{config.n_spectra}.h5"
    if not data.exists():
        status(f"bench: writing {config.n_spectra} synthetic spectra to {data}")
        write_synth(data, config.n_spectra, seed=1)
    ckpt = workdir / f"{config.arch}.ckpt"
    save_checkpoint(random_encoder(EncoderConfig.from_tag(config.arch), seed=0).model, ckpt)
    with PfsDataset(data) as ds:
        mask = make_mask("quantile:0.85", ds, 0, ds.n_rows)
    mask_path = workdir / "mask.npy"
    np.save(mask_path, mask)
    return data, ckpt, mask_path, mask


def _single_layer_cost(data: Path, ckpt: Path, mask: Path, workdir: Path, device: torch.device,
                       full_rate: float) -> float:
    """Time per spectrum of two taps x three poolings against one tap x one pooling, minus 1."""
    options = {"data": [f"train={data}"], "out": str(workdir / "x-one.zarr"), "ckpt": str(ckpt), "mask": str(mask),
               "device": str(device), "layers": ["enc_pre_latent"], "pools": ["seg_mean_K8"]}
    run = extract_in_subprocess(options)
    return run["rows"] / run["compute_seconds"] / full_rate - 1.0


def _sharded(data: Path, ckpt: Path, mask: Path, workdir: Path) -> dict[str, Any]:
    cli = ["--data", f"train={data}", "--ckpt", str(ckpt), "--mask", str(mask), "--quiet"]
    one = extract_in_subprocess({"out": str(workdir / "s1.zarr")}, launcher=[sys.executable],
                                cli=[*cli, "--out", str(workdir / "s1.zarr")])
    two = extract_in_subprocess({"out": str(workdir / "s2.zarr")}, cli=[*cli, "--out", str(workdir / "s2.zarr")],
                                launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc-per-node", "2"])
    return {"one_process_wall_s": one["wall_seconds"], "two_ranks_wall_s": two["wall_seconds"],
            "speedup": one["wall_seconds"] / two["wall_seconds"],
            "note": "wall times include process start and planning; 2 ranks share the cores"}


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure everything once and return (and write) the figures."""
    device = resolve_device(config.device)
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="featcache-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data, ckpt, mask_path, mask = _inputs(config, workdir)
    x = read_inputs_in_memory(data, mask, min(config.encoder_rows, config.n_spectra))
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": str(device), "loadavg": os.getloadavg()[0],
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "extract": {},
    }
    for dtype in config.dtypes:
        results["extract"][dtype] = extraction_figures(ckpt, data, mask_path, x, workdir, device, dtype,
                                                       config.batch_sizes, config.repeats)
    first = results["extract"][config.dtypes[0]]
    status("bench: one layer x one pooling")
    results["cost_of_second_layer_and_two_more_pools"] = _single_layer_cost(
        data, ckpt, mask_path, workdir, device, first["extract"]["spectra_per_s"])
    if config.memory_scale > 1:
        status(f"bench: peak memory at {config.n_spectra} vs {config.memory_scale * config.n_spectra} spectra")
        results["memory_vs_n"] = memory_vs_n(config, workdir, data, mask_path)
    results["hdf5_read_mb_per_s"] = hdf5_read_rate(data)
    if config.shards:
        status("bench: 1 process vs 2 torchrun ranks")
        results["sharded"] = _sharded(data, ckpt, mask_path, workdir)
    if config.heads:
        status("bench: heads")
        from .heads import run_heads_benchmark

        results["heads"] = run_heads_benchmark(n=config.heads_rows, d=config.heads_dim, epochs=config.heads_epochs)
        status("bench: 12 mlp_1 fits one by one vs one batched pass")
        from .heads import run_batched_benchmark

        small = config.heads_dim < 128  # the quick configuration: small widths
        results["heads_batched"] = run_batched_benchmark(
            n=config.heads_rows, dims=(8, 12, 16, 24) if small else (128, 192, 256, 384),
            epochs=min(3, config.heads_epochs))
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(config.out, json.dumps(results, indent=2, default=float) + "\n")
    return results


def format_bench(results: dict[str, Any]) -> str:
    """The human summary `featcache bench` prints."""
    machine, config = results["machine"], results["config"]
    lines = [f"featcache bench on {machine['device']} ({machine['cpus']} cpus, torch {machine['torch']}, load "
             f"{machine['loadavg']:.1f}), arch {config['arch']}, {config['n_spectra']} spectra, best of "
             f"{config['repeats']} rounds"]
    for dtype, fig in results["extract"].items():
        ref, orig, lean, ex = fig["reference_best"], fig["original_best"], fig["lean_best"], fig["extract"]
        lines += [f"  {dtype}: minimal eager forward {ref['spectra_per_s']:.1f} spectra/s (best batch "
                  f"{ref['batch_size']}); original encoder {orig['spectra_per_s']:.1f} (batch {orig['batch_size']}); "
                  f"{lean['variant']} {lean['spectra_per_s']:.1f} (batch {lean['batch_size']}) = "
                  f"{fig['ratio_lean_to_original']:.2f} x original",
                  f"  {dtype}: featcache extract (defaults, whole pipeline) {ex['spectra_per_s']:.1f} spectra/s = "
                  f"{fig['ratio_extract_to_reference']:.2f} x the minimal forward | peak RSS "
                  f"{ex['peak_rss_mb']:.0f} MB",
                  f"  {dtype}: {fig['flops_per_spectrum'] / 1e9:.2f} GFLOP per spectrum (direct convolutions); the "
                  f"minimal forward reaches {100 * fig['fraction_of_peak']['reference']:.0f}% of the "
                  f"{fig['matmul_peak_gflops']:.0f} GFLOP/s matmul peak, extract "
                  f"{100 * fig['fraction_of_peak']['extract_direct_equivalent']:.0f}% (direct-convolution "
                  "equivalent)"]
    cost = 100 * results["cost_of_second_layer_and_two_more_pools"]
    lines.append(f"  a second layer + 2 more poolings add {cost:+.1f}% to the time per spectrum")
    if "memory_vs_n" in results:
        mem = results["memory_vs_n"]
        lines.append(f"  peak RSS vs N ({mem['arch']}): {mem['n_small']} spectra {mem['peak_rss_mb_small']:.0f} MB, "
                     f"{mem['n_large']} spectra {mem['peak_rss_mb_large']:.0f} MB ({mem['ratio']:.2f} x)")
    lines.append(f"  HDF5 read {results['hdf5_read_mb_per_s']:.0f} MB/s")
    if "sharded" in results:
        sh = results["sharded"]
        lines.append(f"  2 torchrun ranks vs 1 process: {sh['speedup']:.2f} x ({sh['one_process_wall_s']:.1f} s -> "
                     f"{sh['two_ranks_wall_s']:.1f} s)")
    if "heads" in results:
        scalars = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results["heads"].items()
                   if not isinstance(v, (dict, list))}
        lines.append("  heads: " + json.dumps(scalars))
    if "heads_batched" in results:
        hb = results["heads_batched"]
        lines.append(f"  {hb['fits']} mlp_1 fits ({hb['seeds']} seeds x widths {hb['dims']}, {hb['n_train']} rows, "
                     f"{hb['epochs']} epochs): one by one {hb['one_by_one_s']:.1f} s, batched {hb['batched_s']:.1f} s "
                     f"({hb['batched_speedup']:.2f} x), predictions equal to {hb['max_rel_prediction_difference']:.1e}")
    return "\n".join(lines)
