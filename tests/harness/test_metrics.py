"""Full-ranking metrics against a per-user brute-force reference with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.errors import ConfigError
from harness.metrics import (
    check_ks,
    list_metrics,
    metric_names,
    ranked_items,
    ranking_metrics,
    top_k_items,
)

torch.set_num_threads(1)


def brute_force_ranking(row: list[float]) -> list[int]:
    """Item ids 1..N with a finite score, best first; equal scores: lower id first."""
    items = [i for i in range(1, len(row)) if row[i] != -math.inf]
    return sorted(items, key=lambda i: (-row[i], i))


def brute_force_metrics(row: list[float], targets: list[int], k: int) -> dict[str, float]:
    ranking = brute_force_ranking(row)[:k]
    target_set = set(targets)
    positions = [pos for pos, item in enumerate(ranking) if item in target_set]
    dcg = sum(1.0 / math.log2(pos + 2) for pos in positions)
    idcg = sum(1.0 / math.log2(j + 2) for j in range(min(k, len(target_set))))
    return {
        "recall": len(positions) / len(target_set),
        "ndcg": dcg / idcg,
        "hit": 1.0 if positions else 0.0,
        "mrr": 1.0 / (positions[0] + 1) if positions else 0.0,
    }


def to_csr(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    return torch.from_numpy(offsets), torch.from_numpy(values)


def random_case(
    seed: int, n_rows: int, n_items: int, multi: bool
) -> tuple[torch.Tensor, list[list[int]]]:
    rng = np.random.default_rng(seed)
    # Small integer scores make ties common, including ties across the top-K cut.
    scores = rng.integers(0, 6, size=(n_rows, n_items + 1)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    targets = []
    for _ in range(n_rows):
        count = int(rng.integers(1, 8)) if multi else 1
        # Repeats are allowed on purpose: a repeated target counts once.
        targets.append(rng.integers(1, n_items + 1, size=count).tolist())
    return torch.from_numpy(scores), targets


KS = (1, 5, 10, 20, 80)


@pytest.mark.parametrize("multi", [False, True], ids=["leave-one-out", "user-split"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force(multi: bool, seed: int) -> None:
    scores, targets = random_case(seed, n_rows=40, n_items=60, multi=multi)
    offsets, values = to_csr(targets)

    result = ranking_metrics(scores, offsets, values, ks=KS)

    assert list(result) == metric_names(KS)
    for b in range(len(targets)):
        row = scores[b].tolist()
        for k in KS:
            expected = brute_force_metrics(row, targets[b], k)
            for name, value in expected.items():
                assert result[f"{name}@{k}"][b] == pytest.approx(value, abs=1e-6), (b, name, k)


def test_metrics_hand_example() -> None:
    # Ranking: 1 (0.9), 3 (0.7), 2 (0.5), 4 (0.1); targets 2 and 4 sit at ranks 3 and 4.
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7, 0.1]])
    offsets, values = to_csr([[2, 4]])

    result = ranking_metrics(scores, offsets, values, ks=(2, 3, 4))

    assert result["recall@2"][0] == 0.0
    assert result["recall@3"][0] == pytest.approx(0.5)
    assert result["recall@4"][0] == pytest.approx(1.0)
    assert result["ndcg@3"][0] == pytest.approx(0.5 / (1.0 + 1.0 / math.log2(3)))
    assert result["ndcg@4"][0] == pytest.approx(
        (0.5 + 1.0 / math.log2(5)) / (1.0 + 1.0 / math.log2(3))
    )
    assert result["hit@2"][0] == 0.0
    assert result["hit@3"][0] == 1.0
    assert result["mrr@3"][0] == pytest.approx(1.0 / 3.0)
    assert result["mrr@2"][0] == 0.0


def test_padding_column_never_ranked() -> None:
    scores = torch.tensor([[100.0, 1.0, 2.0, 3.0]])
    offsets, values = to_csr([[3]])

    result = ranking_metrics(scores, offsets, values, ks=(1,))

    assert result["hit@1"][0] == 1.0
    assert ranked_items(scores, 4).tolist() == [[3, 2, 1, 0]]
    assert scores[0, 0] == 100.0, "the caller's scores must not be modified"


def test_ties_rank_lower_id_first() -> None:
    scores = torch.zeros(1, 11)
    scores[0, 0] = float("-inf")
    offsets, values = to_csr([[4]])

    result = ranking_metrics(scores, offsets, values, ks=(3, 4))

    assert result["hit@3"][0] == 0.0
    assert result["hit@4"][0] == 1.0
    assert result["mrr@4"][0] == pytest.approx(0.25)


def test_top_k_items_matches_brute_force_order() -> None:
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.integers(0, 3, size=(30, 200)).astype(np.float32))

    for k in (1, 7, 50, 199, 200, 300):
        values, ids = top_k_items(scores, k)
        for b in range(scores.shape[0]):
            row = scores[b].tolist()
            expected = sorted(range(200), key=lambda i: (-row[i], i))[:k]
            assert ids[b].tolist() == expected, (b, k)
            assert values[b].tolist() == [row[i] for i in expected]


def test_unranked_items_leave_empty_slots() -> None:
    inf = float("-inf")
    scores = torch.tensor([[0.0, 2.0, inf, 1.0, inf]])
    offsets, values = to_csr([[2]])

    assert ranked_items(scores, 4).tolist() == [[1, 3, 0, 0]]
    result = ranking_metrics(scores, offsets, values, ks=(4,))
    assert result["hit@4"][0] == 0.0
    assert result["recall@4"][0] == 0.0


def test_list_metrics_short_lists() -> None:
    top = torch.tensor([[5, 2, 0], [1, 0, 0]])
    offsets, values = to_csr([[2, 9], [3]])

    result = list_metrics(top, offsets, values, ks=(1, 10))

    assert result["recall@10"].tolist() == [0.5, 0.0]
    assert result["mrr@10"].tolist() == [0.5, 0.0]
    assert result["hit@1"].tolist() == [0.0, 0.0]
    assert result["ndcg@10"][0] == pytest.approx((1.0 / math.log2(3)) / (1.0 + 1.0 / math.log2(3)))


def test_empty_batch_returns_empty_arrays() -> None:
    result = ranking_metrics(
        torch.zeros(0, 5),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        ks=(2,),
    )
    assert all(len(v) == 0 for v in result.values())


def test_nan_scores_raise() -> None:
    scores = torch.tensor([[0.0, 1.0, float("nan"), 0.5]])
    offsets, values = to_csr([[1]])
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(scores, offsets, values, ks=(2,))


def test_user_without_target_raises() -> None:
    offsets = torch.tensor([0, 1, 1])
    values = torch.tensor([2])
    with pytest.raises(ValueError, match="row 1 has no target"):
        ranking_metrics(torch.zeros(2, 4), offsets, values, ks=(2,))


@pytest.mark.parametrize("bad", [0, 4], ids=["padding", "beyond-n"])
def test_target_out_of_range_raises(bad: int) -> None:
    offsets, values = to_csr([[bad]])
    with pytest.raises(ValueError, match="1..3"):
        ranking_metrics(torch.zeros(1, 4), offsets, values, ks=(2,))


def test_check_ks() -> None:
    assert check_ks([20, 10, 20]) == (20, 10)
    with pytest.raises(ConfigError, match="K=0"):
        check_ks([10, 0])
    with pytest.raises(ConfigError, match="at least one K"):
        check_ks([])
