"""Readers that turn interaction files of many formats into one raw table.

Every reader in :data:`FORMATS` takes a path and the column names given on the
command line and returns :class:`RawInteractions`: original user and item ids as
strings, optional times and ratings as float64, rows in file order. Nothing is
filtered, deduplicated or sorted here; that is the job of
:mod:`harness.data.preprocess`.

Delimited files are parsed by pandas' C parser with every field read as a
string, so the readers can name the first line whose value is missing or not a
number. Line numbers count every physical line of the file, header and blank
lines included. Files ending in ``.gz``, ``.bz2`` or ``.xz`` are decompressed
on the fly.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from harness.config import DataConfig
from harness.errors import ConfigError, DataError, unknown_choice

logger = logging.getLogger(__name__)

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_JSON_CHUNK_LINES = 200_000
_SNIFF_LINES = 200

# Column names the generic readers recognise, lower case, in order of preference.
_KNOWN_COLUMNS: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "userid", "user", "uid", "reviewerid", "visitorid"),
    "item": ("item_id", "itemid", "item", "iid", "movieid", "parent_asin", "asin", "product_id"),
    "time": ("timestamp", "time", "ts", "datetime", "date", "unixreviewtime"),
    "rating": ("rating", "score", "overall", "stars"),
}
_FLAG = {"user": "--user-col", "item": "--item-col", "time": "--time-col", "rating": "--rating-col"}

_AMAZON_COLUMNS = ["user_id", "parent_asin", "rating", "timestamp"]
_AMAZON_HISTORY_COLUMNS = [*_AMAZON_COLUMNS, "history"]
_MOVIELENS_COLUMNS = ["userId", "movieId", "rating", "timestamp"]
_RECBOLE_TYPES = {"token", "token_seq", "float", "float_seq"}


@dataclass(frozen=True)
class RawInteractions:
    """Interactions exactly as a file lists them, before any preprocessing.

    Row ``r`` is the ``r``-th interaction in file order, which is also the
    tie-break of the chronological sort and the order used when a file has no
    time column.

    Attributes:
        user: ``(n,)`` object array of original user ids (str).
        item: ``(n,)`` object array of original item ids (str).
        time: ``(n,)`` float64 times (seconds for the Amazon formats, the file's
            own unit otherwise), or ``None`` when the file has no time.
        rating: ``(n,)`` float64 ratings, or ``None`` when the file has none.
        source: The file that was read.
        format: The reader's name in :data:`FORMATS`.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None
    rating: np.ndarray | None
    source: Path
    format: str

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "time", "rating"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"RawInteractions.{name} has {len(values)} rows, user has {n}")

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class ColumnNames:
    """Column names given with ``--user-col``, ``--item-col``, ``--time-col`` and ``--rating-col``.

    Only the ``csv``, ``tsv``, ``parquet`` and ``recbole`` formats read them; a
    role left as ``None`` is guessed from common column names.
    """

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None

    @classmethod
    def from_config(cls, config: DataConfig) -> ColumnNames:
        """Take the column names of a :class:`~harness.config.DataConfig`."""
        return cls(config.user_col, config.item_col, config.time_col, config.rating_col)

    def given(self) -> dict[str, str]:
        """Return the roles the user named, mapped to their column names."""
        return {role: name for role, name in vars(self).items() if name is not None}


Reader = Callable[[Path, ColumnNames], RawInteractions]


