"""ComiRec-DR: the dynamic-routing multi-interest extractor of Cen et al., KDD 2020.

Reference: Yukuo Cen, Jianwei Zhang, Xu Zou, Chang Zhou, Hongxia Yang and Jie
Tang. "Controllable Multi-Interest Framework for Recommendation", KDD 2020.
Public code: THUDM/ComiRec (TensorFlow, ``src/model.py``, ``CapsuleNetwork``
with ``bilinear_type=2``) and the PyTorch port ShiningCosmos/pytorch_ComiRec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from backbones.base import BackboneConfig
from backbones.routing import RoutingAxis, dynamic_routing
from backbones.validation import check_history, check_positive, check_sizes
from harness.config import check_choice


@dataclass(frozen=True)
class ComiRecDRConfig(BackboneConfig):
    """Options of ComiRec-DR.

    Attributes:
        routing_iterations: Number of routing iterations (3 in the public code).
        routing_axis: Softmax axis of the coupling coefficients. The default
            ``"interests"`` follows capsule routing and the TensorFlow code.
            ``"positions"`` follows the PyTorch ports.
        stop_gradient: Detach the item predictions in every routing
            iteration but the last, as the public code does.
        position_maps: Use a separate bilinear map for every position and
            interest (``L x K x D x D`` weights, as the public code does)
            instead of one per interest (``K x D x D``).
    """

    routing_iterations: int = 3
    routing_axis: RoutingAxis = "interests"
    stop_gradient: bool = True
    position_maps: bool = False

    def __post_init__(self) -> None:
        check_sizes(self)
        check_positive("routing_iterations", self.routing_iterations)
        check_choice("routing_axis", self.routing_axis, RoutingAxis)


class ComiRecDR(nn.Module):
    """ComiRec-DR (Cen et al., KDD 2020): capsule routing with one bilinear map per interest.

    Item ``l`` predicts interest ``k`` as ``u_hat[k, l] = W_k e_l``; three
    routing iterations (option ``routing_iterations``) with squash produce
    the K interests (see :mod:`backbones.routing`).

    Choices where the paper and its public code differ, and the defaults here:

    - Routing logits start at zero, as in both the TensorFlow code and the
      PyTorch port (only MIND draws them at random).
    - Coupling coefficients are normalised across interests, as in capsule
      routing and the TensorFlow code (``softmax(axis=1)``). The PyTorch port
      normalises across positions. Option ``routing_axis``.
    - Stop-gradient on the predictions in all iterations but the last, as in
      both public versions. The PyTorch port hard-codes "the first two"
      iterations, so with one iteration no gradient reaches its bilinear
      map; here it is always "all but the last". Option ``stop_gradient``.
    - Bilinear maps: by default every interest has one map shared across
      positions (``K x D x D`` weights), so the parameter count does not grow
      with L. The public code learns a map per position and interest
      (``L x K x D x D``). Option ``position_maps`` reproduces that, with
      positions counted back from the most recent item because histories
      here are right-aligned.
    - Initialisation: the weights are drawn from ``N(0, 2 / D)`` (He-normal
      over the input size, the rule for every weight matrix in this package).
      The TensorFlow code uses ``N(0, 1)``, which makes the predictions
      about ``sqrt(D)`` times longer than the item embeddings.
    - No ReLU layer after routing (off for ComiRec-DR in the public code).

    The predictions ``W_k e_l`` are never formed when the maps are shared
    across positions (see :mod:`backbones.routing`), which makes routing
    about D times cheaper than in the public code with the same result.
    """

    config_class = ComiRecDRConfig

    def __init__(self, config: ComiRecDRConfig) -> None:
        super().__init__()
        self.config = config
        self.num_interests = config.num_interests
        dim = config.dim
        self.item_embedding = nn.Embedding(config.n_items + 1, dim, padding_idx=0)
        # Stored as (..., K, D_out, D_in): W[k] maps an item embedding to its prediction for interest k.
        shape = (config.num_interests, dim, dim)
        if config.position_maps:
            shape = (config.max_len, *shape)
        self.bilinear = nn.Parameter(torch.empty(shape))
        self._attention: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the embeddings and bilinear maps from He-normal (fan-in D); zero the padding row."""
        nn.init.kaiming_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        nn.init.normal_(self.bilinear, std=math.sqrt(2.0 / self.config.dim))

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map ``history (B, L)`` and ``mask (B, L)`` to interests ``(B, K, D)`` of norm below 1."""
        mask = check_history(history, mask, self.config.max_len)
        batch, length = history.shape
        embeddings = self.item_embedding(history) * mask.unsqueeze(-1)  # (B, L, D)
        maps = self.bilinear[-length:] if self.config.position_maps else self.bilinear
        logits = embeddings.new_zeros(batch, self.num_interests, length)  # (B, K, L)
        interests, self._attention = dynamic_routing(
            embeddings,
            mask,
            logits,
            maps,
            iterations=self.config.routing_iterations,
            axis=self.config.routing_axis,
            stop_gradient=self.config.stop_gradient,
        )
        return interests

    def auxiliary_loss(self) -> torch.Tensor:
        """Return zero: ComiRec-DR has no loss of its own."""
        return self.item_embedding.weight.new_zeros(())

    def attention(self) -> torch.Tensor | None:
        """Return the last forward pass's coupling coefficients ``(B, K, L)`` (``None`` before any forward)."""
        return self._attention
