"""Ridge with far fewer train rows than features: `python benchmarks/ridge_wide.py [--n-train 72]
[--width 13920] [--n-val 1000] [--forms dual,primal]`.

The case of issue 27: 72 train spectra of a 13,920-wide `--pool none` map. Each form runs in its own process
(so its peak RSS is its own) on the same seeded float32 features (a learnable linear target plus noise):

* dual   -- RidgeHead.fit, which takes the N x N kernel form when N < D (this release);
* primal -- RidgeHead.fit_stats on StreamingStats of 32,768-row chunks: the D x D Gram path every fit took
            before (9.3 GB and over ten minutes at 72 x 13,920 on 2 cores, as reported in the issue).

Prints one JSON line per form: seconds of the fit alone, the process's peak RSS in GB, the chosen alpha and
validation R2; and the largest coefficient difference between the forms. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data(n_train: int, width: int, n_val: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_val, width), dtype=np.float32)
    w = rng.standard_normal(width) / np.sqrt(width)
    y = x.astype(np.float64) @ w + 0.3 * rng.standard_normal(n_train + n_val)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def child(form: str, n_train: int, width: int, n_val: int, out: str) -> None:
    import numpy as np

    from featcache.heads.ridge import RidgeHead, StreamingStats

    x, y, xv, yv = data(n_train, width, n_val)
    started = time.perf_counter()
    if form == "dual":
        head = RidgeHead().fit(x, y, xv, yv, max_memory=64 << 30)
    else:
        head = RidgeHead().fit_stats(StreamingStats.from_arrays(x, y, 32_768), StreamingStats.from_arrays(xv, yv))
    seconds = time.perf_counter() - started
    np.save(out, np.asarray(head.coef_))
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KB
    print(json.dumps({"alpha": head.alpha_, "val_r2": head.val_r2_, "seconds": round(seconds, 3),
                      "peak_rss_gb": round(peak, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=72)
    parser.add_argument("--width", type=int, default=13_920)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--forms", default="dual,primal")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--coef-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n_train, args.width, args.n_val, args.coef_out)
        return
    import tempfile

    import numpy as np

    coefs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in args.forms.split(","):
            out = os.path.join(tmp, f"{form}.npy")
            proc = subprocess.run([sys.executable, __file__, "--child", form, "--n-train", str(args.n_train),
                                   "--width", str(args.width), "--n-val", str(args.n_val), "--coef-out", out],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps({"form": form, "n_train": args.n_train, "width": args.width, "n_val": args.n_val,
                              **result}))
            coefs[form] = np.load(out)
    if len(coefs) == 2:
        a, b = coefs.values()
        print(json.dumps({"max_coef_difference_relative": float(np.abs(a - b).max() / np.abs(b).max())}))


if __name__ == "__main__":
    main()