def _base_suffix(path: Path) -> str:
    """Return the lower-case extension, looking through a compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path, errors: str = "strict") -> IO[str]:
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding="utf-8", errors=errors)
    return path.open("r", encoding="utf-8", errors=errors)


def _read_text(path: Path) -> str:
    try:
        with _open_text(path) as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: byte {exc.start} is not UTF-8 text; convert the file to UTF-8"
        ) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None


def _head_lines(path: Path, count: int = _SNIFF_LINES) -> list[str]:
    """Return up to ``count`` non-blank lines from the start of a text file."""
    try:
        with _open_text(path, errors="replace") as handle:
            lines = (line.rstrip("\r\n") for line in handle)
            return list(islice((line for line in lines if line.strip()), count))
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None


def _empty_file_error(path: Path) -> DataError:
    return DataError(f"{path} is empty: it contains no interactions; pass a file with data")


def _read_delimited(
    source: Path | io.StringIO,
    path: Path,
    *,
    sep: str,
    header: bool,
    names: list[str] | None = None,
) -> pd.DataFrame:
    """Read a delimited file as strings; the index is each row's line number.

    Empty fields become missing values and blank lines are dropped. Only the
    empty string counts as missing, so ids such as ``NA`` or ``null`` stay ids.
    """
    try:
        frame = pd.read_csv(
            source,
            sep=sep,
            header=0 if header else None,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=False,
            engine="c",
        )
    except pd.errors.EmptyDataError:
        raise _empty_file_error(path) from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: byte {exc.start} is not UTF-8 text; convert the file to UTF-8"
        ) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None

    # NOTE: a quoted field that spans several lines shifts the numbers of later rows.
    frame.index = np.arange(len(frame), dtype=np.int64) + (2 if header else 1)
    frame = frame[~frame.isna().all(axis=1)]
    if frame.empty:
        raise _empty_file_error(path)
    return frame


def _parser_error(path: Path, exc: pd.errors.ParserError) -> DataError:
    text = str(exc)
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if match:
        expected, line, found = match.groups()
        return DataError(
            f"{path}, line {line}: expected {expected} fields, found {found}; "
            "fix the line, or pass --format if the file is not in the detected format"
        )
    return DataError(f"{path}: cannot parse the file ({text.strip()}); check its format")


def _check_columns(frame: pd.DataFrame, path: Path, required: list[str], fix: str) -> None:
    missing = [name for name in required if name not in frame.columns]
    if missing:
        present = ", ".join(map(str, frame.columns))
        raise DataError(f"{path}: missing column {missing[0]!r} (columns: {present}); {fix}")


def _describe_column(column: str | int) -> str:
    # Files without a header have numbered columns; name them as a person counts.
    return f"field {column + 1}" if isinstance(column, int) else f"column {column!r}"


def _missing_value_error(
    frame: pd.DataFrame,
    missing: np.ndarray,
    column: str | int,
    path: Path,
    value_name: str,
    row_word: str,
) -> DataError:
    row = frame.index[np.argmax(missing)]
    return DataError(
        f"{path}, {row_word} {row}: missing {value_name} in {_describe_column(column)}; "
        f"fill it in or remove the {row_word}"
    )


def _required_strings(
    frame: pd.DataFrame, column: str | int, path: Path, value_name: str, row_word: str = "line"
) -> np.ndarray:
    """Return a column as an object array of str, raising on the first missing value."""
    values = frame[column]
    missing = values.isna().to_numpy()
    if missing.any():
        raise _missing_value_error(frame, missing, column, path, value_name, row_word)
    return values.astype(str).to_numpy(dtype=object)


def _numbers(
    frame: pd.DataFrame,
    column: str | int,
    path: Path,
    value_name: str,
    allow_dates: bool = False,
    row_word: str = "line",
) -> np.ndarray:
    """Parse a column as finite float64, raising on the first value that is not a number.

    With ``allow_dates``, a column whose first value is not a number is read as
    ISO 8601 dates instead and converted to seconds since 1970-01-01 UTC.
    """
    text = frame[column]
    missing = text.isna().to_numpy()
    if missing.any():
        raise _missing_value_error(frame, missing, column, path, value_name, row_word)

    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(numbers)
    if ok.all():
        return numbers
    if allow_dates and not ok[0]:
        dates = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        parsed = dates.notna().to_numpy()
        if parsed.all():
            return _seconds(dates)
        bad = int(np.argmax(~parsed))
        expected = "an ISO 8601 date like the first row's"
    else:
        bad = int(np.argmax(~ok))
        expected = "a number"
    raise DataError(
        f"{path}, {row_word} {frame.index[bad]}: {value_name} {text.iloc[bad]!r} in {_describe_column(column)} "
        f"is not {expected}; fix the value or remove the {row_word}"
    )


def _seconds(dates: pd.Series) -> np.ndarray:
    """Convert datetimes to float seconds since 1970-01-01 (UTC when they carry a zone)."""
    epoch = pd.Timestamp(0, tz=dates.dt.tz)
    return ((dates - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


def _has_header(first_line: str, expected: list[str]) -> bool:
    """Tell a header line from data: no Amazon user id is the literal column name."""
    return first_line.split(",")[0].strip().strip('"') == expected[0]


def read_amazon_csv(path: Path, columns: ColumnNames) -> RawInteractions:
    """Amazon Reviews 2023 ratings CSV: user_id,parent_asin,rating,timestamp (ms)."""
    head = _head_lines(path, 1)
    if not head:
        raise _empty_file_error(path)
    header = _has_header(head[0], _AMAZON_COLUMNS)
    frame = _read_delimited(
        path, path, sep=",", header=header, names=None if header else _AMAZON_COLUMNS
    )
    _check_columns(
        frame, path, _AMAZON_COLUMNS, "expected the header user_id,parent_asin,rating,timestamp"
    )
    return RawInteractions(
        user=_required_strings(frame, "user_id", path, "user id"),
        item=_required_strings(frame, "parent_asin", path, "item id"),
        rating=_numbers(frame, "rating", path, "rating"),
        time=_numbers(frame, "timestamp", path, "timestamp") / 1000.0,
        source=path,
        format="amazon-csv",
    )


def read_amazon_history(path: Path, columns: ColumnNames) -> RawInteractions:
    """Amazon Reviews 2023 last_out_w_his CSV: each row's history column plus its own item.

    The benchmark's split script writes, for every row, the user's earlier
    items in time order (each item once) as the space-separated ``history``
    column, followed by the row's own ``parent_asin``. So position ``p`` of any
    row's expansion is the same item for all rows of one user. The reader
    expands the user's row with the longest history and adds the own item of
    every other row at position ``len(history)``. Rows of the result are
    grouped by user, in order of position, and that order replaces time:
    history items carry no timestamp, so ``time`` is ``None``. Ratings are
    dropped for the same reason. To filter by rating, read the ratings CSV
    (format ``amazon-csv``) instead. A ``test`` file contains every user's
    whole sequence, and a ``train`` file the sequences without their last two
    items.
    """
    head = _head_lines(path, 1)
    if not head:
        raise _empty_file_error(path)
    header = _has_header(head[0], _AMAZON_HISTORY_COLUMNS)
    names = None if header else _AMAZON_HISTORY_COLUMNS
    frame = _read_delimited(path, path, sep=",", header=header, names=names)
    _check_columns(
        frame,
        path,
        _AMAZON_HISTORY_COLUMNS,
        "expected the header user_id,parent_asin,rating,timestamp,history",
    )
    users = pd.Series(_required_strings(frame, "user_id", path, "user id"), index=frame.index)
    own_items = pd.Series(
        _required_strings(frame, "parent_asin", path, "item id"), index=frame.index
    )
    history = frame["history"].fillna("").astype(str)
    positions = history.str.count(r"\S+").astype(np.int64)

    # Every row contributes its own item at the position after its history.
    own = pd.DataFrame(
        {"user": users, "item": own_items, "position": positions, "line": frame.index}
    )

    # Only the longest history per user needs expanding: the others are its prefixes.
    longest = positions.groupby(users, sort=False).idxmax()
    tokens = history.loc[longest.to_numpy()].str.split().explode().dropna()
    expanded = pd.DataFrame(
        {
            "user": users.loc[tokens.index].to_numpy(),
            "item": tokens.to_numpy(dtype=object),
            "position": tokens.groupby(level=0).cumcount().to_numpy(dtype=np.int64),
            "line": tokens.index.to_numpy(),
        }
    )

    table = pd.concat([expanded, own], ignore_index=True)
    user_rank, _ = pd.factorize(table["user"].to_numpy(dtype=object))
    order = np.lexsort((table["line"].to_numpy(), table["position"].to_numpy(), user_rank))
    return RawInteractions(
        user=table["user"].to_numpy(dtype=object)[order],
        item=table["item"].to_numpy(dtype=object)[order],
        time=None,
        rating=None,
        source=path,
        format="amazon-history",
    )


def read_amazon_jsonl(path: Path, columns: ColumnNames) -> RawInteractions:
    """Amazon Reviews 2023 reviews as JSON Lines: keys user_id, parent_asin, rating, timestamp (ms)."""
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    times: list[np.ndarray] = []
    ratings: list[np.ndarray] = []
    try:
        chunks = pd.read_json(path, lines=True, chunksize=_JSON_CHUNK_LINES, dtype=False)
        for chunk in chunks:
            if chunk.empty:
                continue
            if (
                any(key not in chunk.columns for key in _AMAZON_COLUMNS)
                or chunk[_AMAZON_COLUMNS].isna().any().any()
            ):
                raise _json_problem(path)
            users.append(chunk["user_id"].astype(str).to_numpy(dtype=object))
            items.append(chunk["parent_asin"].astype(str).to_numpy(dtype=object))
            times.append(
                pd.to_numeric(chunk["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
            )
            ratings.append(
                pd.to_numeric(chunk["rating"], errors="coerce").to_numpy(dtype=np.float64)
            )
    except ValueError:
        raise _json_problem(path) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None

    if not users:
        raise _empty_file_error(path)
    time = np.concatenate(times)
    rating = np.concatenate(ratings)
    if not (np.isfinite(time).all() and np.isfinite(rating).all()):
        raise _json_problem(path)
    return RawInteractions(
        user=np.concatenate(users),
        item=np.concatenate(items),
        time=time / 1000.0,
        rating=rating,
        source=path,
        format="amazon-jsonl",
    )


def _json_problem(path: Path) -> DataError:
    """Scan a JSON Lines file for the first bad line and describe it.

    Only called after pandas has rejected the file, because pandas' own
    message gives no line number.
    """
    seen_record = False
    with _open_text(path, errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            seen_record = True
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                return DataError(
                    f"{path}, line {number}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    "fix the line or remove it"
                )
            if not isinstance(record, dict):
                return DataError(
                    f"{path}, line {number}: expected a JSON object; fix the line or remove it"
                )
            for key in _AMAZON_COLUMNS:
                if record.get(key) is None:
                    return DataError(
                        f"{path}, line {number}: missing key {key!r} (expected keys: "
                        f"{', '.join(_AMAZON_COLUMNS)}); fix the line or remove it"
                    )
            for key in ("rating", "timestamp"):
                try:
                    valid = np.isfinite(float(record[key]))
                except (TypeError, ValueError):
                    valid = False
                if not valid:
                    return DataError(
                        f"{path}, line {number}: {key} {record[key]!r} is not a number; fix the value"
                    )
    if not seen_record:
        return _empty_file_error(path)
    return DataError(f"{path}: cannot parse the file as JSON Lines; check its format")


def _check_unique_owners(path: Path, owners: np.ndarray, line_numbers: list[int]) -> None:
    """Reject a sequence file that gives one user two lines: the order across them is unknown."""
    _, counts = np.unique(owners, return_counts=True)
    if (counts == 1).all():
        return
    # The first repeated line in file order, to point the user at it.
    seen: dict[str, int] = {}
    for owner, number in zip(owners, line_numbers, strict=True):
        if owner in seen:
            raise DataError(
                f"{path}, line {number}: user {owner!r} already has a sequence on line "
                f"{seen[owner]}; a sequence file holds one line per user, so merge the two "
                "lines in time order (or use the pairs format, one interaction per line)"
            )
        seen[owner] = number


def read_sequences(path: Path, columns: ColumnNames) -> RawInteractions:
    """One line per user: a user id followed by that user's items in time order (u i1 i2 ...)."""
    # The line format has no fixed column count, so pandas cannot parse it;
    # split lines in Python and build the arrays in one pass.
    lines = [line.split() for line in _read_text(path).splitlines()]
    numbered = [(number, tokens) for number, tokens in enumerate(lines, start=1) if tokens]
    if not numbered:
        raise _empty_file_error(path)
    for number, tokens in numbered:
        if len(tokens) < 2:
            raise DataError(
                f"{path}, line {number}: found only the user id {tokens[0]!r}; "
                "expected a user id followed by at least one item id"
            )

    owners = np.array([tokens[0] for _, tokens in numbered], dtype=object)
    _check_unique_owners(path, owners, [number for number, _ in numbered])
    counts = np.fromiter(
        (len(tokens) - 1 for _, tokens in numbered), dtype=np.int64, count=len(numbered)
    )
    items = np.fromiter(
        chain.from_iterable(tokens[1:] for _, tokens in numbered),
        dtype=object,
        count=int(counts.sum()),
    )
    return RawInteractions(
        user=np.repeat(owners, counts),
        item=items,
        time=None,
        rating=None,
        source=path,
        format="sequences",
    )


