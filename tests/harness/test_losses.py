"""Negative samplers and softmax losses against hand computations and sampled frequencies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from harness.errors import ConfigError, DataError
from harness.losses import NegativeSampler, full_softmax_loss, sampled_softmax_loss

torch.set_num_threads(1)

# Entry 0 is padding; items 3 and 9 have count 0, items 2 and 4 tie.
COUNTS = np.array([7, 40, 12, 0, 12, 90, 3, 25, 1, 0, 60, 5])
N_ITEMS = len(COUNTS) - 1


def expected_probabilities(kind: str) -> np.ndarray:
    """Independent route to the per-item probabilities, items 1..N, padding excluded."""
    real = COUNTS[1:].astype(float)
    if kind == "uniform":
        return np.full(N_ITEMS, 1.0 / N_ITEMS)
    if kind == "popularity":
        return real / real.sum()
    # Rank by count, most popular first, lower id first among equal counts.
    order = sorted(range(N_ITEMS), key=lambda i: (-real[i], i))
    probs = np.zeros(N_ITEMS)
    for rank, index in enumerate(order):
        probs[index] = (math.log(rank + 2) - math.log(rank + 1)) / math.log(N_ITEMS + 1)
    return probs


@pytest.mark.parametrize("kind", ["uniform", "popularity", "log-uniform"])
def test_sampler_frequencies_chi_square(kind: str) -> None:
    sampler = NegativeSampler(COUNTS, kind)
    generator = torch.Generator().manual_seed(123)

    ids, log_q = sampler.sample(200_000, generator)

    assert ids.dtype == torch.int64
    assert log_q.dtype == torch.float32
    assert int(ids.min()) >= 1, "padding must never be drawn"
    assert int(ids.max()) <= N_ITEMS
    observed = np.bincount(ids.numpy(), minlength=N_ITEMS + 1)[1:]
    probs = expected_probabilities(kind)
    assert observed[probs == 0].sum() == 0, "zero-probability items must never be drawn"
    positive = probs > 0
    _, p_value = stats.chisquare(observed[positive], probs[positive] * observed.sum())
    assert p_value > 0.01


@pytest.mark.parametrize("kind", ["uniform", "popularity", "log-uniform"])
def test_sampler_log_q_equals_log_probability(kind: str) -> None:
    sampler = NegativeSampler(COUNTS, kind)
    probs = expected_probabilities(kind)

    ids, log_q = sampler.sample(500, torch.Generator().manual_seed(0))

    np.testing.assert_allclose(log_q.numpy(), np.log(probs[ids.numpy() - 1]), rtol=1e-6)
    np.testing.assert_allclose(sampler.probabilities[1:], probs, rtol=1e-12)
    assert sampler.probabilities[0] == 0.0
    targets = torch.tensor([1, 5, 11])
    np.testing.assert_allclose(sampler.log_q(targets).numpy(), np.log(probs[[0, 4, 10]]), rtol=1e-6)


def test_log_uniform_hand_values() -> None:
    # Item 2 is the most popular (rank 0), then item 1 (rank 1), then item 3 (rank 2).
    sampler = NegativeSampler(np.array([0, 5, 10, 1]), "log-uniform")
    expected = [
        math.log(3 / 2) / math.log(4),
        math.log(2) / math.log(4),
        math.log(4 / 3) / math.log(4),
    ]
    np.testing.assert_allclose(sampler.probabilities[1:], expected, rtol=1e-12)
    assert sampler.probabilities.sum() == pytest.approx(1.0)


def test_sampler_is_deterministic_per_seed() -> None:
    sampler = NegativeSampler(COUNTS, "popularity")
    first, _ = sampler.sample(64, torch.Generator().manual_seed(9))
    second, _ = sampler.sample(64, torch.Generator().manual_seed(9))
    other, _ = sampler.sample(64, torch.Generator().manual_seed(10))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_popularity_log_q_of_zero_count_target_raises() -> None:
    sampler = NegativeSampler(COUNTS, "popularity")
    with pytest.raises(DataError, match="item 3 has count 0"):
        sampler.log_q(torch.tensor([1, 3]))


def test_sampler_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="log-uniform, popularity, uniform"):
        NegativeSampler(COUNTS, "zipf")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (np.array([0]), "n_items >= 1"),
        (np.array([0, 3, -1]), r"item_counts\[2\]=-1"),
        (np.array([0, 3, np.nan]), r"item_counts\[2\]=nan"),
    ],
    ids=["too-short", "negative", "nan"],
)
def test_sampler_rejects_invalid_counts(counts: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        NegativeSampler(counts, "uniform")


def test_popularity_with_all_zero_counts_raises() -> None:
    with pytest.raises(DataError, match="every count is 0"):
        NegativeSampler(np.array([5, 0, 0]), "popularity")


def test_sampler_rejects_nonpositive_draws() -> None:
    with pytest.raises(ConfigError, match="n=0"):
        NegativeSampler(COUNTS).sample(0, torch.Generator())


def make_inputs(seed: int, batch: int = 6, n_items: int = 15, dim: int = 4):
    generator = torch.Generator().manual_seed(seed)
    user = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    item_emb = torch.randn(n_items + 1, dim, generator=generator, dtype=torch.float64)
    target = torch.randint(1, n_items + 1, (batch,), generator=generator)
    return user, target, item_emb


def test_sampled_with_all_items_equals_full_softmax() -> None:
    user, target, item_emb = make_inputs(0)
    # Make padding the best-scoring row, so including it by mistake would show.
    item_emb[0] = 10 * user.mean(0)
    negatives = torch.arange(1, item_emb.shape[0])

    sampled = sampled_softmax_loss(user, target, item_emb, negatives, remove_accidental_hits=True)
    full = full_softmax_loss(user, target, item_emb)

    assert sampled.item() == pytest.approx(full.item(), abs=1e-5)


def test_full_softmax_matches_hand_cross_entropy() -> None:
    user, target, item_emb = make_inputs(1)
    logits = user @ item_emb.T
    expected = -(
        logits[torch.arange(len(target)), target] - torch.logsumexp(logits[:, 1:], dim=1)
    ).mean()
    assert full_softmax_loss(user, target, item_emb).item() == pytest.approx(
        expected.item(), abs=1e-10
    )


def plain_reference(
    user, target, item_emb, negatives, neg_log_q=None, target_log_q=None, hits=True
):
    """Row-by-row -log softmax over [target, negatives] written without the library's code path."""
    losses = []
    for b in range(len(target)):
        pos = float(user[b] @ item_emb[target[b]])
        if target_log_q is not None:
            pos -= float(target_log_q[b])
        terms = [math.exp(pos)]
        for j, item in enumerate(negatives.tolist()):
            if hits and item == int(target[b]):
                continue
            logit = float(user[b] @ item_emb[item])
            if neg_log_q is not None:
                logit -= float(neg_log_q[j])
            terms.append(math.exp(logit))
        losses.append(-pos + math.log(sum(terms)))
    return sum(losses) / len(losses)


