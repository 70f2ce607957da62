"""The encoder reproduces the original code's activations on the fixture to 1e-4."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from featcache.common.errors import FeatcacheError
from featcache.model.checkpoint import load_encoder, random_encoder, resolve_dilation, save_checkpoint
from featcache.model.encoder import BlindspotModel1D, EncoderConfig
from featcache.model.pooling import get_pooling

from ..helpers import CKPT

TOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
    return load_encoder(CKPT)


@pytest.fixture(scope="module")
def model_input(reference):
    return torch.from_numpy(np.stack([reference["noisy_masked"], reference["error_masked"]], axis=1))


def test_infers_architecture_from_weights(loaded):
    assert loaded.config == EncoderConfig(num_layers=5, embed_dim=8, kernel_size=5, input_sigma=True,
                                          use_bn=True, dilation=1, blindspot=True)
    assert loaded.file_format == "lightning"
    assert "l5e8k5s1bn1d1.yaml" in loaded.dilation_source
    assert not loaded.model.training


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_taps_match_reference(loaded, model_input, reference, direction):
    taps = [f"enc_{i}" for i in range(2, 6)]
    with torch.no_grad():
        out = loaded.model.encode(model_input, taps, direction)
    for name in taps:
        expected = reference[f"{name}_{direction}"]
        assert out[name].shape == expected.shape
        assert np.abs(out[name].numpy() - expected).max() < TOL, name


def test_both_direction_concatenates_channels(loaded, model_input, reference):
    with torch.no_grad():
        both = loaded.model.encode(model_input, ["enc_3"], "both")["enc_3"].numpy()
    expected = np.concatenate([reference["enc_3_forward"], reference["enc_3_reverse"]], axis=1)
    assert np.abs(both - expected).max() < TOL


def test_full_model_output_matches_reference(loaded, model_input, reference):
    with torch.no_grad():
        out = loaded.model(model_input).numpy()
    assert np.abs(out - reference["model_output"]).max() < TOL


@pytest.mark.parametrize("layer", ["enc_pre_latent", "enc_last"])
@pytest.mark.parametrize("pool", ["global_mean", "mean_max", "seg_mean_K8"])
def test_pooled_features_match_reference(loaded, model_input, reference, layer, pool):
    with torch.no_grad():
        tap = loaded.model.encode(model_input, [layer])[layer]
    assert tap.shape[-1] == int(reference[f"{layer}/length"])
    assert np.abs(get_pooling(pool)(tap).numpy() - reference[f"{layer}/{pool}"]).max() < TOL


def test_aliases_and_depth(loaded):
    model = loaded.model
    assert model.tap_index("enc_pre_latent") == 4 and model.tap_index("enc_last") == 5
    assert model.tap_length("enc_pre_latent", 3481) == 217
    big = BlindspotModel1D(EncoderConfig())
    assert big.tap_length("enc_pre_latent", 3481) == 13 and big.tap_length("enc_last", 3481) == 13
    with pytest.raises(FeatcacheError, match="choose from: enc_0"):
        model.tap_index("enc_9")


def test_encode_runs_only_as_deep_as_needed(loaded, model_input):
    calls: list[int] = []
    hooks = [block.register_forward_hook(lambda *_, i=i: calls.append(i))
             for i, block in enumerate(loaded.model.encoders)]
    try:
        with torch.no_grad():
            loaded.model.encode(model_input[:2], ["enc_2"])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0, 1, 2]


def test_batch_size_does_not_change_taps(loaded, model_input):
    with torch.no_grad():
        whole = loaded.model.encode(model_input, ["enc_last"])["enc_last"]
        single = torch.cat([loaded.model.encode(model_input[i:i + 1], ["enc_last"])["enc_last"]
                            for i in range(len(model_input))])
    assert torch.allclose(whole, single, atol=1e-6)


def test_reference_parameter_counts():
    model = BlindspotModel1D(EncoderConfig(num_layers=9, embed_dim=48, kernel_size=25))
    assert sum(p.numel() for p in model.parameters()) == 1_889_670
    assert model.encoder_parameters() == 522_240


def test_bare_state_dict_and_noise_estimator_keys(tmp_path, loaded, model_input):
    state = torch.load(CKPT, weights_only=True)["state_dict"]
    bare = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    torch.save(bare, tmp_path / "bare_l5e8k5s1bn1d1.pt")
    with_noise = dict(state)
    with_noise["noise_estimator.conv.weight"] = torch.zeros(3)
    torch.save({"state_dict": with_noise, "epoch": 1}, tmp_path / "ne.ckpt")
    for path in (tmp_path / "bare_l5e8k5s1bn1d1.pt", tmp_path / "ne.ckpt"):
        other = load_encoder(path)
        with torch.no_grad():
            a = other.model.encode(model_input[:3], ["enc_last"])["enc_last"]
            b = loaded.model.encode(model_input[:3], ["enc_last"])["enc_last"]
        assert torch.equal(a, b)
    assert load_encoder(tmp_path / "bare_l5e8k5s1bn1d1.pt").file_format == "state_dict"


def test_dilation_sources(tmp_path):
    path = tmp_path / "m215l9e48k25s1bn1d2ep5000.ckpt"
    assert resolve_dilation(path, None) == (2, "file name token 'd2'")
    assert resolve_dilation(path, 3)[0] == 3
    path.with_suffix(".yaml").write_text("model:\n  dilation: 4\n")
    assert resolve_dilation(path, None)[0] == 4
    assert resolve_dilation(tmp_path / "encoder.ckpt", None) == (1, "default (1)")


def test_dilation_changes_the_encoder(tmp_path, model_input):
    model = BlindspotModel1D(EncoderConfig(num_layers=3, embed_dim=4, kernel_size=3, dilation=2))
    save_checkpoint(model, tmp_path / "enc.ckpt")
    assert load_encoder(tmp_path / "enc.ckpt").config.dilation == 2  # from the YAML beside it
    (tmp_path / "enc.yaml").unlink()
    assert load_encoder(tmp_path / "enc.ckpt").config.dilation == 1


def test_save_roundtrip_in_original_layout(tmp_path, loaded):
    path = save_checkpoint(loaded.model, tmp_path / "copy.ckpt", epoch=3)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("model.") for k in raw["state_dict"]) and raw["epoch"] == 3
    again = load_encoder(path)
    assert again.weights_digest() == loaded.weights_digest()


def test_random_init_is_seeded():
    cfg = EncoderConfig(num_layers=3, embed_dim=4, kernel_size=3)
    a, b, c = random_encoder(cfg, seed=1), random_encoder(cfg, seed=1), random_encoder(cfg, seed=2)
    assert a.weights_digest() == b.weights_digest() != c.weights_digest()


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("case", ["text", "pickle", "keys", "shape", "list"])
def test_refuses_bad_checkpoints(tmp_path, case):
    path = tmp_path / f"{case}.ckpt"
    state = {k: v for k, v in torch.load(CKPT, weights_only=True)["state_dict"].items()}
    if case == "text":
        path.write_text("not a checkpoint")
        expected = "not a PyTorch checkpoint"
    elif case == "pickle":
        torch.save({"state_dict": state, "evil": Evil()}, path)
        expected = "needs full unpickling"
    elif case == "keys":
        state.pop("model.decoders_b.0.conv.weight")
        torch.save({"state_dict": state}, path)
        expected = "missing 1 keys"
    elif case == "shape":
        state["model.encoders.1.conv.weight"] = torch.zeros(8, 8, 3)
        torch.save({"state_dict": state}, path)
        expected = "has shape (8, 8, 3)"
    else:
        torch.save([1, 2], path)
        expected = "not a checkpoint"
    with pytest.raises(FeatcacheError, match=re.escape(expected)):
        load_encoder(path)


def _blind_spot_leak(config: EncoderConfig) -> float:
    """How much output pixel j moves when only input pixel j moves (0 for a true blind spot)."""
    torch.manual_seed(0)
    model = BlindspotModel1D(config).eval()
    x = torch.randn(1, config.in_channels, 64)
    j = 31
    bumped = x.clone()
    bumped[:, 0, j] += 5.0
    with torch.no_grad():
        return float((model(bumped)[:, 0, j] - model(x)[:, 0, j]).abs().max())


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (5, 2)])
def test_odd_kernels_keep_the_blind_spot(kernel, dilation):
    assert _blind_spot_leak(EncoderConfig(num_layers=3, embed_dim=4, kernel_size=kernel, dilation=dilation)) == 0.0


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_even_kernels_break_the_blind_spot_and_are_refused():
    with pytest.raises(FeatcacheError, match="kernel size 4: must be odd"):
        EncoderConfig(num_layers=3, embed_dim=4, kernel_size=4)
    config = EncoderConfig(num_layers=3, embed_dim=4, kernel_size=5)
    object.__setattr__(config, "kernel_size", 4)  # what the refusal prevents: output j then sees input j
    assert _blind_spot_leak(config) > 1e-5  # exactly 0.0 for the odd kernels above
