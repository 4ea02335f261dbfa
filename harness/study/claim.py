"""Claims on Optuna trials: who runs a trial, whether that process still lives, and heartbeats.

A worker claims a cell by moving its WAITING trial to RUNNING through the
storage, the same compare-and-set that ``optuna.Study.ask`` uses to pop an
enqueued trial. It then records itself as the trial's owner (host, process
id and process start time) and refreshes a heartbeat attribute every
``interval`` seconds while the run lasts.

A RUNNING trial whose owner is gone would block its cell forever, so every
worker releases stale claims before it looks for work. A claim is stale when

- its owner ran on this host and that process no longer exists (checked at
  once, by process id and start time, so a rerun after SIGKILL need not
  wait), or
- its heartbeat (or, before the first heartbeat, its start time) is older
  than the grace period, which covers owners on other hosts, or
- it has no owner recorded 30 seconds after its start: the claimant died
  between the claim and recording itself.

Releasing marks the trial FAIL with the outcome ``stale``; the cell is then
queued again by the next round (see :mod:`harness.study.grid`). This plays
the part of Optuna's own ``heartbeat_interval`` and ``fail_stale_trials``,
which only RDB storage supports, so that the default journal file gets the
same protection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from harness.study.storage import claim_lock

logger = logging.getLogger(__name__)

OWNER_ATTR = "owner"
HEARTBEAT_ATTR = "heartbeat"
OUTCOME_ATTR = "outcome"

HEARTBEAT_INTERVAL_S = 30.0
# Four missed heartbeats before a remote owner counts as gone.
GRACE_PERIOD_S = 120.0
# A claimant records itself right after the claim, so a RUNNING trial without
# an owner this long after its start belongs to a process that died in between.
UNOWNED_GRACE_S = 30.0

# Outcomes recorded on finished trials.
OUTCOME_FINISHED = "finished"
OUTCOME_REUSED = "reused"
OUTCOME_ERROR = "error"
OUTCOME_STALE = "stale"
OUTCOME_INTERRUPTED = "interrupted"
OUTCOME_PRUNED = "pruned"


def _process_start(pid: int) -> str | None:
    """Return the start time of process ``pid`` in clock ticks since boot, or None if unknown.

    The pid and the start time together identify a process, even after the
    pid is reused. The value comes from ``/proc``, so it is None on systems without it.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it do not.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Process that owns a claim.

    Attributes:
        host: Host name of the machine.
        pid: Process id.
        started: Process start time from ``/proc`` (``None`` where unavailable).
    """

    host: str
    pid: int
    started: str | None

    @classmethod
    def current(cls) -> Owner:
        """Return the owner record of the calling process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid))

    def to_attr(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started": self.started}

    @classmethod
    def from_attr(cls, data: Any) -> Owner | None:
        """Rebuild an owner from a trial attribute; None when the attribute is malformed."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(str(data["host"]), int(data["pid"]), data.get("started"))
        except (KeyError, TypeError, ValueError):
            return None

    def is_local(self) -> bool:
        """Tell whether the owner runs on this host."""
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Tell whether this local process still exists (the same process, not a reused pid)."""
        if not _pid_exists(self.pid):
            return False
        if self.started is None:
            return True
        current = _process_start(self.pid)
        return current is None or current == self.started


def trial_id_of(storage: BaseStorage, study_id: int, trial: FrozenTrial) -> int:
    """Return the storage-wide id of a trial (its number counts within the study only)."""
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block ends, so a claim is never left half recorded.

    The held-back signal is raised again when the block ends. That is
    SIGTERM when :func:`harness.study.interrupt.sigterm_as_interrupt`
    passed one on, so its handler runs then. Outside the main thread, where
    Python delivers no signals, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(received[0])


def _last_sign_of_life(trial: FrozenTrial) -> float:
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, (int, float)):
        return float(beat)
    if trial.datetime_start is not None:
        return trial.datetime_start.timestamp()
    return time.time()


def is_stale(trial: FrozenTrial, grace_s: float = GRACE_PERIOD_S, now: float | None = None) -> bool:
    """Tell whether a RUNNING trial's claim is held by a process that is gone.

    Args:
        trial: A RUNNING trial.
        grace_s: Seconds without a heartbeat after which a remote owner counts as gone.
        now: Current time (``time.time()``), for tests.
    """
    if trial.state != TrialState.RUNNING:
        return False
    owner = Owner.from_attr(trial.user_attrs.get(OWNER_ATTR))
    if owner is not None and owner.is_local():
        return not owner.is_alive()
    now = time.time() if now is None else now
    limit = grace_s if owner is not None else min(grace_s, UNOWNED_GRACE_S)
    return now - _last_sign_of_life(trial) > limit


