"""Uniform selection: a random interest regardless of the target, the floor control.

A strategy that ignores the target cannot specialise interests through the
selection, so any method that does not beat it gains nothing from choosing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from strategies.argmax import check_shapes, gather_interest
from strategies.base import Selection, StrategyOptions


@dataclass(frozen=True)
class UniformOptions(StrategyOptions):
    """Uniform selection has no options."""


class UniformStrategy:
    """Draw ``k`` uniformly from ``0..K-1`` for every row and use ``m_k``.

    The loss reaches only the drawn interest, and ``probs`` is ``1 / K``
    everywhere. The draw runs on the generator's device and the index is
    moved to the device of ``interests``.
    """

    options_class: ClassVar[type[StrategyOptions]] = UniformOptions

    def __init__(self, options: UniformOptions | None = None) -> None:
        self.options = options if options is not None else UniformOptions()

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Draw one interest per row uniformly at random."""
        check_shapes(interests, target)
        batch, num_interests = interests.shape[:2]
        index = torch.randint(
            num_interests, (batch,), generator=generator, device=generator.device
        ).to(interests.device)  # (B,)
        probs = interests.new_full((batch, num_interests), 1.0 / num_interests)
        return Selection(vector=gather_interest(interests, index), index=index, probs=probs)
