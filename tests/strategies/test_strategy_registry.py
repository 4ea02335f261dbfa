"""Strategy registry, build_strategy and option validation."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.registry import expand_names
from strategies import DEFAULT, REGISTRY, build_strategy
from strategies.annealed import AnnealedOptions, AnnealedStrategy
from strategies.gumbel import GumbelOptions, GumbelStrategy
from strategies.label_aware import LabelAwareOptions


def test_default_is_the_four_studied_strategies() -> None:
    assert DEFAULT == ("argmax", "bam", "gumbel", "annealed")
    assert set(DEFAULT) <= set(REGISTRY)


def test_all_expands_to_default_and_controls_by_name() -> None:
    assert expand_names("all", REGISTRY, DEFAULT, "strategy") == DEFAULT
    assert expand_names("all,uniform,label-aware", REGISTRY, DEFAULT, "strategy") == (
        *DEFAULT,
        "uniform",
        "label-aware",
    )


def test_build_passes_options() -> None:
    strategy = build_strategy("gumbel", {"tau": 0.5, "hard": False})

    assert isinstance(strategy, GumbelStrategy)
    assert strategy.options == GumbelOptions(tau=0.5, hard=False)


def test_build_without_options_uses_defaults() -> None:
    strategy = build_strategy("label-aware")

    assert strategy.options == LabelAwareOptions()


def test_annealed_takes_total_steps() -> None:
    strategy = build_strategy("annealed", {"schedule": "linear"}, total_steps=200)

    assert isinstance(strategy, AnnealedStrategy)
    assert strategy.options == AnnealedOptions(steps=200, schedule="linear")
    assert strategy.temperature(200) == pytest.approx(0.1)


def test_annealed_own_steps_win_over_total_steps() -> None:
    strategy = build_strategy("annealed", {"steps": 50}, total_steps=200)

    assert strategy.options.steps == 50


def test_total_steps_ignored_without_steps_option() -> None:
    strategy = build_strategy("bam", total_steps=200)

    assert strategy.options == REGISTRY["bam"].options_class()


def test_annealed_without_steps_raises() -> None:
    with pytest.raises(ConfigError, match="set its option steps"):
        build_strategy("annealed")


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy("softmax")

    message = str(caught.value)
    assert "unknown strategy 'softmax'" in message
    assert "annealed, argmax, bam, gumbel, label-aware, uniform" in message


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy("annealed", {"temperature": 0.5}, total_steps=10)

    message = str(caught.value)
    assert "unknown annealed option 'temperature'" in message
    assert "valid choices: schedule, steps, tau_end, tau_start" in message


def test_option_for_strategy_without_options() -> None:
    with pytest.raises(ConfigError, match="strategy 'bam' takes no options"):
        build_strategy("bam", {"tau": 1.0})


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("gumbel", {"tau": 0.0}, "invalid gumbel option tau=0.0: must be a finite number > 0"),
        ("gumbel", {"tau": -1}, "invalid gumbel option tau=-1"),
        ("gumbel", {"tau": float("inf")}, "invalid gumbel option tau=inf"),
        ("gumbel", {"tau": "0.5"}, "invalid gumbel option tau='0.5'"),
        ("gumbel", {"hard": "yes"}, "invalid gumbel option hard='yes': must be true or false"),
        ("annealed", {"tau_start": 0}, "invalid annealed option tau_start=0"),
        ("annealed", {"tau_end": -0.1}, "invalid annealed option tau_end=-0.1"),
        ("annealed", {"steps": 0}, "invalid annealed option steps=0"),
        ("annealed", {"steps": 2.5}, "invalid annealed option steps=2.5"),
        ("label-aware", {"p": 0}, "invalid label-aware option p=0"),
    ],
    ids=[
        "tau-zero",
        "tau-negative",
        "tau-infinite",
        "tau-string",
        "hard-string",
        "tau-start-zero",
        "tau-end-negative",
        "steps-zero",
        "steps-fraction",
        "p-zero",
    ],
)
def test_invalid_option_value_raises(name: str, options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy(name, options, total_steps=10)

    assert fragment in str(caught.value)


def test_unknown_schedule_lists_valid_schedules() -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy("annealed", {"schedule": "step"}, total_steps=10)

    message = str(caught.value)
    assert "unknown annealing schedule 'step'" in message
    assert "valid choices: cosine, exponential, linear" in message


@pytest.mark.parametrize(
    "total_steps", [0, -5, 2.5, True], ids=["zero", "negative", "fraction", "bool"]
)
def test_invalid_total_steps_raises(total_steps: object) -> None:
    with pytest.raises(ConfigError, match="invalid total_steps"):
        build_strategy("annealed", total_steps=total_steps)


def test_options_are_frozen() -> None:
    options = GumbelOptions()

    with pytest.raises(AttributeError):
        options.tau = 2.0  # type: ignore[misc]


def test_numpy_numbers_accepted() -> None:
    strategy = build_strategy("annealed", {"tau_end": np.float64(0.2)}, total_steps=np.int64(40))

    assert strategy.steps == 40
    assert strategy.temperature(40) == pytest.approx(0.2)
