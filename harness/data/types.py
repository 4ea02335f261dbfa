"""In-memory containers for prepared interaction data, splits and batches.

Sequences are stored in CSR layout (``offsets`` into one flat ``items``
array) so that batching and evaluation stay vectorised. Internal item ids
run from 1 to ``n_items``; id 0 is padding and never a real item. Internal
user ids run from 0 to ``n_users - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Ragged:
    """A list of int64 arrays in CSR layout.

    Attributes:
        offsets: ``(n + 1,)`` int64, ``offsets[0] == 0``; row ``r`` is
            ``values[offsets[r]:offsets[r + 1]]``.
        values: ``(offsets[-1],)`` int64.
    """

    offsets: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        return self.values[self.offsets[row] : self.offsets[row + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` int64 row lengths."""
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, rows: list[list[int]] | list[np.ndarray]) -> Ragged:
        """Build from Python lists (for tests and small inputs, not hot paths)."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = (
            np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
            if len(rows) and offsets[-1] > 0
            else np.zeros(0, dtype=np.int64)
        )
        return cls(offsets, values)

    def to_lists(self) -> list[list[int]]:
        """Return the rows as Python lists (for tests and output)."""
        return [self[r].tolist() for r in range(len(self))]


@dataclass(frozen=True)
class Sequences:
    """Chronological item sequences of every user of a prepared data set.

    Attributes:
        name: Data set name for tables.
        seqs: One row per internal user, items in time order (ids 1..n_items).
        user_ids: ``(n_users,)`` original user ids (as strings).
        item_ids: ``(n_items + 1,)`` original item ids (as strings); entry 0 is ``"<pad>"``.
        item_topics: Optional ``(n_items + 1,)`` int64 category per item (0 for padding),
            known for synthetic data and data sets with item metadata.
        truth: Ground truth of the synthetic generator (``None`` for real data);
            see ``harness.data.synthetic``.
    """

    name: str
    seqs: Ragged
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_topics: np.ndarray | None = None
    truth: Any = field(default=None, compare=False)

    @property
    def n_users(self) -> int:
        return len(self.seqs)

    @property
    def n_items(self) -> int:
        """Number of real items; embedding tables have ``n_items + 1`` rows."""
        return len(self.item_ids) - 1

    @property
    def n_interactions(self) -> int:
        return int(self.seqs.offsets[-1])

    def item_counts(self) -> np.ndarray:
        """``(n_items + 1,)`` interaction count per item (0 for padding)."""
        return np.bincount(self.seqs.values, minlength=self.n_items + 1)


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, each with a history and one or more targets.

    Attributes:
        users: ``(n,)`` internal user ids.
        history: ``n`` rows: the items fed to the model (time order).
        targets: ``n`` rows: the held-out items to rank (one for leave-one-out).
    """

    users: np.ndarray
    history: Ragged
    targets: Ragged

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, rows: np.ndarray) -> EvalSet:
        """Return the rows ``rows`` (an index array) as a new EvalSet."""
        return EvalSet(self.users[rows], _take(self.history, rows), _take(self.targets, rows))


def _take(ragged: Ragged, rows: np.ndarray) -> Ragged:
    lengths = ragged.lengths[rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = ragged.offsets[rows]
    # Flat index of every kept value: start of its row plus its position inside the row.
    position = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    values = ragged.values[np.repeat(starts, lengths) + position]
    return Ragged(offsets, values)


@dataclass(frozen=True)
class Split:
    """Training sequences and fixed validation and test sets.

    Attributes:
        train: Training sequences, one row per training user (empty rows allowed).
        valid: Validation users (used for early stopping and tuning).
        test: Test users (used only for the final report, never for a choice).
        n_items: Number of real items.
        protocol: ``"loo"`` or ``"user"``.
    """

    train: Ragged
    valid: EvalSet
    test: EvalSet
    n_items: int
    protocol: str


@dataclass(frozen=True)
class Batch:
    """One training batch.

    Attributes:
        history: ``(B, L)`` int64 item ids, right-aligned (the most recent item
            at position ``L - 1``), 0 on padding.
        mask: ``(B, L)`` bool, True on real items.
        target: ``(B,)`` int64 target item ids.
    """

    history: np.ndarray
    mask: np.ndarray
    target: np.ndarray
