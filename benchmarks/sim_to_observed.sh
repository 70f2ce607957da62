#!/usr/bin/env bash
# Train on clean synthetic spectra, test on observed-like synthetic spectra written as PFS FITS (pfsCoadd on the
# MR grid, vacuum nm, nJy, 0.2% cosmic rays), imported back, extracted with the same encoder, mask and feature:
# reports/sim-to-obs/. Two controls: reports/sim-to-obs-native/ exports onto the file's own pixels, so only the
# median normalisation of the noisy flux differs from the simulated splits; reports/sim-to-obs-direct/ reads the
# same synthetic spectra directly (their stored noise, no FITS). From the repository root:
#   bash benchmarks/sim_to_observed.sh            # about 5 CPU minutes on 2 cores
set -euo pipefail
F=${FEATCACHE:-featcache}
D=${DATA:-data/synth/sim-to-obs}
OUT=${OUT:-reports}
N_TRAIN=${N_TRAIN:-2000}; N_EVAL=${N_EVAL:-500}
ENC=featcache/data/encoders/demo-l9e32k9s1bn1d1.ckpt
MASK=featcache/data/encoders/demo-l9e32k9s1bn1d1.mask.npy
FEATURE=(--layer enc_3 --pool seg_mean_K8 --mask "$MASK")
mkdir -p "$D"
# seeds 201-204: neither the demo encoder's (1, 2, 3) nor the demo's (101-103)
[ -f "$D/train.h5" ] || $F synth "$D/train.h5" --n "$N_TRAIN" --seed 201
[ -f "$D/val.h5" ] || $F synth "$D/val.h5" --n "$N_EVAL" --seed 202
[ -f "$D/test.h5" ] || $F synth "$D/test.h5" --n "$N_EVAL" --seed 203
[ -f "$D/obs.h5" ] || $F synth "$D/obs.h5" --n "$N_EVAL" --seed 204
$F export "$D/obs.h5" "$D/pfsCoadd-obs.fits" --grid mr --cosmic-rays 0.002 --catalogue "$D/labels.csv" --overwrite
$F export "$D/obs.h5" "$D/pfsCoadd-native.fits" --grid native --overwrite
$F inspect "$D/pfsCoadd-obs.fits"
$F import "$D/pfsCoadd-obs.fits" --reference "$D/train.h5" --out "$D/observed.h5" --uncovered refuse \
    --catalogue "$D/labels.csv" --label log_g --label T_eff --label M_H --overwrite
$F import "$D/pfsCoadd-native.fits" --reference "$D/train.h5" --out "$D/observed-native.h5" \
    --catalogue "$D/labels.csv" --label log_g --label T_eff --label M_H --overwrite
$F extract --ckpt "$ENC" --data train="$D/train.h5" --data val="$D/val.h5" --data test="$D/test.h5" "${FEATURE[@]}" \
    --out "$D/sim.zarr"
$F extract --ckpt "$ENC" --data observed="$D/observed.h5" --data native="$D/observed-native.h5" --noise stored \
    "${FEATURE[@]}" --out "$D/obs.zarr"
$F extract --ckpt "$ENC" --data direct="$D/obs.h5" --noise stored "${FEATURE[@]}" --out "$D/obs-direct.zarr"
$F fit --cache "$D/sim.zarr" --layer enc_3 --pool seg_mean_K8 --target log_g --head mlp_1_gauss --out "$D/run" --overwrite
$F transfer --head "$D/run" --cache "$D/obs.zarr" --split observed --out "$OUT/sim-to-obs" --overwrite
$F transfer --head "$D/run" --cache "$D/obs.zarr" --split native --out "$OUT/sim-to-obs-native" --overwrite
$F transfer --head "$D/run" --cache "$D/obs-direct.zarr" --split direct --out "$OUT/sim-to-obs-direct" --overwrite