def read_pairs(path: Path, columns: ColumnNames) -> RawInteractions:
    """One user-item pair per line, whitespace separated, no header; line order is time order."""
    frame = _read_delimited(path, path, sep=r"\s+", header=False)
    if frame.shape[1] != 2:
        raise DataError(
            f"{path}, line {frame.index[0]}: expected 2 fields (user item), found {frame.shape[1]}; "
            "pass --format with the file's real format"
        )
    return RawInteractions(
        user=_required_strings(frame, 0, path, "user id"),
        item=_required_strings(frame, 1, path, "item id"),
        time=None,
        rating=None,
        source=path,
        format="pairs",
    )


def read_movielens_csv(path: Path, columns: ColumnNames) -> RawInteractions:
    """MovieLens ratings.csv: header userId,movieId,rating,timestamp (seconds)."""
    frame = _read_delimited(path, path, sep=",", header=True)
    _check_columns(
        frame, path, _MOVIELENS_COLUMNS, "expected the header userId,movieId,rating,timestamp"
    )
    return _movielens(frame, path, ["userId", "movieId", "rating", "timestamp"], "movielens-csv")


def read_movielens_100k(path: Path, columns: ColumnNames) -> RawInteractions:
    """MovieLens 100K u.data: tab separated user, item, rating, timestamp, no header."""
    frame = _read_delimited(path, path, sep="\t", header=False)
    if frame.shape[1] != 4:
        raise DataError(
            f"{path}, line {frame.index[0]}: expected 4 tab-separated fields (user item rating timestamp), "
            f"found {frame.shape[1]}; pass --format with the file's real format"
        )
    return _movielens(frame, path, [0, 1, 2, 3], "movielens-100k")


