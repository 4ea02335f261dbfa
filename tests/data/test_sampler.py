"""Tests of the training-batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from harness.data.sampler import TrainSampler, pad_histories
from harness.data.split import make_split
from harness.data.types import Ragged, Sequences
from harness.errors import ConfigError, DataError

# Row u contains the items 1000 * u + 1 .. 1000 * u + length, so every item id
# names its user and its position: item 1000 * u + k sits at position k - 1.
LENGTHS = [0, 1, 2, 5, 12, 80]
ELIGIBLE = [2, 3, 4, 5]
MAX_LEN = 8


def make_rows(lengths: list[int]) -> Ragged:
    return Ragged.from_lists(
        [[1000 * u + k for k in range(1, n + 1)] for u, n in enumerate(lengths)]
    )


def locate(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the user and position of each target item of the rows built by make_rows."""
    return target // 1000, target % 1000 - 1


@pytest.fixture
def rows() -> Ragged:
    return make_rows(LENGTHS)


def draw_targets(sampler: TrainSampler, n_batches: int, batch_size: int) -> np.ndarray:
    return np.concatenate([sampler.sample(batch_size).target for _ in range(n_batches)])


def test_batch_at_hand_computed(rows: Ragged) -> None:
    sampler = TrainSampler(rows, max_len=3, rng=np.random.default_rng(0))
    batch = sampler.batch_at(np.array([4, 4, 2, 3]), np.array([1, 5, 1, 4]))

    assert batch.history.tolist() == [
        [0, 0, 4001],
        [4003, 4004, 4005],
        [0, 0, 2001],
        [3002, 3003, 3004],
    ]
    assert batch.mask.tolist() == [
        [False, False, True],
        [True, True, True],
        [False, False, True],
        [True, True, True],
    ]
    assert batch.target.tolist() == [4002, 4006, 2002, 3005]
    assert batch.history.dtype == np.int64
    assert batch.mask.dtype == np.bool_


def test_windows_match_brute_force(rows: Ragged) -> None:
    sampler = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(1))
    for _ in range(20):
        batch = sampler.sample(256)
        users, positions = locate(batch.target)
        assert batch.history.shape == (256, MAX_LEN)
        assert batch.mask.shape == (256, MAX_LEN)
        for b in range(256):
            row = rows[int(users[b])].tolist()
            position = int(positions[b])
            assert 1 <= position < len(row)
            assert batch.target[b] == row[position]

            window = row[max(0, position - MAX_LEN) : position]
            padding = MAX_LEN - len(window)
            assert batch.history[b].tolist() == [0] * padding + window
            assert batch.mask[b].tolist() == [False] * padding + [True] * len(window)
            assert batch.target[b] not in batch.history[b]


def test_padding_never_covers_real_items(rows: Ragged) -> None:
    sampler = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(2))
    batch = sampler.sample(4096)
    assert np.all(batch.history[batch.mask] > 0)
    assert np.all(batch.history[~batch.mask] == 0)
    # Right alignment: the most recent item is always real and masks are a suffix.
    assert np.all(batch.mask[:, -1])
    assert np.all(np.diff(batch.mask.astype(np.int8), axis=1) >= 0)


def test_users_uniform_chi_square(rows: Ragged) -> None:
    sampler = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(3))
    users, _ = locate(draw_targets(sampler, 40, 500))
    counts = np.bincount(users, minlength=len(LENGTHS))

    assert counts[0] == 0
    assert counts[1] == 0
    result = stats.chisquare(counts[ELIGIBLE])
    assert result.pvalue > 0.01, result


