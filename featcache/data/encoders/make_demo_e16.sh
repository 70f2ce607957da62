#!/usr/bin/env bash
# Rebuild the earlier demo encoder l9e16k9 (the reference grid's encoder; README.md): synth, pretrain, test S/N.
# Run from the repository root: bash featcache/data/encoders/make_demo_e16.sh   (about 30 min on one CPU thread)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-featcache/data/encoders/demo-l9e16k9s1bn1d1.ckpt}
mkdir -p data/synth

# 1. data: 20k train, 1k val, 1k test at mag 21.5 (data/synth/ is git-ignored)
$BIN/featcache synth data/synth/demo-train.h5 --n 20000 --seed 1 --mag 21.5
$BIN/featcache synth data/synth/demo-val.h5 --n 1000 --seed 2 --mag 21.5
$BIN/featcache synth data/synth/demo-test.h5 --n 1000 --seed 3 --mag 21.5

# 2. train: T1 against the clean flux, fresh noise each epoch, 2 epochs (about 25 min on one thread)
nice -n 5 $BIN/featcache pretrain --data train=data/synth/demo-train.h5 --data val=data/synth/demo-val.h5 \
    --out "$OUT" --overwrite --num-layers 9 --embed-dim 16 --kernel-size 9 --loss T1 \
    --batch-size 16 --lr 3e-3 --max-epochs 2 --seed 0 --threads 1

# 3. reconstruction S/N on the 1k test spectra: fresh noise (seed 0) and the file's own noisy array
$BIN/python benchmarks/encoder_snr.py "$OUT" data/synth/demo-test.h5
