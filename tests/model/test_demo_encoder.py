"""The demo encoder embedded in the package (featcache/data/encoders/): loads with featcache, has the real
checkpoint's depth, and really denoises fresh synthetic spectra (reconstruction S/N at least 10x the noisy
input's; measured 3.00 -> 39.3, 13.1x with the encoder trained on generator version 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from featcache.common.resources import embedded
from featcache.demo import DEMO_ENCODER
from featcache.model.checkpoint import load_encoder
from featcache.pretrain import checkpoint_mask, evaluate

ENCODERS = embedded("encoders")
DEMO = ENCODERS / "demo-l9e32k9s1bn1d1.ckpt"
N_TEST = 160  # spectra generated here, with a seed that neither training nor the README's test used
TEST_SEED = 4242


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """These tests train or evaluate convolutions: run them on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def demo():
    return load_encoder(DEMO)


def test_demo_files_are_embedded():
    assert DEMO == DEMO_ENCODER and DEMO.exists(), f"{DEMO} is missing"
    assert DEMO.stat().st_size <= 10 * 2**20
    for beside in (DEMO.with_suffix(".yaml"), ENCODERS / "README.md", ENCODERS / f"{DEMO.stem}.mask.npy",
                   ENCODERS / f"{DEMO.stem}.log.csv"):
        assert beside.exists(), beside
    assert "featcache pretrain" in (ENCODERS / "README.md").read_text()


def test_demo_has_the_real_checkpoints_depth(demo):
    cfg = demo.config
    assert cfg.num_layers == 9 and cfg.input_sigma and cfg.use_bn and cfg.blindspot
    assert demo.file_format == "lightning"
    assert demo.model.tap_length("enc_pre_latent", 3481) == 13
    assert demo.model.tap_length("enc_last", 3481) == 13
    mask = checkpoint_mask(DEMO)
    assert mask.shape == (4096,) and int(mask.sum()) == 3481


def test_demo_denoises_fresh_synthetic_spectra(demo, tmp_path: Path):
    from featcache.synth import write_synth

    config = yaml.safe_load(DEMO.with_suffix(".yaml").read_text())
    path = tmp_path / "test.h5"
    write_synth(path, N_TEST, TEST_SEED, mag=21.5)
    result = evaluate(demo, path, None, checkpoint_mask(DEMO), seed=TEST_SEED,
                      noise_level=float(config["noise"]["noise_level"]), batch_size=32)
    assert np.isfinite(result.snr_denoised).all()
    assert result.gain >= 10.0, (f"reconstruction S/N {result.median_noisy:.2f} -> {result.median_denoised:.2f} "
                                f"is only {result.gain:.2f}x")


def test_demo_keeps_the_original_codes_names():
    """The original research code loads the committed encoder: its state_dict keys are those the original code
    wrote in the fixture checkpoint (same names and nesting; only the block count and widths differ)."""
    import re

    import torch

    from ..helpers import CKPT

    def key_patterns(path):
        return {re.sub(r"\.\d+\.", ".N.", k) for k in torch.load(path, map_location="cpu",
                                                                   weights_only=False)["state_dict"]}

    assert key_patterns(DEMO) == key_patterns(CKPT)
