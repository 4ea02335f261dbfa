"""Execution of a claimed cell in a worker process: load data once, train, record the outcome.

Everything here runs inside a worker, which is the study's own process for
``--jobs 1`` and a joblib (loky) process otherwise. Loky keeps its processes
between tasks, so the data cache below loads each data set once per worker
process, not once per run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from optuna.trial import TrialState

from harness import runs
from harness.config import DataConfig, RunConfig
from harness.data.types import Sequences, Split
from harness.study import claim
from harness.study.spec import RUNS_FOLDER
from harness.study.storage import open_storage

logger = logging.getLogger(__name__)

TrainFn = Callable[..., Any]
"""Signature of :func:`harness.train.train_run`: ``(config, run_dir, *, dataset, split, progress, trial, evaluate_test)``."""

PrepareFn = Callable[[DataConfig], tuple[Sequences, Split]]
"""Loads a data set and splits it."""

CellStatus = Literal["finished", "reused", "failed"]

CELL_ATTR = "cell"
CONFIG_ATTR = "config"

_DATA_CACHE: dict[tuple[PrepareFn, DataConfig], tuple[Sequences, Split]] = {}


def prepare_data(data: DataConfig) -> tuple[Sequences, Split]:
    """Load a data set (through the prepared-data cache on disk) and split it by its own settings."""
    from harness.data.load import load_dataset
    from harness.data.split import make_split

    dataset = load_dataset(data)
    return dataset, make_split(dataset, protocol=data.split, seed=data.split_seed)


def cached_data(prepare: PrepareFn, data: DataConfig) -> tuple[Sequences, Split]:
    """Return ``prepare(data)``, computed once per process."""
    key = (prepare, data)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = prepare(data)
    return _DATA_CACHE[key]


def default_train_fn() -> TrainFn:
    """Return :func:`harness.train.train_run` (imported late: torch loads only in workers that train)."""
    from harness.train import train_run

    return train_run


@dataclass(frozen=True)
class WorkerContext:
    """Settings every task needs. Joblib sends them to worker processes, so every field must pickle.

    Attributes:
        directory: The study folder.
        storage: The storage string (URL or journal path).
        train_fn: Trains one run and writes its folder (the signature of
            :func:`harness.train.train_run`).
        prepare: Loads and splits a data set.
        threads: Torch threads per run (``TrainConfig.threads``), or None for torch's default.
        heartbeat_s: Seconds between heartbeats of a claimed trial.
        leader_pid: Process id of the study command that started the workers.
            A worker process whose leader has died claims no further cell and
            abandons the one in flight (see :func:`leader_alive`).
    """

    directory: Path
    storage: str
    train_fn: TrainFn
    prepare: PrepareFn = prepare_data
    threads: int | None = None
    heartbeat_s: float = claim.HEARTBEAT_INTERVAL_S
    leader_pid: int | None = None

    def run_dir(self, run_id: str) -> Path:
        """Return the folder of a study run."""
        return self.directory / RUNS_FOLDER / run_id

    def with_threads(self, config: RunConfig) -> RunConfig:
        """Set this worker's thread count on ``config``; the run id does not change."""
        if self.threads is None or config.train.threads is not None:
            return config
        return dataclasses.replace(
            config, train=dataclasses.replace(config.train, threads=self.threads)
        )


@dataclass(frozen=True)
class CellOutcome:
    """Result of one claimed cell.

    Attributes:
        run_id: The run.
        status: ``finished`` (trained now), ``reused`` (finished before) or ``failed``.
        seconds: Wall time of the attempt.
        error: One-line error of a failed run.
        value: Test Recall@20 of a finished run, when its metrics have it.
    """

    run_id: str
    status: CellStatus
    seconds: float
    error: str | None = None
    value: float | None = None


def _test_recall(run_dir: Path) -> float | None:
    metrics = runs.read_metrics(run_dir) or {}
    value = (metrics.get("test") or {}).get("recall@20")
    return float(value) if isinstance(value, (int, float)) else None