def test_positions_uniform_chi_square(rows: Ragged) -> None:
    sampler = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(4))
    n_draws = 40 * 500
    users, positions = locate(draw_targets(sampler, 40, 500))

    # Within the longest row alone, positions 1..79 are uniform.
    longest = positions[users == 5]
    result = stats.chisquare(np.bincount(longest, minlength=80)[1:])
    assert result.pvalue > 0.01, result

    # Every (user, position) cell against the BaM law: P = 1 / 4 * 1 / (length - 1).
    observed, expected_bam, expected_pairs = [], [], []
    n_pairs = sum(LENGTHS[u] - 1 for u in ELIGIBLE)
    for user in ELIGIBLE:
        cells = np.bincount(positions[users == user], minlength=LENGTHS[user])[1:]
        observed.append(cells)
        expected_bam.append(np.full(len(cells), n_draws / len(ELIGIBLE) / len(cells)))
        expected_pairs.append(np.full(len(cells), n_draws / n_pairs))
    observed = np.concatenate(observed)

    bam = stats.chisquare(observed, np.concatenate(expected_bam))
    assert bam.pvalue > 0.01, bam
    # The same test rejects the other common law (pairs drawn uniformly),
    # which shows it has the power to tell them apart.
    pairs = stats.chisquare(observed, np.concatenate(expected_pairs))
    assert pairs.pvalue < 1e-12, pairs


def test_same_seed_same_batches(rows: Ragged) -> None:
    first = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(5))
    second = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(5))
    other = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(6))
    for _ in range(3):
        a, b, c = first.sample(64), second.sample(64), other.sample(64)
        assert np.array_equal(a.history, b.history)
        assert np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.target, b.target)
        assert not np.array_equal(a.target, c.target)


def test_counts(rows: Ragged) -> None:
    sampler = TrainSampler(rows, max_len=MAX_LEN, rng=np.random.default_rng(0))
    assert sampler.num_users == 4
    assert sampler.num_examples == 1 + 4 + 11 + 79
    assert sampler.users.tolist() == ELIGIBLE


def test_sample_torch_matches_numpy(rows: Ragged) -> None:
    numpy_batch = TrainSampler(rows, MAX_LEN, np.random.default_rng(8)).sample(32)
    history, mask, target = TrainSampler(rows, MAX_LEN, np.random.default_rng(8)).sample_torch(
        32, "cpu"
    )
    assert history.dtype == torch.int64
    assert mask.dtype == torch.bool
    assert target.dtype == torch.int64
    assert torch.equal(history, torch.from_numpy(numpy_batch.history))
    assert torch.equal(mask, torch.from_numpy(numpy_batch.mask))
    assert torch.equal(target, torch.from_numpy(numpy_batch.target))


def test_no_eligible_row_raises() -> None:
    with pytest.raises(DataError, match=r"none of the 3 training rows has the 2 items"):
        TrainSampler(make_rows([0, 1, 1]), MAX_LEN, np.random.default_rng(0))


@pytest.mark.parametrize("max_len", [0, -3])
def test_invalid_max_len_raises(rows: Ragged, max_len: int) -> None:
    with pytest.raises(ConfigError, match=rf"invalid max_len={max_len}"):
        TrainSampler(rows, max_len, np.random.default_rng(0))


def test_invalid_batch_size_raises(rows: Ragged) -> None:
    sampler = TrainSampler(rows, MAX_LEN, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"invalid batch_size=0"):
        sampler.sample(0)


def test_loo_split_targets_stay_in_training_part() -> None:
    lengths = [3, 4, 7, 30, 2]
    seqs = Sequences(
        name="toy",
        seqs=make_rows(lengths),
        user_ids=np.arange(len(lengths)).astype(str),
        item_ids=np.array(["<pad>"] + [str(i) for i in range(1, 30_000)]),
    )
    split = make_split(seqs, "loo")
    sampler = TrainSampler(split.train, MAX_LEN, np.random.default_rng(9))
    users, positions = locate(draw_targets(sampler, 10, 256))

    assert set(users.tolist()) == {1, 2, 3}
    # A leave-one-out training target is never one of its user's last two items.
    assert np.all(positions <= np.array(lengths)[users] - 3)


def test_pad_histories_reexport() -> None:
    history, mask = pad_histories(Ragged.from_lists([[1, 2, 3, 4], [5]]), 3)
    assert history.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
