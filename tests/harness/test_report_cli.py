"""`harness report` as a user runs it: outputs on a good study, one-line errors on bad input.

Successful runs start the installed command in a subprocess. Error cases call the
CLI entry point in this process, which is faster and reads the same output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import write_failed_run, write_study

from harness.cli import main

REPO = Path(__file__).resolve().parents[2]


def _harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_user_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    fragments: tuple[str, ...],
) -> None:
    """Run `harness report ARGS` in this process; expect exit status 2 and one `error:` line."""
    monkeypatch.setattr(sys, "argv", ["harness", "report", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_study(
        tmp_path_factory.mktemp("cli") / "study",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam", "mind+argmax", "mind+bam"),
        seeds=(0, 1),
    )


def test_report_writes_tables_figures_and_index(small_study, tmp_path):
    output = tmp_path / "out"
    done = _harness(
        str(small_study),
        "--output",
        str(output),
        "--permutations",
        "200",
        "--metric",
        "recall@20,ndcg@20",
    )
    assert done.returncode == 0, done.stderr
    assert f"report written to {output / 'index.md'}" in done.stdout
    for name in ("main.tex", "main.md", "main.csv", "tables.tex", "seeds.md", "balance.csv"):
        assert (output / "tables" / name).is_file()
    for name in ("heatmap_toy", "entropy_by_method", "seeds_recall_20", "learning_curves"):
        assert (output / "figures" / f"{name}.png").is_file()
        assert (output / "figures" / f"{name}.pdf").is_file()
    index = (output / "index.md").read_text()
    assert "figures/heatmap_toy.png" in index
    main = (output / "tables" / "main.md").read_text()
    assert "| toy | recall@20 |" in main


def test_report_markdown_only_without_figures(small_study, tmp_path):
    output = tmp_path / "md"
    done = _harness(
        str(small_study),
        "--output",
        str(output),
        "--format",
        "markdown",
        "--no-figures",
        "--permutations",
        "100",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (output / "tables").iterdir()) == [
        "balance.md",
        "datasets.md",
        "main.md",
        "seeds.md",
    ]
    assert not (output / "figures").exists()


def test_corrupt_metrics_is_named_and_skipped(tmp_path):
    root = write_study(
        tmp_path / "s",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0, 1),
    )
    broken = sorted((root / "runs").iterdir())[0]
    (broken / "metrics.json").write_text("{not json")
    done = _harness(str(root), "--no-figures", "--permutations", "100")
    assert done.returncode == 0, done.stderr
    assert str(broken / "metrics.json") in done.stderr
    assert "WARNING" in done.stderr
    assert "1 cell has no finished run" in done.stdout
    index = (root / "report" / "index.md").read_text()
    assert "| corrupt |" in index


def test_not_a_study_folder(tmp_path, capsys, monkeypatch):
    _assert_user_error(
        capsys,
        monkeypatch,
        str(tmp_path),
        "--no-figures",
        fragments=("is not a study folder", "runs/"),
    )


def test_missing_folder(tmp_path, capsys, monkeypatch):
    _assert_user_error(capsys, monkeypatch, str(tmp_path / "nowhere"), fragments=("not found",))


def test_no_finished_runs(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "empty" / "runs"
    runs.mkdir(parents=True)
    write_failed_run(runs, dataset="toy", backbone="mind", strategy="bam", seed=0)
    _assert_user_error(
        capsys, monkeypatch, str(tmp_path / "empty"), fragments=("has no finished runs", "1 failed")
    )


def test_reference_not_in_study(small_study, tmp_path, capsys, monkeypatch):
    _assert_user_error(
        capsys,
        monkeypatch,
        str(small_study),
        "--reference",
        "gumbel",
        "--output",
        str(tmp_path / "o"),
        fragments=(
            "this study has no runs of strategy 'gumbel'",
            "pass --reference with one of: argmax, bam",
        ),
    )


def test_invalid_format(small_study, tmp_path, capsys, monkeypatch):
    _assert_user_error(
        capsys,
        monkeypatch,
        str(small_study),
        "--format",
        "latex,html",
        "--output",
        str(tmp_path / "o"),
        fragments=("unknown format 'html'", "csv, latex, markdown"),
    )


def test_unreadable_study_json(tmp_path, capsys, monkeypatch):
    root = write_study(
        tmp_path / "s", datasets=("toy",), methods=("comirec-sa+argmax",), seeds=(0,)
    )
    (root / "study.json").write_text(json.dumps([1, 2]))
    _assert_user_error(
        capsys, monkeypatch, str(root), fragments=("study.json", "expected a JSON object")
    )


def test_report_without_argmax_runs(tmp_path):
    # The next step that `harness study --mode tune --strategies bam,annealed` prints.
    root = write_study(
        tmp_path / "tune",
        datasets=("toy",),
        methods=("comirec-sa+bam", "comirec-sa+annealed"),
        seeds=(0, 1),
        strategies=("bam", "annealed"),
    )
    done = _harness(str(root), "--no-figures", "--permutations", "100")
    assert done.returncode == 0, done.stderr
    assert "has no argmax runs" in done.stderr
    assert "pass --reference with one of: bam, annealed" in done.stderr
    index = (root / "report" / "index.md").read_text()
    assert "Reference strategy: none" in index


def test_explicit_reference_without_runs(tmp_path, capsys, monkeypatch):
    root = write_study(
        tmp_path / "tune",
        datasets=("toy",),
        methods=("comirec-sa+bam", "comirec-sa+annealed"),
        seeds=(0,),
        strategies=("bam", "annealed"),
    )
    _assert_user_error(
        capsys,
        monkeypatch,
        str(root),
        "--reference",
        "argmax",
        "--no-figures",
        fragments=(
            "error: this study has no runs of strategy 'argmax'; "
            "pass --reference with one of: bam, annealed",
        ),
    )
