"""Claims through Optuna storage: atomic across processes, stale claims released, heartbeats, rounds."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError
from harness.study import claim
from harness.study.grid import _create_round, _queue_cells, list_rounds, round_name
from harness.study.spec import StudySpec
from harness.study.storage import claim_lock, default_storage, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _queue(storage_name: str, count: int, storage=None) -> int:
    storage = storage if storage is not None else open_storage(storage_name)
    study_id = storage.create_new_study(
        directions=[optuna.study.StudyDirection.MAXIMIZE], study_name="q"
    )
    for index in range(count):
        template = FrozenTrial(
            number=-1,
            state=TrialState.WAITING,
            value=None,
            datetime_start=None,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={"run_id": f"r{index:03d}"},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        storage.create_new_trial(study_id, template_trial=template)
    return study_id


def _claim_all(storage_name: str, out: str) -> None:
    storage = open_storage(storage_name)
    study_id = storage.get_study_id_from_name("q")
    owner = claim.Owner.current()
    mine = []
    while (trial := claim.claim_waiting(storage, storage_name, study_id, owner)) is not None:
        mine.append(trial.user_attrs["run_id"])
    Path(out).write_text(json.dumps(mine))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_concurrent_claims_are_exclusive(tmp_path: Path, kind: str) -> None:
    storage_name = (
        str(tmp_path / "claims.journal")
        if kind == "journal"
        else f"sqlite:///{tmp_path / 'claims.db'}"
    )
    # The parent queues through its own storage object, so the forked workers
    # open theirs fresh instead of sharing a database connection.
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        parent_storage = optuna.storages.JournalStorage(JournalFileBackend(storage_name))
    else:
        parent_storage = optuna.storages.RDBStorage(storage_name)
    _queue(storage_name, 60, parent_storage)
    context = multiprocessing.get_context("fork")
    outputs = [tmp_path / f"worker{index}.json" for index in range(3)]
    workers = [context.Process(target=_claim_all, args=(storage_name, str(out))) for out in outputs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0

    claimed = [run_id for out in outputs for run_id in json.loads(out.read_text())]
    assert len(claimed) == 60
    assert sorted(claimed) == [f"r{index:03d}" for index in range(60)]
    states = [
        trial.state
        for trial in parent_storage.get_all_trials(parent_storage.get_study_id_from_name("q"))
    ]
    assert states == [TrialState.RUNNING] * 60


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _running_trial(storage_name: str, attrs: dict) -> tuple[int, int]:
    storage = open_storage(storage_name)
    study_id = _queue(storage_name, 1)
    trial = claim.claim_waiting(storage, storage_name, study_id, claim.Owner.current())
    trial_id = claim.trial_id_of(storage, study_id, trial)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    return study_id, trial_id


def test_owner_of_this_process_is_alive() -> None:
    owner = claim.Owner.current()
    assert owner.is_local()
    assert owner.is_alive()
    assert claim.Owner.from_attr(owner.to_attr()) == owner
    assert not claim.Owner(owner.host, os.getpid(), "not-the-start-time").is_alive()
    assert not claim.Owner(owner.host, _dead_pid(), None).is_alive()
    assert claim.Owner.from_attr("garbage") is None


def test_stale_when_local_owner_is_dead(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    owner = {"host": socket.gethostname(), "pid": _dead_pid(), "started": None}
    study_id, _ = _running_trial(name, {claim.OWNER_ATTR: owner})
    storage = open_storage(name)
    (trial,) = storage.get_all_trials(study_id)
    # The heartbeat is fresh, but a dead local owner is stale at once.
    assert claim.is_stale(trial, grace_s=3600)


def test_stale_when_remote_heartbeat_is_old(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    remote = {"host": "another-host.invalid", "pid": 1, "started": None}
    study_id, trial_id = _running_trial(
        name, {claim.OWNER_ATTR: remote, claim.HEARTBEAT_ATTR: 1000.0}
    )
    storage = open_storage(name)
    (trial,) = storage.get_all_trials(study_id)
    assert claim.is_stale(trial, grace_s=120, now=1121.0)
    assert not claim.is_stale(trial, grace_s=120, now=1119.0)


def test_live_claim_is_not_released(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    study_id, _ = _running_trial(name, {})
    storage = open_storage(name)
    assert claim.release_stale(storage, name, study_id) == []
    assert [trial.state for trial in storage.get_all_trials(study_id)] == [TrialState.RUNNING]


def test_release_stale_fails_the_trial_once(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    owner = {"host": socket.gethostname(), "pid": _dead_pid(), "started": None}
    study_id, trial_id = _running_trial(name, {claim.OWNER_ATTR: owner})
    storage = open_storage(name)

    released = claim.release_stale(storage, name, study_id)
    assert [trial.user_attrs["run_id"] for trial in released] == ["r000"]
    (trial,) = storage.get_all_trials(study_id)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[claim.OUTCOME_ATTR] == claim.OUTCOME_STALE
    assert claim.release_stale(storage, name, study_id) == []
    # The original owner's late report is rejected instead of overwriting the release.
    assert not claim.finish_trial(
        storage, trial_id, TrialState.COMPLETE, claim.OUTCOME_FINISHED, 0.5
    )


def test_release_exited_local_owners_only(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    storage = open_storage(name)
    study_id = _queue(name, 3)
    host = socket.gethostname()
    owners = {
        "r000": {"host": host, "pid": _dead_pid(), "started": None},
        "r001": claim.Owner.current().to_attr(),
        # A remote owner is left to release_stale, even with an old heartbeat.
        "r002": {"host": "another-host.invalid", "pid": 1, "started": None},
    }
    while (
        trial := claim.claim_waiting(storage, name, study_id, claim.Owner.current())
    ) is not None:
        trial_id = claim.trial_id_of(storage, study_id, trial)
        storage.set_trial_user_attr(trial_id, claim.OWNER_ATTR, owners[trial.user_attrs["run_id"]])
        storage.set_trial_user_attr(trial_id, claim.HEARTBEAT_ATTR, 1000.0)

    assert claim.release_exited_local(storage, name, study_id) == 1
    trials = {trial.user_attrs["run_id"]: trial for trial in storage.get_all_trials(study_id)}
    assert trials["r000"].state == TrialState.FAIL
    assert trials["r000"].user_attrs[claim.OUTCOME_ATTR] == claim.OUTCOME_INTERRUPTED
    assert trials["r001"].state == TrialState.RUNNING
    assert trials["r002"].state == TrialState.RUNNING
    assert claim.release_exited_local(storage, name, study_id) == 0


def test_sigterm_waits_for_deferred_block() -> None:
    from harness.study.interrupt import sigterm_as_interrupt

    finished = False
    with (
        pytest.raises(KeyboardInterrupt),
        sigterm_as_interrupt() as stop,
        claim.deferred_interrupt(),
    ):
        signal.raise_signal(signal.SIGTERM)
        finished = True
    assert finished
    assert stop.signum == signal.SIGTERM
    assert stop.exit_status == 143


def test_heartbeat_refreshes_the_attribute(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    study_id, trial_id = _running_trial(name, {})
    storage = open_storage(name)
    first = storage.get_trial(trial_id).user_attrs[claim.HEARTBEAT_ATTR]
    with claim.Heartbeat(storage, trial_id, interval_s=0.05):
        time.sleep(0.4)
    later = storage.get_trial(trial_id).user_attrs[claim.HEARTBEAT_ATTR]
    assert later > first + 0.2


def test_finish_trial_records_outcome(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    _, trial_id = _running_trial(name, {})
    storage = open_storage(name)
    assert claim.finish_trial(storage, trial_id, TrialState.COMPLETE, claim.OUTCOME_FINISHED, 0.25)
    trial = storage.get_trial(trial_id)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == 0.25
    assert trial.user_attrs[claim.OUTCOME_ATTR] == "finished"


def test_round_has_one_leader(tmp_path: Path) -> None:
    name = str(tmp_path / "s.journal")
    storage = open_storage(name)
    owner = claim.Owner.current()
    first_id, first_leads = _create_round(storage, "demo", 0, owner)
    second_id, second_leads = _create_round(storage, "demo", 0, owner)
    assert (first_leads, second_leads) == (True, False)
    assert first_id == second_id
    _create_round(storage, "demo", 1, owner)
    _create_round(storage, "other", 0, owner)
    assert [(info.index, info.name) for info in list_rounds(storage, "demo")] == [
        (0, round_name("demo", 0)),
        (1, round_name("demo", 1)),
    ]


def test_queued_cells_carry_their_config(tmp_path: Path) -> None:
    from harness.config import DataConfig, RunConfig

    name = str(tmp_path / "s.journal")
    storage = open_storage(name)
    spec = StudySpec(
        name="demo",
        datasets=(DataConfig(),),
        backbones=("mind",),
        strategies=("bam", "argmax"),
        seeds=(0,),
    )
    study_id, _ = _create_round(storage, "demo", 0, claim.Owner.current())
    _queue_cells(storage, study_id, spec.cells())
    trials = storage.get_all_trials(study_id)
    assert [trial.state for trial in trials] == [TrialState.WAITING, TrialState.WAITING]
    assert [RunConfig.from_dict(trial.user_attrs["config"]) for trial in trials] == [
        cell.config for cell in spec.cells()
    ]
    assert storage.get_study_user_attrs(study_id)["queued"] == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "sqlite:////nonexistent-folder/x/study.db",
            "cannot open storage.*nonexistent-folder/x does not exist",
        ),
        ("postgresql://user@127.0.0.1:1/db", "cannot open storage"),
        ("nosuchdialect://host/db", "cannot open storage"),
    ],
    ids=["sqlite-missing-folder", "postgres-unreachable", "unknown-dialect"],
)
def test_unreachable_storage(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_storage(url)


def test_journal_in_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage(str(tmp_path / "missing" / "optuna.journal"))
    assert default_storage(tmp_path) == str(tmp_path / "optuna.journal")


def test_sqlite_claim_lock_excludes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with claim_lock(url):
        assert (tmp_path / "x.db.claims.lock").exists()
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys; h = os.open(sys.argv[1], os.O_RDWR);"
                "fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                str(tmp_path / "x.db.claims.lock"),
            ],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0
        assert "BlockingIOError" in probe.stderr
