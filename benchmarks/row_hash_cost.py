"""What the copied-rows check costs: `python benchmarks/row_hash_cost.py [--n 100000] [--data FILE.h5]
[--extract-rows N] [--out reports/bench/row_hash_cost.json]`.

extract judges copies across splits by a blake2b-128 of each spectrum's flux (featcache.spectra.pfsspec.
row_hashes), computed in the identity pass that reads every row anyway (--hash full). On one file of N
synthetic spectra (`featcache synth --noise-free`, made if --data does not exist) this measures, in one run:

1. the identity pass as it was (file_identity: every byte hashed, no per-row scan);
2. the same pass with the per-row scan (scan_file over every row): the difference is the check's cost;
3. row_hashes alone over the flux already in memory (the hashing, without the reads);
4. `featcache extract` of the first --extract-rows spectra with the demo encoder (l9e32k9, the default layers
   and poolings, --mask quantile:0.85), scaled to N rows when fewer were extracted.

Prints and writes one JSON dict: seconds of each step and the check's share of the extraction. Run it alone
on a quiet machine (the figures are ratios of one run; the file is read several times, so the page cache
must hold it or every pass pays the disk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--extract-rows", type=int, default=None, help="default: all N")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "row_hash_cost.json")
    args = parser.parse_args()
    from featcache.demo import DEMO_ENCODER
    from featcache.spectra.pfsspec import IDENTITY_BLOCK_ROWS, PfsDataset, file_identity, row_hashes, scan_file

    data = args.data or REPO / "data" / "synth" / f"rowhash-{args.n}.h5"  # git-ignored, as every synthetic file
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "featcache", "synth", str(data), "--n", str(args.n), "--seed", "27",
                        "--noise-free", "-q"], cwd=REPO, check=True)
    with PfsDataset(data) as ds:
        n = ds.n_rows
        file_identity(data)  # warm the page cache: every pass below reads the same bytes
        old_pass, _ = timed(file_identity, data)
        new_pass, scan = timed(scan_file, data, ranges=[(0, n)])
        hashing = 0.0
        for start in range(0, n, IDENTITY_BLOCK_ROWS):
            flux = ds.read_raw("flux", start, min(start + IDENTITY_BLOCK_ROWS, n))
            seconds, _ = timed(row_hashes, flux)
            hashing += seconds
    rows = min(args.extract_rows or n, n)
    with tempfile.TemporaryDirectory(dir=REPO / "cache") as tmp:
        out = Path(tmp) / "c.zarr"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "featcache", "extract", "--ckpt", str(DEMO_ENCODER),
                        "--data", f"train={data}:0:{rows}", "--out", str(out), "-q"], cwd=REPO, check=True)
        extract = (time.perf_counter() - started) * n / rows
        shutil.rmtree(out, ignore_errors=True)
    result = {"n": n, "file": str(data), "identity_pass_s": round(old_pass, 2),
              "identity_pass_with_row_scan_s": round(new_pass, 2), "row_scan_extra_s": round(new_pass - old_pass, 2),
              "row_hashes_alone_s": round(hashing, 2), "extract_s": round(extract, 1),
              "extract_rows_measured": rows, "row_scan_share_of_extract": round((new_pass - old_pass) / extract, 4),
              "row_hashes_share_of_extract": round(hashing / extract, 4),
              "spectra_with_nan_flux": scan.scans[0].nan_summary()["rows"]}
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
