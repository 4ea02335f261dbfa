"""Tests of the run folder helpers: layout, atomic writes, config provenance, logs."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import harness
from harness import runs
from harness.config import ModelConfig, RunConfig, StrategyConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_run_dir_layout(tmp_path: Path) -> None:
    assert runs.run_dir(tmp_path, "study-a", "abc123") == tmp_path / "study-a" / "runs" / "abc123"
    assert runs.run_dir(str(tmp_path), "train", "x") == tmp_path / "train" / "runs" / "x"


def test_write_json_roundtrip_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.json"
    runs.write_json(
        path,
        {
            "a": np.float32(0.5),
            "b": float("nan"),
            "c": [np.int64(3), float("inf")],
            "d": {"e": None},
        },
    )

    text = path.read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    assert json.loads(text) == {"a": 0.5, "b": None, "c": [3, None], "d": {"e": None}}
    assert runs.read_json(path) == {"a": 0.5, "b": None, "c": [3, None], "d": {"e": None}}


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    runs.write_json(path, {"status": "finished"})

    with pytest.raises(TypeError):
        runs.write_json(path, {"status": object()})

    assert json.loads(path.read_text()) == {"status": "finished"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_file_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        runs.write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(umask)

    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644


def test_csv_and_parquet_roundtrip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"user": [0, 1, 2], "user_id": ["u0", "u1", "u2"], "recall@20": [0.0, 0.5, 1.0]}
    )

    runs.write_csv(tmp_path / "curve.csv", frame)
    runs.write_parquet(tmp_path / "per_user.parquet", frame)

    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "curve.csv"), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "per_user.parquet"), frame)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_read_json_missing_and_invalid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert runs.read_json(tmp_path / "absent.json") is None

    bad = tmp_path / "bad.json"
    bad.write_text('{"status": "fin')
    with caplog.at_level(logging.WARNING, logger="harness.runs"):
        assert runs.read_json(bad) is None
    assert "bad.json" in caplog.text
    assert "line 1" in caplog.text

    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    assert runs.read_json(array) is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, False),
        ({"status": "finished", "run_id": "x"}, True),
        ({"status": "running"}, False),
        ({"run_id": "x"}, False),
    ],
    ids=["missing", "finished", "other-status", "no-status"],
)
def test_is_finished(tmp_path: Path, content: dict | None, expected: bool) -> None:
    if content is not None:
        runs.write_metrics(tmp_path, content)
    assert runs.is_finished(tmp_path) is expected
    assert runs.read_metrics(tmp_path) == content


def test_write_config_contents(tmp_path: Path) -> None:
    config = RunConfig(
        model=ModelConfig(backbone="mind", dim=16),
        strategy=StrategyConfig("gumbel", {"tau": 0.5}),
        seed=3,
    )
    created = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)

    written = runs.write_config(tmp_path, config, extra={"device": "cpu"}, created=created)
    stored = json.loads((tmp_path / runs.CONFIG_FILE).read_text())

    assert stored == written
    assert stored["run_id"] == config.run_id
    assert stored["method"] == "mind+gumbel"
    assert stored["dataset"] == "synthetic"
    assert stored["config"] == config.to_dict()
    assert stored["created"] == "2024-05-06T07:08:09+00:00"
    assert stored["device"] == "cpu"
    assert RunConfig.from_dict(stored["config"]) == config
    assert runs.read_config(tmp_path) == config


def test_package_versions_match_metadata() -> None:
    versions = runs.package_versions()

    assert versions["python"] == platform.python_version()
    assert versions["harness"] == harness.__version__
    for name in ("torch", "numpy", "pandas", "optuna", "scipy"):
        assert versions[name] == importlib.metadata.version(name)


def test_git_commit_outside_checkout(tmp_path: Path) -> None:
    assert runs.git_commit(tmp_path) is None
    assert runs.git_commit(tmp_path / "missing") is None


def test_git_commit_not_toplevel() -> None:
    # A folder inside a checkout is not the harness source root, so no commit is claimed for it.
    assert runs.git_commit(REPO_ROOT / "tests") is None


def test_git_commit_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runs.git_commit(REPO_ROOT) is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_clean_and_dirty(tmp_path: Path) -> None:
    # A throwaway repository under tmp_path, isolated from any user or system git config.
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")

    assert runs.git_commit(tmp_path) == head

    (tmp_path / "untracked.txt").write_text("new\n")
    assert runs.git_commit(tmp_path) == head

    (tmp_path / "a.txt").write_text("two\n")
    assert runs.git_commit(tmp_path) == f"{head}-dirty"


def test_git_commit_default_is_harness_checkout() -> None:
    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("the harness source is not a git checkout here")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()

    commit = runs.git_commit()

    assert commit in (head, f"{head}-dirty")


def test_write_error_contents(tmp_path: Path) -> None:
    def failing_step() -> None:
        raise ValueError("loss exploded")

    try:
        failing_step()
    except ValueError as exc:
        path = runs.write_error(tmp_path, "run1", exc)

    stored = json.loads(path.read_text())
    assert path == tmp_path / runs.ERROR_FILE
    assert stored["run_id"] == "run1"
    assert stored["error"] == "ValueError: loss exploded"
    assert "failing_step" in stored["traceback"]
    assert runs.read_error(tmp_path) == stored


def test_clear_outcome_removes_stale_results(tmp_path: Path) -> None:
    runs.write_metrics(tmp_path, {"status": "finished"})
    runs.write_json(tmp_path / runs.ERROR_FILE, {"run_id": "x"})
    runs.write_json(tmp_path / runs.CONFIG_FILE, {"run_id": "x"})

    runs.clear_outcome(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [runs.CONFIG_FILE]
    runs.clear_outcome(tmp_path)


def test_run_log_writes_plain_records(tmp_path: Path) -> None:
    train_logger = logging.getLogger("harness.train")
    strategy_logger = logging.getLogger("strategies.bam")
    other_logger = logging.getLogger("somebody.else")
    package_logger = logging.getLogger("harness")
    level_before = package_logger.level

    with runs.run_log(tmp_path) as path:
        train_logger.info("step %d: \x1b[31mloss\x1b[0m %.2f", 5, 1.25)
        strategy_logger.warning("tau is small")
        other_logger.warning("not ours")
        worker = threading.Thread(target=lambda: train_logger.info("from another thread"))
        worker.start()
        worker.join()
    train_logger.info("after the run")

    text = path.read_text()
    assert path == tmp_path / runs.LOG_FILE
    assert "INFO harness.train: step 5: loss 1.25" in text
    assert "WARNING strategies.bam: tau is small" in text
    assert "\x1b" not in text
    assert "not ours" not in text
    assert "from another thread" not in text
    assert "after the run" not in text
    assert package_logger.level == level_before
    assert all(not isinstance(h, logging.FileHandler) for h in package_logger.handlers)


def test_run_log_appends(tmp_path: Path) -> None:
    log = logging.getLogger("harness.train")
    with runs.run_log(tmp_path):
        log.info("first attempt")
    with runs.run_log(tmp_path) as path:
        log.info("second attempt")

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("first attempt")
    assert lines[1].endswith("second attempt")
