"""Extraction speed, measured in one run as ratios against the independent minimal forward (reference.py).

Every encoder variant runs over the same in-memory spectra (noise drawn, mask applied) at each batch size,
interleaved over `repeats` rounds, and the best rate of each is kept (timeit's rule: on a shared machine the
fastest run is the least disturbed one). `featcache extract` itself runs in a fresh process over the same
file, checkpoint and mask, with its default options, `repeats` times, best kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.progress import status

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so a
# child of a large benchmark process would report the parent's peak
_EXTRACT_SNIPPET = """
import json, sys
from featcache.extraction.options import ExtractOptions
from featcache.extraction.run import run_extract
report = run_extract(ExtractOptions(**json.loads(sys.argv[1])))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": report.rows_done, "compute_seconds": report.compute_seconds, "seconds": report.seconds,
                  "peak_rss_mb": hwm / 1024}))
"""


def clear_outputs(out: Path) -> None:
    """Remove a cache and the files beside it (locks), so a reused workdir times a full extraction."""
    for stale in [out, *out.parent.glob(f"{out.name}.*")]:
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)


def extract_in_subprocess(options: dict[str, Any], launcher: list[str] | None = None,
                          cli: list[str] | None = None) -> dict[str, Any]:
    """One extraction in a fresh process: its rates and (API runs) that process's own peak resident memory."""
    clear_outputs(Path(options["out"]))
    env = {**os.environ, "FEATCACHE_QUIET": "1"}
    if launcher:
        command = [*launcher, "-m", "featcache", "extract", *(cli or [])]
    else:
        command = [sys.executable, "-c", _EXTRACT_SNIPPET, json.dumps(options)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark extraction failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = {"wall_seconds": wall}
    if not launcher:
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


def _autocast(device: torch.device, dtype: str) -> Any:
    import contextlib

    from ..extraction.run import AUTOCAST

    target = AUTOCAST[dtype]
    return contextlib.nullcontext() if target is None else torch.autocast(device_type=device.type, dtype=target)


def encoder_rates(ckpt: Path, x: torch.Tensor, batch_sizes: tuple[int, ...], device: torch.device, dtype: str,
                  repeats: int) -> dict[str, dict[int, float]]:
    """Spectra/s of the reference, the original encoder and the lean one (direct, auto) per batch size."""
    from ..model.checkpoint import load_encoder
    from ..model.lean import LeanEncoder
    from .reference import MinimalEncoder, spectra_per_second

    loaded = load_encoder(ckpt, device=device)
    state = {k: v for k, v in loaded.model.state_dict().items() if k.startswith("encoders.")}
    reference = MinimalEncoder(state, loaded.config.dilation).to(device)
    taps = ["enc_pre_latent", "enc_last"]
    n_kept = x.shape[-1]
    variants: dict[str, Any] = {"reference": reference, "original": lambda t: loaded.model.encode(t, taps)}
    conv_modes = ("direct", "auto") if dtype == "float32" else ("direct",)
    for conv in conv_modes:
        lean = LeanEncoder(loaded.model, taps, n_kept, conv=conv, device=device)
        variants[f"lean_{conv}"] = lean.encode
    rates: dict[str, dict[int, float]] = {name: {} for name in variants}
    with _autocast(device, dtype):
        for _ in range(max(1, repeats)):
            for batch in batch_sizes:
                for name, forward in variants.items():
                    rate = spectra_per_second(forward, x, batch, device)
                    rates[name][batch] = max(rates[name].get(batch, 0.0), rate)
    return rates


def best(rates: dict[int, float]) -> tuple[int, float]:
    """(batch size, rate) of the fastest batch size."""
    batch = max(rates, key=lambda b: rates[b])
    return batch, rates[batch]


def extraction_figures(ckpt: Path, data: Path, mask: Path, x: torch.Tensor, workdir: Path, device: torch.device,
                       dtype: str, batch_sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """The encoders at every batch size, then `featcache extract` with its defaults, as ratios."""
    from ..model.checkpoint import load_encoder
    from ..model.config import EncoderConfig
    from .reference import conv_flops, matmul_peak_gflops

    options = {"data": [f"train={data}"], "out": str(workdir / f"x-{dtype}.zarr"), "ckpt": str(ckpt),
               "mask": str(mask), "device": str(device), "dtype": dtype}
    rates: dict[str, dict[int, float]] = {}
    runs = []
    for round_ in range(max(1, repeats)):  # interleaved: a slow minute of the machine hits both sides
        status(f"bench: round {round_ + 1}/{repeats}: encoders at batch sizes {', '.join(map(str, batch_sizes))}, "
               f"then featcache extract with its defaults ({dtype})")
        for name, per in encoder_rates(ckpt, x, batch_sizes, device, dtype, 1).items():
            for batch, rate in per.items():
                rates.setdefault(name, {})[batch] = max(rates.get(name, {}).get(batch, 0.0), rate)
        runs.append(extract_in_subprocess(options))
    run = max(runs, key=lambda r: r["rows"] / r["compute_seconds"])
    extract_rate = run["rows"] / run["compute_seconds"]
    config: EncoderConfig = load_encoder(ckpt).config
    flops = conv_flops(config.num_layers, config.embed_dim, config.kernel_size, config.in_channels, x.shape[-1])
    peak = matmul_peak_gflops(device)
    ref_batch, ref_rate = best(rates["reference"])
    orig_batch, orig_rate = best(rates["original"])
    lean_name = "lean_auto" if "lean_auto" in rates else "lean_direct"
    lean_batch, lean_rate = best(rates[lean_name])
    return {
        "rates": {name: {str(b): r for b, r in per.items()} for name, per in rates.items()},
        "reference_best": {"batch_size": ref_batch, "spectra_per_s": ref_rate},
        "original_best": {"batch_size": orig_batch, "spectra_per_s": orig_rate},
        "lean_best": {"variant": lean_name, "batch_size": lean_batch, "spectra_per_s": lean_rate},
        "extract": {"spectra_per_s": extract_rate, "end_to_end_spectra_per_s": run["rows"] / run["seconds"],
                    "peak_rss_mb": run["peak_rss_mb"], "runs_spectra_per_s": [r["rows"] / r["compute_seconds"]
                                                                            for r in runs]},
        "ratio_extract_to_reference": extract_rate / ref_rate,
        "ratio_lean_to_original": lean_rate / orig_rate,
        "flops_per_spectrum": flops, "matmul_peak_gflops": peak,
        "fraction_of_peak": {"reference": flops * ref_rate / 1e9 / peak,
                             "extract_direct_equivalent": flops * extract_rate / 1e9 / peak},
    }


def read_inputs_in_memory(data: Path, mask: np.ndarray, n: int) -> torch.Tensor:
    """(n, 2, P_kept) encoder inputs of the first n spectra (extract's noise and mask), for the encoders."""
    from ..spectra.inputs import NoiseSpec, read_inputs
    from ..spectra.pfsspec import PfsDataset

    with PfsDataset(data) as ds:
        inputs = read_inputs(ds, 0, min(n, ds.n_rows), mask, NoiseSpec())
    return torch.from_numpy(inputs.encoder_input(True))
