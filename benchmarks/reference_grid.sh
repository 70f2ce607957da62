#!/usr/bin/env bash
# The reference grid on the synthetic benchmark (generator v2): 100k train / 1k val / 1k test at mag 21.5,
# the embedded demo encoder (l9e32k9) vs a randomly initialised copy, enc_3, enc_pre_latent and enc_last x
# global_mean, mean_max, seg_mean_K8 x ridge, mlp_1, plus the raw-input baselines, and frozen vs fine-tuned
# rows; the probing study: label efficiency on nested train subsets of 500, 2000 and 10k spectra (the full 100k
# as the last point), and every block enc_0 .. enc_last of the demo encoder for the depth curve
# (reports/synth-logg/depth).
# Writes reports/synth-logg/ (committed, with its cells: `featcache report reports/synth-logg` re-draws it
# without fitting). Every stage is resumable: re-run to continue after a kill.
#   bash benchmarks/reference_grid.sh            (about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
FC=${FC:-.venv/bin/featcache}
DATA=${DATA:-data/synth/grid}
CACHE=${CACHE:-cache}
OUT=${OUT:-reports/synth-logg}
ENC=${ENC:-featcache/data/encoders/demo-l9e32k9s1bn1d1.ckpt}
FT_TRAIN=${FT_TRAIN:-10000}  # fine-tuning runs the encoder every epoch: a 10k subset keeps it to CPU minutes
FT_EPOCHS=${FT_EPOCHS:-8}
mkdir -p "$DATA" "$CACHE" "$OUT/runs"

source benchmarks/grid_data.sh
# every block for the depth curves: enc_0 .. enc_7, then enc_8 and enc_9 under their alias names
DEPTH=(--layer enc_0 --layer enc_1 --layer enc_2 --layer enc_3 --layer enc_4 --layer enc_5 --layer enc_6 --layer enc_7)
GRID=("${DEPTH[@]}" --layer enc_pre_latent --layer enc_last --pool global_mean,mean_max,seg_mean_K8)

/usr/bin/time -v "$FC" extract --ckpt "$ENC" "${COMMON[@]}" "${GRID[@]}" --out "$CACHE/synth-demo.zarr" \
  2> >(tee "$OUT/extract-demo.time" >&2)
"$FC" extract --ckpt "$ENC" "${COMMON[@]}" --layer input_flux --pool none --out "$CACHE/synth-demo.zarr"
"$FC" extract --ckpt "$ENC" "${COMMON[@]}" --layer input_error --pool global_mean,mean_max,seg_mean_K8 \
  --out "$CACHE/synth-demo.zarr"
"$FC" extract --ckpt "$ENC" --random-init --init-seed 0 "${COMMON[@]}" --layer enc_3 --layer enc_pre_latent \
  --layer enc_last --pool global_mean,mean_max,seg_mean_K8 --out "$CACHE/synth-random.zarr"

# the cache's own mask (made from all 100k train errors), so the fine-tuning rows see the same pixels
${PYTHON:-.venv/bin/python} -c "import sys, numpy, featcache; numpy.save(sys.argv[2], featcache.open_cache(sys.argv[1]).mask)" \
  "$CACHE/synth-demo.zarr" "$OUT/mask.npy"
FT=(--ckpt "$ENC" --data "train=$DATA/train-n100000-s201.h5:0:$FT_TRAIN" --data "val=$DATA/val-n1000-s202.h5"
    --data "test=$DATA/test-n1000-s203.h5" --mask "$OUT/mask.npy" --noise-seed 42
    --layer enc_pre_latent --pool seg_mean_K8 --head mlp_1 --target log_g)
[ -f "$OUT/runs/frozen-K8-mlp_1/metrics.json" ] || \
  "$FC" finetune "${FT[@]}" --freeze-encoder --train-noise fresh --max-epochs "$FT_EPOCHS" --out "$OUT/runs/frozen-K8-mlp_1"
[ -f "$OUT/runs/finetuned-K8-mlp_1/metrics.json" ] || \
  "$FC" finetune "${FT[@]}" --unfreeze all --encoder-lr 1e-4 --train-noise fresh --max-epochs "$FT_EPOCHS" \
    --out "$OUT/runs/finetuned-K8-mlp_1"

# the information bound of every val / test spectrum (exact: the generator's derivatives), for the compare's
# per-bin efficiencies; --full-spectrum adds the Cannon full-spectrum fit as a row (docs/information-bound.md)
"$FC" bounds --cache "$CACHE/synth-demo.zarr" --split val --split test --workers "${JOBS:-2}"
CACHES=(--cache "demo encoder=$CACHE/synth-demo.zarr" --cache "random init=$CACHE/synth-random.zarr")
"$FC" compare "${CACHES[@]}" --target log_g --head ridge --head mlp_1 --jobs "${JOBS:-2}" --full-spectrum \
  --layer enc_3 --layer enc_pre_latent --layer enc_last --train-sizes "${SIZES:-500,2000,10000}" \
  --run "$OUT/runs/frozen-K8-mlp_1" --run "$OUT/runs/finetuned-K8-mlp_1" --out "$OUT"
# depth: the full train split, every block of the demo encoder, seg_mean_K8 (the raw-input rows as the reference)
"$FC" compare --cache "demo encoder=$CACHE/synth-demo.zarr" --target log_g --head ridge --head mlp_1 \
  --jobs "${JOBS:-2}" "${DEPTH[@]}" --layer enc_pre_latent --layer enc_last --layer input_flux \
  --pool seg_mean_K8 --pool none --out "$OUT/depth"
