"""Interest-balance metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.balance import (
    balance_summary,
    effective_interests,
    interest_recovery,
    interest_shares,
    interest_top_items,
    normalized_entropy,
    redundancy,
    selection_entropy,
)

torch.set_num_threads(1)


def test_interest_shares_hand_values() -> None:
    top = np.array([[0, 0, 1, 3], [2, 2, 2, 2], [1, -1, -1, 0]])

    shares = interest_shares(top, 4)

    np.testing.assert_allclose(shares[0], [0.5, 0.25, 0.0, 0.25])
    np.testing.assert_allclose(shares[1], [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(shares[2], [0.5, 0.5, 0.0, 0.0])


def test_interest_shares_empty_row_is_nan() -> None:
    shares = interest_shares(torch.tensor([[-1, -1], [0, 1]]), 2)
    assert np.isnan(shares[0]).all()
    np.testing.assert_allclose(shares[1], [0.5, 0.5])


def test_interest_shares_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="0..3"):
        interest_shares(np.array([[0, 4]]), 4)


def test_normalized_entropy_hand_values() -> None:
    shares = np.array(
        [
            [0.5, 0.5, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [1.0, 0.0, 0.0, 0.0],
            [0.7, 0.1, 0.1, 0.1],
        ]
    )
    expected_last = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)

    result = normalized_entropy(shares)

    assert result[0] == pytest.approx(math.log(2) / math.log(4))
    assert result[0] == pytest.approx(0.5)
    assert result[1] == pytest.approx(1.0)
    assert result[2] == 0.0
    assert result[3] == pytest.approx(expected_last)


def test_single_interest_entropy_is_nan() -> None:
    assert np.isnan(normalized_entropy(np.ones((3, 1)))).all()
    assert effective_interests(np.ones((3, 1))).tolist() == [1.0, 1.0, 1.0]


def test_effective_interests_hand_values() -> None:
    shares = np.array([[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(effective_interests(shares), [2.0, 4.0, 1.0])


def test_balance_summary_hand_values() -> None:
    shares = np.array([[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [np.nan] * 4])

    summary = balance_summary(shares)

    assert summary["entropy_norm"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["effective_interests"] == pytest.approx((2.0 + 4.0) / 2)
    assert summary["max_share"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["unused_fraction"] == pytest.approx(0.5)


def test_balance_summary_single_interest() -> None:
    summary = balance_summary(np.ones((4, 1)))
    assert math.isnan(summary["entropy_norm"])
    assert summary["effective_interests"] == 1.0
    assert summary["max_share"] == 1.0
    assert summary["unused_fraction"] == 0.0


def test_redundancy_hand_values() -> None:
    # Pairs: (x, y) cosine 0, (x, x+y) and (y, x+y) cosine 1/sqrt(2).
    first = [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]
    # Identical directions: cosine 1; a zero vector has cosine 0 with everything.
    second = [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]
    interests = torch.tensor([first, second])

    result = redundancy(interests)

    assert result[0] == pytest.approx(math.sqrt(2) / 3)
    assert result[1] == pytest.approx(1.0 / 3)


def test_redundancy_single_interest_is_nan() -> None:
    assert np.isnan(redundancy(np.ones((2, 1, 3)))).all()


def test_selection_entropy_hand_values() -> None:
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert selection_entropy(np.array([30, 10])) == pytest.approx(expected)
    assert selection_entropy(torch.tensor([5.0, 5.0, 5.0])) == pytest.approx(1.0)
    assert selection_entropy(np.array([4, 0, 0])) == 0.0
    assert math.isnan(selection_entropy(np.array([0, 0])))
    assert math.isnan(selection_entropy(np.array([7])))


def test_interest_top_items_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    interests = torch.randint(-2, 3, (3, 2, 4), generator=generator).float()
    item_emb = torch.randint(-2, 3, (31, 4), generator=generator).float()
    item_emb[0] = 100.0

    lists = interest_top_items(interests, item_emb, k=5)

    assert lists.shape == (3, 2, 5)
    for b in range(3):
        for k in range(2):
            scores = (item_emb @ interests[b, k]).tolist()
            expected = sorted(range(1, 31), key=lambda i: (-scores[i], i))[:5]
            assert lists[b, k].tolist() == expected


def test_interest_recovery_hand_values() -> None:
    # Topics 0..2; items 1-4 are topic 0, items 5-8 topic 1, items 9-12 topic 2.
    item_topic = np.array([0] + [0] * 4 + [1] * 4 + [2] * 4)
    lists = np.array(
        [
            # User 0: interests point at topics 0, 1 (3 of 4 items) and 0 again.
            [[1, 2, 3, 9], [5, 6, 7, 1], [2, 3, 4, 4]],
            # User 1: a 2-2 tie between topics 1 and 2 goes to topic 1; the empty list is skipped.
            [[5, 6, 9, 10], [0, 0, 0, 0], [11, 12, 9, 5]],
            # User 2: no planted topic reaches the threshold.
            [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]],
        ]
    )
    weights = np.array([[0.5, 0.3, 0.2], [0.05, 0.6, 0.35], [0.05, 0.05, 0.05]])

    result = interest_recovery(lists, item_topic, weights, min_weight=0.1)

    # User 0: planted {0, 1, 2}, recovered {0, 1}. User 1: planted {1, 2}, recovered {1, 2}.
    assert result[0] == pytest.approx(2 / 3)
    assert result[1] == pytest.approx(1.0)
    assert np.isnan(result[2])


def test_interest_recovery_rejects_unknown_topics() -> None:
    with pytest.raises(ValueError, match="0..1"):
        interest_recovery(np.ones((1, 1, 2), dtype=int), np.array([0, 2]), np.ones((1, 2)))