def execute_cell(config: RunConfig, run_dir: Path, context: WorkerContext) -> CellOutcome:
    """Train one cell unless its run already finished, and turn a failure into an outcome.

    Any ``Exception`` of the train function becomes a ``failed`` outcome, so
    the study goes on with other cells. Its folder gets ``error.json``, from
    the train function or from here. ``KeyboardInterrupt`` and other
    ``BaseException``s propagate.
    """
    started = time.perf_counter()
    if runs.is_finished(run_dir):
        return CellOutcome(config.run_id, "reused", 0.0, value=_test_recall(run_dir))
    try:
        dataset, split = cached_data(context.prepare, config.data)
        context.train_fn(
            context.with_threads(config),
            run_dir,
            dataset=dataset,
            split=split,
            progress=False,
            evaluate_test=True,
        )
    except Exception as exc:
        if runs.read_error(run_dir) is None:
            runs.write_error(run_dir, config.run_id, exc)
        return CellOutcome(
            config.run_id,
            "failed",
            time.perf_counter() - started,
            error=f"{type(exc).__name__}: {exc}",
        )
    if not runs.is_finished(run_dir):
        message = "the train function returned without writing a finished metrics.json"
        runs.write_error(run_dir, config.run_id, RuntimeError(message))
        return CellOutcome(config.run_id, "failed", time.perf_counter() - started, error=message)
    return CellOutcome(
        config.run_id, "finished", time.perf_counter() - started, value=_test_recall(run_dir)
    )


def leader_alive(leader_pid: int | None) -> bool:
    """Tell whether the study command that owns this worker is still running.

    The leader runs cells itself (one job) or is the parent of the joblib
    worker processes. A worker whose parent died has been re-parented, so
    comparing the parent id is safe against process id reuse.
    """
    if leader_pid is None:
        return True
    return leader_pid in (os.getpid(), os.getppid())


class _LeaderWatch:
    """Exit a worker process soon after its leader dies.

    Without it, joblib workers orphaned by a killed study would keep training
    the cell in flight alongside the workers of a resumed study. Exiting
    loses only that cell: its claim belongs to a dead process, so the next
    study releases it at once.
    """

    def __init__(self, leader_pid: int | None, interval_s: float = 2.0) -> None:
        self._leader_pid = leader_pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="leader-watch", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval_s):
            if not leader_alive(self._leader_pid):
                logger.warning(
                    "study process %s is gone; worker %d exits", self._leader_pid, os.getpid()
                )
                os._exit(1)

    def __enter__(self) -> _LeaderWatch:
        # The leader itself needs no watch: it is the process that would die.
        if self._leader_pid is not None and self._leader_pid != os.getpid():
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def use_thread_lock_for_tqdm(leader_pid: int | None) -> None:
    """Give tqdm a thread lock in a joblib worker process in place of its default process lock.

    tqdm's default lock includes a multiprocessing lock, a named semaphore.
    When a study is interrupted, joblib kills its worker processes with
    SIGKILL, so that semaphore is never removed, and Python's resource
    tracker warns about leaked semaphore objects as the study exits. Runs
    in a worker show no progress bar, so nothing needs a lock shared with
    other processes. Call this before the worker's first tqdm bar. In the
    study's own process it does nothing.

    NOTE: tqdm's lock was the only semaphore that workers created in a real
    training study with two jobs. A semaphore that other code creates in a
    worker would still be reported when the worker is killed.
    """
    if leader_pid is None or leader_pid == os.getpid():
        return
    from tqdm import tqdm

    if not hasattr(tqdm, "_lock"):
        tqdm.set_lock(threading.RLock())


def run_next_cell(context: WorkerContext, round_name: str) -> CellOutcome | None:
    """Claim the next waiting cell of a round, run it under a heartbeat, and record the outcome.

    Args:
        context: The worker's settings.
        round_name: The Optuna study that queues this round's cells.

    Returns:
        The outcome, or None when no cell was waiting.
    """
    if not leader_alive(context.leader_pid):
        logger.warning("study process %s is gone; not claiming more cells", context.leader_pid)
        return None
    use_thread_lock_for_tqdm(context.leader_pid)
    storage = open_storage(context.storage)
    study_id = storage.get_study_id_from_name(round_name)
    trial = claim.claim_waiting(storage, context.storage, study_id, claim.Owner.current())
    if trial is None:
        return None
    trial_id = claim.trial_id_of(storage, study_id, trial)
    config = RunConfig.from_dict(trial.user_attrs[CONFIG_ATTR])
    run_dir = context.run_dir(config.run_id)

    try:
        with (
            _LeaderWatch(context.leader_pid),
            claim.Heartbeat(storage, trial_id, context.heartbeat_s),
        ):
            outcome = execute_cell(config, run_dir, context)
    except BaseException:
        # Interrupted (Ctrl-C, or joblib stopping the pool): free the cell at once.
        claim.finish_trial(storage, trial_id, TrialState.FAIL, claim.OUTCOME_INTERRUPTED)
        raise

    if outcome.status == "failed":
        claim.finish_trial(storage, trial_id, TrialState.FAIL, claim.OUTCOME_ERROR)
    else:
        kind = claim.OUTCOME_REUSED if outcome.status == "reused" else claim.OUTCOME_FINISHED
        claim.finish_trial(storage, trial_id, TrialState.COMPLETE, kind, outcome.value)
    return outcome
