"""`featcache bench`: throughput and memory of the pipeline, as ratios measured in one run.

Every figure is measured here, now, on this machine: the bare encoder forward on in-memory tensors
(the reference the extraction is compared with), the extraction pipeline on a synthetic file, the cost of
extra layers and poolings, the peak resident memory of an extraction process, the 2-rank speed-up, the
HDF5 read bandwidth, and the heads' fit times against their references.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..common.device import resolve_device
from ..common.files import write_text
from ..common.progress import status


@dataclass
class BenchConfig:
    arch: str = "l9e48k25s1bn1d1"
    n_spectra: int = 2048
    batch_size: int = 256
    device: str = "auto"
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    heads_rows: int = 100_000
    heads_dim: int = 384
    heads_epochs: int = 50
    shards: bool = True
    memory_arch: str = "l4e8k5s1bn1d1"  # small encoder for the N-scaling of the pipeline's own memory
    memory_scale: int = 16  # peak RSS extracting n and memory_scale * n spectra
    heads: bool = True
    workdir: Path | None = None
    out: Path | None = Path("reports/bench.json")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """Tiny sizes for the test suite: exercises every measurement, times nothing meaningful."""
        base = dict(arch="l4e8k5s1bn1d1", n_spectra=96, batch_size=32, heads_rows=600, heads_dim=16,
                    heads_epochs=2, memory_scale=2)
        base.update(overrides)
        return cls(**base)


def _autocast(device: torch.device, dtype: str):
    import contextlib

    from ..extraction.run import AUTOCAST

    target = AUTOCAST[dtype]
    return contextlib.nullcontext() if target is None else torch.autocast(device_type=device.type, dtype=target)


def bare_encoder_rate(arch: str, n_pixels: int, batch_size: int, n_spectra: int, device: torch.device,
                      dtype: str = "float32", taps: tuple[str, ...] = ("enc_pre_latent", "enc_last")) -> float:
    """Spectra/s of model.encode alone on tensors already in memory (no reading, noise, pooling or writing)."""
    from ..model.checkpoint import random_encoder
    from ..model.config import EncoderConfig

    model = random_encoder(EncoderConfig.from_tag(arch), seed=0, device=device).model
    x = torch.randn(batch_size, model.config.in_channels, n_pixels, device=device)
    n_batches = max(1, n_spectra // batch_size)
    with torch.inference_mode(), _autocast(device, dtype):
        model.encode(x, list(taps))  # warm-up (allocator, oneDNN primitive cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n_batches):
            model.encode(x, list(taps))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n_batches * batch_size / (time.perf_counter() - start)


_EXTRACT_SNIPPET = """
import json, resource, sys
from pathlib import Path
from featcache.extraction.options import ExtractOptions
from featcache.extraction.run import run_extract
options = ExtractOptions(**json.loads(sys.argv[1]))
options.out = Path(options.out)
report = run_extract(options)
print(json.dumps({"rows": report.rows_done, "compute_seconds": report.compute_seconds, "seconds": report.seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def extract_in_subprocess(options: dict[str, Any], launcher: list[str] | None = None) -> dict[str, Any]:
    """Run one extraction in a fresh process; its rates plus (API runs) that process's own peak resident memory."""
    out = Path(options["api"]["out"])
    for stale in [out, *out.parent.glob(f"{out.name}.*")]:  # a --workdir reused: time a full extraction
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    env = {**os.environ, "FEATCACHE_QUIET": "1"}
    if launcher:
        command = [*launcher, "-m", "featcache", "extract", *options["cli"]]
    else:
        command = [sys.executable, "-c", _EXTRACT_SNIPPET, json.dumps(options["api"])]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark extraction failed:\n{stderr[-2000:]}")
    result: dict[str, Any] = {"wall_seconds": wall}
    if not launcher:
        result.update(json.loads(stdout.strip().splitlines()[-1]))
    return result


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


def memory_vs_n(config: BenchConfig, workdir: Path, small: Path) -> dict[str, Any]:
    """Peak RSS of whole extraction processes at n and k*n spectra (small encoder: the pipeline's own memory).

    Blocks stream through bounded queues, so the two should agree; their difference is what 100k spectra
    would add to the large encoder's figure."""
    from ..synth.generate import write_synth

    large = workdir / f"synth-{config.memory_scale * config.n_spectra}.h5"
    if not large.exists():
        write_synth(large, config.memory_scale * config.n_spectra, seed=1)
    peaks = {}
    for path in (small, large):
        api = {"data": [f"train={path}"], "out": str(workdir / f"mem-{path.stem}.zarr"), "random_init": True,
               "arch": config.memory_arch, "layers": ["enc_pre_latent", "enc_last"],
               "pools": ["global_mean", "mean_max", "seg_mean_K8"], "batch_size": config.batch_size,
               "device": config.device, "mask": "quantile:0.85"}
        run = extract_in_subprocess({"api": api, "cli": []})
        peaks[run["rows"]] = run["peak_rss_mb"]
    (n_small, rss_small), (n_large, rss_large) = sorted(peaks.items())
    return {"arch": config.memory_arch, "n_small": n_small, "peak_rss_mb_small": rss_small, "n_large": n_large,
            "peak_rss_mb_large": rss_large, "ratio": rss_large / rss_small}


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure everything once and return (and write) the figures."""
    from ..synth.generate import write_synth

    device = resolve_device(config.device)
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="featcache-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"synth-{config.n_spectra}.h5"
    if not data.exists():
        status(f"bench: writing {config.n_spectra} synthetic spectra to {data}")
        write_synth(data, config.n_spectra, seed=1)
    n_kept = 3481
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    }
    status("bench: bare encoder")
    results["bare_encoder_spectra_per_s"] = {
        dtype: bare_encoder_rate(config.arch, n_kept, config.batch_size, config.n_spectra, device, dtype)
        for dtype in config.dtypes}

    def extract_options(out: Path, layers: list[str], pools: list[str], dtype: str = "float32") -> dict[str, Any]:
        api = {"data": [f"train={data}"], "out": str(out), "random_init": True, "arch": config.arch, "layers": layers,
               "pools": pools, "batch_size": config.batch_size, "device": str(device), "dtype": dtype,
               "mask": "quantile:0.85"}
        cli = ["--data", f"train={data}", "--out", str(out), "--random-init", "--arch", config.arch,
               *sum((["--layer", layer] for layer in layers), []), "--pool", ",".join(pools),
               "--batch-size", str(config.batch_size), "--dtype", dtype, "--quiet"]
        return {"api": api, "cli": cli}

    one, full = (["enc_pre_latent"], ["seg_mean_K8"]), (["enc_pre_latent", "enc_last"],
                                                          ["global_mean", "mean_max", "seg_mean_K8"])
    extract: dict[str, Any] = {}
    for dtype in config.dtypes:
        status(f"bench: extract ({dtype})")
        run = extract_in_subprocess(extract_options(workdir / f"x-{dtype}.zarr", *full, dtype=dtype))
        rate = run["rows"] / run["compute_seconds"]
        extract[dtype] = {"spectra_per_s": rate, "end_to_end_spectra_per_s": run["rows"] / run["seconds"],
                          "ratio_to_bare_encoder": rate / results["bare_encoder_spectra_per_s"][dtype],
                          "peak_rss_mb": run["peak_rss_mb"]}
    first = config.dtypes[0]
    status(f"bench: one layer x one pooling ({first})")
    single = extract_in_subprocess(extract_options(workdir / "x-one.zarr", *one, dtype=first))
    single_rate = single["rows"] / single["compute_seconds"]
    extract["one_layer_one_pool_spectra_per_s"] = single_rate
    extract["cost_of_second_layer_and_two_more_pools"] = single_rate / extract[first]["spectra_per_s"] - 1.0
    results["extract"] = extract
    if config.memory_scale > 1:
        status(f"bench: peak memory at {config.n_spectra} vs {config.memory_scale * config.n_spectra} spectra")
        results["memory_vs_n"] = memory_vs_n(config, workdir, data)
    results["hdf5_read_mb_per_s"] = hdf5_read_rate(data)
    if config.shards:
        status("bench: 1 process vs 2 torchrun ranks")
        t1 = extract_in_subprocess(extract_options(workdir / "s1.zarr", *full), launcher=[sys.executable])
        t2 = extract_in_subprocess(extract_options(workdir / "s2.zarr", *full), launcher=[
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
        results["sharded"] = {"one_process_wall_s": t1["wall_seconds"], "two_ranks_wall_s": t2["wall_seconds"],
                              "speedup": t1["wall_seconds"] / t2["wall_seconds"],
                              "note": "wall times include process start and planning; 2 ranks share the cores"}
    if config.heads:
        status("bench: heads")
        from .heads import run_heads_benchmark

        results["heads"] = run_heads_benchmark(n=config.heads_rows, d=config.heads_dim, epochs=config.heads_epochs)
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(config.out, json.dumps(results, indent=2, default=float) + "\n")
    return results


def format_bench(results: dict[str, Any]) -> str:
    """The human summary `featcache bench` prints."""
    lines = [f"featcache bench on {results['machine']['device']} ({results['machine']['cpus']} cpus, "
             f"torch {results['machine']['torch']}), arch {results['config']['arch']}, "
             f"{results['config']['n_spectra']} spectra, batch {results['config']['batch_size']}"]
    for dtype, rate in results["bare_encoder_spectra_per_s"].items():
        ex = results["extract"][dtype]
        lines.append(f"  {dtype:<9} bare encoder {rate:8.1f} spectra/s | extract {ex['spectra_per_s']:8.1f} "
                     f"spectra/s = {ex['ratio_to_bare_encoder']:.2f} x bare | peak RSS {ex['peak_rss_mb']:.0f} MB")
    cost = 100 * results["extract"]["cost_of_second_layer_and_two_more_pools"]
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
    return "\n".join(lines)
