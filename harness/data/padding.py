"""Right-aligned padding of ragged item sequences into fixed-width arrays."""

from __future__ import annotations

import numpy as np

from harness.data.types import Ragged


def pad_windows(values: np.ndarray, ends: np.ndarray, starts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the windows ``values[max(start, end - max_len):end]`` into a right-aligned array.

    Right alignment puts the most recent item at position ``max_len - 1`` for
    every row, which is where SASRec reads its single interest and where the
    learned position embeddings of ComiRec see the same recency offset.

    Args:
        values: Flat int64 item array.
        ends: ``(B,)`` exclusive end index of each window in ``values``.
        starts: ``(B,)`` earliest index a window may reach back to (the start of its row).
        max_len: Width L of the output.

    Returns:
        ``history (B, L) int64`` with 0 on padding, and ``mask (B, L) bool``.
    """
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.maximum(np.asarray(starts, dtype=np.int64), ends - max_len)
    # Column j of row b contains values[ends[b] - L + j] when that index is inside the window.
    index = ends[:, None] - max_len + np.arange(max_len, dtype=np.int64)[None, :]  # (B, L)
    mask = index >= starts[:, None]
    history = np.where(mask, values[np.clip(index, 0, max(len(values) - 1, 0))] if len(values) else 0, 0)
    return history.astype(np.int64, copy=False), mask


def pad_histories(history: Ragged, max_len: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the last ``max_len`` items of each row (or of ``rows``), right-aligned, and the mask."""
    if rows is None:
        rows = np.arange(len(history), dtype=np.int64)
    return pad_windows(history.values, history.offsets[rows + 1], history.offsets[rows], max_len)
