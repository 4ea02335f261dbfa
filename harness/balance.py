"""Interest-balance metrics: how evenly a user's recommendations draw on the K interests.

Evaluation attributes each item of a user's top list to the interest that
scores it highest. The shares of the K interests in that list form a
distribution per user, and this module summarises it (normalised entropy,
effective number of interests, largest share, unused interests). It also
measures how similar a user's interest vectors are (redundancy), how evenly
training selected the interests, and, on synthetic data, how many planted
topics the interests recover.

Entropies use the natural log with ``0 log 0 = 0``. With one interest
(``K = 1``) a normalised entropy is ``0 / 0``, so it is NaN, and so is
redundancy, which has no pair of interests to compare. These functions accept
NumPy arrays or torch tensors and return NumPy values.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.metrics import top_k_items


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def interest_shares(top_interest: np.ndarray | torch.Tensor, num_interests: int) -> np.ndarray:
    """Return the fraction of each user's top list attributed to each interest.

    Args:
        top_interest: ``(B, k)`` int interest index in ``0..K-1`` of each listed
            item; ``-1`` marks an empty slot, which is left out of the count.
        num_interests: K.

    Returns:
        ``(B, K)`` float64 shares; a row sums to 1, or is NaN when the row has no
        listed item.

    Raises:
        ValueError: An index is outside ``-1..K-1``.
    """
    top = _as_numpy(top_interest).astype(np.int64, copy=False)
    if top.ndim != 2:
        raise ValueError(f"top_interest must have shape (B, k), got {top.shape}")
    if top.size and (top.min() < -1 or top.max() >= num_interests):
        raise ValueError(
            f"interest indices must be in 0..{num_interests - 1} (or -1 for an empty slot)"
        )
    n_rows = top.shape[0]
    valid = top >= 0
    # Offset each row's indices by row * K so one bincount counts every row at once.
    flat = (np.arange(n_rows)[:, None] * num_interests + top)[valid]
    counts = np.bincount(flat, minlength=n_rows * num_interests).reshape(n_rows, num_interests)
    totals = valid.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / totals


def _entropy(shares: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shares > 0, shares * np.log(shares), 0.0)
    entropy = -terms.sum(axis=-1)
    return np.where(np.isnan(shares).any(axis=-1), np.nan, entropy)


def normalized_entropy(shares: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``H(shares) / log K`` per row: 1 for an even split, 0 for one interest only.

    Args:
        shares: ``(B, K)`` distributions (rows sum to 1; NaN rows stay NaN).

    Returns:
        ``(B,)`` float64; NaN for every row when ``K = 1``.
    """
    values = _as_numpy(shares).astype(np.float64, copy=False)
    num_interests = values.shape[-1]
    if num_interests == 1:
        return np.full(values.shape[:-1], np.nan)
    return _entropy(values) / math.log(num_interests)


def effective_interests(shares: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``exp(H(shares))`` per row, the number of equally used interests with the same entropy.

    Returns:
        ``(B,)`` float64 in ``[1, K]``.
    """
    return np.exp(_entropy(_as_numpy(shares).astype(np.float64, copy=False)))


def balance_summary(shares: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Average the balance of the per-user shares over users.

    Rows that are NaN (users with an empty top list) are left out.

    Args:
        shares: ``(B, K)`` per-user interest shares.

    Returns:
        ``entropy_norm`` (mean normalised entropy, NaN when ``K = 1``),
        ``effective_interests`` (mean ``exp(H)``), ``max_share`` (mean largest
        share) and ``unused_fraction`` (fraction of users with at least one
        interest of share 0).
    """
    values = _as_numpy(shares).astype(np.float64, copy=False)
    values = values[~np.isnan(values).any(axis=1)]
    if len(values) == 0:
        return {
            name: math.nan
            for name in ("entropy_norm", "effective_interests", "max_share", "unused_fraction")
        }
    entropy_norm = normalized_entropy(values)
    return {
        "entropy_norm": math.nan if values.shape[1] == 1 else float(entropy_norm.mean()),
        "effective_interests": float(effective_interests(values).mean()),
        "max_share": float(values.max(axis=1).mean()),
        "unused_fraction": float((values == 0).any(axis=1).mean()),
    }


def redundancy(interests: np.ndarray | torch.Tensor, eps: float = 1e-12) -> np.ndarray:
    """Return the mean pairwise cosine similarity of each user's interest vectors.

    The mean runs over the ``K (K - 1) / 2`` pairs ``k < k'``. A zero vector has
    cosine 0 with every other vector (its norm is floored at ``eps``).

    Args:
        interests: ``(B, K, D)`` interest vectors.
        eps: Floor of the vector norms.

    Returns:
        ``(B,)`` float64 in ``[-1, 1]``; NaN when ``K = 1``.
    """
    vectors = _as_numpy(interests).astype(np.float64, copy=False)
    if vectors.ndim != 3:
        raise ValueError(f"interests must have shape (B, K, D), got {vectors.shape}")
    num_interests = vectors.shape[1]
    if num_interests == 1:
        return np.full(vectors.shape[0], np.nan)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=2, keepdims=True), eps)
    cosine = unit @ unit.transpose(0, 2, 1)  # (B, K, K)
    upper_rows, upper_cols = np.triu_indices(num_interests, k=1)
    return cosine[:, upper_rows, upper_cols].mean(axis=1)


