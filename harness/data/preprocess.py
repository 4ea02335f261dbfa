"""Preparation of raw interactions into chronological per-user sequences.

The steps run in this order, each vectorised over integer codes:

1. rating threshold (optional): keep interactions rated at least ``min_rating``;
2. duplicates: of several interactions with the same (user, item) pair keep
   the earliest, by time and then by file order;
3. k-core (optional): drop users and items with fewer than ``k`` interactions,
   repeated until no more rows drop, because dropping an item can push a user
   below ``k`` and the other way round;
4. chronological order: a stable sort of each user's items by time, so ties
   keep file order (files without time keep line order);
5. contiguous ids: users ``0..U-1`` in order of first appearance in the
   file, items ``1..N`` the same way, with ``0`` left for padding.

The threshold runs before duplicate removal, so a user who rated an item 2 and
later 5 keeps the later interaction under ``min_rating=4``. Users too short for
a split are kept here; the split drops them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.data.readers import RawInteractions
from harness.data.types import Ragged, Sequences
from harness.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PAD_ID = "<pad>"


@dataclass(frozen=True)
class PreprocessOptions:
    """Filters applied to raw interactions before they become sequences.

    Attributes:
        min_rating: Keep only interactions rated at least this much (``None``: keep all).
        k_core: Minimum interactions per user and per item, enforced to a fixed point (0: off).
    """

    min_rating: float | None = None
    k_core: int = 0

    def __post_init__(self) -> None:
        if self.k_core < 0:
            raise ConfigError(
                f"invalid k_core={self.k_core}: must be >= 0 (0 turns the filter off)"
            )
        if self.min_rating is not None and not np.isfinite(self.min_rating):
            raise ConfigError(f"invalid min_rating={self.min_rating}: must be a finite number")


def rating_mask(raw: RawInteractions, min_rating: float | None) -> np.ndarray:
    """Return the ``(n,)`` bool mask of interactions that pass the rating threshold.

    Raises:
        DataError: A threshold is set but the file has no ratings.
    """
    if min_rating is None:
        return np.ones(len(raw), dtype=bool)
    if raw.rating is None:
        raise DataError(
            f"{raw.source}: format {raw.format} has no ratings, so --min-rating {min_rating:g} "
            "cannot apply; drop --min-rating or read a file with a rating column"
        )
    return raw.rating >= min_rating


def first_occurrences(
    users: np.ndarray, items: np.ndarray, time: np.ndarray | None, rows: np.ndarray
) -> np.ndarray:
    """Keep, of the ``rows`` sharing a (user, item) pair, the earliest one.

    Args:
        users: ``(n,)`` int64 user codes of all raw rows.
        items: ``(n,)`` int64 item codes of all raw rows.
        time: ``(n,)`` float64 times, or ``None`` to use file order alone.
        rows: Increasing indices of the candidate rows; the index is the file order.

    Returns:
        The kept rows, increasing.
    """
    if len(rows) == 0:
        return rows
    keys = [rows] if time is None else [rows, time[rows]]
    # lexsort sorts by the last key first: pair, then time, then file order.
    order = np.lexsort((*keys, items[rows], users[rows]))
    sorted_rows = rows[order]
    u, i = users[sorted_rows], items[sorted_rows]
    first = np.ones(len(sorted_rows), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    return np.sort(sorted_rows[first])


def k_core(
    users: np.ndarray, items: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, int]:
    """Drop rows until every remaining user and item has at least ``k`` rows.

    Args:
        users: ``(n,)`` int64 user codes of all raw rows.
        items: ``(n,)`` int64 item codes of all raw rows.
        rows: Indices of the rows to filter.
        k: Minimum count; ``k <= 1`` keeps every row.

    Returns:
        The kept rows (in the given order) and the number of passes made.
    """
    if k <= 1:
        return rows, 0
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(items.max()) + 1 if len(items) else 0
    passes = 0
    while True:
        passes += 1
        u, i = users[rows], items[rows]
        user_count = np.bincount(u, minlength=n_users)
        item_count = np.bincount(i, minlength=n_items)
        keep = (user_count[u] >= k) & (item_count[i] >= k)
        if keep.all():
            return rows, passes
        rows = rows[keep]


def prepare(raw: RawInteractions, options: PreprocessOptions, name: str) -> Sequences:
    """Turn raw interactions into chronological, contiguously numbered sequences.

    Args:
        raw: Interactions in file order, as a reader returns them.
        options: Rating threshold and k-core.
        name: Data set name stored on the result.

    Returns:
        One row per user with at least one remaining interaction.

    Raises:
        DataError: A rating threshold on a file without ratings, or no
            interaction left after filtering.
    """
    if len(raw) == 0:
        raise DataError(f"{raw.source} contains no interactions; pass a file with data")
    users, user_names = pd.factorize(raw.user)
    items, item_names = pd.factorize(raw.item)
    users = users.astype(np.int64, copy=False)
    items = items.astype(np.int64, copy=False)
    time = raw.time

    rows = np.flatnonzero(rating_mask(raw, options.min_rating))
    if options.min_rating is not None:
        logger.info(
            "rating >= %g keeps %d of %d interactions", options.min_rating, len(rows), len(raw)
        )

    before = len(rows)
    rows = first_occurrences(users, items, time, rows)
    if len(rows) < before:
        logger.info(
            "dropped %d duplicate (user, item) pairs, keeping the earliest", before - len(rows)
        )

    before = len(rows)
    rows, passes = k_core(users, items, rows, options.k_core)
    if options.k_core > 1:
        logger.info(
            "%d-core kept %d of %d interactions after %d passes",
            options.k_core,
            len(rows),
            before,
            passes,
        )

    if len(rows) == 0:
        raise DataError(
            f"{raw.source}: no interactions left after min_rating={options.min_rating} "
            f"and k_core={options.k_core}; lower the threshold or the k-core"
        )

    # Contiguous ids in order of first appearance: factorize codes were assigned
    # that way, so ranking the surviving codes keeps the order.
    kept_users, user_ids = np.unique(users[rows], return_inverse=True)
    kept_items, item_ids = np.unique(items[rows], return_inverse=True)
    item_ids = item_ids + 1

    # Stable chronological sort inside each user; rows are in file order, so
    # using them as the last key keeps ties in file order.
    keys = (rows,) if time is None else (rows, time[rows])
    order = np.lexsort((*keys, user_ids))
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_ids, minlength=len(kept_users)), out=offsets[1:])

    return Sequences(
        name=name,
        seqs=Ragged(offsets, item_ids[order].astype(np.int64)),
        user_ids=np.asarray(user_names, dtype=object)[kept_users].astype(str),
        item_ids=np.concatenate(
            [[PAD_ID], np.asarray(item_names, dtype=object)[kept_items]]
        ).astype(str),
    )
