"""Optuna tuning of every (data set, backbone, strategy) component on validation Recall@20.

Each component gets its own Optuna study, ``<study>/tune/<dataset>/<backbone>+<strategy>``,
with a TPE sampler and a median pruner on the validation Recall@20 values
that the train function reports during a run. A trial trains at the
study's first seed with ``evaluate_test=False`` on a split whose test set
is sealed: reading it raises :class:`SealedTestSplitError`, so no tuning
choice can depend on test data. The best settings are then run over every
seed as ordinary cells (see :mod:`harness.study.runner`).

Trials are spread over the same workers as cells, and any number of
processes may tune the same storage. Each trial draws its settings from a
fresh ``TPESampler``. Its seed mixes the study's ``tune_seed``, the
component, the number of trials already in the study and the worker slot.
A single-process study is therefore reproducible, and concurrent workers
do not draw identical settings.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from harness import runs, search_space
from harness.config import RunConfig
from harness.data.types import Split
from harness.study import claim
from harness.study.overrides import apply_values
from harness.study.spec import RUNS_FOLDER, Component, StudySpec
from harness.study.storage import open_storage
from harness.study.worker import WorkerContext, cached_data, use_thread_lock_for_tqdm

logger = logging.getLogger(__name__)

TUNING_FOLDER = "tuning"
BEST_FILE = "best_params.json"
TRIALS_FILE = "trials.csv"

OBJECTIVE = "recall@20"
"""Validation metric that tuning maximises."""

# The median pruner compares a trial with the others only after this many
# trials completed, and never during a run's first two validations.
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_VALIDATIONS = 2

COMPONENT_ATTR = "component"


class SealedTestSplitError(RuntimeError):
    """Raised when code reads the test split of a tuning run."""


class SealedEvalSet:
    """Stands in for the test EvalSet during tuning; any use of it raises."""

    def _error(self) -> SealedTestSplitError:
        return SealedTestSplitError(
            "the test split was read during tuning; tuning must choose settings on validation data only"
        )

    def __getattr__(self, name: str) -> Any:
        raise self._error()

    def __len__(self) -> int:
        raise self._error()

    def __iter__(self) -> Any:
        raise self._error()


def seal_test(split: Split) -> Split:
    """Return ``split`` with its test set replaced by a :class:`SealedEvalSet`."""
    return Split(
        train=split.train,
        valid=split.valid,
        test=SealedEvalSet(),  # type: ignore[arg-type]
        n_items=split.n_items,
        protocol=split.protocol,
    )


def derive_seed(*parts: object) -> int:
    """Derive a 32-bit seed from any values, stable across processes and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def tune_study_name(study_name: str, component: Component) -> str:
    """Return the Optuna study name of one component's tuning."""
    return f"{study_name}/tune/{component.key}"


@dataclass(frozen=True)
class TuningTask:
    """One trial to run; sent to joblib workers.

    Attributes:
        study: Optuna study name of the component.
        component: Component key, ``dataset/backbone+strategy``.
        base: Run config of the component at the tuning seed, before tuned settings.
        trials: Trial budget of the component.
        sampler_seed: The study's ``tune_seed``.
        slot: Index of the task within one dispatch, to tell concurrent workers apart.
        grace_s: See :func:`harness.study.claim.is_stale`.
    """

    study: str
    component: str
    base: RunConfig
    trials: int
    sampler_seed: int
    slot: int = 0
    grace_s: float = claim.GRACE_PERIOD_S


def _counts_against_budget(trial: FrozenTrial, grace_s: float) -> bool:
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get(claim.OUTCOME_ATTR) == claim.OUTCOME_ERROR
    if trial.state == TrialState.RUNNING:
        return not claim.is_stale(trial, grace_s)
    return False


def used_budget(storage: BaseStorage, study_id: int, grace_s: float = claim.GRACE_PERIOD_S) -> int:
    """Count the trials that use up a component's budget.

    Completed, pruned and failed (by an error) trials count, and so do live
    running ones. Trials released as stale or interrupted do not, so a
    killed study redoes them.
    """
    trials = storage.get_all_trials(study_id, deepcopy=False)
    return sum(_counts_against_budget(trial, grace_s) for trial in trials)


def tuning_study_ids(storage: BaseStorage, spec: StudySpec) -> list[int]:
    """Return the ids of the components' tuning studies that exist in the storage."""
    study_ids = []
    for component in spec.components:
        try:
            study_ids.append(storage.get_study_id_from_name(tune_study_name(spec.name, component)))
        except KeyError:
            continue
    return study_ids


