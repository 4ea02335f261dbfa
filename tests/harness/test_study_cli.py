"""`harness study` and `harness ablation` as a user runs them: workers, kills, presets and bad input.

The runs use ``fake_train`` from ``test_study_grid.py`` through the hidden
``--train-fn`` option, so a whole study takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_study_grid
from test_study_grid import CALLS_ENV, SLEEP_ENV, calls_by_run, stop_joblib_workers

from harness import runs
from harness.cli import main

HERE = Path(__file__).resolve().parent
FAKE = "test_study_grid:fake_train"
SMALL_GRID = ["--backbones", "comirec-sa,mind", "--strategies", "argmax,bam", "--seeds", "2"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process; return the exit status, stdout and stderr."""
    saved = sys.argv
    sys.argv = ["harness", *args]
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def study_args(output: Path, *extra: str) -> list[str]:
    return [
        "study",
        "--output",
        str(output),
        "--name",
        "demo",
        "--train-fn",
        FAKE,
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "calls"
    folder.mkdir()
    monkeypatch.setenv(CALLS_ENV, str(folder))
    stop_joblib_workers()
    yield folder
    stop_joblib_workers()


def _env(calls: Path, sleep: float) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env[CALLS_ENV] = str(calls)
    env[SLEEP_ENV] = str(sleep)
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args], env=env, stdout=handle, stderr=subprocess.STDOUT
    )


def _finished_runs(folder: Path) -> list[Path]:
    return [path for path in sorted(folder.glob("*")) if runs.is_finished(path)]


def _metrics(folder: Path) -> dict[str, dict]:
    return {path.name: runs.read_metrics(path) for path in sorted(folder.glob("*"))}


def test_full_quick_grid_writes_a_run_per_cell(tmp_path: Path, calls: Path, capsys) -> None:
    status, out, err = run_cli(
        [
            "study",
            "--backbones",
            "all",
            "--strategies",
            "all",
            "--preset",
            "quick",
            "--output",
            str(tmp_path),
            "--train-fn",
            FAKE,
            "--no-progress",
        ],
        capsys,
    )
    assert status == 0, err

    folder = tmp_path / "synthetic-grid"
    run_folders = sorted((folder / "runs").iterdir())
    # 4 backbones x 4 strategies x the quick preset's 2 seeds.
    assert len(run_folders) == 32
    assert all(runs.is_finished(path) for path in run_folders)
    assert len(calls_by_run(calls)) == 32

    study = json.loads((folder / "study.json").read_text())
    assert study["preset"] == "quick"
    assert study["seeds"] == [0, 1]
    assert study["train"]["max_steps"] == 500
    assert study["train"]["num_negatives"] == 256
    assert study["train"]["valid_users"] == 500
    assert "comirec-dr+annealed" in out
    assert "32 of 32 runs finished" in out
    assert out.strip().endswith(f"report: harness report {folder}")


def test_explicit_flags_override_the_preset(tmp_path: Path, calls: Path, capsys) -> None:
    status, _, err = run_cli(
        study_args(
            tmp_path, *SMALL_GRID, "--preset", "quick", "--max-steps", "7", "--valid-users", "40"
        ),
        capsys,
    )
    assert status == 0, err
    train = json.loads((tmp_path / "demo" / "study.json").read_text())["train"]
    assert train["max_steps"] == 7
    assert train["valid_users"] == 40
    assert train["eval_every"] == 100
    assert train["patience"] == 2
    assert train["num_negatives"] == 256


def test_summary_table_and_default_seeds(tmp_path: Path, calls: Path, capsys) -> None:
    status, out, err = run_cli(
        study_args(tmp_path, "--backbones", "mind", "--strategies", "bam,uniform"), capsys
    )
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "dataset",
        "method",
        "runs",
        "failed",
        "test",
        "recall@20",
        "test",
        "ndcg@20",
    ]
    # Without a preset a study runs 3 seeds.
    assert lines[1].split()[:4] == ["synthetic", "mind+bam", "3", "0"]
    assert lines[2].split()[:4] == ["synthetic", "mind+uniform", "3", "0"]
    assert "6 of 6 runs finished" in out