def read_movielens_dat(path: Path, columns: ColumnNames) -> RawInteractions:
    """MovieLens 1M/10M ratings.dat: UserID::MovieID::Rating::Timestamp, no header."""
    text = _read_text(path)
    if "::" not in text:
        raise DataError(
            f"{path}: no '::' separator found; a ratings.dat file has lines like 1::1193::5::978300760"
        )
    # pandas' C parser takes one-character separators only, and ratings.dat has no tabs.
    frame = _read_delimited(io.StringIO(text.replace("::", "\t")), path, sep="\t", header=False)
    if frame.shape[1] != 4:
        raise DataError(
            f"{path}, line {frame.index[0]}: expected 4 fields UserID::MovieID::Rating::Timestamp, "
            f"found {frame.shape[1]}; fix the line"
        )
    return _movielens(frame, path, [0, 1, 2, 3], "movielens-dat")


def _movielens(frame: pd.DataFrame, path: Path, names: list, format_name: str) -> RawInteractions:
    # Check the columns left to right, so a short line reports its first missing field.
    user, item, rating, time = names
    user_ids = _required_strings(frame, user, path, "user id")
    item_ids = _required_strings(frame, item, path, "item id")
    ratings = _numbers(frame, rating, path, "rating")
    return RawInteractions(
        user=user_ids,
        item=item_ids,
        time=_numbers(frame, time, path, "timestamp"),
        rating=ratings,
        source=path,
        format=format_name,
    )


