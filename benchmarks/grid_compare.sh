#!/usr/bin/env bash
# The reference grid's 32 full-data fits (2 caches x enc_pre_latent, enc_last x global_mean, mean_max,
# seg_mean_K8 x ridge, mlp_1, plus the 8 raw-input rows), timed from finished caches into fresh output folders:
# each compare setting in turn (one at a time: run nothing else beside it), then the largest |difference| of
# test R2 between the runs. Needs the grid's caches (reference_grid.sh, or its first four extract lines).
#   bash benchmarks/grid_compare.sh ["--jobs 2" "--jobs 2 --no-batched" ...]
set -euo pipefail
cd "$(dirname "$0")/.."
FC=${FC:-.venv/bin/featcache}
CACHE=${CACHE:-cache}
OUT=${OUT:-/tmp/featcache-grid-compare}
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=("--jobs 2" "--jobs 2 --no-batched" "--jobs 1")
for s in "${SETTINGS[@]}"; do
  dir="$OUT/$(echo "$s" | tr -c 'a-z0-9' '_')"
  rm -rf "$dir"
  echo "== compare $s (load $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086
  /usr/bin/time -f "%e s wall, peak RSS %M KB" "$FC" compare --cache "demo encoder=$CACHE/synth-demo.zarr" \
    --cache "random init=$CACHE/synth-random.zarr" --target log_g --head ridge --head mlp_1 \
    --layer enc_pre_latent --layer enc_last --no-plots -q $s --out "$dir"
done
${PYTHON:-.venv/bin/python} - "$OUT" "${SETTINGS[@]}" <<'PY'
import json, re, sys
from pathlib import Path
out, settings = Path(sys.argv[1]), sys.argv[2:]
tables = {s: json.loads((out / re.sub("[^a-z0-9]", "_", s + "\n") / "compare.json").read_text()) for s in settings}
def r2(t):
    return {(r["encoder"], r["layer"], r["pool"], r["head"]): r["test_r2"] for r in t["cells"]}
first = r2(tables[settings[0]])
for s in settings[1:]:
    other = r2(tables[s])
    print(f"{s!r} vs {settings[0]!r}: {len(other)} cells, max |test R2 difference| "
          f"{max(abs(other[k] - first[k]) for k in first):.2g}")
PY