def test_sampled_with_log_q_and_hits_matches_reference() -> None:
    user, target, item_emb = make_inputs(2)
    sampler = NegativeSampler(np.arange(16), "popularity")
    negatives, neg_log_q = sampler.sample(30, torch.Generator().manual_seed(1))
    # Force accidental hits on two rows.
    negatives[0], negatives[1] = target[0], target[3]
    neg_log_q = sampler.log_q(negatives).double()
    target_log_q = sampler.log_q(target).double()

    loss = sampled_softmax_loss(user, target, item_emb, negatives, neg_log_q, target_log_q)
    expected = plain_reference(user, target, item_emb, negatives, neg_log_q, target_log_q)

    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_sampled_keeps_hits_when_asked() -> None:
    user, target, item_emb = make_inputs(3)
    negatives = torch.cat([target[:2], torch.tensor([1, 2, 3])])
    loss = sampled_softmax_loss(user, target, item_emb, negatives, remove_accidental_hits=False)
    expected = plain_reference(user, target, item_emb, negatives, hits=False)
    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_beta_zero_equals_plain_loss_exactly() -> None:
    user, target, item_emb = make_inputs(4)
    negatives = torch.tensor([1, 4, 4, 7, 9, 12, int(target[0])])
    log_q = torch.full((len(negatives),), -2.0, dtype=torch.float64)
    target_log_q = torch.full((len(target),), -2.0, dtype=torch.float64)
    args = (user, target, item_emb, negatives, log_q, target_log_q)

    plain = sampled_softmax_loss(*args)
    weighted_zero = sampled_softmax_loss(*args, beta=0.0)
    weighted_tiny = sampled_softmax_loss(*args, beta=1e-12)

    assert torch.equal(plain, weighted_zero)
    assert weighted_zero.item() == pytest.approx(plain_reference(*args), abs=1e-9)
    # The weighted code path at a vanishing beta reaches the same value.
    assert weighted_tiny.item() == pytest.approx(plain.item(), abs=1e-9)


