"""The contract every interest-selection strategy fulfils."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class StrategyOptions:
    """Base class of the per-strategy frozen option dataclasses."""


@dataclass(frozen=True)
class Selection:
    """Result of a strategy for one batch.

    Attributes:
        vector: ``(B, D)`` the user vector that scores the target in the loss.
        index: ``(B,)`` int64 the chosen interest (the argmax of the weights
            for strategies that mix interests).
        probs: ``(B, K)`` the selection probabilities (or mixing weights), for
            logging balance; carries no gradient.
    """

    vector: torch.Tensor
    index: torch.Tensor
    probs: torch.Tensor


@runtime_checkable
class Strategy(Protocol):
    """Chooses which interest scores the target item during training.

    Implementations are constructed as ``Cls(Cls.options_class(...))`` and are
    pure given the generator: all randomness comes from ``generator``.
    """

    options_class: ClassVar[type[StrategyOptions]]

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Select from ``interests (B, K, D)`` given ``target (B, D)`` embeddings at ``step``."""
        ...
