"""Readers: every format on hand-made files, format detection and error messages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.readers import (
    COLUMN_FORMATS,
    FORMATS,
    ColumnNames,
    RawInteractions,
    detect_format,
    read_interactions,
)
from harness.errors import ConfigError, DataError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def triples(raw: RawInteractions) -> list[tuple[str, str, float | None, float | None]]:
    """Return the raw rows as (user, item, time, rating) in file order."""
    time = raw.time if raw.time is not None else [None] * len(raw)
    rating = raw.rating if raw.rating is not None else [None] * len(raw)
    return [
        (u, i, None if t is None else float(t), None if r is None else float(r))
        for u, i, t, r in zip(raw.user, raw.item, time, rating, strict=True)
    ]


AMAZON_ROWS = [
    ("A", "X", 5.0, 1000),
    ("A", "Y", 3.0, 3000),
    ("B", "X", 4.0, 2000),
]
AMAZON_EXPECTED = [("A", "X", 1.0, 5.0), ("A", "Y", 3.0, 3.0), ("B", "X", 2.0, 4.0)]


def test_amazon_csv_reads_ms_as_seconds(tmp_path: Path) -> None:
    body = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in AMAZON_ROWS)
    path = write(tmp_path, "All_Beauty.csv", "user_id,parent_asin,rating,timestamp\n" + body)
    raw = read_interactions(path)
    assert raw.format == "amazon-csv"
    assert triples(raw) == AMAZON_EXPECTED


def test_amazon_csv_without_header(tmp_path: Path) -> None:
    body = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in AMAZON_ROWS)
    path = write(tmp_path, "ratings_only.csv", body)
    raw = read_interactions(path, "amazon-csv")
    assert triples(raw) == AMAZON_EXPECTED


def test_amazon_jsonl_ignores_other_keys(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "rating": r,
                "title": "t",
                "text": "a, b",
                "user_id": u,
                "parent_asin": i,
                "timestamp": t,
            }
        )
        for u, i, r, t in AMAZON_ROWS
    ]
    path = write(tmp_path, "reviews.jsonl", "\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    raw = read_interactions(path)
    assert raw.format == "amazon-jsonl"
    assert triples(raw) == AMAZON_EXPECTED


def test_amazon_jsonl_gzip(tmp_path: Path) -> None:
    lines = [
        json.dumps({"user_id": u, "parent_asin": i, "rating": r, "timestamp": t})
        for u, i, r, t in AMAZON_ROWS
    ]
    path = tmp_path / "reviews.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    assert detect_format(path) == "amazon-jsonl"
    assert triples(read_interactions(path)) == AMAZON_EXPECTED


HISTORY_TRAIN = """user_id,parent_asin,rating,timestamp,history
A,X,5.0,1000,
A,Y,4.0,2000,X
B,Q,3.0,1500,
A,Z,4.0,3000,X Y
B,R,3.0,1600,Q
"""


def test_amazon_history_expands_train_rows(tmp_path: Path) -> None:
    raw = read_interactions(write(tmp_path, "Books.train.csv", HISTORY_TRAIN))
    assert raw.format == "amazon-history"
    assert raw.time is None
    assert raw.rating is None
    # Grouped by user in order of first appearance, each in history order;
    # items repeated across rows stay (preprocessing keeps the first).
    pairs = list(zip(raw.user, raw.item, strict=True))
    first_seen: dict[str, list[str]] = {}
    for user, item in pairs:
        items = first_seen.setdefault(user, [])
        if item not in items:
            items.append(item)
    assert first_seen == {"A": ["X", "Y", "Z"], "B": ["Q", "R"]}
    assert [u for u, _ in pairs] == sorted((u for u, _ in pairs), key=["A", "B"].index)


def test_amazon_history_test_file_holds_whole_sequence(tmp_path: Path) -> None:
    text = "user_id,parent_asin,rating,timestamp,history\nA,Z,4.0,3000,X Y\nB,R,3.0,1600,Q\nC,K,1.0,10,\n"
    raw = read_interactions(write(tmp_path, "Books.test.csv", text))
    pairs = list(zip(raw.user, raw.item, strict=True))
    assert pairs == [("A", "X"), ("A", "Y"), ("A", "Z"), ("B", "Q"), ("B", "R"), ("C", "K")]


def test_amazon_history_without_header(tmp_path: Path) -> None:
    text = "A,Z,4.0,3000,X Y\nB,R,3.0,1600,Q\n"
    raw = read_interactions(write(tmp_path, "Books.valid.csv", text), "amazon-history")
    assert list(zip(raw.user, raw.item, strict=True)) == [
        ("A", "X"),
        ("A", "Y"),
        ("A", "Z"),
        ("B", "Q"),
        ("B", "R"),
    ]


def test_sequences_file(tmp_path: Path) -> None:
    path = write(tmp_path, "Toys.txt", "1 10 11 12\n2 11 13\n\n3 12\n")
    raw = read_interactions(path)
    assert raw.format == "sequences"
    assert triples(raw) == [
        ("1", "10", None, None),
        ("1", "11", None, None),
        ("1", "12", None, None),
        ("2", "11", None, None),
        ("2", "13", None, None),
        ("3", "12", None, None),
    ]


def test_pairs_file(tmp_path: Path) -> None:
    path = write(tmp_path, "clicks.txt", "a x\na  y\nb\tx\n\na x\n")
    raw = read_interactions(path)
    assert raw.format == "pairs"
    assert list(zip(raw.user, raw.item, strict=True)) == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("a", "x"),
    ]


MOVIELENS_ROWS = [("1", "10", 4.0, 300.0), ("1", "20", 5.0, 100.0), ("2", "10", 3.0, 50.0)]


def movielens_expected() -> list[tuple[str, str, float, float]]:
    return [(u, i, t, r) for u, i, r, t in MOVIELENS_ROWS]


def test_movielens_csv(tmp_path: Path) -> None:
    body = "".join(f"{u},{i},{r},{int(t)}\n" for u, i, r, t in MOVIELENS_ROWS)
    raw = read_interactions(
        write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n" + body)
    )
    assert raw.format == "movielens-csv"
    assert triples(raw) == movielens_expected()


def test_movielens_100k(tmp_path: Path) -> None:
    body = "".join(f"{u}\t{i}\t{int(r)}\t{int(t)}\n" for u, i, r, t in MOVIELENS_ROWS)
    raw = read_interactions(write(tmp_path, "u.data", body))
    assert raw.format == "movielens-100k"
    assert triples(raw) == movielens_expected()


def test_movielens_dat(tmp_path: Path) -> None:
    body = "".join(f"{u}::{i}::{int(r)}::{int(t)}\n" for u, i, r, t in MOVIELENS_ROWS)
    raw = read_interactions(write(tmp_path, "ratings.dat", body))
    assert raw.format == "movielens-dat"
    assert triples(raw) == movielens_expected()


def test_recbole_inter(tmp_path: Path) -> None:
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    body = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in MOVIELENS_ROWS)
    raw = read_interactions(write(tmp_path, "ml.inter", header + body))
    assert raw.format == "recbole"
    assert triples(raw) == movielens_expected()


def test_recbole_named_fields(tmp_path: Path) -> None:
    text = "session:token\tsong:token\tplays:float\n1\t10\t3\n"
    raw = read_interactions(
        write(tmp_path, "music.inter", text), columns=ColumnNames(user="session", item="song")
    )
    assert triples(raw) == [("1", "10", None, None)]


def test_generic_csv_with_flags_and_iso_dates(tmp_path: Path) -> None:
    text = "who,what,when,stars\nu1,i1,2020-01-02T00:00:00Z,4\nu1,i2,2020-01-01,2.5\n"
    columns = ColumnNames(user="who", item="what", time="when", rating="stars")
    raw = read_interactions(write(tmp_path, "log.csv", text), columns=columns)
    assert raw.format == "csv"
    day = 86400.0
    assert triples(raw) == [("u1", "i1", 18263 * day, 4.0), ("u1", "i2", 18262 * day, 2.5)]


def test_generic_tsv_detected_by_header(tmp_path: Path) -> None:
    text = "user_id\titem_id\ttime\n7\t3\t965779200\n8\t3\t965779100\n"
    raw = read_interactions(write(tmp_path, "train.csv", text))
    assert raw.format == "tsv"
    assert triples(raw) == [("7", "3", 965779200.0, None), ("8", "3", 965779100.0, None)]


def test_generic_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "visitor": [5, 5, 6],
            "product": ["p", "q", "p"],
            "at": pd.to_datetime(
                ["1970-01-01 00:00:10", "1970-01-01 00:00:05", "1970-01-02 00:00:00"]
            ),
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    raw = read_interactions(path, columns=ColumnNames(user="visitor", item="product", time="at"))
    assert raw.format == "parquet"
    assert triples(raw) == [
        ("5", "p", 10.0, None),
        ("5", "q", 5.0, None),
        ("6", "p", 86400.0, None),
    ]


def test_every_format_has_a_reader_docstring() -> None:
    for name, reader in FORMATS.items():
        assert reader.__doc__, name
    assert set(COLUMN_FORMATS) <= set(FORMATS)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.csv", "1,2,3\n4,5,6\n"),
        ("a.tsv", "1\t2\t3\n"),
        ("a.txt", "user item\nu i\n"),
    ],
    ids=["csv-no-header", "tsv-three-numbers", "space-header"],
)
def test_ambiguous_file_asks_for_format(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(DataError, match="pass --format with one of: amazon-csv") as info:
        detect_format(write(tmp_path, name, text))
    assert name in str(info.value)


def test_empty_file_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.txt", "\n\n")
    with pytest.raises(DataError, match="is empty"):
        read_interactions(path)
    with pytest.raises(DataError, match="is empty"):
        read_interactions(path, "movielens-csv")


def test_pairs_malformed_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "pairs.txt", "a x\nb y\n\nc z w\n")
    with pytest.raises(DataError, match=r"pairs\.txt, line 4: expected 2 fields, found 3"):
        read_interactions(path, "pairs")


def test_sequences_line_without_items(tmp_path: Path) -> None:
    path = write(tmp_path, "seq.txt", "1 2 3\n\n2\n")
    with pytest.raises(DataError, match=r"seq\.txt, line 3: found only the user id '2'"):
        read_interactions(path, "sequences")


def test_sequences_user_on_two_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "seq.txt", "1 a b c\n2 d e\n\n1 x y\n")
    with pytest.raises(
        DataError, match=r"seq\.txt, line 4: user '1' already has a sequence on line 1"
    ):
        read_interactions(path, "sequences")


def test_csv_short_line_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,3\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 3: missing rating in column 'rating'"):
        read_interactions(path)


def test_non_numeric_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,3,4,soon\n")
    with pytest.raises(
        DataError, match=r"line 3: timestamp 'soon' in column 'timestamp' is not a number"
    ):
        read_interactions(path)


def test_headerless_field_named_by_position(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n1\t2\tx\t4\n")
    with pytest.raises(DataError, match=r"line 2: rating 'x' in field 3 is not a number"):
        read_interactions(path, "movielens-100k")


def test_generic_time_mixing_numbers_and_dates(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item,time\na,b,2020-01-01\na,c,tomorrow\n")
    with pytest.raises(
        DataError, match=r"line 3: time 'tomorrow' in column 'time' is not an ISO 8601 date"
    ):
        read_interactions(path)


def test_missing_named_column(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item\na,b\n")
    with pytest.raises(
        DataError, match=r"no column 'product' for --item-col \(columns: user, item\)"
    ):
        read_interactions(path, columns=ColumnNames(item="product"))


def test_missing_fixed_column(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "userId,movieId,rating\n1,2,3\n")
    with pytest.raises(
        DataError, match=r"missing column 'timestamp' \(columns: userId, movieId, rating\)"
    ):
        read_interactions(path, "movielens-csv")


def test_unguessable_user_column(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "person,item_id\na,b\n")
    with pytest.raises(DataError, match="cannot find the user column .*pass --user-col"):
        read_interactions(path, "csv")


def test_jsonl_invalid_line_number(tmp_path: Path) -> None:
    good = json.dumps({"user_id": "A", "parent_asin": "X", "rating": 5, "timestamp": 1})
    path = write(tmp_path, "r.jsonl", f"{good}\n\n{good}\n{{oops\n")
    with pytest.raises(DataError, match=r"r\.jsonl, line 4: invalid JSON"):
        read_interactions(path)


def test_jsonl_missing_key_line_number(tmp_path: Path) -> None:
    good = json.dumps({"user_id": "A", "parent_asin": "X", "rating": 5, "timestamp": 1})
    bad = json.dumps({"user_id": "B", "parent_asin": "Y", "rating": 5})
    path = write(tmp_path, "r.jsonl", f"{good}\n{bad}\n")
    with pytest.raises(DataError, match=r"line 2: missing key 'timestamp'"):
        read_interactions(path)


def test_recbole_bad_header(tmp_path: Path) -> None:
    path = write(tmp_path, "x.inter", "user_id\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match="header field 'user_id' is not name:type"):
        read_interactions(path)


def test_unknown_format_lists_formats(tmp_path: Path) -> None:
    path = write(tmp_path, "x.txt", "1 2\n")
    with pytest.raises(ConfigError, match="unknown data format 'xml'; valid choices: amazon-csv"):
        read_interactions(path, "xml")


def test_column_flags_rejected_for_fixed_format(tmp_path: Path) -> None:
    path = write(tmp_path, "x.txt", "1 2\n")
    with pytest.raises(
        ConfigError, match="--user-col applies only to the formats csv, tsv, parquet, recbole"
    ):
        read_interactions(path, "pairs", ColumnNames(user="u"))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        read_interactions(tmp_path / "nope.csv")
    write(tmp_path, "inside.csv", "user,item\n")
    with pytest.raises(DataError, match=r"is a directory \(it contains: inside\.csv\)"):
        read_interactions(tmp_path)


def test_ids_that_look_missing_stay_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "user,item\nNA,null\nnan,None\n")
    raw = read_interactions(path)
    assert list(raw.user) == ["NA", "nan"]
    assert list(raw.item) == ["null", "None"]
    assert raw.user.dtype == np.dtype(object)


def test_real_files_detected(shared_file) -> None:
    expected = {
        "amazon-beauty/Beauty.txt": "sequences",
        "lastfm/LastFM.txt": "sequences",
        "amazon-grocery/train.csv": "tsv",
        "movielens-small/ratings.csv": "movielens-csv",
        "ml-100k/ml-100k.inter": "recbole",
    }
    for relative, name in expected.items():
        assert detect_format(shared_file(relative)) == name, relative
