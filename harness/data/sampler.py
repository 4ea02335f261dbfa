"""Training batches drawn from the training rows of a split.

The sampler follows the BaM protocol: draw a user uniformly, then a target
position uniformly inside that user's training row. The history is the
items before the target. Each user therefore has the same chance to appear
in a batch however long their sequence is, unlike sampling (user, position)
pairs uniformly, which favours long sequences.

The ComiRec reference iterator (``src/data_iterator.py`` of THUDM/ComiRec)
draws target positions from 4 upward. This sampler draws from position 1 for
both split protocols, so every backbone and strategy trains on the same
examples whichever split is used.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.data.padding import pad_histories, pad_windows
from harness.data.types import Batch, Ragged
from harness.errors import ConfigError, DataError

__all__ = ["TrainSampler", "pad_histories"]


class TrainSampler:
    """Draws training batches of (history, target) pairs from training rows.

    Only rows with at least 2 items take part, because position 0 has no
    history. Every call advances the generator passed at construction, so a
    sampler built from ``numpy.random.default_rng(seed)`` yields the same
    sequence of batches for the same seed.

    Args:
        train: Training rows (``Split.train``); empty and 1-item rows are skipped.
        max_len: History width L; longer histories keep their last L items.
        rng: Source of all randomness of the sampler.

    Raises:
        ConfigError: If ``max_len`` is below 1.
        DataError: If no row has at least 2 items.
    """

    def __init__(self, train: Ragged, max_len: int, rng: np.random.Generator) -> None:
        if max_len < 1:
            raise ConfigError(f"invalid max_len={max_len}: the history length must be >= 1")
        lengths = train.lengths
        users = np.flatnonzero(lengths >= 2)
        if len(users) == 0:
            raise DataError(
                f"no training examples: none of the {len(train)} training rows has the 2 items "
                "one example needs (a target and one item before it); "
                "use a data set with longer sequences or lower the k-core threshold"
            )
        self.train = train
        self.max_len = max_len
        self.rng = rng
        self.users = users
        self._starts = train.offsets[users]
        self._lengths = lengths[users]

    @property
    def num_users(self) -> int:
        """Number of training rows that can be drawn (those with at least 2 items)."""
        return len(self.users)

    @property
    def num_examples(self) -> int:
        """Number of distinct (history, target) pairs: the sum of ``length - 1`` over rows."""
        return int((self._lengths - 1).sum())

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw users and target positions without building the batch.

        Args:
            batch_size: Number of examples B.

        Returns:
            ``users (B,)`` row ids of ``train`` and ``positions (B,)`` target
            positions inside each row, uniform in ``1..length - 1``.

        Raises:
            ConfigError: If ``batch_size`` is below 1.
        """
        if batch_size < 1:
            raise ConfigError(f"invalid batch_size={batch_size}: must be >= 1")
        picks = self.rng.integers(0, len(self.users), size=batch_size)
        # integers() broadcasts an array of upper bounds, one per draw.
        positions = self.rng.integers(1, self._lengths[picks])
        return self.users[picks], positions.astype(np.int64, copy=False)

    def batch_at(self, users: np.ndarray, positions: np.ndarray) -> Batch:
        """Build the batch whose targets sit at ``positions`` of the rows ``users``.

        Args:
            users: ``(B,)`` row ids of ``train``.
            positions: ``(B,)`` target positions, each in ``1..length - 1`` of its row.

        Returns:
            The batch: the up to ``max_len`` items before each target, right-aligned,
            the mask, and the targets.
        """
        starts = self.train.offsets[users]
        ends = starts + positions
        history, mask = pad_windows(self.train.values, ends, starts, self.max_len)  # (B, L)
        return Batch(history=history, mask=mask, target=self.train.values[ends])

    def sample(self, batch_size: int) -> Batch:
        """Draw a batch of ``batch_size`` examples (see the class docstring).

        Raises:
            ConfigError: If ``batch_size`` is below 1.
        """
        return self.batch_at(*self.draw(batch_size))

    def sample_torch(
        self, batch_size: int, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw a batch as torch tensors on ``device``.

        Returns:
            ``history (B, L) int64``, ``mask (B, L) bool`` and ``target (B,) int64``.

        Raises:
            ConfigError: If ``batch_size`` is below 1.
        """
        batch = self.sample(batch_size)
        return (
            torch.from_numpy(batch.history).to(device),
            torch.from_numpy(batch.mask).to(device),
            torch.from_numpy(batch.target).to(device),
        )
