"""Batched evaluation against manual scoring with a fake model of fixed interests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.data.types import EvalSet, Ragged
from harness.errors import ConfigError, DataError
from harness.evaluate import evaluate, greedy_lists

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


class FakeModel(nn.Module):
    """Returns the interests stored for the most recent history item, and records its calls."""

    def __init__(self, item_emb: torch.Tensor, interest_table: torch.Tensor) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding.from_pretrained(item_emb, freeze=False)
        self.register_buffer("interest_table", interest_table)  # (N + 1, K, D)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool, bool]] = []

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls.append((history.clone(), mask.clone(), self.training, torch.is_grad_enabled()))
        return self.interest_table[history[:, -1]]  # (B, K, D)


def make_eval_set(histories: list[list[int]], targets: list[list[int]]) -> EvalSet:
    return EvalSet(
        np.arange(100, 100 + len(histories)),
        Ragged.from_lists(histories),
        Ragged.from_lists(targets),
    )


def manual_results(
    model: FakeModel,
    histories: list[list[int]],
    targets: list[list[int]],
    ks: tuple[int, ...],
    balance_k: int,
    exclude_history: bool = True,
) -> list[dict[str, float]]:
    """Score, rank and measure one user at a time with plain Python."""
    item_emb = model.item_embedding.weight.detach().double().numpy()
    rows = []
    for history, user_targets in zip(histories, targets, strict=True):
        interests = model.interest_table[history[-1]].double().numpy()  # (K, D)
        per_interest = interests @ item_emb.T  # (K, N + 1)
        scores = per_interest.max(axis=0).tolist()
        if exclude_history:
            for item in history:
                if item not in user_targets:
                    scores[item] = -math.inf
        ranking = sorted(
            (i for i in range(1, len(scores)) if scores[i] != -math.inf),
            key=lambda i: (-scores[i], i),
        )
        target_set = set(user_targets)
        row: dict[str, float] = {}
        for k in ks:
            positions = [p for p, item in enumerate(ranking[:k]) if item in target_set]
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(target_set))))
            row[f"recall@{k}"] = len(positions) / len(target_set)
            row[f"ndcg@{k}"] = sum(1 / math.log2(p + 2) for p in positions) / idcg
            row[f"hit@{k}"] = float(bool(positions))
            row[f"mrr@{k}"] = 1 / (positions[0] + 1) if positions else 0.0
        counts = [0] * interests.shape[0]
        listed = ranking[:balance_k]
        for item in listed:
            column = per_interest[:, item].tolist()
            counts[column.index(max(column))] += 1
        for k, count in enumerate(counts):
            row[f"share_{k}"] = count / len(listed)
        rows.append(row)
    return rows


def random_case(
    seed: int, n_items: int = 40, dim: int = 4, num_interests: int = 3, n_users: int = 25
):
    rng = np.random.default_rng(seed)
    # Integer embeddings make score ties common.
    item_emb = torch.from_numpy(rng.integers(-2, 3, size=(n_items + 1, dim)).astype(np.float32))
    table = torch.from_numpy(
        rng.integers(-2, 3, size=(n_items + 1, num_interests, dim)).astype(np.float32)
    )
    histories, targets = [], []
    for _ in range(n_users):
        history = rng.integers(1, n_items + 1, size=int(rng.integers(1, 12))).tolist()
        user_targets = rng.integers(1, n_items + 1, size=int(rng.integers(1, 4))).tolist()
        if rng.random() < 0.3:
            user_targets.append(history[0])  # a target that also occurs in the history
        histories.append(history)
        targets.append(user_targets)
    return FakeModel(item_emb, table), histories, targets


@pytest.mark.parametrize("batch_size", [1, 7, 512])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_evaluate_matches_manual_scoring(batch_size: int, exclude_history: bool) -> None:
    model, histories, targets = random_case(seed=batch_size)
    ks, balance_k = (1, 5, 10, 60), 6

    result = evaluate(
        model,
        make_eval_set(histories, targets),
        n_items=40,
        max_len=5,
        ks=ks,
        batch_size=batch_size,
        balance_k=balance_k,
        exclude_history=exclude_history,
    )

    expected = manual_results(model, histories, targets, ks, balance_k, exclude_history)
    assert len(result.per_user) == len(histories)
    for b, row in enumerate(expected):
        for name, value in row.items():
            assert result.per_user[name].iloc[b] == pytest.approx(value, abs=1e-6), (b, name)


def test_result_layout_and_means() -> None:
    model, histories, targets = random_case(seed=3)
    eval_set = make_eval_set(histories, targets)

    result = evaluate(model, eval_set, n_items=40, max_len=5, ks=(5, 20), balance_k=4)

    metric_columns = [f"{m}@{k}" for m in ("recall", "ndcg", "hit", "mrr") for k in (5, 20)]
    share_columns = ["share_0", "share_1", "share_2"]
    assert list(result.per_user.columns) == ["user", *metric_columns, *share_columns, "redundancy"]
    assert result.per_user["user"].tolist() == eval_set.users.tolist()
    assert list(result.summary) == metric_columns
    for name in metric_columns:
        assert result.summary[name] == pytest.approx(result.per_user[name].mean())
    np.testing.assert_allclose(result.per_user[share_columns].sum(axis=1), 1.0)
    assert set(result.balance) == {
        "entropy_norm",
        "effective_interests",
        "max_share",
        "unused_fraction",
        "redundancy",
    }
    assert result.balance["max_share"] == pytest.approx(
        result.per_user[share_columns].max(axis=1).mean()
    )
    assert result.balance["redundancy"] == pytest.approx(result.per_user["redundancy"].mean())


def test_redundancy_column_matches_hand_cosine() -> None:
    item_emb = torch.eye(3)
    table = torch.zeros(3, 2, 3)
    table[1] = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    model = FakeModel(item_emb, table)

    result = evaluate(
        model, make_eval_set([[1]], [[2]]), n_items=2, max_len=3, ks=(1,), balance_k=2
    )

    assert result.per_user["redundancy"].iloc[0] == pytest.approx(1 / math.sqrt(2))


def one_interest_model(item_scores: list[float]) -> FakeModel:
    """Item i has embedding (score_i, 0); every user has the single interest (1, 0)."""
    item_emb = torch.tensor([[s, 0.0] for s in item_scores])
    table = torch.zeros(len(item_scores), 1, 2)
    table[:, 0, 0] = 1.0
    return FakeModel(item_emb, table)


def test_history_excluded_but_targets_ranked() -> None:
    # Scores fall with the id: item 1 is best. Items 1 and 2 neighbour the target 3.
    model = one_interest_model([0.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    histories = [[1, 2], [3, 1], [1]]
    targets = [[3], [1], [6]]
    eval_set = make_eval_set(histories, targets)

    excluded = evaluate(model, eval_set, n_items=6, max_len=4, ks=(1, 6), balance_k=2)
    kept = evaluate(
        model, eval_set, n_items=6, max_len=4, ks=(1, 6), balance_k=2, exclude_history=False
    )

    # User 0: history items 1 and 2 never rank, so the target comes first.
    assert excluded.per_user["mrr@6"].iloc[0] == 1.0
    assert kept.per_user["mrr@6"].iloc[0] == pytest.approx(1 / 3)
    # User 1: the target 1 also occurs in the history and is still ranked first.
    assert excluded.per_user["hit@1"].iloc[1] == 1.0
    # User 2: only item 1 is removed ahead of the target 6.
    assert excluded.per_user["mrr@6"].iloc[2] == pytest.approx(1 / 5)
    assert kept.per_user["mrr@6"].iloc[2] == pytest.approx(1 / 6)


def test_padding_never_ranked() -> None:
    model = one_interest_model([1000.0, 1.0, 2.0, 3.0])

    result = evaluate(
        model, make_eval_set([[1]], [[3]]), n_items=3, max_len=2, ks=(1,), balance_k=1
    )

    assert result.per_user["hit@1"].iloc[0] == 1.0


def test_model_sees_right_aligned_window_in_eval_mode() -> None:
    model, _, _ = random_case(seed=0)
    model.train()
    eval_set = make_eval_set([[1, 2, 3, 4, 5, 6], [7, 8]], [[9], [10]])

    evaluate(model, eval_set, n_items=40, max_len=4, ks=(1,), balance_k=1)

    history, mask, training, grad_enabled = model.calls[0]
    assert history.tolist() == [[3, 4, 5, 6], [0, 0, 7, 8]]
    assert mask.tolist() == [[True] * 4, [False, False, True, True]]
    assert not training
    assert not grad_enabled
    assert model.training, "the model's previous mode must be restored"


def test_shares_attribute_items_to_best_interest() -> None:
    # Interest 0 points at items 1-2 and interest 1 at items 3-5; the top 4 are 1, 3, 2, 4.
    item_emb = torch.tensor(
        [[0.0, 0.0], [5.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 2.0], [0.0, 1.0]]
    )
    table = torch.zeros(6, 2, 2)
    table[:, 0] = torch.tensor([1.0, 0.0])
    table[:, 1] = torch.tensor([0.0, 1.0])
    model = FakeModel(item_emb, table)

    result = evaluate(
        model, make_eval_set([[5]], [[4]]), n_items=5, max_len=2, ks=(1,), balance_k=4
    )

    assert result.per_user["share_0"].iloc[0] == pytest.approx(0.5)
    assert result.per_user["share_1"].iloc[0] == pytest.approx(0.5)
    result = evaluate(
        model, make_eval_set([[5]], [[4]]), n_items=5, max_len=2, ks=(1,), balance_k=1
    )
    assert result.per_user["share_0"].iloc[0] == 1.0


def test_greedy_without_diversity_equals_max() -> None:
    model, histories, targets = random_case(seed=11)
    eval_set = make_eval_set(histories, targets)
    topics = np.random.default_rng(0).integers(0, 4, size=41)

    plain = evaluate(model, eval_set, n_items=40, max_len=5, ks=(1, 5, 10), balance_k=8)
    greedy = evaluate(
        model,
        eval_set,
        n_items=40,
        max_len=5,
        ks=(1, 5, 10),
        balance_k=8,
        aggregation="greedy",
        item_topics=topics,
        diversity=0.0,
    )

    pd.testing.assert_frame_equal(plain.per_user, greedy.per_user)


def test_greedy_diversity_hand_example() -> None:
    # Interest 0 scores items 1-3 (10, 9, 8), interest 1 items 4-6 (7, 6, 5), so each
    # interest's top 3 brings its own items. Categories: A A A B C B.
    item_emb = torch.tensor(
        [[0.0, 0.0], [10.0, 0.0], [9.0, 0.0], [8.0, 0.0], [0.0, 7.0], [0.0, 6.0], [0.0, 5.0]]
    )
    table = torch.zeros(7, 2, 2)
    table[:, 0, 0] = 1.0
    table[:, 1, 1] = 1.0
    model = FakeModel(item_emb, table)
    topics = np.array([0, 1, 1, 1, 2, 3, 2])
    eval_set = make_eval_set([[6], [6]], [[4], [3]])
    options = {"n_items": 6, "max_len": 1, "ks": (3,), "balance_k": 3, "exclude_history": False}

    greedy = evaluate(
        model, eval_set, aggregation="greedy", item_topics=topics, diversity=2.5, **options
    )
    plain = evaluate(model, eval_set, **options)

    # Greedy list: 1 (10), then 4 (7 beats 9 - 2.5), then 2 (9 - 2.5 beats 6 and 8 - 2.5).
    assert greedy.per_user["mrr@3"].tolist() == [0.5, 0.0]
    assert greedy.per_user["share_0"].tolist() == [pytest.approx(2 / 3)] * 2
    # The max-aggregated list is 1, 2, 3.
    assert plain.per_user["mrr@3"].tolist() == [0.0, pytest.approx(1 / 3)]
    assert plain.per_user["share_0"].tolist() == [1.0, 1.0]


def test_greedy_lists_skip_repeats_and_unranked() -> None:
    inf = float("-inf")
    ids = torch.tensor([[3, 1, 3, 0, 2], [4, 4, 4, 4, 4]])
    scores = torch.tensor([[2.0, 5.0, 2.0, 9.0, inf], [1.0, 1.0, 1.0, 1.0, 1.0]])
    topics = torch.tensor([0, 0, 1, 0, 1])

    result = greedy_lists(ids, scores, topics, diversity=10.0, length=3)

    # Row 0: 1 first, then 3 (another category); id 0 and the -inf item 2 are never listed.
    assert result.tolist() == [[1, 3, 0], [4, 0, 0]]


def test_evaluate_rejects_bad_options() -> None:
    model, histories, targets = random_case(seed=0)
    eval_set = make_eval_set(histories, targets)
    with pytest.raises(ConfigError, match="valid choices: greedy, max"):
        evaluate(model, eval_set, n_items=40, max_len=5, aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="item_topics"):
        evaluate(model, eval_set, n_items=40, max_len=5, aggregation="greedy")
    with pytest.raises(ConfigError, match="item_topics of shape"):
        evaluate(
            model,
            eval_set,
            n_items=40,
            max_len=5,
            aggregation="greedy",
            item_topics=np.zeros(3, dtype=int),
        )
    with pytest.raises(ConfigError, match="batch_size=0"):
        evaluate(model, eval_set, n_items=40, max_len=5, batch_size=0)
    with pytest.raises(ValueError, match=r"expected \(31, D\)"):
        evaluate(model, eval_set, n_items=30, max_len=5)
    with pytest.raises(DataError, match="no users"):
        evaluate(model, eval_set.subset(np.zeros(0, dtype=np.int64)), n_items=40, max_len=5)


def read_sequences(path: Path, n_users: int) -> tuple[list[list[int]], int]:
    lines = path.read_text().splitlines()
    n_items = max(int(token) for line in lines for token in line.split()[1:])
    rows = [[int(token) for token in line.split()[1:]] for line in lines[:n_users]]
    return rows, n_items


def test_real_sequences_match_numpy_reference() -> None:
    path = DATA / "amazon-beauty" / "Beauty.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    sequences, n_items = read_sequences(path, n_users=60)
    histories = [seq[:-1] for seq in sequences]
    targets = [seq[-1:] for seq in sequences]
    generator = torch.Generator().manual_seed(0)
    item_emb = torch.randn(n_items + 1, 8, generator=generator)
    table = torch.randn(n_items + 1, 4, 8, generator=generator)
    model = FakeModel(item_emb, table)

    result = evaluate(
        model, make_eval_set(histories, targets), n_items=n_items, max_len=50, ks=(20, 50)
    )

    # Full sort of every row with NumPy: an independent route to the ranks.
    last_items = np.array([h[-1] for h in histories])
    scores = np.einsum(
        "bkd,nd->bkn", table[last_items].double().numpy(), item_emb.double().numpy()
    ).max(axis=1)
    scores[:, 0] = -np.inf
    for b, history in enumerate(histories):
        scores[b, [i for i in history if i not in targets[b]]] = -np.inf
    for b, (target,) in enumerate(targets):
        rank = (
            int(
                (scores[b] > scores[b, target]).sum()
                + (scores[b, :target] == scores[b, target]).sum()
            )
            + 1
        )
        assert result.per_user["hit@50"].iloc[b] == float(rank <= 50)
        assert result.per_user["ndcg@50"].iloc[b] == pytest.approx(
            1 / math.log2(rank + 1) if rank <= 50 else 0.0
        )
        assert result.per_user["mrr@20"].iloc[b] == pytest.approx(1 / rank if rank <= 20 else 0.0)
