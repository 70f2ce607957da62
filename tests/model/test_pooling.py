"""Poolings: the spec's segment rule by hand, widths, and helpful errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcache.common.errors import FeatcacheError
from featcache.model.pooling import get_pooling, list_poolings, parse_poolings


def test_seg_mean_k8_on_length_13_by_hand():
    h = torch.arange(2 * 3 * 13, dtype=torch.float32).reshape(2, 3, 13)
    out = get_pooling("seg_mean_K8")(h).numpy()
    assert out.shape == (2, 24)
    x = h.numpy()
    for i in range(7):  # seven single positions ...
        np.testing.assert_allclose(out[:, i * 3:(i + 1) * 3], x[:, :, i])
    np.testing.assert_allclose(out[:, 21:24], x[:, :, 7:13].mean(-1))  # ... and one mean of 7..12


@pytest.mark.parametrize("name,width", [("global_mean", 3), ("global_max", 3), ("mean_max", 6), ("none", 39),
                                        ("seg_mean_K4", 12), ("seg_max_K4", 12), ("seg_meanmax_K4", 24)])
def test_widths_match_outputs(name, width):
    h = torch.randn(5, 3, 13)
    pooling = get_pooling(name)
    assert pooling.width(3, 13) == width == pooling(h).shape[1]


def test_max_and_meanmax():
    h = torch.randn(4, 2, 10)
    np.testing.assert_allclose(get_pooling("mean_max")(h)[:, 2:].numpy(), h.amax(-1).numpy())
    seg = get_pooling("seg_meanmax_K2")(h).numpy()
    np.testing.assert_allclose(seg[:, 4:6], h[:, :, :5].amax(-1).numpy())
    np.testing.assert_allclose(seg[:, 0:2], h[:, :, :5].mean(-1).numpy(), rtol=1e-6)


def test_errors_list_choices():
    with pytest.raises(FeatcacheError, match="unknown pooling 'avg'; choose from: global_mean"):
        get_pooling("avg")
    with pytest.raises(FeatcacheError, match="K=16 segments exceed the map length L'=13"):
        get_pooling("seg_mean_K16").width(48, 13)
    assert "seg_mean_K{K}" in list_poolings()
    assert parse_poolings(["global_mean,mean_max", "seg_mean_K8", "global_mean"]) == [
        "global_mean", "mean_max", "seg_mean_K8"]
