#!/usr/bin/env bash
# Train on clean synthetic spectra, test on observed-like synthetic spectra (featcache synth's tellurics, sky
# residuals and flux-calibration error) written as PFS FITS (pfsCoadd on the MR grid, vacuum nm, nJy, 0.2%
# cosmic rays), imported back, extracted with the same encoder, mask and feature: reports/sim-to-obs/.
# Three controls on the same 500 stars (seed 204; a clean and an observed-like file pair row by row):
#   reports/sim-to-obs-clean/   the clean file read directly (in distribution)
#   reports/sim-to-obs-direct/  the observed-like file read directly (the observed-like effects alone)
#   reports/sim-to-obs-native/  the observed-like file through a pfsCoadd on its own pixels (+ the normalisation)
# From the repository root:  bash benchmarks/sim_to_observed.sh     (about 10 CPU minutes on 2 cores)
set -euo pipefail
F=${FEATCACHE:-featcache}
D=${DATA:-data/synth/sim-to-obs}
OUT=${OUT:-reports}
N_TRAIN=${N_TRAIN:-2000}; N_EVAL=${N_EVAL:-500}
OBSERVED_LIKE=(--airmass 1.0:2.0 --sky-residual 0.1 --fluxcal-error 0.02)
ENC=featcache/data/encoders/demo-l9e32k9s1bn1d1.ckpt
MASK=featcache/data/encoders/demo-l9e32k9s1bn1d1.mask.npy
FEATURE=(--layer enc_3 --pool seg_mean_K8 --mask "$MASK")
LABELS=(--catalogue "$D/labels.csv" --label log_g --label T_eff --label M_H)
mkdir -p "$D"
# seeds 201-204: neither the demo encoder's (1, 2, 3) nor the demo's (101-103)
[ -f "$D/train.h5" ] || $F synth "$D/train.h5" --n "$N_TRAIN" --seed 201
[ -f "$D/val.h5" ] || $F synth "$D/val.h5" --n "$N_EVAL" --seed 202
[ -f "$D/test.h5" ] || $F synth "$D/test.h5" --n "$N_EVAL" --seed 203
[ -f "$D/clean.h5" ] || $F synth "$D/clean.h5" --n "$N_EVAL" --seed 204
[ -f "$D/obs.h5" ] || $F synth "$D/obs.h5" --n "$N_EVAL" --seed 204 "${OBSERVED_LIKE[@]}"
$F export "$D/obs.h5" "$D/pfsCoadd-obs.fits" --grid mr --cosmic-rays 0.002 --catalogue "$D/labels.csv" --overwrite
$F export "$D/obs.h5" "$D/pfsCoadd-native.fits" --grid native --overwrite
$F inspect "$D/pfsCoadd-obs.fits"
$F import "$D/pfsCoadd-obs.fits" --reference "$D/train.h5" --out "$D/observed.h5" "${LABELS[@]}" --overwrite
$F import "$D/pfsCoadd-native.fits" --reference "$D/train.h5" --out "$D/observed-native.h5" "${LABELS[@]}" --overwrite
$F extract --ckpt "$ENC" --data train="$D/train.h5" --data val="$D/val.h5" --data test="$D/test.h5" "${FEATURE[@]}" \
    --out "$D/sim.zarr"
$F extract --ckpt "$ENC" --data observed="$D/observed.h5" --data native="$D/observed-native.h5" \
    --data direct="$D/obs.h5" --data clean="$D/clean.h5" --noise stored "${FEATURE[@]}" --out "$D/obs.zarr"
$F fit --cache "$D/sim.zarr" --layer enc_3 --pool seg_mean_K8 --target log_g --head mlp_1_gauss --out "$D/run" --overwrite
for split in observed native direct clean; do
    name=sim-to-obs$([ "$split" = observed ] || echo "-$split")
    $F transfer --head "$D/run" --cache "$D/obs.zarr" --split "$split" --out "$OUT/$name" --overwrite
done
