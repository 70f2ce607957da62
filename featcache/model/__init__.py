"""The model: BlindspotModel1D with the original parameter names, its checkpoints (Lightning .ckpt or bare
state dict, loaded weights-only), the taps that can be read out of its encoder, and the named poolings that
turn a tap into a feature vector.

May import: featcache.common.
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BlindspotModel1D": "encoder", "EncoderConfig": "config", "denoise": "encoder",
    "LoadedEncoder": "checkpoint", "load_encoder": "checkpoint", "random_encoder": "checkpoint",
    "save_checkpoint": "checkpoint",
    "get_pooling": "pooling", "list_poolings": "pooling", "parse_poolings": "pooling",
    "PSEUDO_LAYERS": "taps", "DIRECTIONS": "taps",
})
