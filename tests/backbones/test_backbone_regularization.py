"""REMI's routing regularization: hand-computed values, its zero, and REMI's auxiliary loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbones import build_backbone
from backbones.regularization import routing_regularization
from harness.errors import ConfigError


def test_hand_computed_value() -> None:
    # User 0 has 3 valid positions. The first position is padding and contains
    # a value that must be ignored. Interest 0 on them: 1/2, 1/4, 1/4; mean 1/3;
    # deviations 1/6, -1/12, -1/12; variance (1/36 + 1/144 + 1/144) / 3 = 1/72.
    # Interest 1: 1, 0, 0; mean 1/3; variance (4/9 + 1/9 + 1/9) / 3 = 2/9.
    # User 0's penalty: (1/72)^2 + (2/9)^2 = 1/5184 + 256/5184 = 257/5184.
    # User 1's attention is uniform over its 4 positions: penalty 0.
    # Mean over the two users: 257/10368.
    attention = torch.tensor(
        [
            [[0.9, 0.5, 0.25, 0.25], [0.3, 1.0, 0.0, 0.0]],
            [[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]],
        ],
        dtype=torch.float64,
    )
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    value = routing_regularization(attention, mask)
    assert value.dim() == 0
    assert value.item() == pytest.approx(257 / 10368, rel=1e-12)


def test_matches_covariance_diagonal() -> None:
    # Independent route: numpy's population covariance of each user's rows over the valid positions.
    generator = torch.Generator().manual_seed(0)
    lengths = [6, 3, 1, 4]
    mask = torch.arange(6).unsqueeze(0) >= 6 - torch.tensor(lengths).unsqueeze(1)
    logits = torch.randn(4, 3, 6, generator=generator, dtype=torch.float64)
    attention = torch.softmax(logits.masked_fill(~mask.unsqueeze(1), -1e9), dim=-1)

    expected = []
    for row in range(4):
        valid = attention[row][:, mask[row]].numpy()  # (K, n)
        covariance = np.atleast_2d(np.cov(valid, bias=True))
        expected.append(float(np.sum(np.diag(covariance) ** 2)))
    value = routing_regularization(attention, mask)
    assert value.item() == pytest.approx(np.mean(expected), rel=1e-12)


@pytest.mark.parametrize("length", [1, 2, 5], ids=["one-item", "two-items", "five-items"])
def test_zero_for_uniform_attention(length: int) -> None:
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 5 - length :] = True
    attention = mask.unsqueeze(1).expand(-1, 3, -1).double() / length
    attention = attention + (~mask).unsqueeze(1).double() * 0.7  # padding values are ignored
    assert routing_regularization(attention, mask).item() == 0.0


def test_one_hot_attention_hits_maximum() -> None:
    # All weight on one of n = 4 items: variance (n - 1) / n^2 = 3/16 per interest.
    attention = torch.zeros(1, 2, 4)
    attention[0, :, 2] = 1.0
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert routing_regularization(attention, mask).item() == pytest.approx(2 * (3 / 16) ** 2)


def test_row_without_items_contributes_zero() -> None:
    attention = torch.tensor([[[0.0, 1.0]], [[0.4, 0.6]]])
    mask = torch.tensor([[True, True], [False, False]])
    # User 0: variance 1/4, squared 1/16; user 1 adds nothing; the mean is over both users.
    assert routing_regularization(attention, mask).item() == pytest.approx(1 / 32)


def test_gradient_reaches_attention() -> None:
    attention = torch.tensor([[[0.7, 0.2, 0.1]]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    routing_regularization(attention, mask).backward()
    # d(var^2)/da_l = 2 var * 2 (a_l - mean) / n, because the deviations sum to zero.
    values = np.array([0.7, 0.2, 0.1])
    variance = np.mean((values - values.mean()) ** 2)
    expected = 2 * variance * 2 * (values - values.mean()) / 3
    np.testing.assert_allclose(attention.grad[0, 0].numpy(), expected, rtol=1e-5)


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="attention must be"):
        routing_regularization(torch.zeros(2, 3, 4), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention must be"):
        routing_regularization(torch.zeros(3, 4), torch.ones(3, 4, dtype=torch.bool))


def make_remi(**options: object) -> torch.nn.Module:
    return build_backbone(
        "remi", n_items=30, dim=8, num_interests=3, max_len=6, options=options, seed=0
    )


def test_remi_auxiliary_loss_is_weighted_regularization() -> None:
    model = make_remi(reg_lambda=2.5)
    history = torch.tensor([[0, 0, 4, 9, 11, 2], [0, 0, 0, 0, 7, 8]])
    mask = history != 0
    model(history, mask)
    expected = 2.5 * routing_regularization(model.attention(), mask)
    assert expected > 0
    torch.testing.assert_close(model.auxiliary_loss(), expected)


def test_remi_default_weight() -> None:
    # The weight of every run in the REMI README.
    assert make_remi().config.reg_lambda == 100.0


def test_remi_auxiliary_loss_trains_attention() -> None:
    model = make_remi()
    history = torch.tensor([[0, 3, 4, 9, 11, 2]])
    model(history, history != 0)
    model.auxiliary_loss().backward()
    assert model.extractor.heads.weight.grad.abs().sum() > 0
    assert model.extractor.hidden.weight.grad.abs().sum() > 0


def test_remi_zero_weight_gives_zero() -> None:
    model = make_remi(reg_lambda=0.0)
    assert model.auxiliary_loss().item() == 0.0
    history = torch.tensor([[0, 3, 4, 9, 11, 2]])
    model(history, history != 0)
    assert model.auxiliary_loss().item() == 0.0


def test_remi_negative_weight_rejected() -> None:
    with pytest.raises(ConfigError, match="reg_lambda=-1.0"):
        make_remi(reg_lambda=-1.0)
