"""Checks of the device and of backbone and strategy options before a study starts its first run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.config import ModelConfig, RunConfig
from harness.errors import unknown_choice
from harness.study.spec import Cell, StudySpec


def check_device(name: str) -> None:
    """Check that the device a study's runs train on exists on this machine.

    Every run resolves its device again when it starts. Checking here fails
    the study once, before any run, instead of failing every run.

    Raises:
        ConfigError: ``cuda`` was requested but no CUDA device is available.
    """
    from harness.trainer import resolve_device

    resolve_device(name)


def check_model_options(model: ModelConfig) -> None:
    """Validate a backbone's options by building its config dataclass (no parameters are allocated).

    Raises:
        ConfigError: An unknown option (the message lists the valid ones) or
            an invalid value.
    """
    import backbones
    from backbones.validation import coerce_option

    valid = backbones.backbone_options(model.backbone)
    config_class = backbones.REGISTRY[model.backbone].config_class
    resolved: dict[str, Any] = {}
    for key, value in model.options.items():
        if key not in valid:
            raise unknown_choice(f"{model.backbone} option", key, valid)
        resolved[key] = coerce_option(config_class, key, value)
    config_class(
        n_items=1,
        dim=model.dim,
        num_interests=model.num_interests,
        max_len=model.max_len,
        **resolved,
    )


def check_run_config(config: RunConfig) -> None:
    """Validate the backbone and strategy options of one run.

    Raises:
        ConfigError: See :func:`check_model_options` and
            :func:`strategies.build_strategy`.
    """
    import strategies

    check_model_options(config.model)
    strategies.build_strategy(
        config.strategy.name, config.strategy.options, total_steps=config.train.max_steps
    )


def check_cells(spec: StudySpec, cells: Sequence[Cell]) -> None:
    """Validate the options of every distinct backbone and strategy setting of a study.

    With no cells yet (tune mode before tuning), the components' base
    settings at the first seed are checked instead.
    """
    configs = [cell.config for cell in cells] or [
        spec.base_config(component, spec.seeds[0]) for component in spec.components
    ]
    seen: set[str] = set()
    for config in configs:
        key = repr((config.model, config.strategy, config.train.max_steps))
        if key in seen:
            continue
        seen.add(key)
        check_run_config(config)