def test_beta_positive_matches_hand_computation() -> None:
    # One row, D = 2, three negatives, no log-Q; scores: target 1.0, negatives 0.5, -1.0, 2.0.
    user = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    item_emb = torch.tensor(
        [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [-1.0, 0.0], [2.0, 0.0]], dtype=torch.float64
    )
    target = torch.tensor([1])
    negatives = torch.tensor([2, 3, 4])
    beta = 0.7

    loss = sampled_softmax_loss(user, target, item_emb, negatives, beta=beta)

    scores = [0.5, -1.0, 2.0]
    weights = [math.exp(beta * s) for s in scores]
    weights = [w / sum(weights) for w in weights]
    negative_mass = 3 * sum(w * math.exp(s) for w, s in zip(weights, scores, strict=True))
    expected = -1.0 + math.log(math.exp(1.0) + negative_mass)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_beta_positive_with_hits_and_log_q() -> None:
    # Row 0's second negative is its target: it leaves the weights and S' = 2.
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    item_emb = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, -1.0], [3.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([2, 1])
    negatives = torch.tensor([1, 2, 3])
    neg_log_q = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    target_log_q = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    beta = 1.3

    loss = sampled_softmax_loss(
        user, target, item_emb, negatives, neg_log_q, target_log_q, beta=beta
    )

    expected = []
    for b in range(2):
        raw = [float(user[b] @ item_emb[i]) for i in negatives.tolist()]
        keep = [j for j in range(3) if int(negatives[j]) != int(target[b])]
        weights = [math.exp(beta * raw[j]) for j in keep]
        weights = [w / sum(weights) for w in weights]
        corrected = [raw[j] - float(neg_log_q[j]) for j in keep]
        mass = len(keep) * sum(w * math.exp(c) for w, c in zip(weights, corrected, strict=True))
        pos = float(user[b] @ item_emb[target[b]]) - float(target_log_q[b])
        expected.append(-pos + math.log(math.exp(pos) + mass))
    assert loss.item() == pytest.approx(sum(expected) / 2, abs=1e-12)


@pytest.mark.parametrize("detach", [True, False])
def test_beta_gradient_follows_detach_option(detach: bool) -> None:
    base_user, _, item_emb = make_inputs(5, batch=3)
    target = torch.tensor([1, 3, 6])
    negatives = torch.tensor([2, 5, 8, 11])
    beta = 0.9

    user = base_user.clone().requires_grad_(True)
    sampled_softmax_loss(
        user, target, item_emb, negatives, beta=beta, detach_weights=detach
    ).backward()

    reference_user = base_user.clone().requires_grad_(True)
    pos = (reference_user * item_emb[target]).sum(1)
    neg = reference_user @ item_emb[negatives].T
    weight_source = neg.detach() if detach else neg
    weights = torch.softmax(beta * weight_source, dim=1)
    reference = (-pos + torch.log(pos.exp() + 4 * (weights * neg.exp()).sum(1))).mean()
    reference.backward()

    torch.testing.assert_close(user.grad, reference_user.grad, atol=1e-10, rtol=1e-8)


def test_all_hit_row_has_zero_loss() -> None:
    user, target, item_emb = make_inputs(6, batch=2)
    target = torch.tensor([3, 5])
    negatives = torch.tensor([3, 3])
    for beta in (0.0, 0.5):
        user_grad = user.clone().requires_grad_(True)
        loss = sampled_softmax_loss(user_grad, target, item_emb, negatives, beta=beta)
        loss.backward()
        row1 = -F.log_softmax(
            torch.stack([user[1] @ item_emb[5], user[1] @ item_emb[3], user[1] @ item_emb[3]]), 0
        )[0]
        if beta == 0.0:
            assert loss.item() == pytest.approx(row1.item() / 2, abs=1e-10)
        assert torch.isfinite(user_grad.grad).all()
        assert torch.all(user_grad.grad[0] == 0)


def test_sampled_loss_validates_inputs() -> None:
    user, target, item_emb = make_inputs(7)
    negatives = torch.tensor([1, 2])
    with pytest.raises(ConfigError, match="beta=-0.5"):
        sampled_softmax_loss(user, target, item_emb, negatives, beta=-0.5)
    with pytest.raises(ValueError, match="neg_log_q shape"):
        sampled_softmax_loss(user, target, item_emb, negatives, neg_log_q=torch.zeros(3))
    with pytest.raises(ValueError, match="target ids must be in 1..15"):
        sampled_softmax_loss(user, torch.zeros_like(target), item_emb, negatives)
    with pytest.raises(ValueError, match="must share D"):
        full_softmax_loss(user[:, :2], target, item_emb)
