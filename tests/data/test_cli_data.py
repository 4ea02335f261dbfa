"""`harness data stats` and `harness list` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.cli.list_cmd import describe, format_listing
from harness.data.readers import FORMATS

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_harness(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI from the repository root in a fresh interpreter, caching in ``cache``."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def test_stats_json_on_beauty(shared_file, isolated_cache: Path) -> None:
    relative = os.path.relpath(shared_file("amazon-beauty/Beauty.txt"), REPO_ROOT)
    result = run_harness("data", "stats", relative, "--json", cache=isolated_cache)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["name"] == "Beauty"
    assert stats["users"] == 22363
    assert stats["items"] == 12101
    assert stats["interactions"] == 198502
    assert stats["density"] == pytest.approx(198502 / (22363 * 12101))


def test_stats_table_and_options(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("who,what,stars\na,x,5\na,y,1\nb,x,4\nb,y,4\nc,z,5\n")
    flags = ["--user-col", "who", "--item-col", "what", "--rating-col", "stars"]
    result = CliRunner().invoke(
        app, ["data", "stats", str(path), *flags, "--min-rating", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 4)

    result = CliRunner().invoke(app, ["data", "stats", str(path), *flags, "--k-core", "2"])
    assert result.exit_code == 0, result.output
    lines = dict(
        line.split(None, 1) if " " in line else (line, "") for line in result.output.splitlines()
    )
    assert lines["users"].strip() == "2"
    assert lines["interactions"].strip() == "4"
    assert "length median" in result.output


def test_single_interaction_still_reports(tmp_path: Path, isolated_cache: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("u1 i1\n")
    result = run_harness("data", "stats", str(path), "--json", cache=isolated_cache)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["interactions"]) == (1, 1, 1)
    assert stats["density"] == 1.0


BAD_INPUTS = {
    "empty": ("empty.csv", "", [], ["empty.csv is empty"]),
    "malformed-line": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3,4\n\n1,5,3,4,9\n",
        [],
        ["ratings.csv, line 4", "expected 4 fields, found 5"],
    ),
    "malformed-pair": (
        "pairs.txt",
        "a x\nb y\nc z w\n",
        ["--format", "pairs"],
        ["pairs.txt, line 3", "expected 2 fields, found 3"],
    ),
    "missing-column": (
        "log.csv",
        "user,item\na,b\n",
        ["--time-col", "when"],
        ["log.csv", "no column 'when' for --time-col", "columns: user, item"],
    ),
    "missing-fixed-column": (
        "ratings.csv",
        "userId,movieId,rating\n1,2,3\n",
        ["--format", "movielens-csv"],
        ["ratings.csv", "missing column 'timestamp'", "columns: userId, movieId, rating"],
    ),
    "non-numeric-time": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3,964982703\n1,3,4,last week\n",
        [],
        ["ratings.csv, line 3", "timestamp 'last week' in column 'timestamp' is not a number"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_file_one_error_line(tmp_path: Path, isolated_cache: Path, case: str) -> None:
    name, text, args, fragments = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_text(text)
    result = run_harness("data", "stats", str(path), *args, cache=isolated_cache)
    assert_one_error_line(result, fragments)


def test_directory_rejected(tmp_path: Path, isolated_cache: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    result = run_harness("data", "stats", str(tmp_path), cache=isolated_cache)
    assert_one_error_line(
        result, [str(tmp_path), "is a directory", "ratings.csv", "pass the interaction file"]
    )


def test_missing_file_rejected(tmp_path: Path, isolated_cache: Path) -> None:
    path = tmp_path / "nowhere.csv"
    result = run_harness("data", "stats", str(path), cache=isolated_cache)
    assert_one_error_line(result, ["data file not found", str(path), "check the path"])


def test_unknown_format_lists_formats(tmp_path: Path, isolated_cache: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("a b\n")
    result = run_harness("data", "stats", str(path), "--format", "xls", cache=isolated_cache)
    assert_one_error_line(result, ["unknown data format 'xls'", "valid choices:", *FORMATS])


def assert_one_error_line(result: subprocess.CompletedProcess[str], fragments: list[str]) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_format_descriptions_cover_every_format() -> None:
    formats = describe(FORMATS)
    assert list(formats) == list(FORMATS)
    assert all(text for text in formats.values())
    assert formats["sequences"].startswith("One line per user")
    text = format_listing({"formats": formats})
    assert text.splitlines()[0] == "formats:"
    assert len(text.splitlines()) == 1 + len(FORMATS)


def test_describe_reads_own_docstring_only() -> None:
    class Base:
        """Base description."""

    class Documented(Base):
        """First line.

        More text.
        """

    class Undocumented(Base):
        pass

    assert describe({"a": Documented, "b": Undocumented}) == {"a": "First line.", "b": ""}


def test_describe_drops_literal_markup() -> None:
    class Marked:
        """Select ``argmax_k m_k . e`` deterministically."""

    assert describe({"m": Marked}) == {"m": "Select argmax_k m_k . e deterministically."}


def test_list_json() -> None:
    backbones = pytest.importorskip("backbones")
    strategies = pytest.importorskip("strategies")
    if not hasattr(backbones, "REGISTRY") or not hasattr(strategies, "REGISTRY"):
        pytest.skip("the backbone and strategy registries are not available yet")
    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert list(listing["backbones"]) == list(backbones.REGISTRY)
    assert list(listing["strategies"]) == list(strategies.REGISTRY)
    assert list(listing["formats"]) == list(FORMATS)

    text = CliRunner().invoke(app, ["list"]).output
    for section in ("backbones:", "strategies:", "formats:"):
        assert section in text
