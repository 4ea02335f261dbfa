"""Values of argmax, BaM, annealed and uniform selection against hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare, kstest

from strategies import build_strategy
from strategies.annealed import SCHEDULES, AnnealedOptions, AnnealedStrategy, Schedule
from strategies.argmax import ArgmaxStrategy
from strategies.bam import BamStrategy
from strategies.uniform import UniformStrategy

torch.set_num_threads(1)

DRAWS = 20_000
# Hand-made selection probabilities. BaM should reproduce them as frequencies.
PROBS = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)


def interests_with_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Build interests and targets whose dot products are exactly ``logits (B, K)``.

    Interest k of row b is ``logits[b, k] * e_k`` and the target is all ones.
    """
    batch, k = logits.shape
    interests = torch.diag_embed(logits)  # (B, K, K)
    target = torch.ones(batch, k, dtype=logits.dtype)
    return interests, target


def counts_of(index: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(index, minlength=k).tolist()


def test_argmax_picks_largest_dot_product() -> None:
    interests = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]],
            [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]],
            [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]],
        ]
    )
    # Dot products: row 0 (2, -1, -1), row 1 (-1, 3, -2), row 2 (-1, -1, 2).
    target = torch.tensor([[2.0, -1.0], [-1.0, 3.0], [-1.0, -1.0]])

    selection = ArgmaxStrategy().select(interests, target, 0, torch.Generator())

    assert selection.index.tolist() == [0, 1, 2]
    assert torch.equal(selection.vector, interests[[0, 1, 2], [0, 1, 2]])
    assert torch.equal(selection.probs, torch.eye(3))


def test_argmax_tie_goes_to_lowest_index() -> None:
    interests, target = interests_with_logits(torch.tensor([[1.0, 3.0, 3.0]]))

    selection = ArgmaxStrategy().select(interests, target, 0, torch.Generator())

    assert selection.index.tolist() == [1]


def test_bam_frequencies_match_softmax() -> None:
    logits = PROBS.log().expand(DRAWS, -1)
    interests, target = interests_with_logits(logits)

    selection = BamStrategy().select(interests, target, 0, torch.Generator().manual_seed(0))

    torch.testing.assert_close(selection.probs[0], PROBS)
    counts = counts_of(selection.index, 4)
    assert chisquare(counts, (PROBS * DRAWS).tolist()).pvalue > 0.01
    # The same counts are far from uniform, so the check above can fail.
    assert chisquare(counts).pvalue < 1e-6


def test_bam_same_seed_same_draws() -> None:
    interests, target = interests_with_logits(PROBS.log().expand(500, -1))
    strategy = BamStrategy()

    first = strategy.select(interests, target, 0, torch.Generator().manual_seed(42)).index
    second = strategy.select(interests, target, 0, torch.Generator().manual_seed(42)).index
    other = strategy.select(interests, target, 0, torch.Generator().manual_seed(43)).index

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_annealed_at_tau_one_equals_bam() -> None:
    logits = torch.randn(2_000, 5, generator=torch.Generator().manual_seed(1))
    interests, target = interests_with_logits(logits)
    annealed = AnnealedStrategy(AnnealedOptions(tau_start=1.0, tau_end=1.0, steps=10))

    for step in (0, 5, 50):
        bam = BamStrategy().select(interests, target, step, torch.Generator().manual_seed(step))
        ours = annealed.select(interests, target, step, torch.Generator().manual_seed(step))
        assert torch.equal(ours.index, bam.index)
        torch.testing.assert_close(ours.probs, bam.probs, rtol=0, atol=0)


def test_annealed_default_start_is_bam() -> None:
    logits = torch.randn(1_000, 4, generator=torch.Generator().manual_seed(2))
    interests, target = interests_with_logits(logits)
    annealed = build_strategy("annealed", total_steps=1_000)

    bam = BamStrategy().select(interests, target, 0, torch.Generator().manual_seed(3))
    ours = annealed.select(interests, target, 0, torch.Generator().manual_seed(3))

    assert annealed.temperature(0) == 1.0
    assert torch.equal(ours.index, bam.index)


