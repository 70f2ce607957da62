#!/usr/bin/env bash
# Rebuild the embedded demo encoder (see README.md): synthetic data, `featcache pretrain`, test-set S/N.
# Run from the repository root: bash featcache/data/encoders/make_demo.sh   (about 65 CPU minutes on one thread)
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-featcache/data/encoders/demo-l9e32k9s1bn1d1.ckpt}
mkdir -p data/synth

# 1. data: 20k train and 1k val spectra without stored noise (the loss draws it), 1k test with it; mag 21.5
$BIN/featcache synth data/synth/enc-train-n20000-s1.h5 --n 20000 --seed 1 --noise-free
$BIN/featcache synth data/synth/enc-val-n1000-s2.h5 --n 1000 --seed 2 --noise-free
$BIN/featcache synth data/synth/demo-test.h5 --n 1000 --seed 3 --mag 21.5

# 2. train: E2 (self-supervised: the blind-spot loss against the noisy input), fresh noise each epoch, 3 epochs
#    of 20k spectra (17-23 min each on one thread); --save-every 1 keeps each epoch's encoder beside OUT
nice -n 5 $BIN/featcache pretrain --data train=data/synth/enc-train-n20000-s1.h5 \
    --data val=data/synth/enc-val-n1000-s2.h5 --out "$OUT" --overwrite --num-layers 9 --embed-dim 32 \
    --kernel-size 9 --loss e2 --batch-size 16 --lr 3e-3 --max-epochs 3 --save-every 1 --seed 0 --threads 1

# 3. reconstruction S/N on the 1k test spectra: fresh noise (seed 0) and the file's own noisy array
$BIN/python benchmarks/encoder_snr.py "$OUT" data/synth/demo-test.h5
