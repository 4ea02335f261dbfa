"""Batched full-ranking evaluation of a multi-interest model on an :class:`EvalSet`.

Each interest scores every item by inner product, and a user's score for an
item is the maximum over interests (``aggregation="max"``). ComiRec's greedy
diversity aggregation is the alternative when item categories are known. The
metrics of :mod:`harness.metrics` are computed for every user. The top list is
also attributed to interests for the balance metrics of :mod:`harness.balance`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from harness.balance import balance_summary, interest_shares, redundancy
from harness.data.padding import pad_histories
from harness.data.types import EvalSet, Ragged
from harness.errors import ConfigError, DataError, unknown_choice
from harness.metrics import DEFAULT_KS, check_ks, list_metrics, metric_names, ranked_items

logger = logging.getLogger(__name__)

Aggregation = Literal["max", "greedy"]


@dataclass(frozen=True)
class EvalResult:
    """Per-user and averaged results of one evaluation.

    Attributes:
        per_user: One row per evaluated user, in ``EvalSet`` order: ``user``
            (internal id), every metric (``recall@K``, ``ndcg@K``, ``hit@K``,
            ``mrr@K``), ``share_0..share_{K-1}`` (interest shares of the top
            ``balance_k`` list) and ``redundancy``.
        summary: Mean of every metric over users.
        balance: :func:`harness.balance.balance_summary` of the shares plus
            ``redundancy``, the mean over users (NaN when ``K = 1``).
    """

    per_user: pd.DataFrame
    summary: dict[str, float]
    balance: dict[str, float]


def evaluate(
    model: nn.Module,
    eval_set: EvalSet,
    n_items: int,
    *,
    max_len: int,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    balance_k: int = 20,
    progress: bool = False,
    aggregation: Aggregation = "max",
    item_topics: np.ndarray | None = None,
    diversity: float = 0.0,
) -> EvalResult:
    """Rank all items for every user of ``eval_set`` and compute metrics and interest balance.

    The model runs in eval mode under ``torch.no_grad`` and its previous mode is
    restored afterwards. Each batch feeds the last ``max_len`` history items,
    right-aligned, to ``model(history, mask)``, which returns interests
    ``(B, K, D)``. The score of item ``i`` is ``max_k m_k . e_i`` with ``e`` the
    rows of ``model.item_embedding``. Padding (column 0) is never ranked.

    History exclusion rule: with ``exclude_history``, every item of the user's
    whole history (not only the last ``max_len``) scores ``-inf``, except the
    user's own targets. A target that also occurs earlier in the history stays
    rankable with its model score, because a repeat consumption is still a
    correct prediction.

    Interest attribution: each item of the user's top ``balance_k`` list is
    attributed to the interest with the highest inner product with it (ties go
    to the lower interest index). The shares of the K interests form the
    ``share_*`` columns. Items that score ``-inf`` are not listed.

    Greedy aggregation follows the public code of ComiRec (Cen et al., KDD 2020).
    Every interest contributes its own top ``L`` items, with ``L`` the larger of
    ``max(ks)`` and ``balance_k``. Each candidate keeps its max-aggregated score
    ``f(i)``. The list is then built one position at a time by taking the
    candidate that maximises ``f(i) - diversity * c(i)``, where ``c(i)`` counts
    the already chosen items in the category of ``i``. All candidates at a step
    face the same number of chosen items, so this is also the largest gain in
    ``sum f + diversity * (pairs of chosen items in different categories)``. Ties
    go to the higher ``f(i)``, then to the lower id. With ``diversity = 0`` the
    list equals the max-aggregated top ``L``. Unlike ComiRec's code, the
    candidates come after history exclusion, and every item has a category
    (ComiRec's code drops candidates without one).

    Args:
        model: A backbone: ``forward(history (B, L), mask (B, L)) -> (B, K, D)``
            and an ``item_embedding`` with ``n_items + 1`` rows, on ``device``.
        eval_set: Users with their histories and targets (every user needs at
            least one target).
        n_items: Number of real items N.
        max_len: History length L fed to the model.
        ks: Metric cutoffs.
        exclude_history: Score history items ``-inf`` (except the user's targets).
        batch_size: Users per batch. Peak memory is about two ``(B, N + 1)``
            score matrices per batch (50 MB for 512 users and 12k items in float32).
        device: Where the batches are computed; the model must already be there.
        balance_k: Length of the top list whose items are attributed to interests.
        progress: Show a progress bar over batches.
        aggregation: ``"max"`` or ``"greedy"``.
        item_topics: ``(N + 1,)`` non-negative int category per item; required by
            ``"greedy"``.
        diversity: Greedy diversity weight (lambda), ``>= 0``.

    Returns:
        An :class:`EvalResult`.

    Raises:
        ConfigError: An invalid option value.
        DataError: ``eval_set`` has no users.
        ValueError: The model's embedding table or output does not match
            ``n_items`` or the ``(B, K, D)`` shape, or it is on another device.
    """
    ks = check_ks(ks)
    _check_options(batch_size, balance_k, aggregation, diversity)
    if len(eval_set) == 0:
        raise DataError(
            "the evaluation set has no users; check the split and the minimum sequence length"
        )
    device = torch.device(device)
    item_emb = _item_embedding(model, n_items, device)
    topics = _topics_tensor(item_topics, n_items, device) if aggregation == "greedy" else None
    list_length = max(max(ks), balance_k)

    batches: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            starts = range(0, len(eval_set), batch_size)
            for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
                stop = min(start + batch_size, len(eval_set))
                batch = _Batch.cut(eval_set, start, stop, max_len, device)
                interests = model(batch.history, batch.mask)
                _check_interests(interests, stop - start, item_emb.shape[1])
                top = _top_lists(
                    interests, item_emb, batch, list_length, exclude_history, topics, diversity
                )
                metrics = list_metrics(
                    top, batch.target_offsets, batch.target_values, ks, n_items=n_items
                )
                shares = interest_shares(
                    _attribute(interests, item_emb, top[:, :balance_k]), interests.shape[1]
                )
                batches.append((metrics, shares, redundancy(interests)))
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - started
    logger.debug(
        "evaluated %d users in %.2fs (%.0f users/s)",
        len(eval_set),
        elapsed,
        len(eval_set) / elapsed,
    )
    return _assemble(eval_set, ks, batches)


def _check_options(batch_size: int, balance_k: int, aggregation: str, diversity: float) -> None:
    if batch_size < 1:
        raise ConfigError(f"invalid eval batch_size={batch_size}: must be >= 1")
    if balance_k < 1:
        raise ConfigError(f"invalid balance_k={balance_k}: must be >= 1")
    if aggregation not in get_args(Aggregation):
        raise unknown_choice("aggregation", aggregation, get_args(Aggregation))
    if not math.isfinite(diversity) or diversity < 0:
        raise ConfigError(f"invalid diversity={diversity!r}: must be finite and >= 0")


def _item_embedding(model: nn.Module, n_items: int, device: torch.device) -> torch.Tensor:
    weight = model.item_embedding.weight
    if weight.ndim != 2 or weight.shape[0] != n_items + 1:
        raise ValueError(
            f"model.item_embedding has shape {tuple(weight.shape)}, expected ({n_items + 1}, D) for n_items={n_items}"
        )
    same_device = weight.device.type == device.type and (
        device.index is None or weight.device.index == device.index
    )
    if not same_device:
        raise ValueError(
            f"model is on {weight.device} but evaluation runs on {device}; move the model with .to(device)"
        )
    return weight.detach()


def _topics_tensor(
    item_topics: np.ndarray | None, n_items: int, device: torch.device
) -> torch.Tensor:
    if item_topics is None:
        raise ConfigError(
            "greedy aggregation needs item categories: pass item_topics with one category per item, "
            "or use aggregation='max'"
        )
    topics = np.asarray(item_topics)
    if (
        topics.shape != (n_items + 1,)
        or not np.issubdtype(topics.dtype, np.integer)
        or topics.min() < 0
    ):
        raise ConfigError(
            f"invalid item_topics of shape {topics.shape} and dtype {topics.dtype}: expected "
            f"({n_items + 1},) non-negative integers, one category per item id"
        )
    return torch.as_tensor(topics, dtype=torch.int64, device=device)


def _check_interests(interests: torch.Tensor, n_rows: int, dim: int) -> None:
    if (
        interests.ndim != 3
        or interests.shape[0] != n_rows
        or interests.shape[1] < 1
        or interests.shape[2] != dim
    ):
        raise ValueError(
            f"model output has shape {tuple(interests.shape)}, expected ({n_rows}, K, {dim})"
        )


@dataclass(frozen=True)
class _Batch:
    """Model inputs and ranking targets of users ``start..stop`` of an EvalSet."""

    history: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L)
    target_offsets: torch.Tensor  # (B + 1,)
    target_values: torch.Tensor  # (T,)
    target_rows: torch.Tensor  # (T,)
    history_rows: torch.Tensor  # (H,) every history item, not only the last L
    history_items: torch.Tensor  # (H,)

    @classmethod
    def cut(
        cls, eval_set: EvalSet, start: int, stop: int, max_len: int, device: torch.device
    ) -> _Batch:
        rows = np.arange(start, stop, dtype=np.int64)
        history, mask = pad_histories(eval_set.history, max_len, rows)
        target_offsets, target_values, target_rows = _slice(eval_set.targets, start, stop)
        _, history_items, history_rows = _slice(eval_set.history, start, stop)

        def to_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        return cls(
            to_device(history),
            to_device(mask),
            to_device(target_offsets),
            to_device(target_values),
            to_device(target_rows),
            to_device(history_rows),
            to_device(history_items),
        )


def _slice(ragged: Ragged, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the CSR offsets, values and row index (relative to ``start``) of rows ``start..stop``."""
    offsets = ragged.offsets[start : stop + 1] - ragged.offsets[start]
    values = ragged.values[ragged.offsets[start] : ragged.offsets[stop]]
    rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(offsets))
    return offsets, values, rows


def _mask_scores(scores: torch.Tensor, batch: _Batch, exclude_history: bool) -> None:
    """Set padding and (optionally) history items to ``-inf`` in place, keeping the targets' scores."""
    scores[:, 0] = float("-inf")
    if not exclude_history or len(batch.history_items) == 0:
        return
    target_scores = scores[batch.target_rows, batch.target_values]
    scores[batch.history_rows, batch.history_items] = float("-inf")
    scores[batch.target_rows, batch.target_values] = target_scores


def _top_lists(
    interests: torch.Tensor,
    item_emb: torch.Tensor,
    batch: _Batch,
    length: int,
    exclude_history: bool,
    topics: torch.Tensor | None,
    diversity: float,
) -> torch.Tensor:
    """Return the ``(B, length)`` ranked item ids of every user, 0 for an empty slot."""
    # Scoring one interest at a time keeps two (B, N + 1) matrices alive instead of (B, K, N + 1).
    scores: torch.Tensor | None = None
    candidates: list[torch.Tensor] = []
    for k in range(interests.shape[1]):
        interest_scores = interests[:, k] @ item_emb.T  # (B, N + 1)
        if topics is not None:
            _mask_scores(interest_scores, batch, exclude_history)
            candidates.append(ranked_items(interest_scores, length))
        scores = (
            interest_scores
            if scores is None
            else torch.maximum(scores, interest_scores, out=scores)
        )
    assert scores is not None

    if topics is None:
        _mask_scores(scores, batch, exclude_history)
        return ranked_items(scores, length)
    candidate_ids = torch.cat(candidates, dim=1)  # (B, K * length)
    candidate_scores = scores.gather(1, candidate_ids)
    return greedy_lists(candidate_ids, candidate_scores, topics, diversity, length)


def greedy_lists(
    candidate_ids: torch.Tensor,
    candidate_scores: torch.Tensor,
    item_topics: torch.Tensor,
    diversity: float,
    length: int,
) -> torch.Tensor:
    """Build ComiRec's greedy diversity-aware lists from candidate items.

    At each of ``length`` steps, every row takes the available candidate that
    maximises ``score - diversity * (chosen items of the same category)``. Ties
    go to the higher score, then to the lower id. The loop runs over list
    positions and is vectorised over users and candidates.

    Args:
        candidate_ids: ``(B, C)`` int64 candidate ids; repeats and id 0 are ignored.
        candidate_scores: ``(B, C)`` aggregated score of each candidate; ``-inf``
            candidates are ignored.
        item_topics: ``(N + 1,)`` int64 category per item id.
        diversity: Weight of the same-category penalty, ``>= 0``.
        length: List length.

    Returns:
        ``(B, length)`` int64 item ids, 0 where a row ran out of candidates.
    """
    n_rows = candidate_ids.shape[0]
    device = candidate_ids.device

    # Drop repeats: after sorting by id a repeat equals its left neighbour.
    ids, order = torch.sort(candidate_ids, dim=1)
    scores = candidate_scores.gather(1, order)
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    available = ~repeat & (ids > 0) & ~torch.isneginf(scores)
    scores = scores.masked_fill(~available, float("-inf"))

    # A stable sort by score keeps equal scores in id order. argmax returns the first maximum,
    # so ties of the penalised score go to the higher score, then to the lower id.
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    ids = ids.gather(1, order)
    available = available.gather(1, order)
    topic = item_topics[ids]  # (B, C)

    chosen_per_topic = torch.zeros(
        n_rows, int(item_topics.max()) + 1, dtype=scores.dtype, device=device
    )
    result = torch.zeros(n_rows, length, dtype=torch.int64, device=device)
    for position in range(length):
        gain = scores - diversity * chosen_per_topic.gather(1, topic)
        gain = gain.masked_fill(~available, float("-inf"))
        best = gain.argmax(dim=1, keepdim=True)  # (B, 1)
        found = available.gather(1, best)  # (B, 1)
        result[:, position] = torch.where(found, ids.gather(1, best), 0).squeeze(1)
        available.scatter_(1, best, False)
        chosen_per_topic.scatter_add_(1, topic.gather(1, best), found.to(scores.dtype))
    return result


def _attribute(interests: torch.Tensor, item_emb: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Return the ``(B, k)`` index of the interest that scores each listed item highest (-1: empty slot)."""
    per_interest = torch.einsum("bkd,bjd->bjk", interests, item_emb[top])  # (B, k, K)
    best = per_interest.argmax(dim=2)  # first maximum: the lower interest index wins ties
    return best.masked_fill(top == 0, -1)


def _assemble(
    eval_set: EvalSet,
    ks: tuple[int, ...],
    batches: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]],
) -> EvalResult:
    names = metric_names(ks)
    columns: dict[str, np.ndarray] = {"user": np.asarray(eval_set.users)}
    for name in names:
        columns[name] = np.concatenate([metrics[name] for metrics, _, _ in batches])
    shares = np.concatenate([batch_shares for _, batch_shares, _ in batches])
    for k in range(shares.shape[1]):
        columns[f"share_{k}"] = shares[:, k]
    user_redundancy = np.concatenate([batch_redundancy for _, _, batch_redundancy in batches])
    columns["redundancy"] = user_redundancy

    summary = {name: float(columns[name].mean()) for name in names}
    balance = balance_summary(shares)
    finite = user_redundancy[~np.isnan(user_redundancy)]
    balance["redundancy"] = float(finite.mean()) if len(finite) else math.nan
    return EvalResult(pd.DataFrame(columns), summary, balance)
