"""Gumbel-softmax selection, soft or straight-through.

The logits ``m_k . e_target`` are perturbed with Gumbel noise ``g_k`` and
divided by a temperature: ``w = softmax((logits + g) / tau)``. The soft
variant uses the mix ``sum_k w_k m_k``. The straight-through ("hard") variant
uses the interest at ``argmax_k w_k`` forward and the gradient of the soft
weights backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from strategies.argmax import check_bool, check_positive, interest_logits
from strategies.base import Selection, StrategyOptions


def gumbel_noise(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Draw standard Gumbel noise ``-log(-log(u))`` with ``u ~ U[0, 1)``.

    The uniform draw runs on the generator's device and the noise is moved to
    the device of ``like``, whose dtype it takes.

    Args:
        shape: Shape of the noise.
        generator: Source of all randomness.
        like: Tensor whose device and dtype the noise gets.

    Returns:
        Finite Gumbel noise of the given shape.
    """
    uniform = torch.rand(shape, generator=generator, device=generator.device, dtype=like.dtype)
    uniform = uniform.to(like.device)

    # torch.rand can return exactly 0, where -log(-log(u)) is -inf. torch.rand
    # never returns 1, so the upper end needs no clamp.
    uniform = uniform.clamp_min(torch.finfo(uniform.dtype).tiny)
    return -torch.log(-torch.log(uniform))


@dataclass(frozen=True)
class GumbelOptions(StrategyOptions):
    """Options of Gumbel-softmax selection.

    Attributes:
        tau: Softmax temperature, > 0. It changes the soft weights and the
            straight-through gradient, but not which interest the hard
            variant picks, because dividing by tau keeps the argmax.
        hard: ``True`` for straight-through (one interest forward, soft
            gradient backward), ``False`` for the soft mix.
    """

    tau: float = 1.0
    hard: bool = True

    def __post_init__(self) -> None:
        check_positive("gumbel option tau", self.tau)
        check_bool("gumbel option hard", self.hard)


class GumbelStrategy:
    """Select with Gumbel-softmax weights ``w = softmax((logits + g) / tau)``.

    Soft: ``vector = sum_k w_k m_k``, so every interest gets a gradient.
    ``probs`` contains the realised weights ``w`` (the mix actually used).

    Hard (straight-through): the forward vector is ``m_j`` with
    ``j = argmax_k w_k``, and the backward pass uses the gradient of the
    weights, so every interest gets a gradient through the logits while the
    direct gradient reaches ``m_j`` only. ``probs`` is ``softmax(logits)``:
    by the Gumbel-max property, ``argmax_k (logits_k + g_k)`` is distributed as
    ``Categorical(softmax(logits))`` whatever tau is, so this is the exact
    probability that each interest is the one used forward.

    The straight-through weights are ``y = one_hot(j) - stop_grad(w) + w``.
    For ``w`` in ``[0, 1]`` floating-point rounding gives exactly 1 at ``j`` and
    0 elsewhere, so the forward vector equals ``m_j`` bit for bit.
    """

    options_class: ClassVar[type[StrategyOptions]] = GumbelOptions

    def __init__(self, options: GumbelOptions | None = None) -> None:
        self.options = options if options is not None else GumbelOptions()

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Mix or pick interests with Gumbel-perturbed softmax weights."""
        logits = interest_logits(interests, target)  # (B, K)
        noise = gumbel_noise(logits.shape, generator, like=logits)
        weights = torch.softmax((logits + noise) / self.options.tau, dim=-1)  # (B, K)
        index = weights.detach().argmax(dim=-1)  # (B,)

        if not self.options.hard:
            vector = torch.einsum("bk,bkd->bd", weights, interests)
            return Selection(vector=vector, index=index, probs=weights.detach())

        one_hot = F.one_hot(index, num_classes=interests.shape[1]).to(weights.dtype)
        straight_through = one_hot - weights.detach() + weights  # (B, K)
        vector = torch.einsum("bk,bkd->bd", straight_through, interests)
        probs = torch.softmax(logits.detach(), dim=-1)
        return Selection(vector=vector, index=index, probs=probs)