def read_recbole(path: Path, columns: ColumnNames) -> RawInteractions:
    """RecBole atomic .inter file: tab separated, header fields named name:type."""
    frame = _read_delimited(path, path, sep="\t", header=True)
    renamed = {}
    for field in frame.columns:
        name, _, kind = str(field).rpartition(":")
        if not name or kind not in _RECBOLE_TYPES:
            raise DataError(
                f"{path}, line 1: header field {field!r} is not name:type with type one of "
                f"{', '.join(sorted(_RECBOLE_TYPES))}; fix the header"
            )
        renamed[field] = name
    frame = frame.rename(columns=renamed)
    # RecBole's own default field names, unless the user named others.
    defaults = ColumnNames(user="user_id", item="item_id", time="timestamp", rating="rating")
    return _read_roles(frame, path, columns, defaults, "recbole", guess=False)


def read_csv_table(path: Path, columns: ColumnNames) -> RawInteractions:
    """Generic comma-separated file with a header; columns named by --user-col/--item-col/--time-col/--rating-col."""
    frame = _read_delimited(path, path, sep=",", header=True)
    return _read_roles(frame, path, columns, ColumnNames(), "csv", guess=True)


def read_tsv_table(path: Path, columns: ColumnNames) -> RawInteractions:
    """Generic tab-separated file with a header; columns named by --user-col/--item-col/--time-col/--rating-col."""
    frame = _read_delimited(path, path, sep="\t", header=True)
    return _read_roles(frame, path, columns, ColumnNames(), "tsv", guess=True)


