"""Full-ranking metrics from a score matrix: Recall, nDCG, HitRate and MRR at K.

Ranking rule, used by every function here: items are ordered by score,
highest first, and equal scores are ordered by item id, lowest first. Items
that score ``-inf`` (padding, excluded history) are never ranked, so a list can
be shorter than K when fewer items have a finite score. A user's targets are a
set: an item listed twice among the targets counts once.

Metric definitions for one user with target set ``T`` and ``rank(i)`` the 1-based
position of item ``i`` in the ranking:

- ``recall@K = |{i in T: rank(i) <= K}| / |T|`` (the ComiRec/REMI definition;
  with one target it equals ``hit@K``).
- ``ndcg@K = DCG / IDCG`` with ``DCG = sum over hits of 1 / log2(rank + 1)`` and
  ``IDCG`` the same sum over ranks ``1..min(K, |T|)``. ComiRec's and REMI's code
  divide by the IDCG of the number of hits instead, which rates a list with one
  hit at rank 1 as perfect however many targets were missed. This module uses the
  standard ideal list.
- ``hit@K = 1`` if any target is in the top K, else 0.
- ``mrr@K = 1 / rank`` of the best-ranked target if that rank is ``<= K``, else 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from harness.errors import ConfigError

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "hit", "mrr")


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Return the cutoffs as a tuple of unique positive ints, in the order given.

    Raises:
        ConfigError: No cutoff, or a cutoff that is not a positive integer.
    """
    result: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"invalid cutoff K={k!r}: every K must be an integer >= 1")
        if int(k) not in result:
            result.append(int(k))
    if not result:
        raise ConfigError("invalid cutoffs: give at least one K, e.g. 10,20,50")
    return tuple(result)


def metric_names(ks: Sequence[int]) -> list[str]:
    """Return the metric keys in output order: ``recall@K`` for every K, then ``ndcg@K``, ``hit@K``, ``mrr@K``."""
    return [f"{name}@{k}" for name in METRIC_NAMES for k in ks]


def top_k_items(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``k`` best columns of each row under the module's ranking rule.

    ``torch.topk`` returns equal values in an unspecified order and, when a run of
    equal values crosses the cut, an unspecified subset of them. This function
    reorders the returned entries by (score descending, id ascending). For a row
    where the run of equal values crosses the cut, it rescans that row for the
    lowest ids with the boundary score. The rescan costs ``O(N)`` for each such
    row only.

    Args:
        scores: ``(B, M)`` float scores; column ``j`` is item id ``j``.
        k: Number of columns to return; capped at ``M``.

    Returns:
        ``values (B, k')`` and ``ids (B, k')`` int64 with ``k' = min(k, M)``. Entries
        may have value ``-inf``; callers that must not rank them check the values.

    Raises:
        ValueError: ``scores`` is not 2-D or contains NaN.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, M), got {tuple(scores.shape)}")
    n_rows, n_cols = scores.shape
    k = min(int(k), n_cols)
    extra = 1 if k < n_cols else 0
    values, ids = torch.topk(scores, k + extra, dim=1)  # (B, k + extra)
    # topk ranks NaN above every number, so a row with a NaN shows one here.
    if bool(torch.isnan(values).any()):
        raise ValueError(
            "scores contain NaN; the model's outputs are not finite, so the ranking is undefined"
        )

    # Sort by id, then stably by value, so equal values end up in id order.
    ids, perm = torch.sort(ids, dim=1)
    values = values.gather(1, perm)
    values, perm = torch.sort(values, dim=1, descending=True, stable=True)
    ids = ids.gather(1, perm)
    if not extra:
        return values, ids

    boundary = values[:, k - 1]
    crosses = values[:, k] == boundary  # (B,)
    values, ids = values[:, :k], ids[:, :k].clone()
    if bool(crosses.any()):
        rows = crosses.nonzero().squeeze(1)
        ids[rows] = _lowest_ids_at_boundary(scores[rows], values[rows], ids[rows], boundary[rows])
    return values, ids


def _lowest_ids_at_boundary(
    scores: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, boundary: torch.Tensor
) -> torch.Tensor:
    """Replace the boundary-score entries of each row by the lowest ids having that score."""
    n_cols = scores.shape[1]
    k = ids.shape[1]
    n_above = (values > boundary.unsqueeze(1)).sum(dim=1, keepdim=True)  # (R, 1)
    columns = torch.arange(n_cols, device=scores.device)
    # Non-boundary columns get key n_cols, so the k smallest keys start with the boundary ids in order.
    key = torch.where(scores == boundary.unsqueeze(1), columns, n_cols)
    lowest = torch.topk(key, k, dim=1, largest=False, sorted=True).values  # (R, k)
    position = torch.arange(k, device=scores.device).unsqueeze(0)
    from_boundary = lowest.gather(1, (position - n_above).clamp(min=0))
    return torch.where(position < n_above, ids, from_boundary)


def ranking_metrics(
    scores: torch.Tensor,
    target_offsets: torch.Tensor,
    target_values: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, np.ndarray]:
    """Compute Recall, nDCG, HitRate and MRR at every K from a full score matrix.

    Column 0 (padding) is set to ``-inf`` on a copy before ranking, so it is never
    ranked even if the caller forgot to mask it. The ranking needs one
    ``torch.topk`` with the largest K, then a comparison of each target against
    its row's list.

    Args:
        scores: ``(B, N + 1)`` float scores, column ``i`` for item id ``i``.
        target_offsets: ``(B + 1,)`` int64 CSR offsets into ``target_values``.
        target_values: ``(T,)`` int64 target ids in ``1..N``.
        ks: Cutoffs.

    Returns:
        ``{"recall@K", "ndcg@K", "hit@K", "mrr@K"}`` for every K, each a ``(B,)``
        float64 array, in the order of :func:`metric_names`.

    Raises:
        ValueError: A row has no target, a target id is outside ``1..N``, or the
            scores contain NaN.
    """
    ks = check_ks(ks)
    ids = ranked_items(scores, max(ks))
    return list_metrics(ids, target_offsets, target_values, ks, n_items=scores.shape[1] - 1)


