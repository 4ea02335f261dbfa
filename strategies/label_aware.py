"""MIND's label-aware attention: a soft mix of interests weighted by ``softmax(pow(logits, p))``.

Label-aware attention comes from MIND (Li et al., 2019, "Multi-Interest Network
with Dynamic Routing for Recommendation at Tmall"). The weights are
``softmax_k(pow(m_k . e_target, p))`` and the user vector is
``sum_k w_k m_k``. For positive logits, p near 0 gives almost uniform weights,
and a larger p concentrates them on the largest logit, which in the limit is
hard (argmax) selection. Negative logits go through a sign-preserving power,
see :class:`LabelAwareStrategy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from strategies.argmax import check_positive, interest_logits
from strategies.base import Selection, StrategyOptions


def signed_power(values: torch.Tensor, p: float) -> torch.Tensor:
    """Return ``sign(x) * |x| ** p``, elementwise.

    This equals ``x ** p`` for ``x >= 0`` and for odd integer ``p``. Unlike
    ``x ** p``, it is defined for negative ``x`` with any real ``p`` and is
    increasing in ``x`` for every ``p > 0``. Magnitudes are clamped to the
    smallest normal float so that the gradient at ``x = 0`` is 0 and not NaN
    when ``p < 1``.
    """
    tiny = torch.finfo(values.dtype).tiny
    return values.sign() * values.abs().clamp_min(tiny).pow(p)


@dataclass(frozen=True)
class LabelAwareOptions(StrategyOptions):
    """Options of label-aware attention.

    Attributes:
        p: Exponent applied to the logits before the softmax, > 0. At
            ``p = 1`` the weights are ``softmax(logits)``, the distribution
            that BaM samples from. The default 2 shifts weight towards the
            closest interest while every interest keeps a gradient.
    """

    p: float = 2.0

    def __post_init__(self) -> None:
        check_positive("label-aware option p", self.p)


class LabelAwareStrategy:
    """Mix interests with weights ``softmax(signed_power(logits, p))``.

    Every interest and the target get a gradient. ``index`` is the argmax of
    the weights, and ``probs`` contains the weights themselves.

    Departure from the public ports: the DeepMatch port of MIND (TensorFlow
    ``LabelAwareAttention`` in ``deepmatch/layers/core.py`` of
    shenweichen/DeepMatch) applies ``tf.pow`` to the raw dot products. A
    negative dot product then gives NaN for a non-integer p. For an even p it
    gives a large weight to an interest pointing away from the target. The
    sign-preserving power used here keeps the order of the logits for every
    p > 0 and equals ``pow`` whenever all logits are non-negative.

    NOTE: ``|logit| ** p`` overflows float32 once ``p * log10(|logit|)``
    exceeds about 38.5, for example a logit of 100 with p = 20. A positive
    logit that overflows makes the weights NaN, so keep p moderate or the
    logits small.
    """

    options_class: ClassVar[type[StrategyOptions]] = LabelAwareOptions

    def __init__(self, options: LabelAwareOptions | None = None) -> None:
        self.options = options if options is not None else LabelAwareOptions()

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Mix all interests with label-aware attention weights."""
        logits = interest_logits(interests, target)  # (B, K)
        weights = torch.softmax(signed_power(logits, self.options.p), dim=-1)  # (B, K)
        vector = torch.einsum("bk,bkd->bd", weights, interests)
        index = weights.detach().argmax(dim=-1)  # (B,)
        return Selection(vector=vector, index=index, probs=weights.detach())