def read_parquet_table(path: Path, columns: ColumnNames) -> RawInteractions:
    """Generic Parquet file; columns named by --user-col/--item-col/--time-col/--rating-col."""
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read the file as Parquet ({exc}); check its format"
        ) from None
    roles = _resolve_roles(names, path, columns, ColumnNames(), guess=True)
    # Nullable dtypes keep integer ids with gaps as "7", not "7.0".
    frame = pd.read_parquet(
        path, columns=list(dict.fromkeys(roles.values())), dtype_backend="numpy_nullable"
    )
    if frame.empty:
        raise _empty_file_error(path)
    frame.index = np.arange(len(frame), dtype=np.int64) + 1

    # Parquet keeps types, so times may arrive as datetimes rather than numbers.
    time_column = roles.get("time")
    if time_column is not None and pd.api.types.is_datetime64_any_dtype(frame[time_column]):
        if frame[time_column].isna().any():
            raise _missing_value_error(
                frame, frame[time_column].isna().to_numpy(), time_column, path, "time", "row"
            )
        frame[time_column] = _seconds(frame[time_column])
    return _roles_to_raw(frame, path, roles, "parquet", row_word="row")


def _resolve_roles(
    available: list[str], path: Path, given: ColumnNames, defaults: ColumnNames, guess: bool
) -> dict[str, str]:
    """Map each role to a column: the name given, else the default, else a known name."""
    lower = {str(name).lower(): str(name) for name in available}
    roles: dict[str, str] = {}
    for role in ("user", "item", "time", "rating"):
        requested = getattr(given, role)
        if requested is not None:
            if requested not in available:
                present = ", ".join(map(str, available))
                raise DataError(
                    f"{path}: no column {requested!r} for {_FLAG[role]} (columns: {present}); "
                    f"pass {_FLAG[role]} with one of them"
                )
            roles[role] = requested
            continue
        default = getattr(defaults, role)
        if default is not None and default in available:
            roles[role] = default
            continue
        if guess:
            found = next((lower[name] for name in _KNOWN_COLUMNS[role] if name in lower), None)
            if found is not None:
                roles[role] = found
                continue
        if role in ("user", "item"):
            present = ", ".join(map(str, available))
            raise DataError(
                f"{path}: cannot find the {role} column (columns: {present}); "
                f"pass {_FLAG[role]} with its name"
            )
    if roles["user"] == roles["item"]:
        raise DataError(
            f"{path}: the user and item columns are both {roles['user']!r}; name two different columns"
        )
    logger.info("reading %s with columns %s", path, ", ".join(f"{r}={c}" for r, c in roles.items()))
    return roles