def ranked_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Return each row's top-``k`` item ids under the ranking rule, padding never ranked.

    Column 0 (padding) is set to ``-inf`` on a copy when it is not already, and
    slots that only ``-inf`` scores could fill hold id 0.

    Args:
        scores: ``(B, N + 1)`` float scores, column ``i`` for item id ``i``.
        k: List length; capped at ``N + 1``.

    Returns:
        ``(B, min(k, N + 1))`` int64 item ids, best first, 0 for an empty slot.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, N + 1), got {tuple(scores.shape)}")
    if not bool(torch.isneginf(scores[:, 0]).all()):
        scores = scores.clone()
        scores[:, 0] = float("-inf")
    values, ids = top_k_items(scores, k)
    return ids.masked_fill(torch.isneginf(values), 0)


def list_metrics(
    top_items: torch.Tensor,
    target_offsets: torch.Tensor,
    target_values: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    n_items: int | None = None,
) -> dict[str, np.ndarray]:
    """Compute the metrics of :func:`ranking_metrics` from ranked lists.

    Use this for rankings that are not a sort of one score per item, such as
    ComiRec's greedy diversity aggregation.

    Args:
        top_items: ``(B, W)`` int64 ranked ids per row, best first, without
            repeats; 0 marks an empty slot. A list shorter than K counts as the
            whole top K.
        target_offsets: ``(B + 1,)`` int64 CSR offsets into ``target_values``.
        target_values: ``(T,)`` int64 target ids, ``>= 1``.
        ks: Cutoffs.
        n_items: When given, target ids must be ``<= n_items``.

    Returns:
        The same dictionary as :func:`ranking_metrics`.
    """
    ks = check_ks(ks)
    device = top_items.device
    n_rows = top_items.shape[0]
    if n_rows == 0:
        return {name: np.zeros(0) for name in metric_names(ks)}
    rows, items, n_targets = _unique_targets(target_offsets, target_values, n_rows, n_items, device)

    match = top_items[rows] == items.unsqueeze(1)  # (T, W)
    found = match.any(dim=1)
    position = match.to(torch.int8).argmax(dim=1)  # (T,) 0-based, also 0 when not found
    rank = torch.where(found, (position + 1).double(), float("inf"))  # (T,)

    max_k = max(ks)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64, device=device))
    ideal = torch.cumsum(discount, dim=0)  # ideal[j]: IDCG with j + 1 targets
    # Each target's DCG gain comes from the discount table. A target beyond max_k gains 0.
    in_list = found & (position < max_k)
    gain_all = torch.where(in_list, discount[position.clamp(max=max_k - 1)], 0.0)  # (T,)
    best_rank = torch.full((n_rows,), float("inf"), dtype=torch.float64, device=device)
    best_rank = best_rank.scatter_reduce(0, rows, rank, reduce="amin")
    n_targets_f = n_targets.to(torch.float64)

    per_k: dict[str, dict[int, torch.Tensor]] = {name: {} for name in METRIC_NAMES}
    for k in ks:
        hit_target = rank <= k  # (T,)
        hits = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(
            0, rows, hit_target.double()
        )
        gain = torch.where(hit_target, gain_all, 0.0)
        dcg = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(0, rows, gain)
        idcg = ideal[(n_targets.clamp(max=k) - 1)]
        per_k["recall"][k] = hits / n_targets_f
        per_k["ndcg"][k] = dcg / idcg
        per_k["hit"][k] = (hits > 0).to(torch.float64)
        per_k["mrr"][k] = torch.where(best_rank <= k, 1.0 / best_rank, 0.0)
    return {f"{name}@{k}": per_k[name][k].cpu().numpy() for name in METRIC_NAMES for k in ks}


def _unique_targets(
    offsets: torch.Tensor,
    values: torch.Tensor,
    n_rows: int,
    n_items: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (row, item) of every distinct target pair and the distinct count per row."""
    offsets = torch.as_tensor(offsets, dtype=torch.int64, device=device)
    values = torch.as_tensor(values, dtype=torch.int64, device=device)
    if offsets.shape != (n_rows + 1,) or int(offsets[0]) != 0 or int(offsets[-1]) != len(values):
        raise ValueError(
            f"target_offsets must have shape ({n_rows + 1},), start at 0 and end at len(target_values)={len(values)}"
        )
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths < 1).any()):
        row = int((lengths < 1).nonzero()[0])
        raise ValueError(
            f"row {row} has no target; every evaluated user needs at least one target item"
        )
    if bool((values < 1).any()) or (n_items is not None and bool((values > n_items).any())):
        upper = "N" if n_items is None else str(n_items)
        raise ValueError(f"target ids must be in 1..{upper} (0 is padding)")

    rows = torch.repeat_interleave(torch.arange(n_rows, device=device), lengths)
    stride = int(values.max()) + 1
    pairs = torch.unique(rows * stride + values)  # sorted, duplicates dropped
    rows, items = pairs // stride, pairs % stride
    n_targets = torch.bincount(rows, minlength=n_rows)
    return rows, items, n_targets
