"""Interest-selection strategies and their registry.

``REGISTRY`` maps each CLI name to a strategy class. To add a strategy, write
a class with an ``options_class`` (a frozen :class:`StrategyOptions`
dataclass that validates itself) and a ``select`` method as described by
:class:`strategies.base.Strategy`, then add it to ``REGISTRY``.
:func:`build_strategy` works for it unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from numbers import Integral
from typing import Any

from harness.errors import ConfigError, unknown_choice
from harness.registry import lookup
from strategies.annealed import AnnealedOptions, AnnealedStrategy
from strategies.argmax import ArgmaxOptions, ArgmaxStrategy
from strategies.bam import BamOptions, BamStrategy
from strategies.base import Selection, Strategy, StrategyOptions
from strategies.gumbel import GumbelOptions, GumbelStrategy
from strategies.label_aware import LabelAwareOptions, LabelAwareStrategy
from strategies.uniform import UniformOptions, UniformStrategy

REGISTRY: dict[str, type[Strategy]] = {
    "argmax": ArgmaxStrategy,
    "bam": BamStrategy,
    "gumbel": GumbelStrategy,
    "annealed": AnnealedStrategy,
    "uniform": UniformStrategy,
    "label-aware": LabelAwareStrategy,
}

# Strategies run by `--strategies all`. The controls (uniform, label-aware) are added by name.
DEFAULT: tuple[str, ...] = ("argmax", "bam", "gumbel", "annealed")


def build_strategy(
    name: str,
    options: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
) -> Strategy:
    """Build a registered strategy from its name and option values.

    Args:
        name: Registered strategy name, e.g. ``"gumbel"``.
        options: Option values by field name of the strategy's
            ``options_class``. Missing fields keep their defaults.
        total_steps: Length of training in steps. A strategy whose options have
            a ``steps`` field left at ``None`` (the annealed schedule) gets this
            value.

    Returns:
        The strategy, constructed as ``cls(cls.options_class(**options))``.

    Raises:
        ConfigError: If the name is not registered (the message lists the
            valid names), an option is unknown (the message lists the valid
            options), an option value is invalid, or ``total_steps`` is not a
            positive whole number.
    """
    strategy_class = lookup(REGISTRY, name, "strategy")
    options_class = strategy_class.options_class
    values = dict(options or {})

    valid = [field.name for field in dataclasses.fields(options_class)]
    for key in values:
        if key in valid:
            continue
        if not valid:
            raise ConfigError(f"unknown {name} option {key!r}: strategy {name!r} takes no options")
        raise unknown_choice(f"{name} option", key, valid)

    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, Integral) or total_steps <= 0
    ):
        raise ConfigError(f"invalid total_steps={total_steps!r}: must be a whole number > 0")
    if "steps" in valid and values.get("steps") is None and total_steps is not None:
        values["steps"] = total_steps

    return strategy_class(options_class(**values))


__all__ = [
    "DEFAULT",
    "REGISTRY",
    "AnnealedOptions",
    "AnnealedStrategy",
    "ArgmaxOptions",
    "ArgmaxStrategy",
    "BamOptions",
    "BamStrategy",
    "GumbelOptions",
    "GumbelStrategy",
    "LabelAwareOptions",
    "LabelAwareStrategy",
    "Selection",
    "Strategy",
    "StrategyOptions",
    "UniformOptions",
    "UniformStrategy",
    "build_strategy",
]
