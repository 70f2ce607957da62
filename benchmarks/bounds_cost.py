"""Cost of the information bounds and the full-spectrum baseline: `python benchmarks/bounds_cost.py
[--n-train 100000] [--n-eval 100000] [--out /tmp/bounds-cost]`.

Writes (once) a clean synthetic train set and an evaluation set at mag 21.5, then times, each alone:
the Cannon fit on the train set (piecewise from 10000 spectra on), the data-driven bounds of the evaluation
set, the exact bounds of --n-exact of them (the generator dominates: 12 noise-free spectra per star, so the
figure scales linearly), and the full-spectrum fit of --n-fit of them. Prints one JSON dict: seconds and
milliseconds per spectrum of each stage, their extrapolation to 100k spectra, the load average and the thread
counts (and the CPU seconds of each stage, summed over its threads: the work done, which a loaded machine
does not inflate). Run it on a quiet machine; the shared development machine's wall times are not timings.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bounds-cost"))
    parser.add_argument("--n-train", type=int, default=100_000)
    parser.add_argument("--n-eval", type=int, default=100_000)
    parser.add_argument("--n-exact", type=int, default=5000, help="stars timed for the exact (synth) bounds")
    parser.add_argument("--n-fit", type=int, default=20_000, help="stars timed for the full-spectrum fit")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from featcache.information import bounds, fit_cannon, fit_with
    from featcache.spectra.inputs import NoiseSpec, read_inputs
    from featcache.spectra.mask import make_mask
    from featcache.spectra.pfsspec import PfsDataset
    from featcache.synth import write_synth

    args.out.mkdir(parents=True, exist_ok=True)
    train, evaluation = args.out / f"train-{args.n_train}.h5", args.out / f"eval-{args.n_eval}.h5"
    if not train.exists():
        write_synth(train, args.n_train, seed=1, noise_free=True, workers=args.workers)
    if not evaluation.exists():
        write_synth(evaluation, args.n_eval, seed=2, noise_free=True, workers=args.workers)
    with PfsDataset(train) as ds:
        mask = make_mask("quantile:0.85", ds, 0, min(ds.n_rows, 20000))
    out: dict[str, float] = {}

    def timed(name: str, n: int, run) -> object:
        start, cpu = time.time(), time.process_time()
        value = run()
        seconds = time.time() - start
        out[f"{name}_cpu_seconds"] = round(time.process_time() - cpu, 2)  # all threads: the work, whatever the load
        out[f"{name}_seconds"] = round(seconds, 2)
        out[f"{name}_ms_per_spectrum"] = round(1000 * seconds / n, 3)
        out[f"{name}_seconds_at_100k"] = round(seconds / n * 100_000, 1)
        return value

    model = timed("cannon_fit", args.n_train, lambda: fit_cannon(train, show_progress=False))
    timed("cannon_bounds", args.n_eval,
          lambda: bounds(evaluation, mask, source="cannon", model=model, show_progress=False))
    n_exact = min(args.n_exact, args.n_eval)
    timed("exact_bounds", n_exact,
          lambda: bounds(evaluation, mask, rows=(0, n_exact), source="synth", show_progress=False))
    n_fit = min(args.n_fit, args.n_eval)
    with PfsDataset(evaluation) as ds:
        inputs = read_inputs(ds, 0, n_fit, mask, NoiseSpec("generated", 42, 1.0))
    pixels = np.flatnonzero(mask)
    timed("full_fit", n_fit, lambda: fit_with(model, inputs.noisy, inputs.sigma, pixels))
    import torch

    out.update(n_train=args.n_train, n_eval=args.n_eval, n_exact=n_exact, n_fit=n_fit,
               load_average=list(os.getloadavg()), torch_threads=torch.get_num_threads(), cpus=os.cpu_count(),
               cells=model.info.get("cells"))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
