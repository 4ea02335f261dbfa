"""BaM: sample the interest from the softmax of its dot products with the target.

BaM stands for Balanced interest learning for Multi-interest recommendation.
The authors' code (``select_interest`` in ``src/BasicModel.py`` of the
jlunits2/BaM repository) samples with ``torch.multinomial`` from
``softmax(m_k . e_target)`` over the raw dot products, with no temperature.
This module does the same, except that the draw uses an explicit generator
instead of torch's global random state, so that runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from strategies.argmax import gather_interest, interest_logits
from strategies.base import Selection, StrategyOptions


def sample_index(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one index per row of ``probs (B, K)`` with ``torch.multinomial``.

    ``torch.multinomial`` requires the generator and the tensor on the same
    device, so the draw runs on the generator's device and the ``(B,)`` int64
    result is moved back to the device of ``probs``. A CPU generator with CUDA
    tensors therefore costs one device-to-host copy of ``probs`` per call.
    """
    source = probs.detach().to(generator.device)
    index = torch.multinomial(source, num_samples=1, generator=generator).squeeze(1)
    return index.to(probs.device)


@dataclass(frozen=True)
class BamOptions(StrategyOptions):
    """BaM has no options: it samples from the softmax of the raw dot products."""


class BamStrategy:
    """Sample ``k ~ Categorical(softmax_k(m_k . e_target))`` and use ``m_k``.

    The draw carries no gradient: the probabilities are detached, and the loss
    reaches only the sampled interest through the gathered vector. ``probs``
    is the sampling distribution itself.
    """

    options_class: ClassVar[type[StrategyOptions]] = BamOptions

    def __init__(self, options: BamOptions | None = None) -> None:
        self.options = options if options is not None else BamOptions()

    def select(
        self,
        interests: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator,
    ) -> Selection:
        """Sample one interest per row from the softmax of the logits."""
        logits = interest_logits(interests, target)  # (B, K)
        probs = torch.softmax(logits.detach(), dim=-1)
        index = sample_index(probs, generator)  # (B,)
        return Selection(vector=gather_interest(interests, index), index=index, probs=probs)
