"""Preprocessing: duplicates, rating threshold, k-core, chronological order and id remapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.data.preprocess import PreprocessOptions, first_occurrences, k_core, prepare
from harness.data.readers import RawInteractions, read_interactions
from harness.data.types import Sequences
from harness.errors import ConfigError, DataError


def raw_table(
    rows: list[tuple], with_time: bool = True, with_rating: bool = False
) -> RawInteractions:
    """Build raw interactions from (user, item[, time][, rating]) tuples."""
    columns = list(zip(*rows, strict=True))
    time = np.array(columns[2], dtype=np.float64) if with_time else None
    rating = np.array(columns[-1], dtype=np.float64) if with_rating else None
    return RawInteractions(
        user=np.array(columns[0], dtype=object),
        item=np.array(columns[1], dtype=object),
        time=time,
        rating=rating,
        source=Path("fixture.csv"),
        format="csv",
    )


def by_user(seqs: Sequences) -> dict[str, list[str]]:
    """Map each original user id to its sequence of original item ids."""
    return {
        str(seqs.user_ids[u]): [str(seqs.item_ids[i]) for i in seqs.seqs[u]]
        for u in range(seqs.n_users)
    }


def test_duplicate_keeps_earliest_by_time() -> None:
    raw = raw_table([("A", "Y", 3.0), ("A", "X", 1.0), ("A", "Y", 0.5), ("B", "Y", 2.0)])
    seqs = prepare(raw, PreprocessOptions(), "t")
    assert by_user(seqs) == {"A": ["Y", "X"], "B": ["Y"]}


def test_duplicate_time_tie_keeps_first_line() -> None:
    users = np.array([0, 0, 0], dtype=np.int64)
    items = np.array([5, 5, 6], dtype=np.int64)
    time = np.array([2.0, 2.0, 1.0])
    kept = first_occurrences(users, items, time, np.arange(3, dtype=np.int64))
    np.testing.assert_array_equal(kept, [0, 2])


def test_duplicate_without_time_keeps_first_line() -> None:
    raw = raw_table([("A", "X"), ("A", "Y"), ("A", "X"), ("A", "Z")], with_time=False)
    seqs = prepare(raw, PreprocessOptions(), "t")
    assert by_user(seqs) == {"A": ["X", "Y", "Z"]}


def test_time_ties_keep_file_order() -> None:
    raw = raw_table([("A", "c", 5.0), ("A", "a", 5.0), ("A", "b", 1.0), ("A", "d", 5.0)])
    seqs = prepare(raw, PreprocessOptions(), "t")
    assert by_user(seqs) == {"A": ["b", "c", "a", "d"]}


def test_rating_threshold_runs_before_duplicates() -> None:
    # A rated Y twice: 3 first, then 5. Under min_rating=4 only the later one counts.
    raw = raw_table(
        [("A", "Y", 0.5, 3.0), ("A", "X", 1.0, 4.0), ("A", "Y", 3.0, 5.0), ("B", "X", 2.0, 1.0)],
        with_rating=True,
    )
    assert by_user(prepare(raw, PreprocessOptions(), "t")) == {"A": ["Y", "X"], "B": ["X"]}
    assert by_user(prepare(raw, PreprocessOptions(min_rating=4.0), "t")) == {"A": ["X", "Y"]}


def test_threshold_without_ratings_rejected() -> None:
    raw = raw_table([("A", "X", 1.0)])
    with pytest.raises(DataError, match="has no ratings, so --min-rating 4 cannot apply"):
        prepare(raw, PreprocessOptions(min_rating=4.0), "t")


def test_ids_contiguous_in_first_appearance_order() -> None:
    raw = raw_table([("u9", "i5", 3.0), ("u2", "i7", 1.0), ("u9", "i7", 2.0), ("u2", "i1", 0.0)])
    seqs = prepare(raw, PreprocessOptions(), "named")
    assert seqs.name == "named"
    assert seqs.user_ids.tolist() == ["u9", "u2"]
    assert seqs.item_ids.tolist() == ["<pad>", "i5", "i7", "i1"]
    assert seqs.seqs.offsets.tolist() == [0, 2, 4]
    # Sorted by time, u9 has i7 (t=2), i5 (t=3) and u2 has i1 (t=0), i7 (t=1).
    assert seqs.seqs.values.tolist() == [2, 1, 3, 2]
    assert seqs.seqs.values.dtype == np.int64


def test_k_core_cascades_to_fixed_point() -> None:
    # Pass 1 drops u4, pass 2 drops c (one user left), pass 3 drops u3 (one item left).
    pairs = [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u2", "b"),
        ("u3", "a"),
        ("u3", "c"),
        ("u4", "c"),
    ]
    users = np.array([int(u[1]) for u, _ in pairs], dtype=np.int64)
    items = np.array(["abc".index(i) for _, i in pairs], dtype=np.int64)
    rows, passes = k_core(users, items, np.arange(len(pairs), dtype=np.int64), 2)
    np.testing.assert_array_equal(rows, [0, 1, 2, 3])
    assert passes == 4


def test_k_core_removing_everything_is_an_error() -> None:
    raw = raw_table([("A", "X", 1.0), ("B", "Y", 1.0)])
    with pytest.raises(
        DataError, match="no interactions left .*k_core=2; lower the threshold or the k-core"
    ):
        prepare(raw, PreprocessOptions(k_core=2), "t")


def test_options_validated() -> None:
    with pytest.raises(ConfigError, match="invalid k_core=-1"):
        PreprocessOptions(k_core=-1)
    with pytest.raises(ConfigError, match="invalid min_rating=nan"):
        PreprocessOptions(min_rating=float("nan"))


def brute_force_k_core(pairs: set[tuple[str, str]], k: int) -> set[tuple[str, str]]:
    """Reference k-core: count with dicts and drop pairs until nothing changes."""
    kept = set(pairs)
    while True:
        user_count: dict[str, int] = {}
        item_count: dict[str, int] = {}
        for user, item in kept:
            user_count[user] = user_count.get(user, 0) + 1
            item_count[item] = item_count.get(item, 0) + 1
        smaller = {(u, i) for u, i in kept if user_count[u] >= k and item_count[i] >= k}
        if smaller == kept:
            return kept
        kept = smaller


@pytest.mark.parametrize("k", [5, 20])
def test_k_core_matches_brute_force_on_movielens(shared_file, k: int) -> None:
    raw = read_interactions(shared_file("movielens-small/ratings.csv"))
    seqs = prepare(raw, PreprocessOptions(k_core=k), "ml")
    expected = brute_force_k_core(set(zip(raw.user, raw.item, strict=True)), k)
    got = {(user, item) for user, items in by_user(seqs).items() for item in items}
    assert got == expected
    assert seqs.n_interactions == len(expected)
    assert seqs.seqs.lengths.min() >= k
    assert np.bincount(seqs.seqs.values)[1:].min() >= k
