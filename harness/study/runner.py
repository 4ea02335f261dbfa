"""``run_study``: check a study's inputs, then tune and run its cells, and collect the results."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.errors import ConfigError
from harness.study import claim, results
from harness.study.grid import count_finished, list_rounds, run_cells
from harness.study.interrupt import StudyInterrupted
from harness.study.spec import Cell, StudySpec, check_existing, study_dir, write_study_json
from harness.study.storage import default_storage, is_url, open_storage
from harness.study.text import count_noun
from harness.study.tune import (
    TUNING_FOLDER,
    TunedComponent,
    count_used_trials,
    run_tuning,
    tuning_study_ids,
)
from harness.study.validate import check_cells, check_device
from harness.study.worker import (
    CellOutcome,
    PrepareFn,
    TrainFn,
    WorkerContext,
    cached_data,
    default_train_fn,
    prepare_data,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyResult:
    """Result of one study invocation.

    Attributes:
        directory: The study folder.
        storage: The storage the study used.
        cells: Every cell of the study.
        outcomes: What this invocation did with the cells it claimed.
        runs: One row per cell (see :func:`harness.study.results.collect`).
        summary: Mean and spread over seeds (see :func:`harness.study.results.summarize`).
        tuned: Tune mode: the tuning result per component key.
    """

    directory: Path
    storage: str
    cells: list[Cell]
    outcomes: list[CellOutcome]
    runs: pd.DataFrame
    summary: pd.DataFrame
    tuned: dict[str, TunedComponent] | None = None


def available_cpus() -> int:
    """Return the number of CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """Return the torch threads for each of ``jobs`` worker processes: ``max(1, cpus // jobs)``."""
    return max(1, (cpus if cpus is not None else available_cpus()) // jobs)


def _check_data(spec: StudySpec, prepare: PrepareFn, jobs: int) -> None:
    """Load every data set once before any run, so a bad file fails here with its own message.

    With one job the loaded data stays in this process's cache for the runs;
    worker processes load it again, from the prepared-data cache on disk.
    """
    for data in spec.datasets:
        if jobs == 1:
            cached_data(prepare, data)
        else:
            prepare(data)


def _tuned_cells(
    spec: StudySpec, tuned: dict[str, TunedComponent], directory: Path, storage: str
) -> list[Cell]:
    """Check the final cells of a tuning study and record them, with the tuning files, in study.json."""
    best = {key: result.params for key, result in tuned.items() if result.completed}
    cells = spec.cells(best)
    check_cells(spec, cells)
    write_study_json(
        directory,
        spec,
        storage=storage,
        cells=cells,
        extra={
            "tuning": {
                "best_params": f"{TUNING_FOLDER}/best_params.json",
                "trials": f"{TUNING_FOLDER}/trials.csv",
            }
        },
    )
    return cells


def _stopped(
    spec: StudySpec,
    context: WorkerContext,
    cells: list[Cell],
    *,
    tuning: bool,
    grace_s: float,
) -> StudyInterrupted:
    """Release the claims of worker processes killed by an interrupt, and count the work done.

    With ``--jobs 1`` the run in flight releases its own claim as the
    interrupt passes through it. Worker processes get no such chance, because
    joblib kills them with SIGKILL when the interrupt reaches this process.
    """
    storage = open_storage(context.storage)
    study_ids = [info.study_id for info in list_rounds(storage, spec.name)]
    study_ids += tuning_study_ids(storage, spec)
    released = sum(
        claim.release_exited_local(storage, context.storage, study_id) for study_id in study_ids
    )
    if released:
        logger.info("released %s of stopped worker processes", count_noun(released, "claim"))
    if tuning:
        total = len(spec.components) * spec.trials
        return StudyInterrupted(count_used_trials(storage, spec, grace_s), total, "tuning trial")
    return StudyInterrupted(count_finished(cells, context), len(cells), "run")


def run_study(
    spec: StudySpec,
    *,
    output: Path | str = "results",
    storage: str | None = None,
    jobs: int = 1,
    train_fn: TrainFn | None = None,
    prepare: PrepareFn = prepare_data,
    progress: bool = True,
    heartbeat_s: float = claim.HEARTBEAT_INTERVAL_S,
    grace_s: float = claim.GRACE_PERIOD_S,
) -> StudyResult:
    """Run a study: check everything, tune (tune mode), run every cell, collect the results.

    Every check that a user can fail (names, options, seeds, the storage, the
    data files) runs before the first training step. A rerun of the same
    study skips finished runs, retries failed ones, and picks up cells that a
    killed invocation left unfinished. Any number of processes may run the
    same study at once against one storage.

    Args:
        spec: The study.
        output: Output root; the study writes ``<output>/<spec.name>/``.
        storage: Optuna storage URL or journal file path (default: the
            study folder's ``optuna.journal``).
        jobs: Local worker processes (joblib, loky backend).
        train_fn: Trains one run (default :func:`harness.train.train_run`);
            a replacement must be importable by worker processes when ``jobs > 1``.
        prepare: Loads and splits a data set (default: load, cache, split by
            the data config).
        progress: Show progress bars on stderr.
        heartbeat_s: Seconds between heartbeats of a running claim.
        grace_s: Seconds without a heartbeat before another host's claim is released.

    Returns:
        The study's cells, this invocation's outcomes and the result tables.

    Raises:
        ConfigError: Invalid jobs, an unavailable device, a different study
            already in the folder, an unreachable storage or invalid options.
        DataError: A data file that cannot be read.
        StudyInterrupted: Ctrl-C (or a SIGTERM passed on as one, see
            :func:`harness.study.interrupt.sigterm_as_interrupt`) stopped the
            study after its checks. Claims of the runs in flight are released
            and finished runs are kept.
    """
    if jobs < 1:
        raise ConfigError(f"invalid --jobs {jobs}: must be >= 1")
    check_device(spec.train.device)
    directory = study_dir(output, spec.name)
    check_existing(directory, spec)
    # Journal paths are made absolute, so study.json names the file wherever it is read from.
    if storage is None:
        directory.mkdir(parents=True, exist_ok=True)
        storage = default_storage(directory.resolve())
        open_storage(storage)
    else:
        if not is_url(storage):
            storage = str(Path(storage).resolve())
        open_storage(storage)
        directory.mkdir(parents=True, exist_ok=True)

    cells = spec.cells() if spec.mode == "grid" else []
    check_cells(spec, cells)
    _check_data(spec, prepare, jobs)

    threads = spec.train.threads if spec.train.threads is not None else threads_per_job(jobs)
    context = WorkerContext(
        directory=directory,
        storage=storage,
        train_fn=train_fn if train_fn is not None else default_train_fn(),
        prepare=prepare,
        threads=threads,
        heartbeat_s=heartbeat_s,
        leader_pid=os.getpid(),
    )
    write_study_json(directory, spec, storage=storage, cells=cells if spec.mode == "grid" else None)
    logger.info(
        "study %s: %s mode, %s, %s per job, storage %s",
        spec.name,
        spec.mode,
        count_noun(jobs, "job"),
        count_noun(threads, "torch thread"),
        storage,
    )

    tuned: dict[str, TunedComponent] | None = None
    tuning = spec.mode == "tune"
    try:
        if tuning:
            tuned = run_tuning(spec, context, jobs=jobs, progress=progress, grace_s=grace_s)
            cells = _tuned_cells(spec, tuned, directory, storage)
            tuning = False
        outcomes = run_cells(
            cells, context, spec.name, jobs=jobs, progress=progress, grace_s=grace_s
        )
    except KeyboardInterrupt:
        raise _stopped(spec, context, cells, tuning=tuning, grace_s=grace_s) from None
    table = results.collect(directory, cells)
    return StudyResult(
        directory=directory,
        storage=storage,
        cells=list(cells),
        outcomes=outcomes,
        runs=table,
        summary=results.summarize(table) if len(table) else table,
        tuned=tuned,
    )
