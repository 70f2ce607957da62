"""Fine-tuning benchmark: seconds per training epoch and train spectra/s, encoder frozen vs unfrozen.

Usage: python benchmarks/bench_finetune.py [--n 256] [--pixels 4096] [--arch l9e48k25s1bn1d1|fixture]
                                           [--batch-size 64] [--epochs 2] [--threads 2]
The data are random pfsspec-layout spectra (timing only); the encoder is the fixture checkpoint (l5e8k5) or a
random-init encoder of the given architecture (l9e48k25 is the reference model's). An epoch covers reading,
noise, forward, backward and the optimiser step (validation excluded); the first epoch is reported apart.
Prints one JSON dict per --unfreeze mode, plus the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from featcache.bench.finetune import benchmark_epoch
from featcache.model.checkpoint import random_encoder, save_checkpoint
from featcache.model.config import EncoderConfig

FIXTURE_CKPT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "blindspot-l5e8k5" / "l5e8k5s1bn1d1.ckpt"


def write_spectra(path: Path, n: int, pixels: int, seed: int = 0) -> Path:
    """Random spectra in the pfsspec layout (flux near 0.5, error 0.1-0.3) with log_g labels."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["spectrumdataset/wave"] = np.linspace(7100, 8850, pixels)
        f["dataset/arrays/flux/value"] = rng.uniform(0.3, 0.7, (n, pixels)).astype(np.float32)
        f["dataset/arrays/error/value"] = rng.uniform(0.1, 0.3, (n, pixels)).astype(np.float32)
    pd.DataFrame({"log_g": rng.uniform(1, 5, n)}).to_hdf(path, key="dataset/params", format="table", mode="a")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="train spectra")
    parser.add_argument("--pixels", type=int, default=4096)
    parser.add_argument("--arch", default="l9e48k25s1bn1d1", help="encoder architecture, or 'fixture'")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="none,all", help="--unfreeze modes, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_spectra(root / "d.h5", args.n, args.pixels)
        if args.arch == "fixture":
            ckpt = FIXTURE_CKPT
        else:
            ckpt = save_checkpoint(random_encoder(EncoderConfig.from_tag(args.arch)).model, root / f"{args.arch}.ckpt")
        rows = benchmark_epoch(ckpt, [f"train={data}"], root / "runs", modes=tuple(args.modes.split(",")),
                               batch_size=args.batch_size, epochs=args.epochs)
    for row in rows:
        print(json.dumps({"arch": args.arch, "pixels": args.pixels, **row,
                          "loadavg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
