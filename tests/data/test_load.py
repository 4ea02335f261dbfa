"""load_dataset end to end: every format, real data counts, the cache and dataset_stats."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config import DataConfig
from harness.data import readers
from harness.data.cache import cache_key, entry_path
from harness.data.load import load_dataset
from harness.data.stats import dataset_stats
from harness.data.types import Ragged, Sequences
from harness.errors import ConfigError, DataError


def by_user(seqs: Sequences) -> dict[str, list[str]]:
    """Map each original user id to its sequence of original item ids."""
    return {
        str(seqs.user_ids[u]): [str(seqs.item_ids[i]) for i in seqs.seqs[u]]
        for u in range(seqs.n_users)
    }


def load(path: Path, **options) -> Sequences:
    return load_dataset(DataConfig(source=str(path), **options))


# One interaction log, written in every format. User A rated Y twice (3 at
# t=500, then 5 at t=3000); B's two items share t=2000, so file order decides.
LOG = [
    ("A", "X", 5.0, 1000),
    ("A", "Y", 3.0, 500),
    ("B", "X", 4.0, 2000),
    ("A", "Z", 4.0, 2000),
    ("A", "Y", 5.0, 3000),
    ("B", "W", 2.0, 2000),
]
EXPECTED = {"A": ["Y", "X", "Z"], "B": ["X", "W"]}
EXPECTED_MIN_4 = {"A": ["X", "Z", "Y"], "B": ["X"]}


def write_amazon_csv(folder: Path) -> Path:
    path = folder / "Beauty_and_Personal_Care.csv"
    body = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in LOG)
    path.write_text("user_id,parent_asin,rating,timestamp\n" + body)
    return path


def write_amazon_jsonl(folder: Path) -> Path:
    path = folder / "Beauty_and_Personal_Care.jsonl"
    lines = [
        json.dumps(
            {
                "rating": r,
                "title": "ok",
                "text": "fine, thanks",
                "parent_asin": i,
                "user_id": u,
                "timestamp": t,
            }
        )
        for u, i, r, t in LOG
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_movielens_csv(folder: Path) -> Path:
    path = folder / "ratings.csv"
    body = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in LOG)
    path.write_text("userId,movieId,rating,timestamp\n" + body)
    return path


def write_u_data(folder: Path) -> Path:
    path = folder / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in LOG))
    return path


def write_ratings_dat(folder: Path) -> Path:
    path = folder / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in LOG))
    return path


def write_recbole(folder: Path) -> Path:
    path = folder / "log.inter"
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    path.write_text(header + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in LOG))
    return path


def write_tsv(folder: Path) -> Path:
    path = folder / "train.csv"
    body = "".join(f"{u}\t{i}\t{t}\t{r}\n" for u, i, r, t in LOG)
    path.write_text("user_id\titem_id\ttime\trating\n" + body)
    return path


def write_parquet(folder: Path) -> Path:
    path = folder / "log.parquet"
    frame = pd.DataFrame(LOG, columns=["user_id", "item_id", "rating", "timestamp"])
    frame.to_parquet(path)
    return path


TIMED_WRITERS: dict[str, Callable[[Path], Path]] = {
    "amazon-csv": write_amazon_csv,
    "amazon-jsonl": write_amazon_jsonl,
    "movielens-csv": write_movielens_csv,
    "movielens-100k": write_u_data,
    "movielens-dat": write_ratings_dat,
    "recbole": write_recbole,
    "tsv": write_tsv,
    "parquet": write_parquet,
}


@pytest.mark.parametrize("format_name", list(TIMED_WRITERS), ids=list(TIMED_WRITERS))
def test_timed_format_sequences(tmp_path: Path, format_name: str) -> None:
    path = TIMED_WRITERS[format_name](tmp_path)
    assert readers.detect_format(path) == format_name
    assert by_user(load(path)) == EXPECTED
    assert by_user(load(path, min_rating=4.0)) == EXPECTED_MIN_4


def test_generic_csv_with_column_flags(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    body = "".join(f"{r},{t},{i},{u}\n" for u, i, r, t in LOG)
    path.write_text("score_given,seen_at,thing,person\n" + body)
    flags = {
        "user_col": "person",
        "item_col": "thing",
        "time_col": "seen_at",
        "rating_col": "score_given",
    }
    assert by_user(load(path, **flags)) == EXPECTED
    assert by_user(load(path, min_rating=4.0, **flags)) == EXPECTED_MIN_4


def test_sequences_file(tmp_path: Path) -> None:
    path = tmp_path / "Toys.txt"
    path.write_text("1 10 11 10 12\n2 11 13\n\n3 12\n")
    assert by_user(load(path)) == {"1": ["10", "11", "12"], "2": ["11", "13"], "3": ["12"]}


def test_pairs_file(tmp_path: Path) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("b x\na y\nb z\na x\na y\nb x\n")
    assert by_user(load(path)) == {"b": ["x", "z"], "a": ["y", "x"]}


def test_amazon_history_file(tmp_path: Path) -> None:
    path = tmp_path / "Movies_and_TV.train.csv"
    path.write_text(
        "user_id,parent_asin,rating,timestamp,history\n"
        "A,X,5.0,1000,\nB,Q,3.0,1500,\nA,Y,4.0,2000,X\nA,Z,4.0,3000,X Y\nB,R,3.0,1600,Q\n"
    )
    assert by_user(load(path)) == {"A": ["X", "Y", "Z"], "B": ["Q", "R"]}
    with pytest.raises(DataError, match="format amazon-history has no ratings"):
        load(path, min_rating=4.0)


def test_k_core_option(tmp_path: Path) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\na y\nb x\nb y\nc x\nc z\n")
    assert by_user(load(path, k_core=2)) == {"a": ["x", "y"], "b": ["x", "y"]}


@pytest.mark.parametrize(
    ("relative", "users", "items", "interactions"),
    [
        ("amazon-beauty/Beauty.txt", 22363, 12101, 198502),
        ("ml-100k/ml-100k.inter", 943, 1682, 100000),
        ("movielens-small/ratings.csv", 610, 9724, 100836),
        ("amazon-grocery/train.csv", 14681, 8687, 121892),
        ("lastfm/LastFM.txt", 1090, 3646, 52551),
    ],
    ids=["beauty", "ml-100k", "movielens-small", "grocery", "lastfm"],
)
def test_real_data_counts(
    shared_file, relative: str, users: int, items: int, interactions: int
) -> None:
    seqs = load(shared_file(relative))
    assert seqs.n_users == users
    assert seqs.n_items == items
    assert seqs.n_interactions == interactions


def test_beauty_keeps_original_ids_and_order(shared_file) -> None:
    path = shared_file("amazon-beauty/Beauty.txt")
    seqs = load(path)
    # Beauty.txt numbers users and items from 1 in order of first appearance,
    # the same rule the remapping uses, so the mapping is the identity.
    assert seqs.item_ids[1:].astype(int).tolist() == list(range(1, seqs.n_items + 1))
    first_line = path.read_text().splitlines()[0].split()
    assert seqs.user_ids[0] == first_line[0]
    assert seqs.item_ids[seqs.seqs[0]].tolist() == first_line[1:]


@pytest.mark.parametrize(
    ("relative", "sep", "user", "item", "time"),
    [
        ("amazon-grocery/train.csv", "\t", "user_id", "item_id", "time"),
        ("ml-100k/ml-100k.inter", "\t", "user_id:token", "item_id:token", "timestamp:float"),
    ],
    ids=["grocery", "ml-100k"],
)
def test_sequences_follow_time_order(
    shared_file, relative: str, sep: str, user: str, item: str, time: str
) -> None:
    path = shared_file(relative)
    seqs = load(path)
    frame = pd.read_csv(path, sep=sep, dtype={user: str, item: str})
    ordered = frame.sort_values(time, kind="stable").groupby(user, sort=False)[item].apply(list)
    assert by_user(seqs) == ordered.to_dict()


def test_second_load_hits_cache(shared_file, monkeypatch, caplog, isolated_cache: Path) -> None:
    calls = []
    original = readers.FORMATS["sequences"]

    def counting_reader(path: Path, columns: readers.ColumnNames) -> readers.RawInteractions:
        calls.append(path)
        return original(path, columns)

    monkeypatch.setitem(readers.FORMATS, "sequences", counting_reader)
    path = shared_file("amazon-beauty/Beauty.txt")
    first = load(path)
    assert len(calls) == 1
    assert len(list(isolated_cache.glob("*.npz"))) == 1

    with caplog.at_level(logging.INFO, logger="harness.data.cache"):
        second = load(path)
    assert len(calls) == 1
    assert any("loaded Beauty from cache entry" in record.getMessage() for record in caplog.records)
    np.testing.assert_array_equal(second.seqs.offsets, first.seqs.offsets)
    np.testing.assert_array_equal(second.seqs.values, first.seqs.values)
    np.testing.assert_array_equal(second.user_ids, first.user_ids)
    np.testing.assert_array_equal(second.item_ids, first.item_ids)


def test_cache_key_follows_content_and_options(tmp_path: Path) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\na y\n")
    base = cache_key(path, {"k_core": 0})
    assert cache_key(path, {"k_core": 0}) == base
    assert cache_key(path, {"k_core": 5}) != base
    path.write_text("a x\na z\n")
    assert cache_key(path, {"k_core": 0}) != base


def test_edited_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\na y\n")
    assert by_user(load(path)) == {"a": ["x", "y"]}
    path.write_text("a x\na z\n")
    assert by_user(load(path)) == {"a": ["x", "z"]}


def test_corrupt_cache_entry_rebuilt(tmp_path: Path, caplog, isolated_cache: Path) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\na y\nb y\n")
    expected = by_user(load(path))
    (entry,) = isolated_cache.glob("*.npz")
    entry.write_bytes(b"not a zip file")

    with caplog.at_level(logging.WARNING, logger="harness.data.cache"):
        assert by_user(load(path)) == expected
    assert any("ignoring corrupt cache entry" in record.getMessage() for record in caplog.records)
    with np.load(entry) as rebuilt:
        assert rebuilt["values"].tolist() == [1, 2, 2]


def test_inconsistent_cache_entry_rebuilt(tmp_path: Path, caplog, isolated_cache: Path) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\na y\n")
    load(path)
    (entry,) = isolated_cache.glob("*.npz")
    np.savez(
        entry,
        offsets=np.array([0, 5]),
        values=np.array([1, 2]),
        user_ids=np.array(["a"]),
        item_ids=np.array(["<pad>", "x", "y"]),
    )

    with caplog.at_level(logging.WARNING, logger="harness.data.cache"):
        assert by_user(load(path)) == {"a": ["x", "y"]}
    assert any(
        "offsets do not match the values" in record.getMessage() for record in caplog.records
    )


def test_cache_dir_argument_and_env(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\n")
    explicit = tmp_path / "explicit"
    load_dataset(DataConfig(source=str(path)), cache_dir=explicit)
    assert len(list(explicit.glob("*.npz"))) == 1

    from_env = tmp_path / "from-env"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(from_env))
    load(path)
    key = cache_key(path, {"format": "pairs", "columns": {}, "min_rating": None, "k_core": 0})
    assert entry_path(from_env, key).is_file()


def test_unwritable_cache_still_loads(tmp_path: Path, caplog) -> None:
    path = tmp_path / "clicks.txt"
    path.write_text("a x\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="harness.data.cache"):
        seqs = load_dataset(DataConfig(source=str(path)), cache_dir=blocker / "cache")
    assert by_user(seqs) == {"a": ["x"]}
    assert any("cannot write cache entry" in record.getMessage() for record in caplog.records)


def test_name_comes_from_config(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    path = folder / "train.csv"
    path.write_text("user_id\titem_id\ttime\nu\ti\t1\n")
    assert load(path).name == "shop-train"
    # A cache hit takes the name from the config too.
    assert load(path).name == "shop-train"


def test_synthetic_rejects_filters() -> None:
    with pytest.raises(ConfigError, match="synthetic data has no ratings"):
        load_dataset(DataConfig(min_rating=3.0))
    with pytest.raises(
        ConfigError, match="k-core filtering would break the synthetic ground truth"
    ):
        load_dataset(DataConfig(k_core=5))


def test_synthetic_source() -> None:
    pytest.importorskip("harness.data.synthetic")
    seqs = load_dataset(DataConfig(source="synthetic", synthetic_seed=3))
    assert seqs.name == "synthetic"
    assert seqs.truth is not None
    again = load_dataset(DataConfig(source="synthetic", synthetic_seed=3))
    np.testing.assert_array_equal(again.seqs.values, seqs.seqs.values)


def test_missing_source_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="is a directory"):
        load(tmp_path)


def test_stats_by_hand() -> None:
    seqs = Sequences(
        name="hand",
        seqs=Ragged.from_lists([[1], [1, 2], [3, 2, 1], [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]]),
        user_ids=np.array(["a", "b", "c", "d"]),
        item_ids=np.array(["<pad>", "1", "2", "3", "4", "5"]),
    )
    stats = dataset_stats(seqs)
    assert stats["name"] == "hand"
    assert stats["users"] == 4
    assert stats["items"] == 5
    assert stats["interactions"] == 16
    assert stats["density"] == pytest.approx(16 / 20)
    # Lengths 1, 2, 3, 10; quantile q sits at position 3q between order statistics.
    assert stats["length_min"] == 1
    assert stats["length_p25"] == pytest.approx(1.75)
    assert stats["length_p50"] == pytest.approx(2.5)
    assert stats["length_p75"] == pytest.approx(3 + 0.25 * 7)
    assert stats["length_p90"] == pytest.approx(3 + 0.7 * 7)
    assert stats["length_max"] == 10
    assert stats["length_mean"] == pytest.approx(4.0)
    json.dumps(stats)


def test_stats_of_empty_data_set() -> None:
    seqs = Sequences(
        name="none",
        seqs=Ragged(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)),
        user_ids=np.array([], dtype=str),
        item_ids=np.array(["<pad>"]),
    )
    stats = dataset_stats(seqs)
    assert stats["users"] == 0
    assert np.isnan(stats["density"])
    assert np.isnan(stats["length_mean"])
