"""Every backbone learns on real LastFM histories: 200 full-softmax steps lower the loss on a probe set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backbones import REGISTRY, build_backbone
from harness.data.padding import pad_windows

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lastfm" / "LastFM.txt"
NAMES = sorted(REGISTRY)
MAX_LEN, BATCH, STEPS = 20, 64, 200


def read_sequences() -> tuple[np.ndarray, np.ndarray, int]:
    """Flat item array, row offsets and item count of the one-line-per-user file."""
    if not DATA.exists():
        pytest.skip(f"real data set not found: {DATA}")
    rows = [
        np.array(line.split()[1:], dtype=np.int64)
        for line in DATA.read_text().splitlines()
        if line.strip()
    ]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    values = np.concatenate(rows)
    return values, offsets, int(values.max())


def sample_batches(
    values: np.ndarray, offsets: np.ndarray, seed: int
) -> list[tuple[torch.Tensor, ...]]:
    """Training examples: a target position >= 1 in a random user's row, and the items before it."""
    rng = np.random.default_rng(seed)
    lengths = np.diff(offsets)
    users = rng.choice(np.flatnonzero(lengths >= 2), size=(STEPS, BATCH))
    positions = 1 + (rng.random((STEPS, BATCH)) * (lengths[users] - 1)).astype(np.int64)
    batches = []
    for step in range(STEPS):
        ends = offsets[users[step]] + positions[step]
        history, mask = pad_windows(values, ends, offsets[users[step]], MAX_LEN)
        batches.append(
            (torch.from_numpy(history), torch.from_numpy(mask), torch.from_numpy(values[ends]))
        )
    return batches


def recommendation_loss(
    model: torch.nn.Module, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Full-softmax loss of the interest closest to the target (hard selection, as ComiRec trains)."""
    interests = model(history, mask)  # (B, K, D)
    table = model.item_embedding.weight
    chosen = (interests * table[target].unsqueeze(1)).sum(-1).argmax(dim=1)
    user = interests[torch.arange(len(target)), chosen]  # (B, D)
    return F.cross_entropy(user @ table[1:].T, target - 1)  # padding is not a class


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_training_lowers_loss_on_lastfm(name: str) -> None:
    values, offsets, n_items = read_sequences()
    batches = sample_batches(values, offsets, seed=0)
    # 256 examples drawn with another seed, scored before and after training.
    probe = [
        torch.cat(parts) for parts in zip(*sample_batches(values, offsets, seed=1)[:4], strict=True)
    ]
    model = build_backbone(name, n_items=n_items, dim=16, num_interests=2, max_len=MAX_LEN, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    model.eval()
    with torch.no_grad():
        before = recommendation_loss(model, *probe).item()
    model.train()
    for history, mask, target in batches:
        loss = recommendation_loss(model, history, mask, target) + model.auxiliary_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = recommendation_loss(model, *probe).item()

    assert np.isfinite(after)
    # Measured at these seeds: drops of 0.56 (comirec-dr) to 1.56 (sasrec) nats.
    assert after < before - 0.3, (before, after)
