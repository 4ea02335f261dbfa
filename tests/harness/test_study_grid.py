"""Running studies with a fake train function: every cell once, resume, failures, stale claims, tuning.

``fake_train`` replaces ``harness.train.train_run``. It writes a run
folder whose test Recall@20 is a hash of the run id (nDCG@20 is half of
it) and records each call as a file. Environment variables make it fail or
sleep, so the CLI tests in ``test_study_cli.py`` use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from harness import runs
from harness.config import DataConfig, RunConfig, TrainConfig
from harness.data.types import EvalSet, Ragged, Sequences, Split
from harness.study import SealedTestSplitError, StudySpec, run_study, seal_test
from harness.study import claim as claims
from harness.study.grid import _create_round, _queue_cells, list_rounds
from harness.study.storage import open_storage
from harness.study.tune import BEST_FILE, TRIALS_FILE, TUNING_FOLDER, run_tuning, used_budget
from harness.study.worker import WorkerContext

optuna.logging.set_verbosity(optuna.logging.WARNING)

CALLS_ENV = "STUDY_FAKE_CALLS"
FAIL_ENV = "STUDY_FAKE_FAIL"
SLEEP_ENV = "STUDY_FAKE_SLEEP"
READ_TEST_ENV = "STUDY_FAKE_READ_TEST"


def fake_score(run_id: str) -> float:
    """Return the fake's Recall@20 of a run: a number in [0, 1) fixed by the run id."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) / 2**32


def fake_train(
    config, run_dir, *, dataset=None, split=None, progress=True, trial=None, evaluate_test=True
):
    """Write a finished run folder like train_run does, without training."""
    from tqdm.auto import tqdm

    # train_run creates a progress bar, disabled in studies, and with it tqdm's
    # lock. A worker process killed after creating that lock leaks its semaphore.
    tqdm(total=1, disable=not progress).close()
    run_dir = Path(run_dir)
    calls = os.environ.get(CALLS_ENV)
    if calls:
        Path(calls, f"{config.run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}").write_text(
            json.dumps(config.to_dict())
        )
    time.sleep(float(os.environ.get(SLEEP_ENV, "0")))
    runs.clear_outcome(run_dir)
    runs.write_config(run_dir, config)
    if os.environ.get(READ_TEST_ENV):
        len(split.test)
    failing = os.environ.get(FAIL_ENV, "")
    if failing and Path(failing).exists() and config.run_id in Path(failing).read_text().split():
        raise RuntimeError(f"planned failure of {config.run_id}")
    score = fake_score(config.run_id)
    if trial is not None:
        for step in (1, 2, 3):
            trial.report(score * step / 3, step)
    metrics = {
        "run_id": config.run_id,
        "status": runs.FINISHED,
        "method": config.method,
        "seed": config.seed,
        "valid": {"recall@20": score},
        "test": {"recall@20": score, "ndcg@20": score / 2} if evaluate_test else None,
    }
    runs.write_metrics(run_dir, metrics)


def calls_by_run(folder: Path) -> dict[str, int]:
    """Count the recorded fake calls per run id."""
    counts: dict[str, int] = {}
    for path in folder.iterdir():
        run_id = path.name.split(".")[0]
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def stop_joblib_workers() -> None:
    """Stop joblib's reusable worker processes, which keep the environment of the test that started them."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "calls"
    folder.mkdir()
    monkeypatch.setenv(CALLS_ENV, str(folder))
    stop_joblib_workers()
    yield folder
    stop_joblib_workers()


def _tiny_data(data: DataConfig) -> tuple[Sequences, Split]:
    """A two-user data set; the fake never looks at it, but the study loads it first."""
    seqs = Ragged.from_lists([[1, 2, 3], [2, 3, 1]])
    dataset = Sequences("synthetic", seqs, np.array(["a", "b"]), np.array(["<pad>", "x", "y", "z"]))
    eval_set = EvalSet(
        np.array([0, 1]), Ragged.from_lists([[1], [2]]), Ragged.from_lists([[2], [3]])
    )
    return dataset, Split(Ragged.from_lists([[1], [2]]), eval_set, eval_set, 3, "loo")


class PoisonedEvalSet:
    """A test set that fails the test run on any use."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self) -> int:
        raise AssertionError("the test split was read (len)")