def selection_entropy(counts: np.ndarray | torch.Tensor) -> float:
    """Return the normalised entropy ``H / log K`` of training-time selection counts.

    Args:
        counts: ``(K,)`` how often each interest was selected (or summed selection
            probabilities).

    Returns:
        A float in ``[0, 1]``; NaN when ``K = 1`` or every count is 0.
    """
    values = _as_numpy(counts).astype(np.float64, copy=False).reshape(-1)
    total = values.sum()
    if len(values) < 2 or total <= 0:
        return math.nan
    return float(normalized_entropy((values / total)[None, :])[0])


def interest_top_items(interests: torch.Tensor, item_emb: torch.Tensor, k: int = 20) -> np.ndarray:
    """Return the ``k`` best items of every interest vector on its own.

    Scores are inner products with every real item. Padding is never listed, and
    ties go to the lower id, as in :mod:`harness.metrics`. History items are not
    excluded, because the lists describe what each interest points at, not what
    is recommended.

    Args:
        interests: ``(B, K, D)`` interest vectors.
        item_emb: ``(N + 1, D)`` item embedding table, row 0 padding.
        k: List length.

    Returns:
        ``(B, K, k)`` int64 item ids, capped at ``N`` per list.
    """
    n_rows, num_interests, dim = interests.shape
    with torch.no_grad():
        scores = interests.reshape(n_rows * num_interests, dim) @ item_emb.T  # (B * K, N + 1)
        scores[:, 0] = float("-inf")
        _, ids = top_k_items(scores, min(k, item_emb.shape[0] - 1))
    return ids.reshape(n_rows, num_interests, -1).cpu().numpy()


def interest_recovery(
    interest_items: np.ndarray,
    item_topic: np.ndarray,
    user_topic_weights: np.ndarray,
    *,
    min_weight: float = 0.1,
) -> np.ndarray:
    """Return, per user, the fraction of planted topics that some interest recovers.

    Definitions, for one user:

    - planted topics: the topics ``t`` with ``user_topic_weights[t] >= min_weight``.
    - an interest's topic: the most frequent topic among the items of its list.
      Ties go to the lower topic id, and id 0 entries of a list are skipped.
    - recovery: ``|planted topics that are the topic of at least one interest| /
      |planted topics|``, so 1 means every planted topic has an interest
      devoted to it.

    Args:
        interest_items: ``(B, K, k)`` int item ids of each interest's list, e.g.
            from :func:`interest_top_items` with ``k = 20``.
        item_topic: ``(N + 1,)`` int topic id of each item, in ``0..T-1``.
        user_topic_weights: ``(B, T)`` planted interest weight of each topic;
            column ``t`` is topic id ``t``, the ids of ``item_topic``.
        min_weight: Smallest weight that counts as a planted topic.

    Returns:
        ``(B,)`` float64 in ``[0, 1]``; NaN for a user with no planted topic.
    """
    items = np.asarray(interest_items, dtype=np.int64)
    topics_of_item = np.asarray(item_topic, dtype=np.int64)
    weights = np.asarray(user_topic_weights, dtype=np.float64)
    if items.ndim != 3 or weights.ndim != 2 or items.shape[0] != weights.shape[0]:
        raise ValueError(
            f"interest_items (B, K, k) and user_topic_weights (B, T) must share B, got {items.shape} and {weights.shape}"
        )
    n_rows, num_interests, _ = items.shape
    n_topics = weights.shape[1]
    if topics_of_item.size and (topics_of_item.min() < 0 or topics_of_item.max() >= n_topics):
        raise ValueError(
            f"item_topic values must be in 0..{n_topics - 1}, the columns of user_topic_weights"
        )

    listed = items > 0
    topics = topics_of_item[items]  # (B, K, k)
    slot = np.arange(n_rows * num_interests).reshape(n_rows, num_interests, 1)
    flat = (slot * n_topics + topics)[listed]
    counts = np.bincount(flat, minlength=n_rows * num_interests * n_topics)
    counts = counts.reshape(n_rows, num_interests, n_topics)
    majority = counts.argmax(axis=2)  # (B, K); argmax returns the lowest topic among ties
    has_items = listed.any(axis=2)

    recovered = np.zeros((n_rows, n_topics), dtype=bool)
    row_index = np.broadcast_to(np.arange(n_rows)[:, None], majority.shape)
    recovered[row_index[has_items], majority[has_items]] = True
    planted = weights >= min_weight
    n_planted = planted.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_planted > 0, (planted & recovered).sum(axis=1) / n_planted, np.nan)
