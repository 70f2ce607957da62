"""The lean inference path (what extraction runs) computes the original code's activations: against the
fixture to 1e-4 (we see about 1e-6), and against BlindspotModel1D.encode for every dilation / BatchNorm /
sigma variant, with direct and FFT convolutions alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featcache.common.errors import FeatcacheError
from featcache.model.checkpoint import load_encoder, random_encoder
from featcache.model.config import EncoderConfig
from featcache.model.lean import LeanEncoder, fold_block, shifted_max_pool

from ..helpers import CKPT

TOL = 1e-4
TAPS = {2: "enc_2", 3: "enc_3", 4: "enc_pre_latent", 5: "enc_last"}


@pytest.fixture(scope="module")
def fixture_model():
    return load_encoder(CKPT).model


@pytest.fixture(scope="module")
def fixture_input(reference):
    return torch.from_numpy(np.stack([reference["noisy_masked"], reference["error_masked"]], axis=1))


@pytest.mark.parametrize("conv", ["direct", "fft", "auto"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lean_taps_match_the_original_code(fixture_model, fixture_input, reference, conv, direction):
    lean = LeanEncoder(fixture_model, list(TAPS.values()), fixture_input.shape[-1], conv=conv)
    with torch.inference_mode():
        out = lean.encode(fixture_input, direction)
    for i, name in TAPS.items():
        assert np.abs(out[name].numpy() - reference[f"enc_{i}_{direction}"]).max() < TOL, (conv, name)
    assert lean.plan == ("direct" if conv != "fft" else "fft:0,1,2,3,4,5")  # k5: auto keeps direct


@pytest.mark.parametrize("tag", ["l6e16k9s1bn1d2", "l4e8k25s0bn0d1", "l5e12k25s1bn1d3", "l3e4k3s1bn0d1"])
@pytest.mark.parametrize("conv", ["direct", "fft"])
def test_lean_equals_the_model_for_every_variant(tag, conv):
    model = random_encoder(EncoderConfig.from_tag(tag), seed=3).model
    torch.manual_seed(0)
    x = torch.rand(3, model.config.in_channels, 1301)
    taps = model.tap_names
    with torch.inference_mode():
        expected = model.encode(x, taps, "both")
        got = LeanEncoder(model, taps, x.shape[-1], conv=conv).encode(x, "both")
    for name in taps:
        scale = float(expected[name].abs().max())
        assert float((got[name] - expected[name]).abs().max()) <= 1e-5 * max(scale, 1.0), (tag, conv, name)


def test_auto_takes_fft_only_where_it_wins(fixture_model):
    model = random_encoder(EncoderConfig.from_tag("l9e48k25s1bn1d1"), seed=0).model
    assert LeanEncoder(model, ["enc_last"], 3481, conv="auto").plan == "fft:0,1,2,3,4"  # maps >= 256 long
    assert LeanEncoder(model, ["enc_last"], 3481, conv="direct").plan == "direct"
    assert LeanEncoder(model, ["enc_last"], 3481, conv="auto", device="meta").plan == "direct"  # not a CPU
    with pytest.raises(FeatcacheError, match="unknown convolution 'winograd'"):
        LeanEncoder(fixture_model, ["enc_last"], 3481, conv="winograd")


def test_folded_batchnorm_and_pooling_are_the_original_operations(fixture_model):
    block = fixture_model.encoders[1]
    torch.manual_seed(1)
    h = torch.randn(2, 8, 300)
    weight, bias = fold_block(block.conv, block.bn)
    with torch.inference_mode():
        unfolded = block.bn(F.conv1d(h, block.conv.weight, block.conv.bias))
        folded = F.conv1d(h, weight, bias)
        assert float((unfolded - folded).abs().max()) < 1e-5
        for length in (300, 301, 2, 3):
            x = torch.randn(2, 3, length)
            original = F.max_pool1d(F.pad(x[..., :-1], (1, 0)), kernel_size=2, stride=2)
            assert torch.equal(shifted_max_pool(x), original)
