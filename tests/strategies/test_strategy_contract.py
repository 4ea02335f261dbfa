"""Contract checks that every registered strategy must pass."""

from __future__ import annotations

import pytest
import torch

from strategies import REGISTRY, build_strategy
from strategies.base import Selection, Strategy

torch.set_num_threads(1)

NAMES = sorted(REGISTRY)

# Strategies whose loss reaches only the chosen interest, and those that mix.
SAMPLING = ("argmax", "bam", "annealed", "uniform")
SOFT_OPTIONS = {
    "gumbel-soft": ("gumbel", {"hard": False}),
    "gumbel-hard": ("gumbel", {"hard": True}),
    "label-aware": ("label-aware", {}),
}


def make_inputs(
    batch: int = 6, k: int = 4, dim: int = 5, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    interests = torch.randn(batch, k, dim, generator=generator, dtype=dtype)
    target = torch.randn(batch, dim, generator=generator, dtype=dtype)
    return interests, target


def test_every_strategy_is_registered() -> None:
    assert set(REGISTRY) == {"argmax", "bam", "gumbel", "annealed", "uniform", "label-aware"}
    assert set(SAMPLING) | {"gumbel", "label-aware"} == set(REGISTRY)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_strategy_fulfils_protocol(name: str) -> None:
    strategy = build_strategy(name, total_steps=100)

    assert isinstance(strategy, Strategy)
    assert isinstance(strategy.options, REGISTRY[name].options_class)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_selection_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    interests, target = make_inputs(batch=7, k=4, dim=5, dtype=dtype)
    strategy = build_strategy(name, total_steps=100)

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(1))

    assert isinstance(selection, Selection)
    assert selection.vector.shape == (7, 5)
    assert selection.vector.dtype == dtype
    assert selection.index.shape == (7,)
    assert selection.index.dtype == torch.int64
    assert selection.probs.shape == (7, 4)
    assert selection.probs.dtype == dtype
    assert bool(((selection.index >= 0) & (selection.index < 4)).all())


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_probs_are_distributions(name: str) -> None:
    interests, target = make_inputs(batch=9, k=5, dim=3)
    interests.requires_grad_(True)
    strategy = build_strategy(name, total_steps=100)

    probs = strategy.select(interests, target, 10, torch.Generator().manual_seed(2)).probs

    assert not probs.requires_grad
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(9))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_single_interest_always_selected(name: str) -> None:
    interests, target = make_inputs(batch=4, k=1, dim=3)
    strategy = build_strategy(name, total_steps=100)

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(3))

    assert selection.index.tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(selection.vector, interests[:, 0])
    torch.testing.assert_close(selection.probs, torch.ones(4, 1))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_same_seed_same_selection(name: str) -> None:
    interests, target = make_inputs(batch=64, k=4, dim=3)
    strategy = build_strategy(name, total_steps=100)

    first = strategy.select(interests, target, 5, torch.Generator().manual_seed(7))
    second = strategy.select(interests, target, 5, torch.Generator().manual_seed(7))

    assert torch.equal(first.index, second.index)
    assert torch.equal(first.vector, second.vector)
    assert torch.equal(first.probs, second.probs)


@pytest.mark.parametrize("name", ["bam", "gumbel", "annealed", "uniform"])
def test_different_seeds_differ(name: str) -> None:
    # Equal logits make every interest equally likely, so 64 rows drawn from
    # two seeds agree everywhere with probability 4 ** -64.
    interests = torch.ones(64, 4, 3)
    target = torch.ones(64, 3)
    strategy = build_strategy(name, total_steps=100)

    first = strategy.select(interests, target, 0, torch.Generator().manual_seed(1))
    second = strategy.select(interests, target, 0, torch.Generator().manual_seed(2))

    assert not torch.equal(first.index, second.index)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_global_rng_untouched(name: str) -> None:
    interests, target = make_inputs()
    strategy = build_strategy(name, total_steps=100)
    before = torch.get_rng_state()

    strategy.select(interests, target, 0, torch.Generator().manual_seed(0))

    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_gradient_reaches_chosen_interest_only(name: str) -> None:
    interests, target = make_inputs(batch=8, k=4, dim=5, seed=4)
    interests.requires_grad_(True)
    target.requires_grad_(True)
    upstream = torch.randn(8, 5, generator=torch.Generator().manual_seed(5))
    strategy = build_strategy(name, total_steps=100)

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(6))
    (selection.vector * upstream).sum().backward()

    expected = torch.zeros_like(interests)
    expected[torch.arange(8), selection.index] = upstream
    assert torch.equal(interests.grad, expected)
    # The draw carries no gradient, so the target is outside the graph.
    assert target.grad is None


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_vector_is_chosen_interest(name: str) -> None:
    interests, target = make_inputs(batch=8, k=4, dim=5, seed=8)
    strategy = build_strategy(name, total_steps=100)

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(9))

    assert torch.equal(selection.vector, interests[torch.arange(8), selection.index])


@pytest.mark.parametrize("name, options", SOFT_OPTIONS.values(), ids=list(SOFT_OPTIONS))
def test_soft_gradient_reaches_every_interest(name: str, options: dict[str, object]) -> None:
    interests, target = make_inputs(batch=8, k=4, dim=5, seed=10)
    interests.requires_grad_(True)
    target.requires_grad_(True)
    upstream = torch.randn(8, 5, generator=torch.Generator().manual_seed(11))
    strategy = build_strategy(name, options)

    selection = strategy.select(interests, target, 0, torch.Generator().manual_seed(12))
    (selection.vector * upstream).sum().backward()

    per_interest = interests.grad.norm(dim=-1)  # (B, K)
    assert bool((per_interest > 0).all())
    assert bool((target.grad.norm(dim=-1) > 0).all())


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_mismatched_shapes_raise(name: str) -> None:
    interests, _ = make_inputs(batch=4, k=3, dim=5)
    strategy = build_strategy(name, total_steps=100)

    with pytest.raises(ValueError, match=r"expected interests \(B, K, D\)"):
        strategy.select(interests, torch.zeros(4, 6), 0, torch.Generator())
    with pytest.raises(ValueError, match=r"expected interests \(B, K, D\)"):
        strategy.select(interests, torch.zeros(3, 5), 0, torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_cuda_tensors_with_either_generator(name: str, generator_device: str) -> None:
    interests, target = make_inputs(batch=16, k=4, dim=5)
    interests, target = interests.cuda(), target.cuda()
    strategy = build_strategy(name, total_steps=100)
    generator = torch.Generator(device=generator_device).manual_seed(0)

    selection = strategy.select(interests, target, 0, generator)

    assert selection.vector.device.type == "cuda"
    assert selection.index.device.type == "cuda"
    assert selection.probs.device.type == "cuda"