def _read_roles(
    frame: pd.DataFrame,
    path: Path,
    given: ColumnNames,
    defaults: ColumnNames,
    format_name: str,
    guess: bool,
) -> RawInteractions:
    roles = _resolve_roles(list(frame.columns), path, given, defaults, guess)
    return _roles_to_raw(frame, path, roles, format_name)


def _roles_to_raw(
    frame: pd.DataFrame, path: Path, roles: dict[str, str], format_name: str, row_word: str = "line"
) -> RawInteractions:
    user = _required_strings(frame, roles["user"], path, "user id", row_word)
    item = _required_strings(frame, roles["item"], path, "item id", row_word)
    time = rating = None
    if "time" in roles:
        time = _numbers(frame, roles["time"], path, "time", allow_dates=True, row_word=row_word)
    if "rating" in roles:
        rating = _numbers(frame, roles["rating"], path, "rating", row_word=row_word)
    return RawInteractions(
        user=user, item=item, time=time, rating=rating, source=path, format=format_name
    )


FORMATS: dict[str, Reader] = {
    "amazon-csv": read_amazon_csv,
    "amazon-jsonl": read_amazon_jsonl,
    "amazon-history": read_amazon_history,
    "sequences": read_sequences,
    "pairs": read_pairs,
    "movielens-csv": read_movielens_csv,
    "movielens-100k": read_movielens_100k,
    "movielens-dat": read_movielens_dat,
    "recbole": read_recbole,
    "csv": read_csv_table,
    "tsv": read_tsv_table,
    "parquet": read_parquet_table,
}
"""Every reader by its ``--format`` name; a new format only needs an entry here.

The first line of a reader's docstring describes its file format in `harness list`.
"""

COLUMN_FORMATS = ("csv", "tsv", "parquet", "recbole")
"""The formats that read ``--user-col``, ``--item-col``, ``--time-col`` and ``--rating-col``."""


