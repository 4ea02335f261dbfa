"""Studies over runs: grids, Optuna tuning and ablations, shared by any number of workers.

A study expands into cells: data set x backbone x strategy x seed, or one
value of an ablated setting per cell. Workers claim the cells one at a
time through an Optuna storage and train each in a run folder named by its
run id. See
:func:`run_study` for the entry point, :mod:`harness.study.grid` for
claiming and resuming, and :mod:`harness.study.tune` for tuning.
"""

from harness.study.interrupt import StudyInterrupted
from harness.study.presets import PRESETS, Preset, get_preset
from harness.study.runner import StudyResult, run_study, threads_per_job
from harness.study.spec import (
    Ablation,
    Cell,
    Component,
    StudySpec,
    default_study_name,
    expand_backbones,
    expand_strategies,
    parse_seeds,
    scope_options,
)
from harness.study.tune import SealedTestSplitError, seal_test

__all__ = [
    "PRESETS",
    "Ablation",
    "Cell",
    "Component",
    "Preset",
    "StudyInterrupted",
    "StudyResult",
    "StudySpec",
    "SealedTestSplitError",
    "default_study_name",
    "expand_backbones",
    "expand_strategies",
    "get_preset",
    "parse_seeds",
    "run_study",
    "scope_options",
    "seal_test",
    "threads_per_job",
]
