#!/usr/bin/env bash
# The current demo encoder (l9e32k9) on the reference grid's data: 100k train / 1k val / 1k test at mag 21.5
# (the same files, mask and noise as benchmarks/reference_grid.sh, whose committed report is the earlier
# l9e16k9 encoder's), its enc_3, enc_pre_latent and enc_last x seg_mean_K8 against the raw flux, ridge and
# mlp_1, with label efficiency at 500, 2000 and 10k train spectra. Writes reports/synth-logg-e32/ (committed
# with its cells). Resumable: re-run to continue after a kill.
#   bash benchmarks/demo_encoder_grid.sh            (about 35 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
FC=${FC:-.venv/bin/featcache}
DATA=${DATA:-data/synth/grid}
CACHE=${CACHE:-cache}
OUT=${OUT:-reports/synth-logg-e32}
ENC=${ENC:-featcache/data/encoders/demo-l9e32k9s1bn1d1.ckpt}
mkdir -p "$DATA" "$CACHE" "$OUT"

source benchmarks/grid_data.sh
/usr/bin/time -v "$FC" extract --ckpt "$ENC" "${COMMON[@]}" --layer enc_3 --layer enc_pre_latent --layer enc_last \
  --pool seg_mean_K8 --out "$CACHE/synth-demo-e32.zarr" 2> >(tee "$OUT/extract.time" >&2)
"$FC" extract --ckpt "$ENC" "${COMMON[@]}" --layer input_flux --pool none --out "$CACHE/synth-demo-e32.zarr"
"$FC" compare --cache "demo l9e32k9=$CACHE/synth-demo-e32.zarr" --target log_g --head ridge --head mlp_1 \
  --pool seg_mean_K8 --pool none --train-sizes 500,2000,10000 --jobs 2 --out "$OUT"
