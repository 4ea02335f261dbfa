"""Dotted paths into a :class:`RunConfig`, shared by ablation factors and tuning parameters.

A path names one setting of a run: ``train.lr`` or ``model.num_interests``
for a field of a config section, and ``strategy.options.tau`` or
``model.options.reg_lambda`` for an option of the chosen strategy or
backbone. The shorter ``strategy.tau`` and ``model.reg_lambda`` mean the
same option whenever the name is not a field of the section itself. Tuning
uses the explicit form as the Optuna parameter name, so a tuned value and
an ablation factor read the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backbones.base import BackboneConfig
from backbones.validation import coerce_option
from harness.config import DataConfig, ModelConfig, RunConfig, StrategyConfig, TrainConfig
from harness.errors import ConfigError, unknown_choice

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "strategy": StrategyConfig,
    "train": TrainConfig,
}

# Sections whose ``options`` dict is passed to the backbone or strategy class.
OPTION_SECTIONS = ("model", "strategy")

# Fields a study sets per cell from its own arguments, so they cannot be a factor.
_CELL_FIELDS = {
    ("data", "source"): "--dataset",
    ("model", "backbone"): "--backbone",
    ("strategy", "name"): "--strategy",
    ("model", "options"): "model.options.NAME",
    ("strategy", "options"): "strategy.options.NAME",
}

# Settings left out of RunConfig.run_id: varying them would give every cell the same run.
_NO_EFFECT_FIELDS = {("train", "device"), ("train", "threads"), ("train", "eval_batch_size")}

# BackboneConfig fields come from ModelConfig, not from ``model.options``.
_SHARED_BACKBONE_FIELDS = frozenset(field.name for field in dataclasses.fields(BackboneConfig))


@dataclass(frozen=True)
class ConfigPath:
    """One setting of a run config.

    Attributes:
        section: ``data``, ``model``, ``strategy`` or ``train``.
        name: Field name in the section, or option name when ``option`` is True.
        option: Whether the setting is an entry of the section's ``options`` dict.
    """

    section: str
    name: str
    option: bool = False

    @property
    def key(self) -> str:
        """Canonical dotted form, e.g. ``train.lr`` or ``strategy.options.tau``."""
        if self.option:
            return f"{self.section}.options.{self.name}"
        return f"{self.section}.{self.name}"

    def __str__(self) -> str:
        return self.key


def _field_names(cls: type) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)]


def parse_path(text: str, label: str = "config path") -> ConfigPath:
    """Parse a dotted path such as ``train.lr``, ``strategy.tau`` or ``model.options.reg_lambda``.

    Args:
        text: The path as a user wrote it.
        label: What the path is to the user, for error messages, e.g. ``factor``.

    Returns:
        The parsed path; option names are checked later against the chosen
        backbone or strategy by :func:`check_option`.

    Raises:
        ConfigError: If the section or field is unknown (the message lists
            the valid ones), or the field is set by the study itself.
    """
    parts = text.strip().split(".")
    section = parts[0]
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown section {section!r} in {label} {text!r}; "
            f"valid sections: {', '.join(sorted(SECTIONS))}"
        )
    fields = _field_names(SECTIONS[section])

    if len(parts) == 3 and parts[1] == "options" and section in OPTION_SECTIONS and parts[2]:
        return ConfigPath(section, parts[2], option=True)
    if len(parts) != 2 or not parts[1]:
        raise ConfigError(
            f"invalid {label} {text!r}: expected SECTION.FIELD (e.g. train.lr) "
            "or SECTION.options.NAME (e.g. strategy.options.tau)"
        )

    name = parts[1]
    if (section, name) in _CELL_FIELDS:
        raise ConfigError(
            f"invalid {label} {text!r}: the study sets {section}.{name} for every cell; "
            f"use {_CELL_FIELDS[section, name]} instead"
        )
    if (section, name) in _NO_EFFECT_FIELDS:
        raise ConfigError(
            f"invalid {label} {text!r}: {section}.{name} does not change a run's results "
            "and is left out of its run id, so it cannot be varied"
        )
    if name in fields:
        return ConfigPath(section, name)
    if section in OPTION_SECTIONS:
        return ConfigPath(section, name, option=True)
    valid = [
        field for field in fields if (section, field) not in _NO_EFFECT_FIELDS | _CELL_FIELDS.keys()
    ]
    raise unknown_choice(f"{section} setting", name, valid)


def _option_class(path: ConfigPath, backbone: str, strategy: str) -> type:
    if path.section == "model":
        import backbones

        return backbones.REGISTRY[backbone].config_class
    import strategies

    return strategies.REGISTRY[strategy].options_class


def _option_names(path: ConfigPath, backbone: str, strategy: str) -> list[str]:
    names = _field_names(_option_class(path, backbone, strategy))
    if path.section == "model":
        names = [name for name in names if name not in _SHARED_BACKBONE_FIELDS]
    return names


def check_option(path: ConfigPath, backbone: str, strategy: str) -> None:
    """Check that an option path names an option of ``backbone`` or ``strategy``.

    Raises:
        ConfigError: If the backbone or strategy has no such option; the
            message lists the options it has.
    """
    if not path.option:
        return
    owner = backbone if path.section == "model" else strategy
    names = _option_names(path, backbone, strategy)
    if path.name in names:
        return
    kind = "backbone" if path.section == "model" else "strategy"
    if not names:
        raise ConfigError(f"invalid config path {path.key!r}: {kind} {owner!r} takes no options")
    raise unknown_choice(f"{owner} option", path.name, names)


def coerce_value(path: ConfigPath, value: object, backbone: str, strategy: str) -> object:
    """Convert ``value`` (often text from a command line) to the type the setting declares.

    Raises:
        ConfigError: If the value cannot be read as that type; the message
            names the path, the value and the expected type.
    """
    if path.option:
        check_option(path, backbone, strategy)
        owner = _option_class(path, backbone, strategy)
    else:
        owner = SECTIONS[path.section]
    # An option is typed by the backbone's or strategy's own dataclass, because
    # ModelConfig.options and StrategyConfig.options are untyped dicts.
    try:
        return coerce_option(owner, path.name, value)
    except ConfigError as exc:
        raise ConfigError(f"invalid value {value!r} for {path.key}: {exc}") from None


def with_value(config: RunConfig, path: ConfigPath, value: object) -> RunConfig:
    """Return a copy of ``config`` with the setting at ``path`` replaced by ``value``.

    The returned config is validated again, so an out-of-range value raises
    the section's own ``ConfigError``.
    """
    section = getattr(config, path.section)
    if path.option:
        new_section = dataclasses.replace(section, options={**section.options, path.name: value})
    else:
        new_section = dataclasses.replace(section, **{path.name: value})
    return dataclasses.replace(config, **{path.section: new_section})


def apply_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """Apply several ``{path: value}`` settings (paths in any accepted form) to ``config``."""
    for text, value in values.items():
        config = with_value(config, parse_path(text), value)
    return config


def read_value(config: RunConfig, path: ConfigPath) -> object:
    """Return the value of the setting at ``path`` in ``config`` (None for an unset option)."""
    section = getattr(config, path.section)
    if path.option:
        return section.options.get(path.name)
    return getattr(section, path.name)