def _poisoned_data(data: DataConfig) -> tuple[Sequences, Split]:
    dataset, split = _tiny_data(data)
    return dataset, Split(
        split.train, split.valid, PoisonedEvalSet(), split.n_items, split.protocol
    )  # type: ignore[arg-type]


def _spec(**changes) -> StudySpec:
    values = {
        "name": "grid",
        "datasets": (DataConfig(),),
        "backbones": ("comirec-sa", "mind"),
        "strategies": ("argmax", "bam"),
        "seeds": (0, 1),
        "train": TrainConfig(max_steps=5, eval_every=1),
    }
    values.update(changes)
    return StudySpec(**values)


def _run(tmp_path: Path, spec: StudySpec | None = None, **kwargs):
    return run_study(
        spec or _spec(),
        output=tmp_path / "out",
        train_fn=fake_train,
        prepare=kwargs.pop("prepare", _tiny_data),
        progress=False,
        **kwargs,
    )


def _mtimes(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_grid_runs_every_cell_once(tmp_path: Path, calls: Path) -> None:
    result = _run(tmp_path)

    assert len(result.cells) == 8
    assert calls_by_run(calls) == {cell.run_id: 1 for cell in result.cells}
    assert sorted(outcome.status for outcome in result.outcomes) == ["finished"] * 8
    for cell in result.cells:
        assert runs.is_finished(result.directory / "runs" / cell.run_id)
    assert list(result.runs["status"]) == ["finished"] * 8

    study = json.loads((result.directory / "study.json").read_text())
    assert [entry["run_id"] for entry in study["runs"]] == [cell.run_id for cell in result.cells]
    assert study["storage"] == str(result.directory / "optuna.journal")


def test_summary_means_over_seeds(tmp_path: Path, calls: Path) -> None:
    result = _run(tmp_path)
    row = result.summary.set_index("method").loc["mind+bam"]
    scores = [fake_score(cell.run_id) for cell in result.cells if cell.config.method == "mind+bam"]
    assert len(scores) == 2
    assert row["runs"] == 2
    assert row["recall@20_mean"] == pytest.approx((scores[0] + scores[1]) / 2)
    assert row["recall@20_std"] == pytest.approx(abs(scores[0] - scores[1]) / np.sqrt(2))
    assert row["ndcg@20_mean"] == pytest.approx((scores[0] + scores[1]) / 4)


def test_rerun_skips_finished_runs_untouched(tmp_path: Path, calls: Path) -> None:
    first = _run(tmp_path)
    before = _mtimes(first.directory / "runs")
    for path in calls.iterdir():
        path.unlink()

    second = _run(tmp_path)

    assert list(calls.iterdir()) == []
    assert second.outcomes == []
    assert _mtimes(second.directory / "runs") == before
    assert second.runs.equals(first.runs)


def test_failed_run_retried_next_time(tmp_path: Path, calls: Path, monkeypatch) -> None:
    spec = _spec()
    broken = spec.cells()[3].run_id
    fail_list = tmp_path / "fail.txt"
    fail_list.write_text(broken)
    monkeypatch.setenv(FAIL_ENV, str(fail_list))

    first = _run(tmp_path, spec)

    # One attempt per invocation: the failing run is not retried in a loop.
    assert calls_by_run(calls) == {cell.run_id: 1 for cell in first.cells}
    statuses = dict(zip(first.runs["run_id"], first.runs["status"], strict=True))
    assert statuses.pop(broken) == "failed"
    assert set(statuses.values()) == {"finished"}
    error = runs.read_error(first.directory / "runs" / broken)
    assert error is not None
    assert "planned failure" in error["error"]

    fail_list.write_text("")
    second = _run(tmp_path, spec)

    assert calls_by_run(calls)[broken] == 2
    assert sum(calls_by_run(calls).values()) == 9
    assert [outcome.status for outcome in second.outcomes] == ["finished"]
    assert set(second.runs["status"]) == {"finished"}
    assert runs.read_error(second.directory / "runs" / broken) is None


def test_stale_claim_of_dead_worker_is_rerun(tmp_path: Path, calls: Path) -> None:
    spec = _spec()
    directory = tmp_path / "out" / spec.name
    directory.mkdir(parents=True)
    storage_name = str(directory / "optuna.journal")
    storage = open_storage(storage_name)

    # A worker that died while holding the first cell: round 0 queued, one trial RUNNING.
    study_id, _ = _create_round(storage, spec.name, 0, claims.Owner.current())
    _queue_cells(storage, study_id, spec.cells())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = claims.Owner(socket.gethostname(), dead.pid, None)
    claimed = claims.claim_waiting(storage, storage_name, study_id, ghost)
    assert claimed is not None

    result = _run(tmp_path, spec)

    assert calls_by_run(calls) == {cell.run_id: 1 for cell in result.cells}
    assert set(result.runs["status"]) == {"finished"}
    trials = storage.get_all_trials(study_id)
    ghost_trial = next(trial for trial in trials if trial.number == claimed.number)
    assert ghost_trial.state == TrialState.FAIL
    assert ghost_trial.user_attrs[claims.OUTCOME_ATTR] == claims.OUTCOME_STALE
    # The released cell was queued again in a second round.
    assert [info.index for info in list_rounds(storage, spec.name)] == [0, 1]


def test_two_jobs_use_worker_processes(tmp_path: Path, calls: Path) -> None:
    result = _run(tmp_path, jobs=2)
    counts = calls_by_run(calls)
    assert counts == {cell.run_id: 1 for cell in result.cells}
    pids = {path.name.split(".")[1] for path in calls.iterdir()}
    assert str(os.getpid()) not in pids


def test_other_study_in_folder_is_rejected(tmp_path: Path, calls: Path) -> None:
    from harness.errors import ConfigError

    _run(tmp_path)
    with pytest.raises(ConfigError, match="already contains a different study"):
        _run(tmp_path, _spec(seeds=(0, 1, 2)))


def test_invalid_jobs(tmp_path: Path) -> None:
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid --jobs 0"):
        _run(tmp_path, jobs=0)


def test_tuning_never_reads_test_split(tmp_path: Path, calls: Path) -> None:
    spec = _spec(mode="tune", backbones=("remi",), strategies=("gumbel",), trials=4)
    directory = tmp_path / "out" / spec.name
    directory.mkdir(parents=True)
    context = WorkerContext(
        directory, str(directory / "optuna.journal"), fake_train, prepare=_poisoned_data
    )

    tuned = run_tuning(spec, context, progress=False)

    (result,) = tuned.values()
    assert result.completed
    assert result.counts == {"COMPLETE": 4}
    recorded = [json.loads(path.read_text()) for path in calls.iterdir()]
    assert len(recorded) == 4
    # Tuning trains at the first seed only.
    assert {entry["seed"] for entry in recorded} == {0}


def test_sealed_split_raises_on_test_access(tmp_path: Path, calls: Path, monkeypatch) -> None:
    _, split = _tiny_data(DataConfig())
    sealed = seal_test(split)
    assert sealed.valid is split.valid
    with pytest.raises(SealedTestSplitError):
        len(sealed.test)
    with pytest.raises(SealedTestSplitError):
        _ = sealed.test.users

    # A train function that reads the test split fails every tuning trial.
    monkeypatch.setenv(READ_TEST_ENV, "1")
    spec = _spec(mode="tune", backbones=("mind",), strategies=("bam",), trials=2)
    directory = tmp_path / "out" / spec.name
    directory.mkdir(parents=True)
    context = WorkerContext(
        directory, str(directory / "optuna.journal"), fake_train, prepare=_tiny_data
    )
    (result,) = run_tuning(spec, context, progress=False).values()
    assert not result.completed
    assert result.counts == {"FAIL": 2}


def test_tune_mode_runs_best_settings_over_seeds(tmp_path: Path, calls: Path) -> None:
    spec = _spec(
        mode="tune", backbones=("remi",), strategies=("gumbel", "argmax"), seeds=(0, 1, 2), trials=5
    )
    result = _run(tmp_path, spec)
    directory = result.directory

    best = json.loads((directory / TUNING_FOLDER / BEST_FILE).read_text())["components"]
    import pandas as pd

    trials = pd.read_csv(directory / TUNING_FOLDER / TRIALS_FILE)
    assert len(trials) == 10
    for key, entry in best.items():
        rows = trials[(trials["strategy"] == entry["strategy"]) & (trials["state"] == "COMPLETE")]
        top = rows.loc[rows["value"].idxmax()]
        assert entry["trial"] == top["trial"]
        assert entry["value"] == pytest.approx(top["value"])
        assert entry["params"]["train.lr"] == pytest.approx(top["train.lr"])
        assert key == f"synthetic/remi+{entry['strategy']}"

    assert len(result.cells) == 2 * 3
    for cell in result.cells:
        params = best[f"synthetic/remi+{cell.strategy}"]["params"]
        assert cell.config.train.lr == pytest.approx(params["train.lr"])
        assert cell.config.model.options["reg_lambda"] == pytest.approx(
            params["model.options.reg_lambda"]
        )
        assert runs.is_finished(directory / "runs" / cell.run_id)
    study = json.loads((directory / "study.json").read_text())
    assert [entry["run_id"] for entry in study["runs"]] == [cell.run_id for cell in result.cells]
    assert study["trials"] == 5


def test_tuning_resumes_to_a_larger_budget(tmp_path: Path, calls: Path) -> None:
    spec = _spec(mode="tune", backbones=("mind",), strategies=("bam",), trials=3)
    directory = tmp_path / "out" / spec.name
    directory.mkdir(parents=True)
    name = str(directory / "optuna.journal")
    context = WorkerContext(directory, name, fake_train, prepare=_tiny_data)

    run_tuning(spec, context, progress=False)
    run_tuning(spec, context, progress=False)
    assert len(list(calls.iterdir())) == 3

    bigger = StudySpec(**{**spec.__dict__, "trials": 5})
    (result,) = run_tuning(bigger, context, progress=False).values()
    assert result.counts == {"COMPLETE": 5}
    assert len(list(calls.iterdir())) == 5
    storage = open_storage(name)
    assert used_budget(storage, storage.get_study_id_from_name("grid/tune/synthetic/mind+bam")) == 5


def test_tuning_is_reproducible(tmp_path: Path, calls: Path) -> None:
    def drawn(folder: Path) -> list[float]:
        spec = _spec(mode="tune", backbones=("remi",), strategies=("annealed",), trials=6)
        directory = folder / spec.name
        directory.mkdir(parents=True)
        context = WorkerContext(
            directory, str(directory / "optuna.journal"), fake_train, prepare=_tiny_data
        )
        run_tuning(spec, context, progress=False)
        import pandas as pd

        return list(pd.read_csv(directory / TUNING_FOLDER / TRIALS_FILE)["train.lr"])

    assert drawn(tmp_path / "a") == drawn(tmp_path / "b")


def test_real_training_on_synthetic(tmp_path: Path) -> None:
    """One tiny real run per phase: a grid cell, then tuning on a split whose test set is poisoned."""
    import torch

    torch.set_num_threads(1)
    train = TrainConfig(
        max_steps=6, eval_every=3, patience=1, num_negatives=32, valid_users=50, batch_size=32
    )
    spec = _spec(backbones=("mind",), strategies=("bam",), seeds=(0,), train=train)
    result = run_study(spec, output=tmp_path / "out", progress=False)
    (cell,) = result.cells
    metrics = runs.read_metrics(result.directory / "runs" / cell.run_id)
    assert metrics["status"] == "finished"
    assert metrics["steps"] == 6
    assert 0.0 <= metrics["test"]["recall@20"] <= 1.0
    assert result.summary["recall@20_mean"].iloc[0] == pytest.approx(metrics["test"]["recall@20"])
    config = json.loads((result.directory / "runs" / cell.run_id / "config.json").read_text())
    assert RunConfig.from_dict(config["config"]).run_id == cell.run_id

    from harness.study.worker import prepare_data

    def poisoned_real(data: DataConfig) -> tuple[Sequences, Split]:
        dataset, split = prepare_data(data)
        return dataset, Split(
            split.train, split.valid, PoisonedEvalSet(), split.n_items, split.protocol
        )  # type: ignore[arg-type]

    tune_spec = _spec(
        name="tuned",
        mode="tune",
        backbones=("mind",),
        strategies=("bam",),
        seeds=(0,),
        trials=2,
        train=train,
    )
    directory = tmp_path / "out" / "tuned"
    directory.mkdir(parents=True)
    from harness.train import train_run

    context = WorkerContext(
        directory, str(directory / "optuna.journal"), train_run, prepare=poisoned_real, threads=1
    )
    (tuned,) = run_tuning(tune_spec, context, progress=False).values()
    assert tuned.counts == {"COMPLETE": 2}
    assert 0.0 <= tuned.value <= 1.0
    for folder in (directory / TUNING_FOLDER / "runs").iterdir():
        tuning_metrics = runs.read_metrics(folder)
        assert tuning_metrics["test"] is None
        assert not (folder / runs.PER_USER_FILE).exists()
