"""Running a study's cells through storage claims, in rounds, with local joblib workers.

Cells are queued as WAITING trials of an Optuna study called a *round*
(``<study>/grid/round-0000``, ``round-0001``, ...). Exactly one process
creates each round: study names are unique in every Optuna storage, so of
several workers that try to create the same round, one succeeds and
becomes its leader, and the others join it. Only the leader queues cells,
each once, so no two trials of a round run the same cell. Workers then
claim trials one by one (see :mod:`harness.study.claim`).

A round is done when no trial waits or runs in it. A worker then creates a
new round of the cells that are still unfinished. These include cells
whose owner died (released as stale) and runs that failed in an earlier
invocation. A run that fails during this invocation is not queued again
until the next invocation, so a run that always fails cannot loop.

The run folder decides whether a cell is done: a cell whose ``metrics.json``
has status finished is never queued or trained again, and its files are not
touched.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from harness import runs
from harness.study import claim
from harness.study.spec import Cell
from harness.study.storage import open_storage
from harness.study.text import count_noun
from harness.study.worker import CELL_ATTR, CONFIG_ATTR, CellOutcome, WorkerContext, run_next_cell

logger = logging.getLogger(__name__)

LEADER_ATTR = "leader"
QUEUED_ATTR = "queued"

POLL_INTERVAL_S = 2.0


def round_prefix(study_name: str) -> str:
    """Return the common prefix of a study's round names."""
    return f"{study_name}/grid/round-"


def round_name(study_name: str, index: int) -> str:
    """Return the Optuna study name of round ``index``."""
    return f"{round_prefix(study_name)}{index:04d}"


@dataclass(frozen=True)
class RoundInfo:
    """One round as read from the storage.

    Attributes:
        index: Round number, from 0.
        name: Optuna study name.
        study_id: Optuna study id.
    """

    index: int
    name: str
    study_id: int


def list_rounds(storage: BaseStorage, study_name: str) -> list[RoundInfo]:
    """Return the rounds of a study in the storage, oldest first."""
    prefix = round_prefix(study_name)
    found: list[RoundInfo] = []
    for study in storage.get_all_studies():
        suffix = study.study_name[len(prefix) :]
        if study.study_name.startswith(prefix) and suffix.isdigit():
            study_id = storage.get_study_id_from_name(study.study_name)
            found.append(RoundInfo(int(suffix), study.study_name, study_id))
    return sorted(found, key=lambda item: item.index)


def _create_round(
    storage: BaseStorage, study_name: str, index: int, owner: claim.Owner
) -> tuple[int, bool]:
    """Create round ``index``, or find it when another worker created it first.

    Returns:
        The study id and whether this call created it (and so leads it).
    """
    name = round_name(study_name, index)
    try:
        study_id = storage.create_new_study(directions=[StudyDirection.MAXIMIZE], study_name=name)
    except DuplicatedStudyError:
        return storage.get_study_id_from_name(name), False
    storage.set_study_user_attr(study_id, LEADER_ATTR, owner.to_attr())
    return study_id, True


