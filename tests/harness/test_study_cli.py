"""`harness study` and `harness ablation` as a user runs them: workers, kills, presets and bad input.

The runs use ``fake_train`` from ``test_study_grid.py`` through the hidden
``--train-fn`` option, so a whole study takes seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_study_grid
from optuna.trial import FrozenTrial, TrialState
from test_study_grid import CALLS_ENV, SLEEP_ENV, calls_by_run, fake_train, stop_joblib_workers

from harness import runs
from harness.cli import main
from harness.study.storage import open_storage
from harness.study.text import count_noun

HERE = Path(__file__).resolve().parent
FAKE = "test_study_grid:fake_train"
FAILING = "test_study_cli:fail_seed_one"
SMALL_GRID = ["--backbones", "comirec-sa,mind", "--strategies", "argmax,bam", "--seeds", "2"]
ONE_METHOD = ["--backbones", "mind", "--strategies", "bam"]


def fail_seed_one(
    config, run_dir, *, dataset=None, split=None, progress=True, trial=None, evaluate_test=True
):
    """Fail the runs of seed 1 the way train_run fails a run, and train the others with the fake.

    Like train_run, it logs the failure on the ``harness.train`` logger while
    the run's log.txt is open, writes error.json and raises.
    """
    if config.seed != 1:
        return fake_train(
            config,
            run_dir,
            dataset=dataset,
            split=split,
            progress=progress,
            trial=trial,
            evaluate_test=evaluate_test,
        )
    error = RuntimeError(f"planned failure of {config.run_id}")
    with runs.run_log(Path(run_dir)):
        logging.getLogger("harness.train").error("run %s failed: %s", config.run_id, error)
        runs.write_error(Path(run_dir), config.run_id, error)
        raise error


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


def study_args(output: Path, *extra: str, train_fn: str = FAKE) -> list[str]:
    return [
        "study",
        "--output",
        str(output),
        "--name",
        "demo",
        "--train-fn",
        train_fn,
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


def _running_trials(study_folder: Path) -> list[FrozenTrial]:
    """Return the trials of every Optuna study in the study's journal that are still claimed."""
    storage = open_storage(str(study_folder / "optuna.journal"))
    running: list[FrozenTrial] = []
    for study in storage.get_all_studies():
        study_id = storage.get_study_id_from_name(study.study_name)
        running += storage.get_all_trials(study_id, states=(TrialState.RUNNING,))
    return running


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
        (
            ["--strategies", "bam,annealed", "--strategy-option", "tau_ned=1"],
            "error: unknown strategy option 'tau_ned' for annealed; "
            "valid options: schedule, steps, tau_end, tau_start",
        ),
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
        "option-of-one-strategy",
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
        (
            ["--factor", "strat.tau_end", "--values", "1"],
            "error: unknown section 'strat' in factor 'strat.tau_end'; "
            "valid sections: data, model, strategy, train",
        ),
    ],
    ids=["unknown-option", "bad-value", "no-effect", "no-values", "unknown-section"],
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


def test_unavailable_cuda_fails_before_any_run(
    tmp_path: Path, calls: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, out, err = run_cli(study_args(tmp_path, *SMALL_GRID, "--device", "cuda"), capsys)
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        "error: invalid device 'cuda': no CUDA device is available; use --device cpu or auto"
    )
    assert out == ""
    assert list(calls.iterdir()) == []
    assert not (tmp_path / "demo").exists()


def test_failed_run_exits_with_status_1(tmp_path: Path, calls: Path, capsys) -> None:
    status, out, err = run_cli(
        study_args(tmp_path, *ONE_METHOD, "--seeds", "2", train_fn=FAILING), capsys
    )
    assert status == 1, err
    lines = out.strip().splitlines()
    assert lines[1].split()[:4] == ["synthetic", "mind+bam", "1", "1"]
    assert lines[-2] == "1 of 2 runs finished, 1 failed (see error.json in their run folders)"
    assert lines[-1] == f"report: harness report {tmp_path / 'demo'}"


