"""Search spaces: every drawn setting is a valid path of a real option, inside its declared range."""

from __future__ import annotations

import math

import optuna
import pytest

import backbones
import strategies
from harness import search_space
from harness.config import ModelConfig, RunConfig, StrategyConfig, TrainConfig
from harness.study.overrides import apply_values, parse_path
from harness.study.validate import check_run_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

BACKBONES = sorted(backbones.REGISTRY)
STRATEGIES = sorted(strategies.REGISTRY)


def _draw(backbone: str, strategy: str, seed: int) -> tuple[optuna.Trial, dict]:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    trial = study.ask()
    return trial, search_space.suggest(trial, backbone, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_drawn_settings_build_a_valid_run(backbone: str, strategy: str) -> None:
    for seed in range(3):
        trial, values = _draw(backbone, strategy, seed)
        # The Optuna parameter name is the path, so trial.params equals the drawn settings.
        assert trial.params == values
        config = apply_values(
            RunConfig(model=ModelConfig(backbone=backbone), strategy=StrategyConfig(strategy)),
            values,
        )
        check_run_config(config)
        for path in values:
            assert parse_path(path).key == path


def test_common_space_ranges() -> None:
    for seed in range(20):
        _, values = _draw("comirec-sa", "argmax", seed)
        assert set(values) == {"train.lr", "train.weight_decay"}
        assert search_space.LR_RANGE[0] <= values["train.lr"] <= search_space.LR_RANGE[1]
        assert (
            search_space.WEIGHT_DECAY_RANGE[0]
            <= values["train.weight_decay"]
            <= search_space.WEIGHT_DECAY_RANGE[1]
        )


def test_strategy_and_backbone_keys() -> None:
    _, values = _draw("remi", "annealed", 0)
    assert set(values) == {
        "train.lr",
        "train.weight_decay",
        "strategy.options.tau_start",
        "strategy.options.tau_end",
        "strategy.options.schedule",
        "model.options.reg_lambda",
        "train.hard_negative_beta",
    }
    _, values = _draw("mind", "label-aware", 0)
    assert set(values) == {
        "train.lr",
        "train.weight_decay",
        "strategy.options.p",
        "model.options.routing_axis",
    }
    _, values = _draw("comirec-dr", "bam", 0)
    assert set(values) == {"train.lr", "train.weight_decay"}


def test_fixed_trial_maps_values_to_paths() -> None:
    fixed = optuna.trial.FixedTrial(
        {
            "train.lr": 0.002,
            "train.weight_decay": 1e-6,
            "strategy.options.tau": 0.7,
            "strategy.options.hard": False,
            "model.options.reg_lambda": 500.0,
            "train.hard_negative_beta": 0.25,
        }
    )
    values = search_space.suggest(fixed, "remi", "gumbel")
    config = apply_values(
        RunConfig(model=ModelConfig(backbone="remi"), strategy=StrategyConfig("gumbel")), values
    )
    assert config.train == TrainConfig(lr=0.002, weight_decay=1e-6, hard_negative_beta=0.25)
    assert config.strategy.options == {"tau": 0.7, "hard": False}
    assert config.model.options == {"reg_lambda": 500.0}


def test_log_uniform_lr_median() -> None:
    # A log-uniform draw on [1e-4, 1e-2] has median 1e-3; a uniform draw would have ~5e-3.
    draws = sorted(_draw("comirec-sa", "argmax", seed)[1]["train.lr"] for seed in range(201))
    median = draws[100]
    assert abs(math.log10(median) - (-3.0)) < 0.25


def test_tpe_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[dict]:
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        drawn = []
        for _ in range(12):
            trial = study.ask()
            values = search_space.suggest(trial, "remi", "gumbel")
            study.tell(trial, -abs(math.log10(values["train.lr"]) + 3))
            drawn.append(values)
        return drawn

    assert run(3) == run(3)
    assert run(3) != run(4)
