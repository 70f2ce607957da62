"""Reconstruction S/N of an encoder checkpoint on a synthetic file: `python benchmarks/encoder_snr.py CKPT FILE`.

Median ||flux|| / ||x - flux|| over the file's spectra for the noisy input and the denoised estimate, with
fresh noise (seed 0) and with the file's own stored `noisy` array; one thread. Step 3 of the demo encoders'
recipes (featcache/data/encoders/make_demo*.sh).
"""

from __future__ import annotations

import argparse

import torch

from featcache.model.checkpoint import load_encoder
from featcache.pretrain.files import checkpoint_mask
from featcache.pretrain.snr import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder, mask = load_encoder(args.ckpt), checkpoint_mask(args.ckpt)
    for noise in ("generated", "stored"):
        r = evaluate(encoder, args.file, None, mask, seed=0, noise=noise, batch_size=32)
        print(f"test ({noise} noise): S/N {r.median_noisy:.2f} -> {r.median_denoised:.2f} ({r.gain:.2f}x)")


if __name__ == "__main__":
    main()
