"""A shortened real-data study and its report, end to end (marked slow: run with ``pytest -m slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LASTFM = REPO_ROOT.parent / "shared" / "data" / "lastfm" / "LastFM.txt"

pytestmark = pytest.mark.slow


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HARNESS_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


@pytest.mark.skipif(not LASTFM.exists(), reason="LastFM data set not found next to the checkout")
def test_lastfm_study_and_report(tmp_path: Path) -> None:
    study = harness(
        "study",
        "--dataset",
        str(LASTFM),
        "--backbones",
        "comirec-sa,mind",
        "--strategies",
        "argmax,bam",
        "--seeds",
        "2",
        "--max-steps",
        "600",
        "--eval-every",
        "200",
        "--patience",
        "2",
        "--jobs",
        "2",
        "--name",
        "lastfm",
        "--output",
        str(tmp_path),
        "--no-progress",
        cwd=tmp_path,
    )
    assert study.returncode == 0, study.stderr
    assert "8 of 8 runs finished" in study.stdout

    folders = sorted((tmp_path / "lastfm" / "runs").iterdir())
    assert len(folders) == 8
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["status"] == "finished"
        assert metrics["dataset_stats"]["users"] == 1090
        per_user = pd.read_parquet(folder / "per_user.parquet")
        # Leave-one-out keeps every LastFM user (all have at least 3 items).
        assert len(per_user) == metrics["n_test_users"] == 1090
        assert per_user["recall@20"].mean() == pytest.approx(metrics["test"]["recall@20"])

    report = harness("report", str(tmp_path / "lastfm"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    main = pd.read_csv(tmp_path / "lastfm" / "report" / "tables" / "main.csv")
    assert len(main) > 0
    stats = pd.read_csv(tmp_path / "lastfm" / "report" / "stats.csv")
    # Two backbones, each with bam against argmax, at two levels, for four metrics.
    assert set(stats["method"]) >= {"comirec-sa+bam", "mind+bam"}