def test_failed_run_logged_once(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    study = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            *study_args(tmp_path, *ONE_METHOD, "--seeds", "2", train_fn=FAILING),
        ],
        env=_env(calls, sleep=0.0),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert study.returncode == 1, study.stderr
    failed = [
        path for path in (tmp_path / "demo" / "runs").iterdir() if runs.read_error(path) is not None
    ]
    assert len(failed) == 1
    run_id = failed[0].name

    console = [line for line in study.stderr.splitlines() if run_id in line]
    assert len(console) == 1, study.stderr
    assert console[0].endswith(
        f"WARNING harness.study.grid: run {run_id} failed: "
        f"RuntimeError: planned failure of {run_id}"
    )
    # The run's own records keep the failure.
    log = (failed[0] / runs.LOG_FILE).read_text()
    assert f"ERROR harness.train: run {run_id} failed: planned failure of {run_id}" in log
    assert f"planned failure of {run_id}" in runs.read_error(failed[0])["error"]


def test_counts_use_singular(tmp_path: Path, calls: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    status, out, err = run_cli(
        study_args(tmp_path, *ONE_METHOD, "--seeds", "1", "--jobs", "1", "--threads", "1"),
        capsys,
    )
    assert status == 0, err
    assert "grid mode, 1 job, 1 torch thread per job, storage" in caplog.text
    assert "round 0: queueing 1 of 1 cell\n" in caplog.text
    assert "1 of 1 run finished" in out.splitlines()


def test_count_noun() -> None:
    assert count_noun(0, "run") == "0 runs"
    assert count_noun(1, "run") == "1 run"
    assert count_noun(2, "torch thread") == "2 torch threads"
    assert count_noun(1, "process", "processes") == "1 process"
    assert count_noun(3, "process", "processes") == "3 processes"


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


@pytest.mark.parametrize(
    "kill_signal",
    [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
    ids=["sigkill", "sigint", "sigterm"],
)
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
    status = worker.wait(timeout=60)

    finished = _finished_runs(runs_folder)
    assert 3 <= len(finished) < 8
    if kill_signal != signal.SIGKILL:
        # Ctrl-C and SIGTERM stop the study the same way: a report, the usual status, no claims left.
        assert status == 128 + kill_signal
        log = (tmp_path / "first.log").read_text()
        assert log.strip().splitlines()[-1] == (
            f"interrupted: {len(finished)} of 8 runs finished; run the same command to resume"
        )
        assert _running_trials(tmp_path / "out" / "demo") == []
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
    # A zombie process still accepts signal 0, but it has already exited.
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


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_parallel_study_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    args = study_args(tmp_path / "out", *SMALL_GRID, "--jobs", "2")
    study_folder = tmp_path / "out" / "demo"

    # Only the study process gets the signal, as from `kill`, while its workers are mid-run.
    study = subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        env=_env(calls, sleep=1.0),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while len(_finished_runs(study_folder / "runs")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    study.send_signal(stop_signal)
    # The pipes close once every process that inherited them has exited,
    # including Python's resource tracker, which prints the leak warning.
    out, err = study.communicate(timeout=60)

    assert study.returncode == 128 + stop_signal
    finished = len(_finished_runs(study_folder / "runs"))
    assert 2 <= finished < 8
    assert out == ""
    assert err.strip().splitlines()[-1] == (
        f"interrupted: {finished} of 8 runs finished; run the same command to resume"
    )
    assert "leaked semaphore" not in err
    assert "Traceback" not in err
    assert _running_trials(study_folder) == []
    workers = {int(path.name.split(".")[1]) for path in calls.iterdir()}
    assert not any(_process_running(pid) for pid in workers)

    resumed = _start(args, _env(calls, sleep=0.0), tmp_path / "resumed.log")
    assert resumed.wait(timeout=120) == 0
    assert len(_finished_runs(study_folder / "runs")) == 8