def count_used_trials(
    storage: BaseStorage, spec: StudySpec, grace_s: float = claim.GRACE_PERIOD_S
) -> int:
    """Count the tuning trials of all components that used up budget (see :func:`used_budget`)."""
    return sum(
        min(spec.trials, used_budget(storage, study_id, grace_s))
        for study_id in tuning_study_ids(storage, spec)
    )


def _pruner(base: RunConfig) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS,
        n_warmup_steps=PRUNER_WARMUP_VALIDATIONS * base.train.eval_every,
    )


def _valid_objective(run_dir: Any) -> float:
    metrics = runs.read_metrics(run_dir) or {}
    value = (metrics.get("valid") or {}).get(OBJECTIVE)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuntimeError(f"run in {run_dir} finished without a finite validation {OBJECTIVE}")
    return float(value)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: str, **kwargs: Any) -> None:
    try:
        with claim.deferred_interrupt():
            trial.set_user_attr(claim.OUTCOME_ATTR, outcome)
            study.tell(trial, **kwargs)
    except UpdateFinishedTrialError:
        logger.warning(
            "tuning trial %d was released by another worker before it finished", trial.number
        )


def run_tuning_trial(context: WorkerContext, task: TuningTask) -> str | None:
    """Run one tuning trial of a component unless its budget is used up.

    Returns:
        The trial's final state name (``COMPLETE``, ``PRUNED``, ``FAIL``), or
        None when the budget was already used.
    """
    use_thread_lock_for_tqdm(context.leader_pid)
    storage = open_storage(context.storage)
    study_id = storage.get_study_id_from_name(task.study)
    used = used_budget(storage, study_id, task.grace_s)
    if used >= task.trials:
        return None

    sampler = optuna.samplers.TPESampler(
        seed=derive_seed(task.sampler_seed, task.component, used, task.slot)
    )
    study = optuna.load_study(
        study_name=task.study, storage=storage, sampler=sampler, pruner=_pruner(task.base)
    )
    with claim.deferred_interrupt():
        trial = study.ask()
        trial.set_user_attr(claim.OWNER_ATTR, claim.Owner.current().to_attr())
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    backbone, strategy = task.base.model.backbone, task.base.strategy.name
    run_dir = None

    try:
        with claim.Heartbeat(storage, trial_id, context.heartbeat_s):
            values = search_space.suggest(trial, backbone, strategy)
            config = apply_values(task.base, values)
            trial.set_user_attr("run_id", config.run_id)
            run_dir = context.directory / TUNING_FOLDER / RUNS_FOLDER / config.run_id
            if not runs.is_finished(run_dir):
                dataset, split = cached_data(context.prepare, config.data)
                context.train_fn(
                    context.with_threads(config),
                    run_dir,
                    dataset=dataset,
                    split=seal_test(split),
                    progress=False,
                    trial=trial,
                    evaluate_test=False,
                )
            value = _valid_objective(run_dir)
    except optuna.TrialPruned:
        _tell(study, trial, claim.OUTCOME_PRUNED, state=TrialState.PRUNED)
        return TrialState.PRUNED.name
    except Exception as exc:
        if run_dir is not None and runs.read_error(run_dir) is None:
            runs.write_error(run_dir, str(trial.user_attrs.get("run_id", "")), exc)
        logger.warning("tuning trial %d of %s failed: %s", trial.number, task.component, exc)
        _tell(study, trial, claim.OUTCOME_ERROR, state=TrialState.FAIL)
        return TrialState.FAIL.name
    except BaseException:
        _tell(study, trial, claim.OUTCOME_INTERRUPTED, state=TrialState.FAIL)
        raise
    _tell(study, trial, claim.OUTCOME_FINISHED, values=value)
    return TrialState.COMPLETE.name


@dataclass(frozen=True)
class TunedComponent:
    """The tuning result of one component.

    Attributes:
        component: The component.
        params: Best ``{path: value}`` settings (empty when no trial completed).
        value: Best validation Recall@20 (None when no trial completed).
        trial: Number of the best trial.
        counts: Trials per final state name.
    """

    component: Component
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    trial: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.value is not None


def _tasks(
    spec: StudySpec, study_name: str, needs: Mapping[Component, int], grace_s: float
) -> list[TuningTask]:
    """Interleave the components' missing trials, so parallel workers spread over components."""
    tasks: list[TuningTask] = []
    for round_index in range(max(needs.values(), default=0)):
        for component, need in needs.items():
            if need > round_index:
                tasks.append(
                    TuningTask(
                        study=tune_study_name(study_name, component),
                        component=component.key,
                        base=spec.base_config(component, spec.seeds[0]),
                        trials=spec.trials,
                        sampler_seed=spec.tune_seed,
                        slot=len(tasks),
                        grace_s=grace_s,
                    )
                )
    return tasks


