"""heads.dropout: seeded masks with the right law, the registry's Dropout is nn.Dropout without a stream, and
train_head's numbers follow the stream (not torch's global RNG)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featcache.heads import TrainRecipe, create_head, train_head
from featcache.heads.dropout import Dropout, MaskStream, keep_scale, mask_streams


def test_mask_law_and_values():
    p, n = 0.1, 200_000
    mask = MaskStream(3).draw((n // 100, 100), p)
    kept = mask != 0
    assert set(np.unique(mask.numpy())) == {0.0, np.float32(1) / np.float32(0.9)}
    assert mask[kept].unique().item() == keep_scale(p)
    # dropped fraction within 4 binomial sigma of p; the mean of the mask within 4 sigma of 1
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs((~kept).float().mean().item() - p) < 4 * sigma
    assert abs(mask.double().mean().item() - 1.0) < 4 * sigma * keep_scale(p)


def test_streams_are_seeded_and_sequential():
    a, b, c = MaskStream(7), MaskStream(7), MaskStream(8)
    first, second = a.draw((64, 32), 0.5), a.draw((64, 32), 0.5)
    assert torch.equal(first, b.draw((64, 32), 0.5)) and torch.equal(second, b.draw((64, 32), 0.5))
    assert not torch.equal(first, second) and not torch.equal(first, c.draw((64, 32), 0.5))
    with pytest.raises(ValueError, match="contiguous float32"):
        a.draw_into(torch.empty(4, 4, dtype=torch.float64), 0.5)


def test_dropout_without_stream_is_torch_dropout():
    x = torch.randn(32, 16)
    ours, theirs = Dropout(0.3), nn.Dropout(0.3)
    torch.manual_seed(0)
    y_ours = ours(x)
    torch.manual_seed(0)
    assert torch.equal(y_ours, theirs(x))
    assert torch.equal(ours.eval()(x), x)


def test_mask_streams_attach_in_forward_order_and_detach():
    model = create_head("mlp_2", in_dim=8, out_dim=1, hidden=16, dropout=0.2, seed=0).train()
    x = torch.randn(5, 8)
    with mask_streams(model, seed=11, device="cpu"):
        model(x)
    assert all(m.stream is None for m in model.modules() if isinstance(m, Dropout))
    # the second Dropout's mask is the stream's second draw: replay both layers by hand
    stream = MaskStream(11)
    m1, m2 = stream.draw((5, 16), 0.2), stream.draw((5, 16), 0.2)
    lin1, lin2, lin3 = (m for m in model if isinstance(m, nn.Linear))
    with torch.no_grad():
        h = nn.functional.gelu(lin1(x)) * m1
        h = nn.functional.gelu(lin2(h)) * m2
        expected = lin3(h)
        with mask_streams(model, seed=11, device="cpu"):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_train_head_depends_on_its_recipe_seed_not_the_callers_rng():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = X @ rng.normal(size=6) + 0.1 * rng.normal(size=300)
    recipe = TrainRecipe(max_epochs=2, batch_size=64, seed=5)

    def fit(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)  # the caller's RNG must not matter
        model = create_head("mlp_1", 6, 1, hidden=32, dropout=0.5, seed=0)
        result = train_head(model, X, y, X[:50], y[:50], recipe=recipe, progress=False)
        return torch.cat([p.detach().flatten() for p in result.model.parameters()])

    assert torch.equal(fit(1), fit(2))
    other = TrainRecipe(max_epochs=2, batch_size=64, seed=6)
    model = create_head("mlp_1", 6, 1, hidden=32, dropout=0.5, seed=0)
    changed = train_head(model, X, y, X[:50], y[:50], recipe=other, progress=False)
    assert not torch.equal(torch.cat([p.detach().flatten() for p in changed.model.parameters()]), fit(1))
