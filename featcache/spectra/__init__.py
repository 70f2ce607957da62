"""Spectra in: pfsspec HDF5 files, --data splits, wavelength masks, counter-based noise, and the one input
stage (`read_inputs`) that turns file rows into the encoder's masked (noisy flux, sigma) input; plus the
block-shuffled order training reads rows in.

May import: featcache.common.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "PfsDataset": "pfsspec", "file_identity": "pfsspec", "describe_dataset": "pfsspec",
    "SplitSpec": "splits", "parse_split_spec": "splits", "parse_split_specs": "splits",
    "MaskSpec": "mask", "parse_mask_spec": "mask", "make_mask": "mask", "quantile_mask": "mask",
    "NoiseSpec": "inputs", "Inputs": "inputs", "read_inputs": "inputs",
    "add_noise": "noise", "fresh_stream": "noise",
    "epoch_order": "order", "shard_range": "order",
})