def _queue_cells(storage: BaseStorage, study_id: int, cells: Sequence[Cell]) -> None:
    """Queue every cell as a WAITING trial that carries its run config, then mark the round complete."""
    for cell in cells:
        template = FrozenTrial(
            number=-1,
            state=TrialState.WAITING,
            value=None,
            datetime_start=None,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={
                "run_id": cell.run_id,
                CELL_ATTR: cell.to_dict(),
                CONFIG_ATTR: cell.config.to_dict(),
            },
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        storage.create_new_trial(study_id, template_trial=template)
    storage.set_study_user_attr(study_id, QUEUED_ATTR, len(cells))


@dataclass
class _RoundState:
    waiting: int
    running: int
    queued: bool
    leader_alive: bool


class _LeaderWatch:
    """Remembers since when a round has had no leader attribute (its creator may have died)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.first_seen: dict[int, float] = {}

    def alive(self, storage: BaseStorage, info: RoundInfo) -> bool:
        attrs = storage.get_study_user_attrs(info.study_id)
        leader = claim.Owner.from_attr(attrs.get(LEADER_ATTR))
        if leader is not None:
            return leader.is_alive() if leader.is_local() else True
        first = self.first_seen.setdefault(info.study_id, time.monotonic())
        return time.monotonic() - first < self.grace_s


def _round_state(storage: BaseStorage, info: RoundInfo, watch: _LeaderWatch) -> _RoundState:
    trials = storage.get_all_trials(
        info.study_id, deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)
    )
    waiting = sum(trial.state == TrialState.WAITING for trial in trials)
    queued = QUEUED_ATTR in storage.get_study_user_attrs(info.study_id)
    return _RoundState(
        waiting=waiting,
        running=len(trials) - waiting,
        queued=queued,
        leader_alive=queued or watch.alive(storage, info),
    )


def _attempted_since(
    storage: BaseStorage, rounds: Sequence[RoundInfo], since: datetime
) -> set[str]:
    """Run ids whose trial ended at or after ``since`` with a result (finished, reused or error).

    Released (stale) and interrupted trials do not count: their runs never ended.
    """
    ended_with_result = {claim.OUTCOME_FINISHED, claim.OUTCOME_REUSED, claim.OUTCOME_ERROR}
    attempted: set[str] = set()
    for info in rounds:
        trials = storage.get_all_trials(
            info.study_id, deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)
        )
        for trial in trials:
            ended = trial.datetime_complete
            if (
                trial.user_attrs.get(claim.OUTCOME_ATTR) in ended_with_result
                and ended is not None
                and ended >= since
            ):
                attempted.add(str(trial.user_attrs.get("run_id")))
    return attempted


def count_finished(cells: Sequence[Cell], context: WorkerContext) -> int:
    """Count the cells whose run folder contains a finished ``metrics.json``."""
    return sum(runs.is_finished(context.run_dir(cell.run_id)) for cell in cells)


def _dispatch_local(
    context: WorkerContext, name: str, count: int, on_outcome: Callable[[CellOutcome], None]
) -> None:
    for _ in range(count):
        outcome = run_next_cell(context, name)
        if outcome is None:
            return
        on_outcome(outcome)


def _dispatch_joblib(
    context: WorkerContext,
    name: str,
    count: int,
    jobs: int,
    on_outcome: Callable[[CellOutcome], None],
) -> None:
    from joblib import Parallel, delayed

    tasks = (delayed(run_next_cell)(context, name) for _ in range(count))
    for outcome in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(tasks):
        if outcome is not None:
            on_outcome(outcome)


def run_cells(
    cells: Sequence[Cell],
    context: WorkerContext,
    study_name: str,
    *,
    jobs: int = 1,
    progress: bool = True,
    grace_s: float = claim.GRACE_PERIOD_S,
    poll_s: float = POLL_INTERVAL_S,
    description: str = "runs",
) -> list[CellOutcome]:
    """Run every unfinished cell, sharing the work with any other worker on the same storage.

    Returns when every cell has finished, or failed during this invocation,
    including cells that other workers run: a worker with nothing left to
    claim waits for the others' cells, so the caller can report the whole
    study.

    Args:
        cells: The study's cells.
        context: Settings passed to every worker.
        study_name: The study's name, the prefix of its rounds.
        jobs: Local worker processes; 1 runs cells in this process.
        progress: Show cells done out of the total, with an ETA, on stderr.
        grace_s: Seconds without a heartbeat before a remote claim is released.
        poll_s: Seconds between checks while other workers hold the last cells.
        description: Label of the progress bar.

    Returns:
        The outcomes of the cells this call ran (or found finished when claimed).
    """
    storage = open_storage(context.storage)
    owner = claim.Owner.current()
    # Trial end times come from the storage in naive local time, like datetime.now().
    started = datetime.now()
    watch = _LeaderWatch(grace_s)
    outcomes: list[CellOutcome] = []
    expected = {cell.run_id for cell in cells}

    bar = tqdm(
        total=len(cells),
        initial=count_finished(cells, context),
        desc=description,
        unit="run",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def record_progress() -> None:
        bar.n = count_finished(cells, context)
        bar.refresh()

    def record(outcome: CellOutcome) -> None:
        outcomes.append(outcome)
        if outcome.status == "failed":
            logger.warning("run %s failed: %s", outcome.run_id, outcome.error)
        record_progress()

    try:
        while True:
            rounds = list_rounds(storage, study_name)
            for info in rounds:
                claim.release_stale(storage, context.storage, info.study_id, grace_s)
            current = rounds[-1] if rounds else None

            if current is not None:
                state = _round_state(storage, current, watch)
                if state.waiting:
                    if jobs > 1:
                        _dispatch_joblib(context, current.name, state.waiting, jobs, record)
                    else:
                        _dispatch_local(context, current.name, state.waiting, record)
                    continue
                if state.running or (not state.queued and state.leader_alive):
                    # Other workers hold the last cells, or the leader is still queueing.
                    time.sleep(poll_s)
                    record_progress()
                    continue

            # The last round is done: queue what is left, unless this invocation already tried it.
            attempted = _attempted_since(storage, rounds, started)
            pending = [
                cell
                for cell in cells
                if cell.run_id not in attempted
                and not runs.is_finished(context.run_dir(cell.run_id))
            ]
            if not pending:
                break
            index = current.index + 1 if current is not None else 0
            study_id, leader = _create_round(storage, study_name, index, owner)
            if leader:
                logger.info(
                    "round %d: queueing %d of %s",
                    index,
                    len(pending),
                    count_noun(len(cells), "cell"),
                )
                _queue_cells(storage, study_id, pending)
    finally:
        record_progress()
        bar.close()

    foreign = [outcome for outcome in outcomes if outcome.run_id not in expected]
    if foreign:
        logger.warning(
            "ran %s queued by a different study specification", count_noun(len(foreign), "cell")
        )
    return outcomes