def test_jobs_divide_threads(tmp_path: Path, calls: Path, capsys) -> None:
    from harness.study import threads_per_job
    from harness.study.runner import available_cpus

    status, _, err = run_cli(study_args(tmp_path, *SMALL_GRID, "--jobs", "2"), capsys)
    assert status == 0, err
    recorded = [json.loads(path.read_text()) for path in calls.iterdir()]
    assert len(recorded) == 8
    assert {entry["train"]["threads"] for entry in recorded} == {max(1, available_cpus() // 2)}
    assert threads_per_job(2, cpus=2) == 1
    assert threads_per_job(3, cpus=8) == 2
    assert threads_per_job(4, cpus=1) == 1


def test_ablation_writes_factor_and_values(tmp_path: Path, calls: Path, capsys) -> None:
    status, out, err = run_cli(
        [
            "ablation",
            "--backbone",
            "remi",
            "--strategy",
            "gumbel",
            "--factor",
            "strategy.tau",
            "--values",
            "0.1,0.5,2",
            "--seeds",
            "2",
            "--output",
            str(tmp_path),
            "--train-fn",
            FAKE,
            "--no-progress",
        ],
        capsys,
    )
    assert status == 0, err
    folder = tmp_path / "synthetic-remi+gumbel-strategy.tau"
    study = json.loads((folder / "study.json").read_text())
    assert study["ablation"] == {
        "factor": "strategy.tau",
        "path": "strategy.options.tau",
        "values": [0.1, 0.5, 2.0],
    }
    assert [(entry["value"], entry["seed"]) for entry in study["runs"]] == [
        (0.1, 0),
        (0.1, 1),
        (0.5, 0),
        (0.5, 1),
        (2.0, 0),
        (2.0, 1),
    ]
    taus = sorted(
        json.loads(path.read_text())["strategy"]["options"]["tau"] for path in calls.iterdir()
    )
    assert taus == [0.1, 0.1, 0.5, 0.5, 2.0, 2.0]
    assert out.splitlines()[0].split()[:3] == ["dataset", "method", "strategy.tau"]


def test_ablation_of_backbone_option(tmp_path: Path, calls: Path, capsys) -> None:
    status, _, err = run_cli(
        [
            "ablation",
            "--backbone",
            "remi",
            "--strategy",
            "bam",
            "--factor",
            "model.options.reg_lambda",
            "--values",
            "0,100",
            "--seeds",
            "1",
            "--output",
            str(tmp_path),
            "--train-fn",
            FAKE,
            "--no-progress",
        ],
        capsys,
    )
    assert status == 0, err
    lambdas = sorted(
        json.loads(path.read_text())["model"]["options"]["reg_lambda"] for path in calls.iterdir()
    )
    assert lambdas == [0.0, 100.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backbones", "mind,bert4rec"],
            "error: unknown backbone 'bert4rec'; valid choices: comirec-dr, comirec-sa, mind, remi, sasrec",
        ),
        (
            ["--strategies", "softmax"],
            "error: unknown strategy 'softmax'; valid choices: annealed, argmax, bam, gumbel, label-aware, uniform",
        ),
        (["--seeds", "0"], "error: invalid --seeds '0': a study needs at least one seed"),
        (
            ["--storage", "sqlite:////nonexistent-folder/x/study.db"],
            "error: cannot open storage 'sqlite:////nonexistent-folder/x/study.db'",
        ),
        (["--dataset", "no/such/file.csv"], "error: data file not found: no/such/file.csv"),
        (["--preset", "fast"], "error: unknown preset 'fast'; valid choices: paper, quick"),
        (["--mode", "random"], "error: unknown study mode 'random'; valid choices: grid, tune"),
        (["--strategy-option", "temperature=2"], "error: unknown strategy option"),
        (["--jobs", "0"], "error: invalid --jobs 0"),
    ],
    ids=[
        "backbone",
        "strategy",
        "zero-seeds",
        "storage",
        "dataset",
        "preset",
        "mode",
        "option",
        "jobs",
    ],
)
def test_bad_input_fails_before_any_run(
    tmp_path: Path, calls: Path, capsys, args: list[str], message: str
) -> None:
    status, _, err = run_cli(study_args(tmp_path, *args), capsys)
    assert status == 2
    assert message in err
    assert len(err.strip().splitlines()) <= 2
    assert "Traceback" not in err
    assert list(calls.iterdir()) == []
    assert not (tmp_path / "demo" / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--factor", "strategy.temperature", "--values", "1"],
            "error: unknown gumbel option 'temperature'",
        ),
        (["--factor", "train.lr", "--values", "fast"], "error: invalid value 'fast' for train.lr"),
        (["--factor", "train.threads", "--values", "1,2"], "does not change a run's results"),
        (["--factor", "train.lr", "--values", ","], "give at least one value"),
    ],
    ids=["unknown-option", "bad-value", "no-effect", "no-values"],
)
def test_ablation_bad_input(
    tmp_path: Path, calls: Path, capsys, args: list[str], message: str
) -> None:
    status, _, err = run_cli(
        [
            "ablation",
            "--backbone",
            "mind",
            "--strategy",
            "gumbel",
            "--output",
            str(tmp_path),
            "--train-fn",
            FAKE,
            *args,
        ],
        capsys,
    )
    assert status == 2
    assert message in err
    assert list(calls.iterdir()) == []


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_workers_run_each_cell_once(tmp_path: Path, storage: str) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    url = (
        str(tmp_path / "shared.journal")
        if storage == "journal"
        else f"sqlite:///{tmp_path / 'shared.db'}"
    )
    args = study_args(tmp_path / "out", *SMALL_GRID, "--storage", url)
    env = _env(calls, sleep=0.3)
    workers = [_start(args, env, tmp_path / f"worker{index}.log") for index in range(2)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0

    counts = calls_by_run(calls)
    assert len(counts) == 8
    assert set(counts.values()) == {1}
    # Both workers took part, and each printed the complete table.
    assert len({path.name.split(".")[1] for path in calls.iterdir()}) == 2
    for index in range(2):
        log = (tmp_path / f"worker{index}.log").read_text()
        assert "8 of 8 runs finished" in log
    assert len(_finished_runs(tmp_path / "out" / "demo" / "runs")) == 8


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_killed_study_resumes(tmp_path: Path, kill_signal: signal.Signals) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    args = study_args(tmp_path / "out", *SMALL_GRID)
    runs_folder = tmp_path / "out" / "demo" / "runs"

    worker = _start(args, _env(calls, sleep=0.6), tmp_path / "first.log")
    deadline = time.monotonic() + 90
    while len(_finished_runs(runs_folder)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(kill_signal)
    worker.wait(timeout=60)

    finished = _finished_runs(runs_folder)
    assert 3 <= len(finished) < 8
    snapshot = {
        path.name: {
            file.name: (file.stat().st_mtime_ns, file.read_bytes()) for file in path.iterdir()
        }
        for path in finished
    }

    resumed = _start(args, _env(calls, sleep=0.0), tmp_path / "second.log")
    assert resumed.wait(timeout=120) == 0

    for name, files in snapshot.items():
        now = {
            file.name: (file.stat().st_mtime_ns, file.read_bytes())
            for file in (runs_folder / name).iterdir()
        }
        assert now == files
    assert len(_finished_runs(runs_folder)) == 8
    counts = calls_by_run(calls)
    assert all(counts[name] == 1 for name in snapshot)
    # At most the run in flight at the kill is trained twice.
    assert sum(counts.values()) - 8 <= 1

    reference_calls = tmp_path / "reference-calls"
    reference_calls.mkdir()
    reference = _start(
        study_args(tmp_path / "reference", *SMALL_GRID),
        _env(reference_calls, 0.0),
        tmp_path / "reference.log",
    )
    assert reference.wait(timeout=120) == 0
    assert _metrics(runs_folder) == _metrics(tmp_path / "reference" / "demo" / "runs")
    assert "8 of 8 runs finished" in (tmp_path / "second.log").read_text()


def test_fake_matches_train_signature() -> None:
    import inspect

    from harness.train import train_run

    fake = inspect.signature(test_study_grid.fake_train)
    real = inspect.signature(train_run)
    assert list(fake.parameters) == list(real.parameters)


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it is gone for our purposes.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_killed_parallel_study_leaves_no_workers(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    args = study_args(tmp_path / "out", *SMALL_GRID, "--jobs", "2")
    runs_folder = tmp_path / "out" / "demo" / "runs"

    # Each fake run takes 60 s, so both workers are mid-run when the leader dies.
    leader = _start(args, _env(calls, sleep=60.0), tmp_path / "first.log")
    deadline = time.monotonic() + 90
    while len(list(calls.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    leader.send_signal(signal.SIGKILL)
    leader.wait(timeout=60)
    workers = {int(path.name.split(".")[1]) for path in calls.iterdir()}
    assert len(workers) == 2
    assert leader.pid not in workers

    # Orphaned workers notice the dead leader and abandon their runs well before they end.
    deadline = time.monotonic() + 20
    while any(_process_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_process_running(pid) for pid in workers)
    assert _finished_runs(runs_folder) == []

    resumed = _start(args, _env(calls, sleep=0.0), tmp_path / "second.log")
    assert resumed.wait(timeout=120) == 0
    assert len(_finished_runs(runs_folder)) == 8