def _dispatch(
    context: WorkerContext,
    tasks: Sequence[TuningTask],
    jobs: int,
    on_done: Callable[[str | None], None],
) -> None:
    if jobs == 1:
        for task in tasks:
            on_done(run_tuning_trial(context, task))
        return
    from joblib import Parallel, delayed

    calls = (delayed(run_tuning_trial)(context, task) for task in tasks)
    for state in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(calls):
        on_done(state)


def run_tuning(
    spec: StudySpec,
    context: WorkerContext,
    *,
    jobs: int = 1,
    progress: bool = True,
    grace_s: float = claim.GRACE_PERIOD_S,
    poll_s: float = 2.0,
) -> dict[str, TunedComponent]:
    """Tune every component of ``spec`` until each has used its trial budget.

    Writes ``tuning/best_params.json`` and ``tuning/trials.csv`` in the study folder.

    Returns:
        The result per component key.
    """
    storage = open_storage(context.storage)
    components = spec.components
    study_ids: dict[Component, int] = {}
    for component in components:
        name = tune_study_name(spec.name, component)
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", load_if_exists=True
        )
        study.set_user_attr(
            COMPONENT_ATTR,
            {
                "dataset": component.data.name,
                "backbone": component.backbone,
                "strategy": component.strategy,
            },
        )
        study_ids[component] = storage.get_study_id_from_name(name)

    total = len(components) * spec.trials
    bar = tqdm(
        total=total,
        desc="tuning trials",
        unit="trial",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def refresh(_: str | None = None) -> None:
        bar.n = sum(
            min(spec.trials, used_budget(storage, study_id, grace_s))
            for study_id in study_ids.values()
        )
        bar.refresh()

    try:
        refresh()
        while True:
            for study_id in study_ids.values():
                claim.release_stale(storage, context.storage, study_id, grace_s)
            needs = {
                component: max(0, spec.trials - used_budget(storage, study_ids[component], grace_s))
                for component in components
            }
            if any(needs.values()):
                _dispatch(context, _tasks(spec, spec.name, needs, grace_s), jobs, refresh)
                continue
            running = sum(
                len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))
                for study_id in study_ids.values()
            )
            if not running:
                break
            # Other workers still run trials; their results may change the best settings.
            time.sleep(poll_s)
            refresh()
    finally:
        bar.close()

    results = {
        component.key: _tuned(storage, component, study_ids[component]) for component in components
    }
    write_tuning_files(context.directory, storage, study_ids, results)
    return results


def _tuned(storage: BaseStorage, component: Component, study_id: int) -> TunedComponent:
    trials = storage.get_all_trials(study_id, deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    completed = [
        trial for trial in trials if trial.state == TrialState.COMPLETE and trial.value is not None
    ]
    if not completed:
        logger.warning("tuning of %s completed no trial; it gets no final runs", component.key)
        return TunedComponent(component, counts=counts)
    # Ties go to the earlier trial, so the choice does not depend on worker timing.
    best = max(completed, key=lambda trial: (trial.value, -trial.number))
    return TunedComponent(component, dict(best.params), float(best.value), best.number, counts)


def write_tuning_files(
    directory: Any,
    storage: BaseStorage,
    study_ids: Mapping[Component, int],
    results: Mapping[str, TunedComponent],
) -> None:
    """Write ``tuning/best_params.json`` (best settings per component) and ``tuning/trials.csv``."""
    folder = directory / TUNING_FOLDER
    best = {
        key: {
            "dataset": result.component.data.name,
            "backbone": result.component.backbone,
            "strategy": result.component.strategy,
            "params": result.params,
            "value": result.value,
            "trial": result.trial,
            "trials": result.counts,
        }
        for key, result in results.items()
    }
    runs.write_json(folder / BEST_FILE, {"objective": f"valid {OBJECTIVE}", "components": best})

    rows: list[dict[str, Any]] = []
    for component, study_id in study_ids.items():
        for trial in sorted(
            storage.get_all_trials(study_id, deepcopy=False), key=lambda item: item.number
        ):
            seconds = None
            if trial.datetime_start is not None and trial.datetime_complete is not None:
                seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
            rows.append(
                {
                    "dataset": component.data.name,
                    "backbone": component.backbone,
                    "strategy": component.strategy,
                    "trial": trial.number,
                    "state": trial.state.name,
                    "outcome": trial.user_attrs.get(claim.OUTCOME_ATTR),
                    "value": trial.value,
                    "run_id": trial.user_attrs.get("run_id"),
                    "seconds": seconds,
                    **trial.params,
                }
            )
    runs.write_csv(folder / TRIALS_FILE, pd.DataFrame(rows))
