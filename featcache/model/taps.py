"""Names of what can be read out of the encoder: taps, the input pseudo-layers, directions.

A tap is the (C, L') map after encoder block i (`enc_i`; `enc_pre_latent` = enc_{N-1}, the last block's
input, and `enc_last` = enc_N, its output). The pseudo-layers `input_flux` and `input_error` are the
masked noisy flux and the sigma channel themselves, put through the same poolings: the raw-input baseline
and an error-only leak detector. A direction says which way the spectrum runs through the encoder.
"""

from __future__ import annotations

PSEUDO_LAYERS = ("input_flux", "input_error")
DIRECTIONS = ("forward", "reverse", "both")