def _ask_for_format(path: Path, reason: str) -> DataError:
    return DataError(
        f"{path}: cannot detect the file format ({reason}); pass --format with one of: {', '.join(FORMATS)}"
    )


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def detect_format(path: Path, columns: ColumnNames | None = None) -> str:
    """Guess a file's format from its extension and first lines.

    Args:
        path: An existing file.
        columns: Column names given by the user; any of them selects the
            generic ``csv``, ``tsv`` or ``parquet`` reader (or ``recbole`` for
            ``.inter`` files).

    Returns:
        A key of :data:`FORMATS`.

    Raises:
        DataError: When the file is empty or the format is ambiguous. The
            message requests ``--format`` and lists the formats.
    """
    columns = columns or ColumnNames()
    suffix = _base_suffix(path)
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None
    if suffix == ".parquet" or magic == b"PAR1":
        return "parquet"
    if suffix == ".inter":
        return "recbole"

    lines = _head_lines(path)
    if not lines:
        raise _empty_file_error(path)
    first = lines[0]
    if suffix in (".jsonl", ".json", ".ndjson") or first.lstrip().startswith("{"):
        return "amazon-jsonl"
    if "::" in first:
        return "movielens-dat"

    sep = None
    if "\t" in first:
        sep = "\t"
    elif "," in first:
        sep = ","
    if columns.given():
        return "tsv" if sep == "\t" else "csv"
    fields = [field.strip().strip('"') for field in (first.split(sep) if sep else first.split())]
    lowered = {field.lower() for field in fields}

    if sep == "\t" and all(field.rpartition(":")[2] in _RECBOLE_TYPES for field in fields):
        return "recbole"
    if sep == ",":
        if fields[:4] == _AMAZON_COLUMNS:
            return "amazon-history" if "history" in fields else "amazon-csv"
        if fields[:4] == _MOVIELENS_COLUMNS:
            return "movielens-csv"
    has_user = any(name in lowered for name in _KNOWN_COLUMNS["user"])
    has_item = any(name in lowered for name in _KNOWN_COLUMNS["item"])
    if sep is not None and has_user and has_item:
        return "tsv" if sep == "\t" else "csv"

    if has_user and has_item:
        raise _ask_for_format(
            path, "the first line looks like a header of whitespace-separated columns"
        )
    # u.data: four tab-separated fields, the last two (rating, timestamp) numeric.
    if sep == "\t" and len(fields) == 4 and _is_number(fields[2]) and _is_number(fields[3]):
        return "movielens-100k"
    if sep in (None, "\t"):
        widths = {len(line.split()) for line in lines}
        if widths == {2}:
            return "pairs"
        if sep is None:
            return "sequences"
    raise _ask_for_format(
        path, f"first line {first[:80]!r} is not a known header and the file has no known extension"
    )


def resolve_format(path: Path, format_name: str | None, columns: ColumnNames) -> str:
    """Check a requested format, or detect one, before anything is read.

    Args:
        path: An existing file.
        format_name: A key of :data:`FORMATS`, or ``None`` to detect it.
        columns: Column names given by the user.

    Returns:
        The format to read ``path`` with.

    Raises:
        ConfigError: Unknown format, or column names given for a format with fixed columns.
        DataError: The format cannot be detected.
    """
    if format_name is None:
        format_name = detect_format(path, columns)
        logger.info("detected format %s for %s", format_name, path)
    elif format_name not in FORMATS:
        raise unknown_choice("data format", format_name, FORMATS)
    if columns.given() and format_name not in COLUMN_FORMATS:
        flags = ", ".join(_FLAG[role] for role in columns.given())
        raise ConfigError(
            f"{flags} applies only to the formats {', '.join(COLUMN_FORMATS)}; "
            f"format {format_name} has fixed columns, so drop {flags}"
        )
    return format_name


def read_interactions(
    path: Path, format_name: str | None = None, columns: ColumnNames | None = None
) -> RawInteractions:
    """Read an interaction file with the named reader, or the detected one.

    Args:
        path: The file to read.
        format_name: A key of :data:`FORMATS`; ``None`` detects it.
        columns: Column names for the generic readers.

    Returns:
        The file's interactions, in file order.

    Raises:
        DataError: The file is missing, is a directory, or cannot be parsed.
        ConfigError: Unknown format, or column names given for a format with fixed columns.
    """
    columns = columns or ColumnNames()
    check_readable(path)
    format_name = resolve_format(path, format_name, columns)
    raw = FORMATS[format_name](path, columns)
    logger.info("read %d interactions from %s (format %s)", len(raw), path, format_name)
    return raw


def check_readable(path: Path) -> None:
    """Raise a DataError unless ``path`` is an existing regular file."""
    if not path.exists():
        raise DataError(
            f"data file not found: {path}; check the path, or use 'synthetic' for the built-in data"
        )
    if path.is_dir():
        inside = sorted(child.name for child in path.iterdir() if child.is_file())[:8]
        hint = f" (it contains: {', '.join(inside)})" if inside else ""
        raise DataError(f"{path} is a directory{hint}; pass the interaction file itself")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; pass an interaction file")
