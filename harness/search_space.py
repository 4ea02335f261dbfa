"""The Optuna search spaces of ``harness study --mode tune``: one function per component.

A tuning trial of a (backbone, strategy) pair draws the common optimiser
settings, then the strategy's own options, then the backbone's own options.
Every function returns ``{path: value}``, where ``path`` is the canonical
dotted path of :mod:`harness.study.overrides`, such as ``train.lr``,
``strategy.options.tau`` or ``model.options.reg_lambda``. The same string
is the Optuna parameter name. The trials table and the Optuna plots
therefore name a parameter the way an ablation factor does.

To give a new backbone or strategy a search space, write a function with
the signature of :data:`SpaceFn` and add it to :data:`STRATEGY_SPACES` or
:data:`BACKBONE_SPACES`. A component without an entry is tuned over the
common space only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

SpaceFn = Callable[[optuna.Trial], dict[str, Any]]

# Learning rates around Adam's usual 1e-3, one decade either way.
LR_RANGE = (1e-4, 1e-2)
# Weight decay is drawn log-uniformly; the lower end is close enough to zero
# that "no weight decay" is inside the space in effect.
WEIGHT_DECAY_RANGE = (1e-8, 1e-3)


def common_space(trial: optuna.Trial) -> dict[str, Any]:
    """Draw the optimiser settings every component shares: learning rate and weight decay."""
    return {
        "train.lr": trial.suggest_float("train.lr", *LR_RANGE, log=True),
        "train.weight_decay": trial.suggest_float(
            "train.weight_decay", *WEIGHT_DECAY_RANGE, log=True
        ),
    }


def gumbel_space(trial: optuna.Trial) -> dict[str, Any]:
    """Draw the Gumbel-softmax temperature and whether the straight-through variant is used.

    The temperature spans 0.1 (close to a one-hot choice) to 5 (close to a
    uniform mix), the range over which the soft weights change noticeably.
    """
    return {
        "strategy.options.tau": trial.suggest_float("strategy.options.tau", 0.1, 5.0, log=True),
        "strategy.options.hard": trial.suggest_categorical("strategy.options.hard", [True, False]),
    }


def annealed_space(trial: optuna.Trial) -> dict[str, Any]:
    """Draw the start and end temperatures and the shape of the annealing schedule.

    The start lies at or above 1 (BaM's sampling or softer) and the end below
    1 (towards argmax), so every drawn schedule anneals from exploring to
    committing, which is what the strategy is meant to test.
    """
    return {
        "strategy.options.tau_start": trial.suggest_float(
            "strategy.options.tau_start", 1.0, 5.0, log=True
        ),
        "strategy.options.tau_end": trial.suggest_float(
            "strategy.options.tau_end", 0.01, 1.0, log=True
        ),
        "strategy.options.schedule": trial.suggest_categorical(
            "strategy.options.schedule", ["exponential", "linear", "cosine"]
        ),
    }


def label_aware_space(trial: optuna.Trial) -> dict[str, Any]:
    """Draw the exponent p of label-aware attention.

    p = 1 gives softmax weights, and a large p approaches the argmax. The
    MIND paper reports its best results at small powers, so the range stops at 8.
    """
    return {"strategy.options.p": trial.suggest_float("strategy.options.p", 0.5, 8.0, log=True)}


def remi_space(trial: optuna.Trial) -> dict[str, Any]:
    """Draw REMI's routing-regularization weight lambda and hard-negative weight beta.

    NOTE: the ranges are a choice, not taken from the REMI paper. Lambda spans
    1 to 1e4, two decades either side of the backbone's default of 100 (the
    weight the REMI README uses). This package's penalty is scaled differently
    from the REMI code's, so the best weight depends on the history length
    (see ``backbones.remi.REMIConfig``). Beta = 0 turns hard negatives off, and
    beta = 2 already puts most of the weight on the highest-scoring negatives.
    """
    return {
        "model.options.reg_lambda": trial.suggest_float(
            "model.options.reg_lambda", 1.0, 1e4, log=True
        ),
        "train.hard_negative_beta": trial.suggest_float("train.hard_negative_beta", 0.0, 2.0),
    }


def mind_space(trial: optuna.Trial) -> dict[str, Any]:
    """Draw the softmax axis of MIND's routing coefficients (papers: interests; public ports: positions)."""
    return {
        "model.options.routing_axis": trial.suggest_categorical(
            "model.options.routing_axis", ["interests", "positions"]
        )
    }


STRATEGY_SPACES: dict[str, SpaceFn] = {
    "gumbel": gumbel_space,
    "annealed": annealed_space,
    "label-aware": label_aware_space,
}

BACKBONE_SPACES: dict[str, SpaceFn] = {
    "remi": remi_space,
    "mind": mind_space,
}


def suggest(trial: optuna.Trial, backbone: str, strategy: str) -> dict[str, Any]:
    """Draw one configuration of a (backbone, strategy) pair.

    Args:
        trial: The Optuna trial that records the drawn values.
        backbone: Registered backbone name.
        strategy: Registered strategy name.

    Returns:
        ``{path: value}`` for the common settings, then the strategy's and the
        backbone's own settings where they have a search space.
    """
    values = common_space(trial)
    if strategy in STRATEGY_SPACES:
        values.update(STRATEGY_SPACES[strategy](trial))
    if backbone in BACKBONE_SPACES:
        values.update(BACKBONE_SPACES[backbone](trial))
    return values
