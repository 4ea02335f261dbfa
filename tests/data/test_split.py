"""Tests of leave-one-out and user splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from harness.data.split import make_split
from harness.data.types import EvalSet, Ragged, Sequences
from harness.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def make_sequences(rows: list[list[int]], name: str = "toy") -> Sequences:
    n_items = max((max(r) for r in rows if r), default=0)
    return Sequences(
        name=name,
        seqs=Ragged.from_lists(rows),
        user_ids=np.array([f"u{u}" for u in range(len(rows))]),
        item_ids=np.array(["<pad>"] + [f"i{i}" for i in range(1, n_items + 1)]),
    )


def eval_rows(eval_set: EvalSet) -> dict[int, tuple[list[int], list[int]]]:
    return {
        int(u): (eval_set.history[r].tolist(), eval_set.targets[r].tolist())
        for r, u in enumerate(eval_set.users)
    }


LOO_ROWS = [[5], [3, 7], [1, 2, 3], [4, 5, 6, 7, 8], [], [9, 8, 7, 6]]


def test_loo_every_index(caplog: pytest.LogCaptureFixture) -> None:
    seqs = make_sequences(LOO_ROWS)
    with caplog.at_level(logging.INFO, logger="harness.data.split"):
        split = make_split(seqs, "loo")

    assert split.protocol == "loo"
    assert split.n_items == 9
    assert split.train.to_lists() == [[], [], [1], [4, 5, 6], [], [9, 8]]
    assert split.valid.users.tolist() == [2, 3, 5]
    assert eval_rows(split.valid) == {
        2: ([1], [2]),
        3: ([4, 5, 6], [7]),
        5: ([9, 8], [7]),
    }
    assert split.test.users.tolist() == [2, 3, 5]
    assert eval_rows(split.test) == {
        2: ([1, 2], [3]),
        3: ([4, 5, 6, 7], [8]),
        5: ([9, 8, 7], [6]),
    }
    assert "dropped 3 of 6 users with fewer than 3 items" in caplog.text


def test_loo_no_drop_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    seqs = make_sequences([[1, 2, 3, 4], [4, 3, 2]])
    with caplog.at_level(logging.INFO, logger="harness.data.split"):
        make_split(seqs, "loo")
    assert "dropped" not in caplog.text


def test_loo_ignores_seed() -> None:
    seqs = make_sequences(LOO_ROWS)
    first = make_split(seqs, "loo", seed=0)
    second = make_split(seqs, "loo", seed=123)
    assert first.train.to_lists() == second.train.to_lists()
    assert eval_rows(first.test) == eval_rows(second.test)


# Expected (history, targets) of a user-split evaluation user, by hand:
# the history is floor(0.8 * n) items.
USER_ROWS = [
    [1, 2],  # 1 + 1
    [3],  # dropped
    [4, 5, 6],  # 2 + 1
    [7, 8, 9, 10],  # 3 + 1
    [11, 12, 13, 14, 15],  # 4 + 1
    [],  # dropped
    [16, 17, 18, 19, 20, 21, 22],  # 5 + 2
    [23, 24, 25, 26, 27, 28, 29, 30, 31, 32],  # 8 + 2
    [33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43],  # 8 + 3
    [44, 45],  # 1 + 1
    [46, 47, 48, 49, 50, 51],  # 4 + 2
    [52, 53, 54],  # 2 + 1
]
USER_CUTS = {
    0: ([1], [2]),
    2: ([4, 5], [6]),
    3: ([7, 8, 9], [10]),
    4: ([11, 12, 13, 14], [15]),
    6: ([16, 17, 18, 19, 20], [21, 22]),
    7: ([23, 24, 25, 26, 27, 28, 29, 30], [31, 32]),
    8: ([33, 34, 35, 36, 37, 38, 39, 40], [41, 42, 43]),
    9: ([44], [45]),
    10: ([46, 47, 48, 49], [50, 51]),
    11: ([52, 53], [54]),
}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_user_split_every_index(seed: int, caplog: pytest.LogCaptureFixture) -> None:
    seqs = make_sequences(USER_ROWS)
    with caplog.at_level(logging.INFO, logger="harness.data.split"):
        split = make_split(seqs, "user", seed=seed)

    # The documented rule: kept users shuffled by default_rng(seed); 10 kept
    # users give 1 validation and 1 test user, placed after the 8 training users.
    kept = np.array(sorted(USER_CUTS))
    shuffled = np.random.default_rng(seed).permutation(kept)
    train_users = sorted(shuffled[:8].tolist())
    assert split.valid.users.tolist() == [int(shuffled[8])]
    assert split.test.users.tolist() == [int(shuffled[9])]

    for eval_set in (split.valid, split.test):
        for user, cut in eval_rows(eval_set).items():
            assert cut == USER_CUTS[user]

    expected_train = [USER_ROWS[u] if u in train_users else [] for u in range(len(USER_ROWS))]
    assert split.train.to_lists() == expected_train
    assert split.protocol == "user"
    assert "dropped 2 of 12 users with fewer than 2 items" in caplog.text


def test_user_split_deterministic_per_seed() -> None:
    rows = [list(range(1, 2 + u % 9)) for u in range(200)]
    seqs = make_sequences(rows)
    first = make_split(seqs, "user", seed=3)
    again = make_split(seqs, "user", seed=3)
    other = make_split(seqs, "user", seed=4)

    assert np.array_equal(first.valid.users, again.valid.users)
    assert np.array_equal(first.test.users, again.test.users)
    assert first.train.to_lists() == again.train.to_lists()
    assert not np.array_equal(first.test.users, other.test.users)
    assert not np.array_equal(first.valid.users, other.valid.users)


@pytest.mark.parametrize(
    ("n_users", "n_train", "n_eval"),
    [(1000, 800, 100), (25, 19, 3), (15, 11, 2), (14, 12, 1), (3, 1, 1)],
    ids=["1000", "25-rounds-up", "15-rounds-up", "14-rounds-down", "3-minimum"],
)
def test_user_split_partition_sizes(n_users: int, n_train: int, n_eval: int) -> None:
    rows = [[1 + u % 5, 6 + u % 3] for u in range(n_users)]
    split = make_split(make_sequences(rows), "user", seed=11)

    train_users = np.flatnonzero(split.train.lengths > 0)
    valid_users = split.valid.users
    test_users = split.test.users
    assert len(train_users) == n_train
    assert len(valid_users) == n_eval
    assert len(test_users) == n_eval

    everyone = np.concatenate([train_users, valid_users, test_users])
    assert len(np.unique(everyone)) == len(everyone)
    assert sorted(everyone.tolist()) == list(range(n_users))
    assert valid_users.tolist() == sorted(valid_users.tolist())


def test_user_split_proportions_within_rounding() -> None:
    rows = [[1, 2, 3]] * 997
    split = make_split(make_sequences(rows), "user", seed=0)
    assert abs(len(split.valid) - 99.7) <= 0.5
    assert abs(len(split.test) - 99.7) <= 0.5
    assert np.count_nonzero(split.train.lengths) == 997 - 2 * 100


def test_invalid_protocol_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown split 'random'; valid choices: loo, user"):
        make_split(make_sequences(LOO_ROWS), "random")


def test_loo_all_too_short_raises() -> None:
    seqs = make_sequences([[1], [2, 3], [4, 5, 6]], name="tiny")
    with pytest.raises(DataError, match=r"'tiny'.*all 3 users have fewer than 4 items.*k-core"):
        make_split(seqs, "loo")


def test_loo_one_trainable_user_is_enough() -> None:
    split = make_split(make_sequences([[1, 2, 3], [4, 5, 6, 7]]), "loo")
    assert split.train.to_lists() == [[1], [4, 5]]


def test_user_split_too_few_users_raises() -> None:
    seqs = make_sequences([[1, 2], [3], [4, 5, 6]], name="tiny")
    with pytest.raises(DataError, match=r"'tiny'.*at least 3 users.*found 2.*1 of 3 users"):
        make_split(seqs, "user")


def read_line_sequences(path: Path) -> list[list[int]]:
    with path.open() as handle:
        return [[int(token) for token in line.split()[1:]] for line in handle]


@pytest.fixture(scope="module")
def beauty() -> list[list[int]]:
    path = DATA / "amazon-beauty" / "Beauty.txt"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return read_line_sequences(path)


def test_loo_beauty_matches_per_user_slicing(beauty: list[list[int]]) -> None:
    split = make_split(make_sequences(beauty, name="beauty"), "loo")

    kept = [u for u, row in enumerate(beauty) if len(row) >= 3]
    assert split.test.users.tolist() == kept
    assert split.train.to_lists() == [row[:-2] if len(row) >= 3 else [] for row in beauty]
    assert split.valid.history.to_lists() == [beauty[u][:-2] for u in kept]
    assert split.valid.targets.values.tolist() == [beauty[u][-2] for u in kept]
    assert split.test.history.to_lists() == [beauty[u][:-1] for u in kept]
    assert split.test.targets.values.tolist() == [beauty[u][-1] for u in kept]


def test_user_split_beauty_matches_per_user_slicing(beauty: list[list[int]]) -> None:
    split = make_split(make_sequences(beauty, name="beauty"), "user", seed=5)

    n_users = len(beauty)
    assert len(split.valid) == round(n_users / 10)
    for eval_set in (split.valid, split.test):
        rows = [beauty[u] for u in eval_set.users]
        assert eval_set.history.to_lists() == [row[: int(len(row) * 0.8)] for row in rows]
        assert eval_set.targets.to_lists() == [row[int(len(row) * 0.8) :] for row in rows]
    in_eval = set(split.valid.users.tolist()) | set(split.test.users.tolist())
    expected_train = [[] if u in in_eval else row for u, row in enumerate(beauty)]
    assert split.train.to_lists() == expected_train
