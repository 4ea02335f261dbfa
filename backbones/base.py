"""The contract every backbone fulfils, and the config fields all of them share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneConfig:
    """Sizes every backbone needs; each backbone subclasses this with its own options.

    Attributes:
        n_items: Number of real items; the embedding table has ``n_items + 1``
            rows and row 0 is padding.
        dim: Embedding size D.
        num_interests: Number of interests K.
        max_len: Maximum history length L.
        seed: Seed of the backbone's own generator (MIND's random routing
            logits); parameter initialisation is seeded by the caller.
    """

    n_items: int
    dim: int = 64
    num_interests: int = 4
    max_len: int = 50
    seed: int = 0


@runtime_checkable
class Backbone(Protocol):
    """A multi-interest encoder of a padded item history.

    Implementations are ``nn.Module`` subclasses constructed as
    ``Cls(Cls.config_class(...))``.
    """

    config_class: type[BackboneConfig]
    item_embedding: nn.Embedding  # (N + 1, D), row 0 is padding
    num_interests: int

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map ``history (B, L) int64`` and ``mask (B, L) bool`` to interests ``(B, K, D)``."""
        ...

    def auxiliary_loss(self) -> torch.Tensor:
        """Return the backbone's own loss term for the last forward pass (scalar, 0 if none)."""
        ...

    def attention(self) -> torch.Tensor | None:
        """Return the last forward pass's attention or routing weights ``(B, K, L)``, if any."""
        ...