def test_annealed_small_tau_is_argmax() -> None:
    # Each row is the hand-made distribution in a different order, so the
    # argmax moves. The smallest logit gap, log(1.5), is over 4000 times tau.
    permutations = torch.stack(
        [torch.randperm(4, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    )
    logits = PROBS.log()[permutations].repeat(500, 1)  # (4000, 4)
    interests, target = interests_with_logits(logits)
    annealed = AnnealedStrategy(AnnealedOptions(tau_start=1e-4, tau_end=1e-4, steps=1))

    selection = annealed.select(interests, target, 0, torch.Generator().manual_seed(4))

    assert torch.equal(selection.index, logits.argmax(dim=-1))


def test_annealed_step_moves_towards_argmax() -> None:
    # At step 0 (tau 1) the draws are spread. Past the schedule (tau 1e-4)
    # they all equal the argmax.
    interests, target = interests_with_logits(PROBS.log().expand(4_000, -1))
    annealed = AnnealedStrategy(AnnealedOptions(tau_start=1.0, tau_end=1e-4, steps=100))

    early = annealed.select(interests, target, 0, torch.Generator().manual_seed(5))
    late = annealed.select(interests, target, 150, torch.Generator().manual_seed(5))

    assert len(set(early.index.tolist())) == 4
    assert set(late.index.tolist()) == {0}


# (schedule, tau at steps 0, 25, 50, 100, 150) for tau_start 1.0, tau_end 0.01, steps 100.
SCHEDULE_VALUES = [
    ("exponential", [1.0, 0.01**0.25, 0.1, 0.01, 0.01]),
    ("linear", [1.0, 1.0 - 0.99 * 0.25, 0.505, 0.01, 0.01]),
    ("cosine", [1.0, 0.01 + 0.495 * (1 + math.sqrt(0.5)), 0.505, 0.01, 0.01]),
]


@pytest.mark.parametrize("schedule, expected", SCHEDULE_VALUES, ids=[s for s, _ in SCHEDULE_VALUES])
def test_schedule_values(schedule: Schedule, expected: list[float]) -> None:
    annealed = AnnealedStrategy(
        AnnealedOptions(tau_start=1.0, tau_end=0.01, steps=100, schedule=schedule)
    )

    values = [annealed.temperature(step) for step in (0, 25, 50, 100, 150)]

    assert values == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedule_can_rise(schedule: Schedule) -> None:
    annealed = AnnealedStrategy(
        AnnealedOptions(tau_start=0.5, tau_end=2.0, steps=10, schedule=schedule)
    )

    values = [annealed.temperature(step) for step in range(12)]

    assert values[0] == pytest.approx(0.5)
    assert values[10] == pytest.approx(2.0)
    assert values == sorted(values)


def test_schedule_names_match_literal() -> None:
    from typing import get_args

    assert set(SCHEDULES) == set(get_args(Schedule))


def test_negative_step_raises() -> None:
    annealed = AnnealedStrategy(AnnealedOptions(steps=10))

    with pytest.raises(ValueError, match="step=-1"):
        annealed.temperature(-1)


def test_uniform_is_uniform() -> None:
    # Strongly skewed logits must not change the uniform draw. Seed 0 would give
    # p = 0.0014, a 1-in-700 draw. The test over 40 seeds below shows it is chance.
    interests, target = interests_with_logits(
        torch.tensor([10.0, 0.0, -3.0, 1.0, 2.0]).expand(DRAWS, -1)
    )

    selection = UniformStrategy().select(interests, target, 0, torch.Generator().manual_seed(1))

    counts = counts_of(selection.index, 5)
    assert chisquare(counts).pvalue > 0.01
    # The same counts against BaM-like skewed frequencies are rejected.
    skewed = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1]) * DRAWS
    assert chisquare(counts, skewed.tolist()).pvalue < 1e-6
    torch.testing.assert_close(selection.probs, torch.full((DRAWS, 5), 0.2))


def test_uniform_pvalues_uniform_over_seeds() -> None:
    # Under a uniform draw the chi-square p-value is itself uniform over seeds.
    interests, target = interests_with_logits(torch.zeros(5_000, 5))
    pvalues = []
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        index = UniformStrategy().select(interests, target, 0, generator).index
        pvalues.append(chisquare(counts_of(index, 5)).pvalue)

    assert kstest(pvalues, "uniform").pvalue > 0.01