def _release(
    storage: BaseStorage, storage_name: str, study_id: int, trial: FrozenTrial, outcome: str
) -> bool:
    """Mark a RUNNING trial FAIL with ``outcome``, or return False when another worker finished it first."""
    trial_id = trial_id_of(storage, study_id, trial)
    with claim_lock(storage_name):
        try:
            storage.set_trial_user_attr(trial_id, OUTCOME_ATTR, outcome)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
    return True


def release_stale(
    storage: BaseStorage, storage_name: str, study_id: int, grace_s: float = GRACE_PERIOD_S
) -> list[FrozenTrial]:
    """Mark every stale RUNNING trial of a study FAIL with outcome ``stale``.

    Two workers may find the same stale trial; the storage lets only one of
    them finish it, and only that one reports it.

    Args:
        storage: The opened storage.
        storage_name: The storage string it was opened from (selects the claim lock).
        study_id: The Optuna study.
        grace_s: See :func:`is_stale`.

    Returns:
        The trials this call released.
    """
    released: list[FrozenTrial] = []
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        if not is_stale(trial, grace_s):
            continue
        if not _release(storage, storage_name, study_id, trial, OUTCOME_STALE):
            continue
        logger.warning(
            "released trial %d (%s): its owner %s stopped without finishing it",
            trial.number,
            trial.user_attrs.get("run_id", "no run id"),
            trial.user_attrs.get(OWNER_ATTR),
        )
        released.append(trial)
    return released


def release_exited_local(storage: BaseStorage, storage_name: str, study_id: int) -> int:
    """Mark FAIL, with outcome ``interrupted``, the RUNNING trials whose owner on this host has exited.

    An interrupted study calls this after joblib killed its worker
    processes. Their cells are then free at once, also for workers on other
    hosts, which would otherwise wait for the grace period. A trial whose
    claimant died before recording itself as owner is left to
    :func:`release_stale`.

    Returns:
        The number of trials released.
    """
    released = 0
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        owner = Owner.from_attr(trial.user_attrs.get(OWNER_ATTR))
        if owner is None or not owner.is_local() or owner.is_alive():
            continue
        released += _release(storage, storage_name, study_id, trial, OUTCOME_INTERRUPTED)
    return released


def claim_waiting(
    storage: BaseStorage, storage_name: str, study_id: int, owner: Owner
) -> FrozenTrial | None:
    """Claim the lowest-numbered WAITING trial of a study for ``owner``.

    Returns:
        The claimed trial (state as read before the claim), or None when no
        trial is waiting.
    """
    while True:
        waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            return None
        for trial in sorted(waiting, key=lambda item: item.number):
            trial_id = trial_id_of(storage, study_id, trial)
            with deferred_interrupt():
                with claim_lock(storage_name):
                    try:
                        claimed = storage.set_trial_state_values(trial_id, TrialState.RUNNING)
                    except UpdateFinishedTrialError:
                        continue
                if not claimed:
                    continue
                storage.set_trial_user_attr(trial_id, OWNER_ATTR, owner.to_attr())
                storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
            return trial


def finish_trial(
    storage: BaseStorage,
    trial_id: int,
    state: TrialState,
    outcome: str,
    value: float | None = None,
) -> bool:
    """Record ``outcome`` and move a claimed trial to its final ``state``.

    Returns:
        False when another worker had already finished the trial (it released
        the claim as stale), True otherwise.
    """
    try:
        with deferred_interrupt():
            storage.set_trial_user_attr(trial_id, OUTCOME_ATTR, outcome)
            storage.set_trial_state_values(trial_id, state, None if value is None else [value])
    except UpdateFinishedTrialError:
        logger.warning("trial id %d was released by another worker before it finished", trial_id)
        return False
    return True


class Heartbeat:
    """Refresh a trial's heartbeat attribute from a daemon thread while the context is open."""

    def __init__(
        self, storage: BaseStorage, trial_id: int, interval_s: float = HEARTBEAT_INTERVAL_S
    ) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{trial_id}", daemon=True
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except UpdateFinishedTrialError:
                logger.warning(
                    "trial id %d was released by another worker; heartbeat stopped", self.trial_id
                )
                return
            except Exception as exc:
                # A storage hiccup must not kill the run; the next beat retries.
                logger.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def iter_trials(
    storage: BaseStorage, study_id: int, states: tuple[TrialState, ...] | None = None
) -> Iterator[FrozenTrial]:
    """Yield the trials of a study (all, or those in ``states``), lowest number first."""
    trials = storage.get_all_trials(study_id, deepcopy=False, states=states)
    yield from sorted(trials, key=lambda item: item.number)
