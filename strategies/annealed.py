"""Temperature-annealed sampling: BaM at tau = 1, argmax as tau approaches 0.

The interest is drawn from ``softmax(logits / tau_t)``, where ``tau_t`` moves
from ``tau_start`` to ``tau_end`` over ``steps`` training steps and stays at
``tau_end`` afterwards. With the defaults, training starts as BaM and ends
close to hard selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar, Literal

import torch

from harness.config import check_choice
from harness.errors import ConfigError
from harness.registry import lookup
from strategies.argmax import check_positive, gather_interest, interest_logits
from strategies.bam import sample_index
from strategies.base import Selection, StrategyOptions

Schedule = Literal["exponential", "linear", "cosine"]


def _exponential(tau_start: float, tau_end: float, fraction: float) -> float:
    return tau_start * (tau_end / tau_start) ** fraction


def _linear(tau_start: float, tau_end: float, fraction: float) -> float:
    return tau_start + (tau_end - tau_start) * fraction


def _cosine(tau_start: float, tau_end: float, fraction: float) -> float:
    return tau_end + (tau_start - tau_end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


# Each curve maps (tau_start, tau_end, fraction of the schedule done) to tau.
SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "exponential": _exponential,
    "linear": _linear,
    "cosine": _cosine,
}


def annealed_temperature(
    step: int, tau_start: float, tau_end: float, steps: int, schedule: Schedule
) -> float:
    """Compute the temperature at a training step.

    With ``t = min(step, steps) / steps``:

    - exponential: ``tau_start * (tau_end / tau_start) ** t`` (geometric, the
      same factor per step);
    - linear: ``tau_start + (tau_end - tau_start) * t``;
    - cosine: ``tau_end + (tau_start - tau_end) * (1 + cos(pi * t)) / 2``.

    Args:
        step: Training step, >= 0.
        tau_start: Temperature at step 0.
        tau_end: Temperature from ``steps`` on.
        steps: Length of the schedule in steps, > 0.
        schedule: One of ``exponential``, ``linear``, ``cosine``.

    Returns:
        The temperature, between ``tau_start`` and ``tau_end``.

    Raises:
        ValueError: If ``step`` is negative.
        ConfigError: If ``schedule`` is not one of the valid names.
    """
    if step < 0:
        raise ValueError(f"invalid step={step}: training steps start at 0")
    curve = lookup(SCHEDULES, schedule, "annealing schedule")
    return curve(tau_start, tau_end, min(step, steps) / steps)


@dataclass(frozen=True)
class AnnealedOptions(StrategyOptions):
    """Options of temperature-annealed sampling.

    Attributes:
        tau_start: Temperature at step 0, > 0 (1.0 is BaM).
        tau_end: Temperature reached at ``steps`` and kept afterwards, > 0.
        steps: Length of the schedule in training steps. ``None`` means the
            length of training: ``strategies.build_strategy`` fills it from
            ``total_steps``.
        schedule: How tau moves: ``exponential``, ``linear`` or ``cosine``.
    """

    tau_start: float = 1.0
    tau_end: float = 0.1
    steps: int | None = None
    schedule: Schedule = "exponential"

    def __post_init__(self) -> None:
        check_positive("annealed option tau_start", self.tau_start)
        check_positive("annealed option tau_end", self.tau_end)
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, Integral) or self.steps <= 0
        ):
            raise ConfigError(
                f"invalid annealed option steps={self.steps!r}: must be a whole number > 0, "
                "or unset to anneal over the whole training run"
            )
        check_choice("annealing schedule", self.schedule, Schedule)


class AnnealedStrategy:
    """Sample ``k ~ Categorical(softmax(logits / tau_t))`` and use ``m_k``.

    As in BaM, the draw carries no gradient and the loss reaches only the
    sampled interest. ``probs`` is the tempered distribution that was
    sampled from. At ``tau_t = 1`` the draws equal BaM's for the same
    generator state, because dividing by 1 leaves the logits unchanged.
    """

    options_class: ClassVar[type[StrategyOptions]] = AnnealedOptions

    def __init__(self, options: AnnealedOptions | None = None) -> None:
        self.options = options if options is not None else AnnealedOptions()
        if self.options.steps is None:
            raise ConfigError(
                "strategy 'annealed' needs the length of its schedule: set its option "
                "steps, or build it with strategies.build_strategy(..., total_steps=N)"
            )
        self.steps: int = self.options.steps

    def temperature(self, step: int) -> float:
        """Return the temperature ``tau_t`` used at training step ``step``."""
        return annealed_temperature(
            step,
            self.options.tau_start,
            self.options.tau_end,
            self.steps,
            self.options.schedule,
        )

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Sample one interest per row at the temperature of ``step``."""
        logits = interest_logits(interests, target)  # (B, K)
        probs = torch.softmax(logits.detach() / self.temperature(step), dim=-1)
        index = sample_index(probs, generator)  # (B,)
        return Selection(vector=gather_interest(interests, index), index=index, probs=probs)
