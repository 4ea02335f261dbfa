"""Values and gradients of Gumbel-softmax and label-aware attention."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from strategies.gumbel import GumbelOptions, GumbelStrategy, gumbel_noise
from strategies.label_aware import LabelAwareOptions, LabelAwareStrategy, signed_power

torch.set_num_threads(1)


def make_inputs(
    batch: int, k: int, dim: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    interests = torch.randn(batch, k, dim, generator=generator, dtype=dtype)
    target = torch.randn(batch, dim, generator=generator, dtype=dtype)
    return interests, target


def test_gumbel_noise_is_standard_gumbel() -> None:
    noise = gumbel_noise(
        torch.Size([200_000]), torch.Generator().manual_seed(0), like=torch.zeros(1)
    )

    assert bool(torch.isfinite(noise).all())
    # A standard Gumbel has mean Euler's gamma and variance pi^2 / 6.
    assert noise.mean().item() == pytest.approx(0.5772156649, abs=0.01)
    assert noise.var().item() == pytest.approx(math.pi**2 / 6, abs=0.03)


def test_gumbel_hard_forward_is_one_interest() -> None:
    interests, target = make_inputs(batch=32, k=4, dim=6, seed=1)
    strategy = GumbelStrategy(GumbelOptions(tau=0.7, hard=True))

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(2))

    assert torch.equal(selection.vector, interests[torch.arange(32), selection.index])


def test_gumbel_hard_gradient_reaches_every_interest() -> None:
    interests, target = make_inputs(batch=16, k=4, dim=6, seed=3)
    interests.requires_grad_(True)
    strategy = GumbelStrategy(GumbelOptions(tau=1.0, hard=True))

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(4))
    selection.vector.sum().backward()

    assert bool((interests.grad.norm(dim=-1) > 0).all())


def test_gumbel_hard_gradient_is_straight_through() -> None:
    # Given the same noise, the soft and the straight-through vectors share
    # the gradient through the weights. They differ only in the direct
    # gradient to each interest: one_hot_k versus w_k.
    interests, target = make_inputs(batch=8, k=3, dim=4, seed=5, dtype=torch.float64)
    upstream = torch.randn(8, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grads = {}
    for hard in (True, False):
        leaf_interests = interests.clone().requires_grad_(True)
        leaf_target = target.clone().requires_grad_(True)
        strategy = GumbelStrategy(GumbelOptions(tau=0.5, hard=hard))
        selection = strategy.select(
            leaf_interests, leaf_target, 0, torch.Generator().manual_seed(7)
        )
        (selection.vector * upstream).sum().backward()
        grads[hard] = (leaf_interests.grad, leaf_target.grad, selection)

    soft_selection = grads[False][2]
    one_hot = torch.nn.functional.one_hot(grads[True][2].index, 3).to(torch.float64)
    direct_difference = (one_hot - soft_selection.probs).unsqueeze(-1) * upstream.unsqueeze(1)
    torch.testing.assert_close(grads[True][0] - grads[False][0], direct_difference)
    torch.testing.assert_close(grads[True][1], grads[False][1])
    assert torch.equal(grads[True][2].index, soft_selection.index)


def test_gumbel_soft_is_convex_mix() -> None:
    interests, target = make_inputs(batch=32, k=4, dim=6, seed=8)
    strategy = GumbelStrategy(GumbelOptions(tau=2.0, hard=False))

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(9))

    weights = selection.probs
    assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(32))
    torch.testing.assert_close(selection.vector, torch.einsum("bk,bkd->bd", weights, interests))
    assert torch.equal(selection.index, weights.argmax(dim=-1))
    # At tau 2 the mix is not a single interest.
    assert bool((weights.max(dim=-1).values < 1 - 1e-3).all())


def test_gumbel_soft_matches_finite_differences() -> None:
    interests, target = make_inputs(batch=3, k=3, dim=4, seed=10, dtype=torch.float64)
    strategy = GumbelStrategy(GumbelOptions(tau=0.8, hard=False))

    def vector(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # A fresh generator with a fixed seed keeps the noise equal across calls.
        return strategy.select(m, t, 0, torch.Generator().manual_seed(11)).vector

    assert torch.autograd.gradcheck(
        vector, (interests.requires_grad_(True), target.requires_grad_(True))
    )


def test_gumbel_hard_choice_follows_softmax() -> None:
    # Gumbel-max: argmax(logits + g) ~ Categorical(softmax(logits)) for every
    # tau, which is what the hard variant logs as probs.
    draws = 20_000
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    interests = torch.diag_embed(probs.log().expand(draws, -1))
    target = torch.ones(draws, 4)
    strategy = GumbelStrategy(GumbelOptions(tau=0.3, hard=True))

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(12))

    torch.testing.assert_close(selection.probs[0], probs)
    counts = torch.bincount(selection.index, minlength=4).tolist()
    assert chisquare(counts, (probs * draws).tolist()).pvalue > 0.01


def test_label_aware_matches_hand_computation() -> None:
    interests = torch.tensor([[[1.0, 1.0], [2.0, -1.0], [-1.0, 0.0]]])
    target = torch.tensor([[1.0, 0.0]])
    # The dot products are (1, 2, -1) and their signed squares (1, 4, -1).
    exps = [math.exp(1.0), math.exp(4.0), math.exp(-1.0)]
    weights = [e / sum(exps) for e in exps]
    vector = [
        weights[0] * 1.0 + weights[1] * 2.0 + weights[2] * -1.0,
        weights[0] * 1.0 + weights[1] * -1.0 + weights[2] * 0.0,
    ]

    selection = LabelAwareStrategy(LabelAwareOptions(p=2.0)).select(
        interests, target, 0, torch.Generator()
    )

    torch.testing.assert_close(selection.probs, torch.tensor([weights]))
    torch.testing.assert_close(selection.vector, torch.tensor([vector]))
    assert selection.index.tolist() == [1]


def test_label_aware_keeps_order_of_negative_logits() -> None:
    # With a plain square, the logit -3 would get the largest weight.
    interests = torch.diag_embed(torch.tensor([[0.5, -3.0, 1.0]]))
    target = torch.ones(1, 3)

    weights = (
        LabelAwareStrategy(LabelAwareOptions(p=2.0))
        .select(interests, target, 0, torch.Generator())
        .probs[0]
    )

    assert weights[1] < weights[0] < weights[2]


def test_label_aware_p_one_is_softmax_of_logits() -> None:
    interests, target = make_inputs(batch=10, k=4, dim=5, seed=13)

    selection = LabelAwareStrategy(LabelAwareOptions(p=1.0)).select(
        interests, target, 0, torch.Generator()
    )

    logits = torch.einsum("bkd,bd->bk", interests, target)
    torch.testing.assert_close(selection.probs, torch.softmax(logits, dim=-1))


def test_signed_power_values() -> None:
    values = torch.tensor([-8.0, -1.0, 0.0, 0.25, 4.0])

    torch.testing.assert_close(
        signed_power(values, 2.0), torch.tensor([-64.0, -1.0, 0.0, 0.0625, 16.0])
    )
    torch.testing.assert_close(
        signed_power(values, 0.5), torch.tensor([-math.sqrt(8.0), -1.0, 0.0, 0.5, 2.0])
    )
    torch.testing.assert_close(signed_power(values, 3.0), values**3)


def test_signed_power_gradient_finite_at_zero() -> None:
    values = torch.tensor([0.0, -0.0, 2.0], requires_grad=True)

    signed_power(values, 0.5).sum().backward()

    assert bool(torch.isfinite(values.grad).all())
    assert values.grad[:2].tolist() == [0.0, 0.0]
    assert values.grad[2].item() == pytest.approx(0.5 / math.sqrt(2.0))


@pytest.mark.parametrize("p", [0.5, 2.0, 3.0], ids=["p0.5", "p2", "p3"])
def test_label_aware_matches_finite_differences(p: float) -> None:
    interests, target = make_inputs(batch=3, k=3, dim=4, seed=14, dtype=torch.float64)
    strategy = LabelAwareStrategy(LabelAwareOptions(p=p))

    def vector(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return strategy.select(m, t, 0, torch.Generator()).vector

    assert torch.autograd.gradcheck(
        vector, (interests.requires_grad_(True), target.requires_grad_(True))
    )
