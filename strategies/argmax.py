"""Hard selection of the interest closest to the target, and the primitives all strategies share.

Hard selection is what ComiRec, MIND and REMI do at training time: the
interest with the largest dot product with the target item scores it in the
loss. The helpers below (logits, gathering, option checks) are used by every
strategy in this package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from strategies.base import Selection, StrategyOptions


def check_shapes(interests: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless ``interests`` is ``(B, K, D)`` and ``target`` is ``(B, D)``."""
    if (
        interests.dim() != 3
        or target.dim() != 2
        or interests.shape[0] != target.shape[0]
        or interests.shape[2] != target.shape[1]
    ):
        raise ValueError(
            f"expected interests (B, K, D) and target (B, D) with matching B and D, "
            f"but got {tuple(interests.shape)} and {tuple(target.shape)}"
        )


def interest_logits(interests: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Compute the dot product of every interest with the target item.

    Args:
        interests: ``(B, K, D)`` interest vectors.
        target: ``(B, D)`` target item embeddings.

    Returns:
        ``(B, K)`` logits ``m_k . e_target``, differentiable in both inputs.

    Raises:
        ValueError: If the shapes do not match.
    """
    check_shapes(interests, target)
    return torch.einsum("bkd,bd->bk", interests, target)


def gather_interest(interests: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return ``interests[b, index[b]]`` for every row, ``(B, D)``.

    Only the gathered interests receive a gradient. The index carries none.
    """
    rows = torch.arange(interests.shape[0], device=interests.device)
    return interests[rows, index]


def check_positive(name: str, value: object) -> None:
    """Raise a ConfigError unless ``value`` is a finite real number greater than 0."""
    is_number = isinstance(value, Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"invalid {name}={value!r}: must be a finite number > 0")


def check_bool(name: str, value: object) -> None:
    """Raise a ConfigError unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"invalid {name}={value!r}: must be true or false")


@dataclass(frozen=True)
class ArgmaxOptions(StrategyOptions):
    """Argmax selection has no options."""


class ArgmaxStrategy:
    """Select ``argmax_k m_k . e_target`` deterministically.

    Ties go to the lowest index, as ``torch.argmax`` returns the first
    maximum. The generator is not used.
    """

    options_class: ClassVar[type[StrategyOptions]] = ArgmaxOptions

    def __init__(self, options: ArgmaxOptions | None = None) -> None:
        self.options = options if options is not None else ArgmaxOptions()

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Pick the interest with the largest logit. ``probs`` is its one-hot indicator."""
        logits = interest_logits(interests, target)  # (B, K)
        index = logits.detach().argmax(dim=-1)  # (B,)
        probs = F.one_hot(index, num_classes=interests.shape[1]).to(interests.dtype)
        return Selection(vector=gather_interest(interests, index), index=index, probs=probs)
